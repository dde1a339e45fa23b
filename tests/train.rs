//! The training loop on tiny random models: it learns, it is deterministic for any
//! thread count, it stops when asked, it skips non-finite steps, it trains KTO on thumbs.

mod common;

use common::tiny::*;
use nudge::adapter::{Adapter, LoraConfig, LoraInit};
use nudge::data::{PreferenceSet, TokenizedPair, TokenizedUnpaired, Truncation, TruncationMode};
use nudge::model::{Model, Recompute};
use nudge::objective::Loss;
use nudge::optim::{AdamWConfig, Schedule};
use nudge::train::{Control, TrainConfig, Trainer};

fn tiny_model(name: &str) -> Model {
    let d = fresh_dir(name);
    write_model(&d, &TinySpec::default());
    Model::open(&d).expect("tiny model opens")
}

fn pairs(n: usize) -> Vec<TokenizedPair> {
    (0..n)
        .map(|i| {
            let i = i as u32;
            TokenizedPair {
                row: i as usize + 1,
                prompt: vec![1, 3 + i % 7, 10 + i % 5, 20],
                chosen: vec![30 + i % 3, 31, 2],
                rejected: vec![40 + i % 4, 41, 42, 2],
                margin: None,
                weight: None,
            }
        })
        .collect()
}

fn adapter(m: &Model, seed: u64) -> Adapter {
    Adapter::new(
        &m.config,
        LoraConfig {
            r: 4,
            lora_alpha: 8.0,
            init: LoraInit::KaimingUniform,
            ..LoraConfig::default()
        },
        seed,
        "tiny",
    )
    .expect("adapter")
}

fn config(steps: usize) -> TrainConfig {
    TrainConfig {
        loss: Loss::Sigmoid { beta: 0.5 },
        optimizer: AdamWConfig {
            lr: 2e-2,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
        epochs: 100,
        max_steps: Some(steps),
        batch_size: 4,
        micro_batch_size: 2,
        recompute: Recompute::Budget(1 << 14),
        ..TrainConfig::default()
    }
}

fn set(p: Vec<TokenizedPair>) -> PreferenceSet {
    PreferenceSet {
        pairs: p,
        ..Default::default()
    }
}

#[test]
fn dpo_training_learns_the_preferences() {
    let m = tiny_model("train-learns");
    let mut t = Trainer::new(&m, adapter(&m, 1), config(30), set(pairs(8))).expect("trainer");
    let mut log = Vec::new();
    let s = t
        .run(&mut |x| {
            log.push(x.clone());
            Control::Continue
        })
        .expect("runs");
    assert_eq!(s.steps, 30);
    assert_eq!(s.skipped_steps, 0);
    // B starts at zero: the policy equals the reference, the loss is exactly ln 2.
    assert_eq!(log[0].loss, std::f64::consts::LN_2);
    let last = log.last().unwrap();
    assert!(last.loss < 0.2, "loss after 30 steps: {}", last.loss);
    assert_eq!(last.rewards.rewards_accuracies, 1.0);
    assert!(last.rewards.rewards_margins > 1.0);
    assert!(log.iter().all(|x| x.grad_norm.is_finite() && x.pair_tokens > 0));
}

fn train_in_pool(threads: usize) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let m = tiny_model(&format!("train-det-{threads}"));
        let mut c = config(3);
        c.lora_dropout = 0.1;
        let mut t = Trainer::new(&m, adapter(&m, 3), c, set(pairs(8))).expect("trainer");
        t.run(&mut |_| Control::Continue).expect("runs");
        t.adapter.params().into_iter().map(|p| p.to_vec()).collect()
    })
}

#[test]
fn adapters_are_bit_identical_for_any_thread_count() {
    let one = train_in_pool(1);
    for threads in [2, 3] {
        let other = train_in_pool(threads);
        for (a, b) in one.iter().zip(&other) {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{threads} threads differ"
            );
        }
    }
    assert!(one.iter().flatten().any(|&x| x != 0.0));
}

#[test]
fn the_callback_stops_the_run_between_steps() {
    let m = tiny_model("train-stop");
    let mut t = Trainer::new(&m, adapter(&m, 1), config(10), set(pairs(8))).expect("trainer");
    let mut seen = 0;
    let s = t
        .run(&mut |x| {
            seen = x.step;
            if x.step == 2 { Control::Stop } else { Control::Continue }
        })
        .expect("runs");
    assert!(s.cancelled);
    assert_eq!((s.steps, seen, t.steps_done()), (2, 2, 2));
}

