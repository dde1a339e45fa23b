//! One model shared by threads that train, score and generate with different adapters at
//! once gives, bit for bit, what the same jobs give run one after another.

mod common;

use common::tiny::*;
use nudge::adapter::{Adapter, LoraConfig};
use nudge::generate::{GenerateOptions, generate};
use nudge::model::{Model, Recompute};
use nudge::objective::Loss;
use nudge::optim::AdamWConfig;
use nudge::score::ScoreItem;
use nudge::train::{Control, TrainConfig, Trainer};
use std::ops::ControlFlow;

fn config(seed: u64) -> TrainConfig {
    TrainConfig {
        loss: Loss::Sigmoid { beta: 0.2 },
        optimizer: AdamWConfig {
            lr: 5e-3,
            ..AdamWConfig::default()
        },
        max_steps: Some(6),
        epochs: 10,
        batch_size: 4,
        micro_batch_size: 2,
        seed,
        lora_dropout: 0.1,
        recompute: Recompute::Always,
        ..TrainConfig::default()
    }
}

/// What each job of the load produces, compared bit for bit.
#[derive(Debug, PartialEq)]
enum Outcome {
    Trained(Vec<Vec<f32>>),
    Scored(Vec<Vec<f32>>),
    Generated(Vec<Vec<u32>>),
}

fn train(model: &Model, seed: u64) -> Outcome {
    let adapter = Adapter::new(&model.config, LoraConfig::default(), seed, "tiny").unwrap();
    let mut t = Trainer::new(model, adapter, config(seed), tiny_pairs(12, seed as u32)).unwrap();
    t.run(&mut |_| Control::Continue).unwrap();
    Outcome::Trained(t.adapter.params().into_iter().map(<[f32]>::to_vec).collect())
}

/// An adapter with nonzero B, so that applying it changes the results.
fn served_adapter(model: &Model) -> Adapter {
    let mut a = Adapter::new(&model.config, LoraConfig::default(), 9, "tiny").unwrap();
    for (i, p) in a.params_mut().into_iter().enumerate() {
        for (k, x) in p.iter_mut().enumerate() {
            *x += ((i * 31 + k * 7) % 13) as f32 * 1e-3;
        }
    }
    a
}

fn score(model: &Model, adapter: Option<&Adapter>) -> Outcome {
    let set = tiny_pairs(10, 3);
    let items: Vec<ScoreItem> = set
        .pairs
        .iter()
        .map(|p| ScoreItem {
            prompt: &p.prompt,
            completions: vec![&p.chosen, &p.rejected],
        })
        .collect();
    let mut out = Vec::new();
    for _ in 0..4 {
        for scored in model.score_packed_with(&items, adapter).unwrap() {
            out.extend(scored.into_iter().map(|s| s.token_logps));
        }
    }
    Outcome::Scored(out)
}

fn generate_some(model: &Model, adapter: Option<&Adapter>) -> Outcome {
    let opts = GenerateOptions {
        max_new_tokens: 12,
        temperature: 0.8,
        seed: 4,
        ..GenerateOptions::default()
    };
    let out = (0..4u32)
        .map(|i| {
            generate(model, &[1, 5 + i, 6], &opts, adapter, |_, _| ControlFlow::Continue(()))
                .unwrap()
                .ids
        })
        .collect();
    Outcome::Generated(out)
}

#[test]
fn jobs_run_at_once_on_one_model_give_the_bits_they_give_one_after_another() {
    let dir = fresh_dir("concurrency-model");
    write_model(&dir, &TinySpec::default());
    let model = Model::open(&dir).unwrap();
    let served = served_adapter(&model);
    let jobs: Vec<Box<dyn Fn() -> Outcome + Sync>> = vec![
        Box::new(|| train(&model, 1)),
        Box::new(|| train(&model, 2)),
        Box::new(|| score(&model, None)),
        Box::new(|| score(&model, Some(&served))),
        Box::new(|| generate_some(&model, Some(&served))),
        Box::new(|| generate_some(&model, None)),
    ];
    let alone: Vec<Outcome> = jobs.iter().map(|job| job()).collect();
    assert_ne!(alone[0], alone[1], "the two runs train different adapters");
    assert_ne!(alone[2], alone[3], "the served adapter changes the scores");
    for round in 0..3 {
        let together: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = jobs.iter().map(|job| s.spawn(job)).collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
            assert!(a == b, "round {round}: job {i} differs when run with the others");
        }
    }
}
