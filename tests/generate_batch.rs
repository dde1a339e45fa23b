//! Batched generation: every reply of a batch is bit-identical to generating it alone
//! (tokens, text, stop reason; the batched step's logits too), whatever the rows decoded
//! together, prompt lengths, samples per prompt and limits; bad requests are typed errors
//! naming their index; the step callback sees each reply's tokens and can stop them.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::adapter::{Adapter, LoraConfig};
use nudge::generate::{
    BatchOptions, GenerateOptions, GenerateRequest, Generated, KvCache, StopReason, generate, generate_batch,
    generate_batch_with,
};
use nudge::model::{CachedSeq, Model};
use nudge::rng::Rng;
use nudge::tokenizer::ChatMessage;
use std::collections::BTreeMap;
use std::ops::ControlFlow;

fn tiny(name: &str, spec: &TinySpec) -> Model {
    let d = fresh_dir(name);
    write_model(&d, spec);
    Model::open(&d).expect("tiny model opens")
}

fn random_adapter(m: &Model, seed: u64, scale: f32) -> Adapter {
    let mut a = Adapter::new(&m.config, LoraConfig::default(), seed, "base").expect("adapter");
    let mut rng = Rng::new(seed ^ 0x5eed);
    for pair in a.layers.iter_mut().flatten().flatten() {
        for b in pair.b.iter_mut() {
            *b = rng.normal() * scale;
        }
    }
    a
}

fn single(m: &Model, r: &GenerateRequest, adapter: Option<&Adapter>) -> Generated {
    generate(m, &r.prompt, &r.opts, adapter, |_, _| ControlFlow::Continue(())).expect("generates")
}

fn batched(m: &Model, reqs: &[GenerateRequest], adapter: Option<&Adapter>, max_rows: usize) -> Vec<Generated> {
    let opts = BatchOptions {
        max_rows,
        max_prefill_tokens: 32,
    };
    generate_batch_with(m, reqs, adapter, &opts, |_| ControlFlow::Continue(())).expect("batch generates")
}

fn prompt(len: usize, salt: usize, vocab: usize) -> Vec<u32> {
    (0..len).map(|i| ((i * 13 + salt * 7 + 3) % vocab) as u32).collect()
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

/// Requests of very different prompt lengths, greedy and sampled, several samples of
/// some prompts (one of them twice with the same seed), different limits and stop tokens.
fn mixed_requests(vocab: usize) -> Vec<GenerateRequest> {
    let req =
        |prompt: Vec<u32>, max_new_tokens, temperature, top_k, top_p, seed, stop: Option<Vec<u32>>| GenerateRequest {
            prompt,
            opts: GenerateOptions {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed,
                stop_tokens: stop,
                stop_strings: Vec::new(),
            },
        };
    let long = prompt(60, 1, vocab);
    vec![
        req(prompt(1, 0, vocab), 30, 0.0, 0, 1.0, 0, Some(vec![])),
        req(long.clone(), 12, 1.5, 0, 1.0, 1, Some(vec![])),
        req(prompt(5, 2, vocab), 3, 0.0, 0, 1.0, 0, Some(vec![])),
        req(long.clone(), 25, 1.5, 0, 1.0, 2, Some(vec![])),
        req(prompt(17, 3, vocab), 20, 1.2, 8, 0.9, 5, None),
        req(long.clone(), 12, 1.5, 0, 1.0, 1, Some(vec![])),
        req(prompt(2, 4, vocab), 1, 0.7, 0, 0.5, 9, Some(vec![])),
        req(prompt(33, 5, vocab), 40, 1.0, 0, 1.0, 11, None),
        req(long, 18, 0.0, 0, 1.0, 0, Some(vec![])),
    ]
}

#[test]
fn batched_replies_equal_single_replies_on_tiny_models() {
    let specs = [
        ("genb-tiny-llama", TinySpec::default()),
        (
            "genb-tiny-qwen2",
            TinySpec {
                qwen2: true,
                tied: false,
                kv_heads: 1,
                seed: 11,
                ..TinySpec::default()
            },
        ),
    ];
    for (name, spec) in specs {
        let m = tiny(name, &spec);
        let a = random_adapter(&m, 3, 0.05);
        let reqs = mixed_requests(spec.vocab);
        for adapter in [None, Some(&a)] {
            let want: Vec<Generated> = reqs.iter().map(|r| single(&m, r, adapter)).collect();
            // Limits reached at different steps: rows leave while others go on.
            let lens: Vec<usize> = want.iter().map(|g| g.ids.len()).collect();
            assert!(
                lens.contains(&1) && lens.contains(&3) && lens.iter().max() > Some(&25),
                "{lens:?}"
            );
            assert_eq!(want[1], want[5], "one seed, one prompt, one reply");
            assert_ne!(want[1].ids, want[3].ids[..12], "two seeds, two replies");
            for max_rows in [0, 1, 3, 4, 16] {
                let got = batched(&m, &reqs, adapter, max_rows);
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert_eq!(
                        g,
                        w,
                        "{name}: adapter {}, {max_rows} rows: request {i}",
                        adapter.is_some()
                    );
                }
            }
        }
    }
}

