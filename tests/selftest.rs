//! The self-test of a build on a machine or CPU the test suite does not run on: the aarch64
//! build runs it under emulation (`scripts/cross-aarch64.sh`), and every native test run
//! runs it too.
//!
//! It computes, on one thread (no thread is spawned: `qemu-user` hangs at the first one),
//! the outputs of every kernel path the engine has: matrix products in every weight format
//! over ragged shapes (the tiled path and the decoding path), scoring with each tiny
//! reference model, decoding with a KV cache, two DPO training steps (forward, backward,
//! attention backward, AdamW), and one golden example of the real model. Then:
//!
//! - each output's bits go into a digest, compared with `tests/data/selftest.digests`. The
//!   kernels promise the same bits on every instruction set (fixed reduction orders), so
//!   one file holds for AVX-512, AVX2, NEON and the scalar path alike: a vector kernel
//!   that differs from the scalar one in any bit fails here, and `NUDGE_NO_SIMD=1` runs
//!   the scalar path against the same file;
//! - the tiny models' log-probs are checked against PyTorch (`tests/data/tiny/refs.json`)
//!   and the golden example against `NUDGE_GOLDEN_DIR`, within their tolerances, so the
//!   shared digests are also right, not only alike.
//!
//! `cargo test --release --test selftest -- --bless` rewrites the digest file (after a
//! change that is meant to move the bits, on any machine: they are the same everywhere).

mod common;

use common::tiny::tiny_pairs;
use common::{floats, golden_json, ids, model_path};
use nudge::adapter::{Adapter, LoraConfig};
use nudge::bench::weights::{DTYPES, Rng, random_weight};
use nudge::generate::{GenerateOptions, generate};
use nudge::isa::Isa;
use nudge::kernels::matmul::{RowOrder, WeightRef, matmul_w_acc, matmul_wt};
use nudge::model::Model;
use nudge::objective::Loss;
use nudge::optim::AdamWConfig;
use nudge::train::{Control, TrainConfig, Trainer};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

/// Digests of named outputs, and the checks against references that failed.
#[derive(Default)]
struct Run {
    digests: BTreeMap<String, String>,
    failures: Vec<String>,
}

