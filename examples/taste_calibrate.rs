//! Calibrates the simulated users on the real model (not a test: it is slow).
//!
//! `cargo run --release --example taste_calibrate -- sample MODEL OUT.jsonl [N_PROMPTS] [PER_PROMPT] [MAX_NEW]`
//! samples answers to the first train prompts (temperature 0.8, top-p 0.95) and writes one
//! JSON row per answer (prompt, text, ids, stop reason).
//!
//! `cargo run --release --example taste_calibrate -- judge MODEL SAMPLES.jsonl` adds the base
//! model's NLL to each answer, prints the statistics of every taste metric, each simulated
//! user's thumbs and its judgement of the answers to each prompt, so that a person can check
//! the judgements and the demo's targets can be set.

use nudge::generate::{GenerateOptions, StopReason, generate};
use nudge::model::Model;
use nudge::taste::{Answer, SimulatedUser, Taste, Which, answer_nll, measures};
use nudge::tokenizer::ChatMessage;
use std::io::Write;
use std::ops::ControlFlow;

fn main() -> nudge::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: taste_calibrate sample MODEL OUT.jsonl [N_PROMPTS] [PER_PROMPT] [MAX_NEW]\n       \
                 taste_calibrate judge MODEL SAMPLES.jsonl";
    match args.first().map(String::as_str) {
        Some("sample") if args.len() >= 3 => {
            let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
            sample(&args[1], &args[2], num(3, 20), num(4, 2), num(5, 160))
        }
        Some("judge") if args.len() >= 3 => judge(&args[1], &args[2]),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}

fn sample(model: &str, out: &str, n_prompts: usize, per_prompt: usize, max_new: usize) -> nudge::Result<()> {
    let m = Model::open(model)?;
    let prompts: Vec<&str> = include_str!("../data/prompts/train.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    // Every k-th prompt: a spread over the kinds of prompt, not only the first few.
    let step = (prompts.len() / n_prompts.max(1)).max(1);
    let mut f = std::fs::File::create(out).map_err(|e| nudge::Error::io(out, e))?;
    for (pi, prompt) in prompts.iter().step_by(step).take(n_prompts).enumerate() {
        let text = m
            .tokenizer
            .apply_chat_template(&[ChatMessage::new("user", *prompt)], true)?;
        let prompt_ids = m.tokenizer.encode(&text, false)?;
        for k in 0..per_prompt {
            let opts = GenerateOptions {
                max_new_tokens: max_new,
                temperature: 0.8,
                top_p: 0.95,
                seed: (pi * 100 + k) as u64,
                ..Default::default()
            };
            let g = generate(&m, &prompt_ids, &opts, None, |_, _| ControlFlow::Continue(()))?;
            // The answer's ids without the stop token: what scoring conditions on.
            let mut ids = g.ids.clone();
            if g.stop_reason == StopReason::Eos {
                ids.pop();
            }
            let row = serde_json::json!({
                "prompt": prompt,
                "prompt_ids": prompt_ids,
                "text": g.text,
                "ids": ids,
                "stop": g.stop_reason.as_str(),
            });
            writeln!(f, "{row}").map_err(|e| nudge::Error::io(out, e))?;
            eprintln!("[{pi}.{k}] {} tokens, {}: {prompt}", ids.len(), g.stop_reason.as_str());
        }
    }
    Ok(())
}

struct Row {
    prompt: String,
    answer: Answer,
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .map(|a| a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect())
        .unwrap_or_default()
}

fn read_rows(model: &Model, path: &str) -> nudge::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).map_err(|e| nudge::Error::io(path, e))?;
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| nudge::Error::invalid(e.to_string()))?;
        let answer_ids = ids(&v["ids"]);
        let mut answer = Answer::new(
            v["text"].as_str().unwrap_or_default(),
            answer_ids.len(),
            v["stop"].as_str() != Some("eos"),
        );
        if !answer_ids.is_empty() {
            answer = answer.with_nll(answer_nll(model, &ids(&v["prompt_ids"]), &answer_ids)?);
        }
        rows.push(Row {
            prompt: v["prompt"].as_str().unwrap_or_default().to_string(),
            answer,
        });
    }
    Ok(rows)
}