#[test]
fn a_non_finite_step_is_skipped_and_not_applied() {
    let m = tiny_model("train-nan");
    let mut a = adapter(&m, 1);
    // An adapter that overflows the residual stream: every log-prob becomes NaN.
    for p in a.layers[0].iter_mut().flatten() {
        p.b.iter_mut().for_each(|x| *x = 3e38);
    }
    let before: Vec<Vec<f32>> = a.params().into_iter().map(|p| p.to_vec()).collect();
    let mut t = Trainer::new(&m, a, config(2), set(pairs(4))).expect("trainer");
    let s = t
        .run(&mut |_| Control::Continue)
        .expect("a non-finite step is not an error");
    assert_eq!(s.skipped_steps, 2);
    assert!(s.last.as_ref().unwrap().skipped);
    let after: Vec<Vec<f32>> = t.adapter.params().into_iter().map(|p| p.to_vec()).collect();
    assert_eq!(before, after);
}

#[test]
fn held_out_pairs_are_evaluated_not_trained() {
    let m = tiny_model("train-eval");
    let mut c = config(4);
    c.eval_fraction = 0.25;
    let mut t = Trainer::new(&m, adapter(&m, 1), c, set(pairs(8))).expect("trainer");
    // 6 training pairs at 4 per step.
    assert_eq!(t.steps_per_epoch(), 2);
    let s = t.run(&mut |_| Control::Continue).expect("runs");
    let e = s.eval.expect("eval metrics");
    assert!(e.eval_loss.is_finite() && e.pair_tokens > 0 && e.eval_pairs == 2);
}

#[test]
fn kto_trains_on_unpaired_thumbs() {
    let m = tiny_model("train-kto");
    let unpaired: Vec<TokenizedUnpaired> = (0..8u32)
        .map(|i| TokenizedUnpaired {
            row: i as usize + 1,
            prompt: vec![1, 3 + i, 20],
            completion: if i % 2 == 0 { vec![30, 31, 2] } else { vec![40, 41, 2] },
            label: i % 2 == 0,
            weight: None,
        })
        .collect();
    let mut c = config(15);
    c.loss = Loss::Kto {
        beta: 0.5,
        desirable_weight: 1.0,
        undesirable_weight: 1.0,
    };
    let data = PreferenceSet {
        unpaired,
        ..Default::default()
    };
    let mut t = Trainer::new(&m, adapter(&m, 2), c, data).expect("trainer");
    let mut log = Vec::new();
    t.run(&mut |x| {
        log.push(x.clone());
        Control::Continue
    })
    .expect("runs");
    assert!(log.iter().all(|x| x.kl.is_some() && x.loss.is_finite()));
    assert!(
        log.last().unwrap().loss < log[0].loss,
        "{} -> {}",
        log[0].loss,
        log.last().unwrap().loss
    );
    assert!(log.last().unwrap().rewards.rewards_chosen > log.last().unwrap().rewards.rewards_rejected);
}

#[test]
fn no_data_for_the_loss_is_an_error() {
    let m = tiny_model("train-wrong");
    let mut c = config(1);
    c.loss = Loss::Kto {
        beta: 0.1,
        desirable_weight: 1.0,
        undesirable_weight: 1.0,
    };
    assert!(Trainer::new(&m, adapter(&m, 1), c, PreferenceSet::default()).is_err());
    assert!(Trainer::new(&m, adapter(&m, 1), config(1), PreferenceSet::default()).is_err());
    // A held-out split of a single pair would leave nothing to train on.
    let mut c = config(1);
    c.eval_fraction = 0.5;
    assert!(Trainer::new(&m, adapter(&m, 1), c, set(pairs(1))).is_err());
}

fn write_rows(name: &str, rows: &str) -> std::path::PathBuf {
    let d = fresh_dir(name);
    let f = d.join("rows.jsonl");
    std::fs::write(&f, rows).unwrap();
    f
}