impl Run {
    fn record(&mut self, name: impl Into<String>, values: &[f32]) {
        let mut h = Sha256::new();
        for v in values {
            h.update(v.to_bits().to_le_bytes());
        }
        let d = h.finalize();
        let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
        self.digests.insert(name.into(), hex);
    }

    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

/// Both products training needs, for every weight format, on shapes ragged against every
/// tile and with the one to few rows of (batched) decoding, which have a path of their own.
fn matrix_products(run: &mut Run) {
    let mut rng = Rng(11);
    for dtype in DTYPES {
        let k = if dtype.block_len() == 256 { 512 } else { 96 };
        for (m, n) in [(1, 37), (3, 70), (16, 19), (37, 45)] {
            let w = random_weight(&mut rng, dtype, n, k);
            let w = WeightRef::new(dtype, n, k, &w, RowOrder::Stored).unwrap();
            let x = rng.vec(m * k);
            let mut y = vec![0.0; m * n];
            matmul_wt(&x, m, &w, &mut y);
            run.record(format!("matmul_wt {dtype} m={m} n={n} k={k}"), &y);
            let dy = rng.vec(m * n);
            let mut dx = rng.vec(m * k);
            matmul_w_acc(&dy, m, &w, &mut dx);
            run.record(format!("matmul_w_acc {dtype} m={m} n={n} k={k}"), &dx);
        }
    }
}

fn refs() -> Value {
    let p = data("tiny/refs.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Scoring with each tiny reference model (every architecture and weight format the
/// shared golden set lacks), against PyTorch.
fn tiny_models(run: &mut Run) {
    for e in refs()["models"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        let m = Model::open(data("tiny").join(e["path"].as_str().unwrap())).unwrap();
        for (ci, case) in e["cases"].as_array().unwrap().iter().enumerate() {
            let s = m
                .score(&ids(&case["prompt_ids"]), &ids(&case["completion_ids"]))
                .unwrap();
            run.record(format!("score {name} case {ci}"), &s.token_logps);
            for (j, (got, want)) in s.token_logps.iter().zip(floats(&case["token_logps"])).enumerate() {
                let err = (*got as f64 - want).abs();
                run.check(err <= 1e-4, || {
                    format!("{name} case {ci} token {j}: {got} vs PyTorch {want}")
                });
            }
        }
    }
}

/// Decoding with the KV cache, and two DPO steps (forward, backward, AdamW) on a
/// quantized tiny model.
fn decode_and_train(run: &mut Run) {
    let m = Model::open(data("tiny/llama_q4_0.gguf")).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 8,
        stop_tokens: Some(Vec::new()),
        ..GenerateOptions::default()
    };
    let out = generate(&m, &[1, 20, 31, 7], &opts, None, |_, _| ControlFlow::Continue(())).unwrap();
    let as_f32: Vec<f32> = out.ids.iter().map(|&t| t as f32).collect();
    run.record("generate llama_q4_0", &as_f32);

    let lora = LoraConfig {
        r: 4,
        ..LoraConfig::default()
    };
    let a = Adapter::new(&m.config, lora, 5, "tiny").unwrap();
    let config = TrainConfig {
        loss: Loss::Sigmoid { beta: 0.1 },
        optimizer: AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
        max_steps: Some(2),
        batch_size: 4,
        micro_batch_size: 2,
        eval_fraction: 0.0,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(&m, a, config, tiny_pairs(8, 1)).unwrap();
    let mut losses = Vec::new();
    t.run(&mut |s| {
        losses.push(s.loss as f32);
        losses.push(s.grad_norm as f32);
        Control::Continue
    })
    .unwrap();
    run.check(losses.len() == 4, || {
        format!("two training steps, got {}", losses.len() / 2)
    });
    run.record("train llama_q4_0 losses", &losses);
    let params: Vec<f32> = t.adapter.params().concat();
    run.record("train llama_q4_0 adapter", &params);
}

/// The first golden example's chosen completion, against PyTorch.
fn golden(run: &mut Run) {
    let m = Model::open(model_path()).unwrap();
    let ex = &golden_json()["examples"][0];
    let s = m.score(&ids(&ex["prompt_ids"]), &ids(&ex["chosen_ids"])).unwrap();
    run.record("golden example 0 chosen", &s.token_logps);
    for (j, (got, want)) in s
        .token_logps
        .iter()
        .zip(floats(&ex["ref_chosen_token_logps"]))
        .enumerate()
    {
        let err = (*got as f64 - want).abs();
        run.check(err <= 2e-4, || format!("golden token {j}: {got} vs PyTorch {want}"));
    }
}

fn main() {
    let bless = std::env::args().any(|a| a == "--bless");
    // The calling thread is the pool's only worker: no thread is ever started.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build_global()
        .expect("a one-thread pool on this thread");
    let isa = Isa::best();
    println!("selftest: {} on {}", isa.name(), std::env::consts::ARCH);
    let mut run = Run::default();
    type Part = fn(&mut Run);
    let parts: [(&str, Part); 4] = [
        ("matrix products", matrix_products),
        ("tiny models", tiny_models),
        ("decoding and training", decode_and_train),
        ("golden example", golden),
    ];
    for (name, part) in parts {
        let t0 = std::time::Instant::now();
        part(&mut run);
        println!("selftest: {name} ({:.1}s)", t0.elapsed().as_secs_f64());
    }
    let file = data("selftest.digests");
    let text: String = run.digests.iter().map(|(k, v)| format!("{v} {k}\n")).collect();
    if bless {
        std::fs::write(&file, text).unwrap();
        println!("selftest: wrote {} digests to {}", run.digests.len(), file.display());
    } else {
        let stored = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let want: BTreeMap<&str, &str> = stored
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(d, k)| (k, d))
            .collect();
        for (k, d) in &run.digests {
            match want.get(k.as_str()) {
                Some(w) if w == d => {}
                Some(w) => run
                    .failures
                    .push(format!("{k}: digest {d}, stored {w} (other bits than the reference)")),
                None => run.failures.push(format!("{k}: no stored digest (run with --bless)")),
            }
        }
        for k in want.keys().filter(|k| !run.digests.contains_key(**k)) {
            run.failures.push(format!("{k}: stored but not computed"));
        }
    }
    if run.failures.is_empty() {
        println!("selftest: ok, {} outputs, {}", run.digests.len(), isa.name());
    } else {
        for f in &run.failures {
            eprintln!("selftest: FAILED {f}");
        }
        eprintln!("selftest: {} failures on {}", run.failures.len(), isa.name());
        std::process::exit(1);
    }
}