#[test]
fn batched_steps_give_the_logits_of_single_steps_bit_for_bit() {
    let m = tiny("genb-logits", &TinySpec::default());
    let a = random_adapter(&m, 4, 0.05);
    for adapter in [None, Some(&a)] {
        // Three caches of different lengths, filled by single-row prefills.
        let prompts = [prompt(1, 0, 64), prompt(9, 1, 64), prompt(40, 2, 64)];
        let mut caches: Vec<KvCache> = prompts
            .iter()
            .map(|p| {
                let mut c = KvCache::new(&m.config);
                m.prefill(p, &mut c, adapter).unwrap();
                c
            })
            .collect();
        let mut alone = caches.clone();
        for step in 0..5u32 {
            let tokens = [step + 3, 2 * step + 1, 63 - step];
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let got = m.decode_batch(&tokens, &mut refs, adapter).unwrap();
            let v = m.config.vocab_size;
            for (i, c) in alone.iter_mut().enumerate() {
                let want = m.decode_step(tokens[i], c, adapter).unwrap();
                assert_eq!(bits(&got[i * v..(i + 1) * v]), bits(&want), "step {step}, row {i}");
            }
        }
        for (c, w) in caches.iter().zip(&alone) {
            assert_eq!(c.len(), w.len());
            for l in 0..m.config.num_hidden_layers {
                let ((k, v), (wk, wv)) = (c.layer(l).unwrap(), w.layer(l).unwrap());
                assert_eq!((bits(k), bits(v)), (bits(wk), bits(wv)));
            }
        }
        // Ragged prefills in one pass equal each alone.
        let mut batch: Vec<KvCache> = (0..3).map(|_| KvCache::new(&m.config)).collect();
        let mut seqs: Vec<CachedSeq> = prompts
            .iter()
            .zip(batch.iter_mut())
            .map(|(p, cache)| CachedSeq { tokens: p, cache })
            .collect();
        let h = m.extend_batch(&mut seqs, adapter).unwrap();
        let mut at = 0;
        for p in &prompts {
            let want = m.extend(p, &mut KvCache::new(&m.config), adapter).unwrap();
            assert_eq!(bits(&h[at..at + want.len()]), bits(&want));
            at += want.len();
        }
        assert_eq!(at, h.len());
    }
}