#[test]
fn long_rows_are_cut_as_trl_does_and_reported() {
    let m = tiny_model("train-maxlen");
    let f = write_rows(
        "train-maxlen-data",
        "{\"prompt_ids\": [1,3,4,5,6,7], \"chosen_ids\": [8,2], \"rejected_ids\": [9,2]}\n\
         {\"prompt_ids\": [1,3], \"chosen_ids\": [8,8,8,8,8,2], \"rejected_ids\": [9,2]}\n\
         {\"prompt_ids\": [1,3], \"chosen_ids\": [8,2], \"rejected_ids\": [9,2]}\n",
    );
    // keep_start: completions lose their ends; a prompt that leaves no room is skipped.
    let start = Truncation {
        max_length: Some(5),
        mode: TruncationMode::KeepStart,
        ..Default::default()
    };
    let s = PreferenceSet::from_jsonl(&m.tokenizer, &f, &start).expect("reads");
    assert_eq!(s.pairs.len(), 2);
    assert_eq!(s.skipped.len(), 1);
    assert_eq!((s.skipped[0].row, s.skipped[0].file.clone()), (1, f.clone()));
    assert!(s.skipped[0].reason.contains("max_length 5"), "{}", s.skipped[0].reason);
    assert_eq!(s.pairs[0].chosen, vec![8, 8, 8]);
    assert_eq!(s.pairs[0].rejected, vec![9, 2]);
    assert_eq!(s.truncated.len(), 1);
    assert_eq!(s.truncated[0].row, 2);
    assert!(
        s.truncated[0].reason.contains("chosen 6 -> 3"),
        "{}",
        s.truncated[0].reason
    );

    // keep_end (TRL's default): the prompt loses its start, by what the longer answer needs.
    let s = PreferenceSet::from_jsonl(&m.tokenizer, &f, &Truncation::max_length(5)).expect("reads");
    assert_eq!(s.pairs.len(), 3, "nothing skipped: {:?}", s.skipped);
    assert_eq!(s.pairs[0].prompt, vec![5, 6, 7]);
    assert_eq!(
        (s.pairs[0].chosen.clone(), s.pairs[0].rejected.clone()),
        (vec![8, 2], vec![9, 2])
    );
    // One prompt token always stays; then the longer answer loses its end.
    assert_eq!(s.pairs[1].prompt, vec![3]);
    assert_eq!(s.pairs[1].chosen, vec![8, 8, 8, 8]);
    let rows: Vec<usize> = s.truncated.iter().map(|n| n.row).collect();
    assert_eq!(rows, vec![1, 2]);

    // max_prompt_length and max_completion_length.
    let both = Truncation {
        max_prompt_length: Some(2),
        max_completion_length: Some(2),
        ..Default::default()
    };
    let s = PreferenceSet::from_jsonl(&m.tokenizer, &f, &both).expect("reads");
    assert_eq!(s.pairs[0].prompt, vec![6, 7]);
    assert_eq!(s.pairs[1].chosen, vec![8, 8]);
}