/// Mean, median, min and max.
fn stats(mut v: Vec<f64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let mean = v.iter().sum::<f64>() / n as f64;
    format!(
        "mean {mean:.3}, median {median:.3}, min {:.3}, max {:.3} (n {n})",
        v[0],
        v[n - 1]
    )
}

fn judge(model: &str, path: &str) -> nudge::Result<()> {
    let m = Model::open(model)?;
    let rows = read_rows(&m, path)?;
    let complete: Vec<&Row> = rows.iter().filter(|r| !r.answer.truncated).collect();
    println!(
        "{} answers, {} complete, {} cut at the token limit",
        rows.len(),
        complete.len(),
        rows.len() - complete.len()
    );
    println!(
        "tokens: {}",
        stats(rows.iter().map(|r| r.answer.tokens as f64).collect())
    );
    println!(
        "NLL/token: {}",
        stats(rows.iter().filter_map(|r| r.answer.nll).collect())
    );
    let m4 = |r: &Row| measures::repeated_ngram_share(&r.answer.text, 4);
    println!("repeated 4-gram share: {}", stats(rows.iter().map(m4).collect()));
    println!(
        "distinct-word ratio: {}",
        stats(
            rows.iter()
                .map(|r| measures::distinct_word_ratio(&r.answer.text))
                .collect()
        )
    );
    for t in Taste::ALL {
        let all = stats(rows.iter().map(|r| t.metric(&r.answer)).collect());
        let done = stats(complete.iter().map(|r| t.metric(&r.answer)).collect());
        println!("{t} ({}): all {all}; complete {done}", t.metric_name());
    }
    for (i, r) in rows.iter().enumerate() {
        let u = SimulatedUser::new(Taste::Short).utility(&r.answer);
        println!(
            "answer {i}: {} tokens{}, {} words, nll {}, defects {:?}: {}",
            r.answer.tokens,
            if r.answer.truncated { " (cut)" } else { "" },
            measures::word_count(&r.answer.text),
            r.answer.nll.map(|n| format!("{n:.2}")).unwrap_or_default(),
            u.defects.names(),
            r.prompt
        );
    }
    for r in &rows {
        let u = SimulatedUser::new(Taste::Short).utility(&r.answer);
        let defects = u.defects.names();
        if defects.iter().any(|&d| d != "truncated") {
            println!(
                "defects {defects:?} (penalty {:.2}) in answer to `{}`:\n{}\n",
                u.defects.total(),
                r.prompt,
                r.answer.text
            );
        }
    }
    for t in Taste::ALL {
        let u = SimulatedUser::new(t);
        let thumbs: Vec<Option<bool>> = rows.iter().map(|r| u.rate(&r.answer).map(|th| th.up)).collect();
        let count = |x: Option<bool>| thumbs.iter().filter(|&&y| y == x).count();
        println!(
            "\n== {t}: {} up, {} down, {} none",
            count(Some(true)),
            count(Some(false)),
            count(None)
        );
        let mut ties = 0;
        for pair in rows.chunk_by(|a, b| a.prompt == b.prompt) {
            let [a, b, ..] = pair else { continue };
            let show = |r: &Row| {
                format!(
                    "{} words{}{} q={} list={:.2} u={:.2}",
                    measures::word_count(&r.answer.text),
                    if r.answer.truncated { ", cut" } else { "" },
                    r.answer.nll.map(|n| format!(", nll {n:.2}")).unwrap_or_default(),
                    u8::from(measures::ends_with_question(&r.answer.text)),
                    measures::list_share(&r.answer.text),
                    u.score(&r.answer)
                )
            };
            match u.judge_pair(&a.prompt, &a.answer, &b.answer) {
                None => {
                    ties += 1;
                    println!("tie   {}: A [{}] B [{}]", a.prompt, show(a), show(b));
                }
                Some(j) => println!(
                    "{} {:.2} {}: A [{}] B [{}]",
                    if j.preferred == Which::A { "A > B" } else { "B > A" },
                    j.strength,
                    a.prompt,
                    show(a),
                    show(b)
                ),
            }
        }
        println!("ties: {ties}");
    }
    Ok(())
}
