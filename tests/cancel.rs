//! Long calls stop when their caller asks: scoring and prefills between layers, generation
//! before each token; a flag never raised changes nothing.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::cancel::Cancel;
use nudge::generate::{BatchGenerator, BatchOptions, GenerateOptions, GenerateRequest, Generator};
use nudge::model::Model;
use nudge::score::ScoreItem;
use std::sync::atomic::{AtomicUsize, Ordering};

fn model(name: &str) -> Model {
    let d = fresh_dir(name);
    write_model(&d, &TinySpec::default());
    Model::open(&d).unwrap()
}

/// A flag raised at its `n`-th question (counting from 1), and how often it was asked.
struct RaisedAt {
    n: usize,
    asked: AtomicUsize,
}

impl RaisedAt {
    fn new(n: usize) -> Self {
        RaisedAt {
            n,
            asked: AtomicUsize::new(0),
        }
    }
    fn ask(&self) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed) + 1 >= self.n
    }
    fn asked(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }
}

#[test]
fn scoring_stops_between_layers_and_a_flag_never_raised_changes_nothing() {
    let m = model("cancel-score");
    let (prompt, a, b) = ([1u32, 5, 6, 9], [7u32, 8, 2], [10u32, 2]);
    let items = [ScoreItem {
        prompt: &prompt,
        completions: vec![&a, &b],
    }];
    let plain = m.score_packed_with(&items, None).unwrap();
    let never = RaisedAt::new(usize::MAX);
    let f = || never.ask();
    let watched = m.score_packed_cancel(&items, None, Some(Cancel::new(&f))).unwrap();
    assert_eq!(watched[0][0].token_logps, plain[0][0].token_logps);
    assert_eq!(never.asked(), m.config.num_hidden_layers, "asked once per layer");

    let second = RaisedAt::new(2);
    let f = || second.ask();
    let e = m.score_packed_cancel(&items, None, Some(Cancel::new(&f))).unwrap_err();
    assert!(matches!(e, Error::Cancelled), "{e}");
    assert_eq!(second.asked(), 2, "stopped at the second layer");
}

#[test]
fn generation_stops_in_the_prefill_or_before_a_token() {
    let m = model("cancel-generate");
    let opts = GenerateOptions {
        max_new_tokens: 8,
        ..GenerateOptions::default()
    };
    let prompt = [1u32, 5, 6];
    let layers = m.config.num_hidden_layers;

    // Raised in the middle of the prefill: no generator.
    let in_prefill = RaisedAt::new(2);
    let f = || in_prefill.ask();
    let e = Generator::new_cancellable(&m, &prompt, &opts, None, Some(Cancel::new(&f))).err();
    assert!(matches!(e, Some(Error::Cancelled)), "{e:?}");

    // Raised after the prefill and three tokens: the tokens so far stay, then it stops.
    let mut plain = Generator::new(&m, &prompt, &opts, None).unwrap();
    let mut want = Vec::new();
    while let Some(t) = plain.next_token().unwrap() {
        want.push(t);
    }
    let later = RaisedAt::new(layers + 3);
    let f = || later.ask();
    let mut g = Generator::new_cancellable(&m, &prompt, &opts, None, Some(Cancel::new(&f))).unwrap();
    let mut got = Vec::new();
    let end = loop {
        match g.next_token() {
            Ok(Some(t)) => got.push(t),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    assert!(matches!(end, Some(Error::Cancelled)), "{end:?}");
    assert!(!got.is_empty() && got.len() < want.len(), "{got:?} of {want:?}");
    assert_eq!(got, want[..got.len()], "the tokens before the stop are the plain ones");
}

#[test]
fn a_batch_stops_at_its_next_step() {
    let m = model("cancel-batch");
    let requests: Vec<GenerateRequest> = (0..3u32)
        .map(|i| GenerateRequest {
            prompt: vec![1, 5 + i, 6],
            opts: GenerateOptions {
                max_new_tokens: 6,
                ..GenerateOptions::default()
            },
        })
        .collect();
    let asked = RaisedAt::new(usize::MAX);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let f = || {
        asked.ask();
        stop.load(Ordering::Relaxed)
    };
    let mut b = BatchGenerator::new(&m, &requests, None, &BatchOptions::default()).unwrap();
    b.set_cancel(Cancel::new(&f));
    assert!(b.step().unwrap());
    assert!(asked.asked() > 1, "the step and its prefill asked");
    stop.store(true, Ordering::Relaxed);
    assert!(matches!(b.step(), Err(Error::Cancelled)));
}