#[test]
fn bad_rows_are_reported_with_file_row_and_reason_and_the_rest_trains() {
    let m = tiny_model("train-badrows");
    let f = write_rows(
        "train-badrows-data",
        "{\"prompt_ids\": [1,3], \"chosen_ids\": [8,2], \"rejected_ids\": [9,2]}\n\
         {oops\n\
         {\"question\": \"x\", \"answer\": \"y\"}\n\
         {\"prompt_ids\": [1,3], \"completion_ids\": [8,2], \"label\": true}\n\
         {\"prompt_ids\": [1,3], \"chosen_ids\": [], \"rejected_ids\": [9,2]}\n\
         {\"prompt_ids\": [1,4], \"chosen_ids\": [8,2], \"rejected_ids\": [9,2]}\n",
    );
    let s = PreferenceSet::from_jsonl(&m.tokenizer, &f, &Truncation::default()).expect("reads");
    assert_eq!((s.pairs.len(), s.unpaired.len()), (2, 1));
    let skipped: Vec<(usize, &str)> = s.skipped.iter().map(|n| (n.row, n.reason.as_str())).collect();
    assert_eq!(skipped.len(), 3, "{skipped:?}");
    assert!(skipped[0].0 == 2 && skipped[0].1.contains("not valid JSON"));
    assert!(
        skipped[1].0 == 3
            && skipped[1].1.contains("keys: answer, question")
            && skipped[1].1.contains("{prompt, chosen, rejected}")
    );
    assert!(skipped[2].0 == 5 && skipped[2].1.contains("empty completion"));
    assert!(s.skipped.iter().all(|n| n.file == f));

    // A pair loss trains the pairs and reports the thumb with the flag that trains it.
    let t = Trainer::new(&m, adapter(&m, 1), config(2), s.clone()).expect("trainer");
    let thumb = t.skipped().iter().find(|n| n.row == 4).expect("the thumb is reported");
    assert!(thumb.reason.contains("--loss kto") && thumb.file == f, "{thumb}");
    assert_eq!(t.skipped().len(), 4);
    // KTO trains the thumb and each pair as two thumbs.
    let mut kc = config(2);
    kc.loss = Loss::Kto {
        beta: 0.1,
        desirable_weight: 1.0,
        undesirable_weight: 1.0,
    };
    let t = Trainer::new(&m, adapter(&m, 1), kc, s.clone()).expect("kto trainer");
    assert_eq!(t.steps_per_epoch(), 2, "5 thumbs at 4 per step");
    assert_eq!(t.skipped().len(), 3);

    // Nothing left is an error that says so.
    let only_thumbs = PreferenceSet {
        unpaired: s.unpaired.clone(),
        source: f.clone(),
        ..Default::default()
    };
    let e = Trainer::new(&m, adapter(&m, 1), config(2), only_thumbs)
        .err()
        .expect("nothing to train on");
    assert!(
        e.to_string().contains("nothing to train on") && e.to_string().contains("--loss kto"),
        "{e}"
    );
}

#[test]
fn rows_longer_than_the_context_are_left_out_not_fatal() {
    let m = tiny_model("train-context");
    let long: Vec<u32> = (0..200).map(|i| 3 + i % 50).collect();
    let mut p = pairs(3);
    p[1].chosen = long;
    let mut t = Trainer::new(&m, adapter(&m, 1), config(2), set(p)).expect("trainer");
    assert_eq!(t.skipped().len(), 1);
    assert_eq!(t.skipped()[0].row, 2);
    assert!(t.skipped()[0].reason.contains("context of 128"), "{}", t.skipped()[0]);
    t.run(&mut |_| Control::Continue).expect("trains on the rest");
}

#[test]
fn max_steps_overrides_epochs_and_schedules_reach_their_end() {
    let m = tiny_model("train-maxsteps");
    // 4 pairs at 2 per step: 2 steps an epoch; 5 steps run over 3 epochs.
    let mut c = config(5);
    c.batch_size = 2;
    c.epochs = 1;
    let mut t = Trainer::new(&m, adapter(&m, 1), c, set(pairs(4))).expect("trainer");
    assert_eq!(t.total_steps(), 5);
    let s = t.run(&mut |_| Control::Continue).expect("runs");
    assert_eq!(s.steps, 5);

    // A linear schedule with total 0 is sized to the steps that run, after the held-out
    // split: its last step's learning rate is the last before 0.
    for (schedule, want_last) in [
        (
            Schedule::Linear {
                warmup_steps: 0,
                total_steps: 0,
            },
            1.0 / 3.0,
        ),
        (
            Schedule::Cosine {
                warmup_steps: 0,
                total_steps: 0,
                num_cycles: 0.5,
            },
            0.5 * (1.0 + (std::f64::consts::PI * 2.0 / 3.0).cos()),
        ),
    ] {
        let mut c = config(1);
        c.max_steps = None;
        c.epochs = 1;
        c.batch_size = 2;
        c.eval_fraction = 0.25;
        c.schedule = schedule;
        let mut t = Trainer::new(&m, adapter(&m, 1), c, set(pairs(8))).expect("trainer");
        // 6 training pairs at 2 per step.
        assert_eq!(t.total_steps(), 3);
        let mut lrs = Vec::new();
        t.run(&mut |m| {
            lrs.push(m.learning_rate);
            Control::Continue
        })
        .expect("runs");
        let base = 2e-2;
        assert_eq!(lrs.len(), 3);
        assert!((lrs[0] - base).abs() < 1e-12, "{lrs:?}");
        assert!((lrs[2] - base * want_last).abs() < 1e-12, "{lrs:?}");
    }
}