#[test]
fn rows_stop_at_eos_and_at_a_full_context_while_others_go_on() {
    let spec = TinySpec::default(); // max_position_embeddings 128, EOS t2
    let m = tiny("genb-stops", &spec);
    let sampled = |seed, max_new_tokens, stop_tokens| GenerateOptions {
        temperature: 1.5,
        seed,
        max_new_tokens,
        stop_tokens,
        ..GenerateOptions::default()
    };
    let p = vec![1u32, 10, 20, 30];
    // A seed whose free run draws EOS early.
    let seed = (0..200)
        .find(|&seed| {
            let r = GenerateRequest {
                prompt: p.clone(),
                opts: sampled(seed, 24, Some(vec![])),
            };
            single(&m, &r, None).ids[..20].contains(&2)
        })
        .expect("some seed draws EOS");
    let long = prompt(120, 0, 60);
    let reqs = vec![
        GenerateRequest {
            prompt: p.clone(),
            opts: sampled(seed, 24, None),
        },
        GenerateRequest {
            prompt: long.clone(),
            opts: sampled(3, 40, Some(vec![])),
        },
        GenerateRequest {
            prompt: p.clone(),
            opts: sampled(seed + 1000, 30, Some(vec![])),
        },
        GenerateRequest {
            prompt: prompt(128, 1, 60),
            opts: sampled(3, 40, Some(vec![])),
        },
        GenerateRequest {
            prompt: p.clone(),
            opts: GenerateOptions {
                max_new_tokens: 0,
                ..GenerateOptions::default()
            },
        },
    ];
    let got = generate_batch(&m, &reqs, None, |_| ControlFlow::Continue(())).unwrap();
    let reasons: Vec<StopReason> = got.iter().map(|g| g.stop_reason).collect();
    use StopReason::*;
    assert_eq!(reasons, [Eos, ContextFull, Length, ContextFull, Length]);
    assert_eq!(got[0].ids.last(), Some(&2));
    assert_eq!(got[1].ids.len(), 8);
    assert_eq!(got[2].ids.len(), 30);
    assert!(got[3].ids.is_empty() && got[4].ids.is_empty());
    for (g, r) in got.iter().zip(&reqs) {
        assert_eq!(g, &single(&m, r, None));
    }
}

#[test]
fn an_empty_batch_is_empty_and_bad_requests_name_their_index() {
    let m = tiny("genb-errors", &TinySpec::default());
    let mut calls = 0;
    let none = generate_batch(&m, &[], None, |_| {
        calls += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(none.is_empty());
    assert_eq!(calls, 0);

    let ok = GenerateRequest {
        prompt: vec![1, 2, 3],
        opts: GenerateOptions {
            max_new_tokens: 4,
            ..GenerateOptions::default()
        },
    };
    let with = |i: usize, bad: GenerateRequest| {
        let mut reqs = vec![ok.clone(); 4];
        reqs[i] = bad;
        let mut calls = 0;
        let e = generate_batch(&m, &reqs, None, |_| {
            calls += 1;
            ControlFlow::Continue(())
        })
        .unwrap_err();
        assert_eq!(calls, 0, "nothing runs before every request is checked");
        e
    };
    let e = with(
        2,
        GenerateRequest {
            prompt: vec![],
            ..ok.clone()
        },
    );
    assert!(
        matches!(&e, Error::Request { index: 2, source } if matches!(**source, Error::Invalid(_))),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("request 2: "), "{e}");
    let e = with(
        1,
        GenerateRequest {
            prompt: vec![1, 64, 2],
            ..ok.clone()
        },
    );
    assert!(
        matches!(&e, Error::Request { index: 1, source } if matches!(**source, Error::TokenOutOfVocabulary { id: 64, position: 1, .. })),
        "{e:?}"
    );
    let e = with(
        3,
        GenerateRequest {
            prompt: prompt(129, 0, 60),
            ..ok.clone()
        },
    );
    assert!(
        matches!(&e, Error::Request { index: 3, source } if matches!(**source, Error::SequenceTooLong { len: 129, max: 128 })),
        "{e:?}"
    );
    let e = with(
        0,
        GenerateRequest {
            opts: GenerateOptions {
                top_p: 0.0,
                ..ok.opts.clone()
            },
            ..ok.clone()
        },
    );
    assert!(matches!(&e, Error::Request { index: 0, .. }), "{e:?}");

    // decode_batch names its row and leaves every cache as it was.
    let mut caches: Vec<KvCache> = (0..3).map(|_| KvCache::new(&m.config)).collect();
    for c in &mut caches {
        m.prefill(&[1, 2], c, None).unwrap();
    }
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let e = m.decode_batch(&[3, 4, 99], &mut refs, None).unwrap_err();
    assert!(matches!(&e, Error::Request { index: 2, .. }), "{e:?}");
    assert!(m.decode_batch(&[3, 4], &mut refs, None).is_err());
    assert!(caches.iter().all(|c| c.len() == 2));
}

#[test]
fn the_step_callback_streams_each_reply_and_can_stop_rows_or_all() {
    let m = tiny("genb-callback", &TinySpec::default());
    let reqs: Vec<GenerateRequest> = (0..5)
        .map(|i| GenerateRequest {
            prompt: prompt(3 + 5 * i, i, 64),
            opts: GenerateOptions {
                max_new_tokens: 6 + 3 * i,
                temperature: 1.0,
                seed: i as u64,
                stop_tokens: Some(vec![]),
                stop_strings: Vec::new(),
                ..GenerateOptions::default()
            },
        })
        .collect();
    // What generate's callback sees, per request.
    let want: Vec<(Vec<u32>, String)> = reqs
        .iter()
        .map(|r| {
            let (mut ids, mut text) = (Vec::new(), String::new());
            generate(&m, &r.prompt, &r.opts, None, |t, d| {
                ids.push(t);
                text.push_str(d);
                ControlFlow::Continue(())
            })
            .unwrap();
            (ids, text)
        })
        .collect();
    let mut seen: BTreeMap<usize, (Vec<u32>, String)> = BTreeMap::new();
    let mut ended: BTreeMap<usize, Generated> = BTreeMap::new();
    let mut last_done = 0;
    let opts = BatchOptions {
        max_rows: 2,
        ..BatchOptions::default()
    };
    let got = generate_batch_with(&m, &reqs, None, &opts, |p| {
        assert!(p.rows <= 2 && p.tokens.len() <= p.rows);
        assert!(p.done >= last_done && p.total == 5);
        last_done = p.done;
        for t in p.tokens {
            let e = seen.entry(t.request).or_default();
            e.0.push(t.token);
            e.1.push_str(t.text);
        }
        for (i, g) in p.finished {
            assert!(ended.insert(*i, g.clone()).is_none(), "request {i} ends once");
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(last_done, 5);
    assert_eq!(
        ended.into_values().collect::<Vec<_>>(),
        got,
        "the callback saw the final replies"
    );
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&seen[&i], w, "request {i}");
        assert_eq!(got[i].text, w.1);
    }

    // Stop request 1 after its second token and request 3 after its first.
    let mut count = [0usize; 5];
    let got = generate_batch(&m, &reqs, None, |p| {
        let toks: Vec<usize> = p.tokens.iter().map(|t| t.request).collect();
        for r in toks {
            count[r] += 1;
            if (r == 1 && count[r] == 2) || (r == 3 && count[r] == 1) {
                p.stop(r);
            }
        }
        ControlFlow::Continue(())
    })
    .unwrap();
    for (i, g) in got.iter().enumerate() {
        let full = single(&m, &reqs[i], None);
        match i {
            1 | 3 => {
                assert_eq!(g.stop_reason, StopReason::Callback);
                assert_eq!(g.ids, full.ids[..if i == 1 { 2 } else { 1 }]);
            }
            _ => assert_eq!(g, &full),
        }
    }

    // Breaking stops everything: replies so far, empty for requests never started.
    let mut steps = 0;
    let got = generate_batch_with(&m, &reqs, None, &opts, |_| {
        steps += 1;
        if steps == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert!(got.iter().all(|g| g.stop_reason == StopReason::Callback));
    assert_eq!(got[0].ids, single(&m, &reqs[0], None).ids[..3]);
    assert!(got[2].ids.is_empty() && got[4].ids.is_empty());
}

#[test]
fn real_model_batch_of_four_prompts_two_samples_equals_single_generation() {
    let m = Model::open(common::model_path()).expect("real model opens");
    let questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "Give me three tips for sleeping better.",
        "Hi",
    ];
    let mut reqs = Vec::new();
    for q in questions {
        let text = m
            .tokenizer
            .apply_chat_template(&[ChatMessage::new("user", q)], true)
            .unwrap();
        let ids = m.tokenizer.encode(&text, false).unwrap();
        for sample in 0..2 {
            reqs.push(GenerateRequest {
                prompt: ids.clone(),
                opts: GenerateOptions {
                    max_new_tokens: 24,
                    temperature: 0.8,
                    top_p: 0.95,
                    seed: 100 + sample,
                    ..GenerateOptions::default()
                },
            });
        }
    }
    let got = generate_batch(&m, &reqs, None, |_| ControlFlow::Continue(())).unwrap();
    for (i, (g, r)) in got.iter().zip(&reqs).enumerate() {
        println!("{i}: {:?} ({})", g.text, g.stop_reason.as_str());
        assert_eq!(g, &single(&m, r, None), "request {i}");
    }
    assert_ne!(got[0].ids, got[1].ids, "two samples of one prompt differ");
}

#[test]
fn the_cli_writes_one_line_per_row_and_sample_equal_to_single_generation() {
    let dir = fresh_dir("genb-cli");
    let model_dir = dir.join("model");
    write_model(&model_dir, &TinySpec::default());
    let m = Model::open(&model_dir).unwrap();
    let rows = [
        r#"{"prompt": "t5 t9 t13"}"#,
        r#"{"prompt": "t7", "max_new_tokens": 3, "seed": 40}"#,
        "",
        r#"{"prompt": "t3 t4 t5 t6 t7 t8 t9 t10 t11 t12", "temperature": 0, "top_k": 5, "top_p": 0.5}"#,
    ];
    let file = dir.join("prompts.jsonl");
    std::fs::write(&file, rows.join("\n")).unwrap();
    let out = dir.join("replies.jsonl");
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
            .args(["generate", "--model"])
            .arg(&model_dir)
            .arg("--prompts")
            .arg(&file)
            .args([
                "--samples",
                "2",
                "--batch",
                "3",
                "--max-new-tokens",
                "12",
                "--temperature",
                "1.3",
            ])
            .args(["--seed", "7", "--out"])
            .arg(&out)
            .args(extra)
            .output()
            .expect("runs nudge")
    };
    let o = run(&[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("3 rows x 2 samples: 6 replies"), "{stderr}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    let settings = [(1, "t5 t9 t13", 12, 1.3, 0, 1.0, 7), (2, "t7", 3, 1.3, 0, 1.0, 40)];
    let last = (4, "t3 t4 t5 t6 t7 t8 t9 t10 t11 t12", 12, 0.0, 5, 0.5, 7);
    for (i, line) in lines.iter().enumerate() {
        let (row, text, max_new_tokens, temperature, top_k, top_p, seed) = *settings.get(i / 2).unwrap_or(&last);
        let sample = i % 2;
        let g = generate(
            &m,
            &m.tokenizer.encode(text, true).unwrap(),
            &GenerateOptions {
                max_new_tokens,
                temperature,
                top_k,
                top_p,
                seed: seed + sample as u64,
                stop_tokens: None,
                stop_strings: Vec::new(),
            },
            None,
            |_, _| ControlFlow::Continue(()),
        )
        .unwrap();
        let want = serde_json::json!({
            "row": row,
            "sample": sample,
            "prompt": text,
            "text": g.text,
            "tokens": g.ids.len(),
            "stop_reason": g.stop_reason.as_str(),
        });
        assert_eq!(line, &want, "line {i}");
    }
    assert_ne!(
        lines[0]["text"], lines[1]["text"],
        "two samples of a sampled row differ"
    );
    assert_eq!(lines[4]["text"], lines[5]["text"], "greedy samples agree");

    // A bad row names the file and its line; nothing is written.
    std::fs::remove_file(&out).unwrap();
    std::fs::write(&file, format!("{}\n{}\n", rows[0], r#"{"prompt": "t1", "top_p": 2}"#)).unwrap();
    let o = run(&[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("prompts.jsonl: row 2: ") && stderr.contains("top_p"),
        "{stderr}"
    );
    let long = vec!["t5"; 129].join(" ");
    std::fs::write(&file, format!("{}\n\n{{\"prompt\": \"{long}\"}}\n", rows[0])).unwrap();
    let o = run(&[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("prompts.jsonl: row 3: ") && stderr.contains("129 tokens"),
        "{stderr}"
    );
    assert!(!out.exists());
}
