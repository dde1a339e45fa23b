//! Serving an adapted model: stacked and scaled adapters equal the base with their updates
//! merged in; a chat session's KV cache gives what a fresh prefill of the whole chat gives;
//! stop strings end a reply where they appear, streamed or batched.

mod common;

use common::tiny::*;
use nudge::adapter::format::merge::export_merged;
use nudge::adapter::{Adapter, LoraConfig, Stacked, stack};
use nudge::convert::FloatType;
use nudge::generate::{GenerateOptions, GenerateRequest, KvCache, Session, StopReason, generate, generate_batch};
use nudge::model::Model;
use nudge::model::weights::Proj;
use std::ops::ControlFlow;

fn real() -> Model {
    Model::open(common::model_path()).expect("real model opens")
}

/// An adapter of rank `r` on `targets` with B random (a fresh one changes nothing).
fn random_adapter(model: &Model, r: usize, targets: Vec<Proj>, alpha: f32, seed: u64) -> Adapter {
    let c = LoraConfig {
        r,
        lora_alpha: alpha,
        target_modules: targets,
        ..LoraConfig::default()
    };
    let mut a = Adapter::new(&model.config, c, seed, model.name()).unwrap();
    for (i, pair) in a.layers.iter_mut().flatten().flatten().enumerate() {
        pair.b = random_vec(pair.b.len(), seed * 1000 + i as u64, 0.2);
    }
    a
}

fn logits(model: &Model, tokens: &[u32], adapter: Option<&Adapter>) -> Vec<f32> {
    let mut cache = KvCache::new(&model.config);
    model.prefill(tokens, &mut cache, adapter).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn two_stacked_adapters_equal_the_base_with_both_merged_in() {
    let dir = fresh_dir("serving-stack");
    write_model(&dir.join("base"), &TinySpec::default());
    let base = Model::open(dir.join("base")).unwrap();
    let a1 = random_adapter(&base, 2, vec![Proj::Q, Proj::V, Proj::Down], 4.0, 1);
    let a2 = random_adapter(&base, 3, vec![Proj::Q, Proj::O, Proj::Up], 3.0, 2);
    let (w1, w2) = (0.5, 1.5);
    // The reference: each update merged into the weights in turn, at its weight (an
    // adapter's weight is its alpha scaled; merge_into rounds once per element).
    let scaled = |a: &Adapter, w: f32| {
        let mut s = a.clone();
        s.config.lora_alpha *= w;
        s
    };
    export_merged(&base, &scaled(&a1, w1), &dir.join("m1"), FloatType::F32).unwrap();
    let m1 = Model::open(dir.join("m1")).unwrap();
    export_merged(&m1, &scaled(&a2, w2), &dir.join("m12"), FloatType::F32).unwrap();
    let m12 = Model::open(dir.join("m12")).unwrap();

    let stacked = stack(&[
        Stacked {
            adapter: &a1,
            weight: w1,
        },
        Stacked {
            adapter: &a2,
            weight: w2,
        },
    ])
    .unwrap();
    let tokens: Vec<u32> = (0..24).map(|i| (i * 7 + 3) % 64).collect();
    let want = logits(&m12, &tokens, None);
    let got = logits(&base, &tokens, Some(&stacked));
    let d = max_diff(&got, &want);
    assert!(d < 1e-4, "stacked vs merged: max |diff| {d}");
    // Not a vacuous match: the stack moves the logits, and by more than either adapter.
    let plain = logits(&base, &tokens, None);
    assert!(max_diff(&got, &plain) > 1e-2, "the stack changes the logits");
    let one = logits(&base, &tokens, Some(&a1));
    assert!(max_diff(&got, &one) > 1e-2, "the second adapter counts");

    // One adapter at weight w equals it with alpha scaled by w; weight 0 is the base.
    let half = stack(&[Stacked {
        adapter: &a1,
        weight: 0.5,
    }])
    .unwrap();
    let d = max_diff(
        &logits(&base, &tokens, Some(&half)),
        &logits(&base, &tokens, Some(&scaled(&a1, 0.5))),
    );
    assert!(d < 1e-5, "a scaled adapter: {d}");
    let off = stack(&[Stacked {
        adapter: &a1,
        weight: 0.0,
    }])
    .unwrap();
    assert_eq!(logits(&base, &tokens, Some(&off)), plain);
}

fn greedy(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        ..GenerateOptions::default()
    }
}

#[test]
fn a_three_turn_session_gives_the_logits_of_a_fresh_prefill_and_reuses_its_cache() {
    let m = real();
    let a = random_adapter(&m, 4, vec![Proj::Q, Proj::V], 8.0, 3);
    let mut s = Session::new(&m, Some("You are a terse assistant."));
    let turns = ["Name a fruit.", "And a vegetable?", "Which of the two is sweeter?"];
    let mut prev_prompt = 0;
    for (i, user) in turns.iter().enumerate() {
        // The reply is what a fresh generation on the whole rendered chat gives.
        let mut fresh_chat = s.messages().to_vec();
        fresh_chat.push(nudge::tokenizer::ChatMessage::new("user", *user));
        let prompt = m.tokenizer.apply_chat_template(&fresh_chat, true).unwrap();
        let ids = m.tokenizer.encode(&prompt, false).unwrap();
        let fresh = generate(&m, &ids, &greedy(12), Some(&a), |_, _| ControlFlow::Continue(())).unwrap();
        let mut streamed = String::new();
        let r = s
            .reply(&m, Some(&a), user, &greedy(12), |_, t| {
                streamed.push_str(t);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(r.ids, fresh.ids, "turn {i}: the session's reply is the fresh one");
        assert_eq!(r.text, streamed, "turn {i}: the stream adds up to the reply");
        // Only the new turn ran: the chat up to the last reply came from the cache.
        assert!(
            s.reused_tokens() >= prev_prompt && s.reused_tokens() < ids.len(),
            "turn {i}: reused {} tokens of {}, the previous prompt had {prev_prompt}",
            s.reused_tokens(),
            ids.len()
        );
        prev_prompt = ids.len();
    }
    assert_eq!(s.messages().len(), 7);
    let got = s.logits(&m, Some(&a), None).unwrap();
    assert!(s.reused_tokens() > 40, "the final logits reuse the conversation");

    let mut fresh = Session::new(&m, None);
    for msg in s.messages() {
        fresh.push(&msg.role, &msg.content).unwrap();
    }
    let want = fresh.logits(&m, Some(&a), None).unwrap();
    assert_eq!(fresh.reused_tokens(), 0);
    assert_eq!(
        got, want,
        "the cached session's logits are the fresh prefill's, bit for bit"
    );

    // Rolling back the last turn gives the logits of the two-turn chat.
    assert_eq!(s.rollback(1).unwrap(), 2);
    assert_eq!(s.messages().len(), 5);
    let mut two = Session::new(&m, None);
    for msg in s.messages() {
        two.push(&msg.role, &msg.content).unwrap();
    }
    assert_eq!(
        s.logits(&m, Some(&a), None).unwrap(),
        two.logits(&m, Some(&a), None).unwrap()
    );
    assert!(s.rollback(3).is_err(), "two turns left");
    assert_eq!(s.messages().len(), 5, "a refused rollback changes nothing");
}

#[test]
fn a_stop_string_ends_the_reply_before_it_streamed_and_batched() {
    let m = real();
    let chat = vec![nudge::tokenizer::ChatMessage::new(
        "user",
        "Count from one to ten in words.",
    )];
    let ids = m
        .tokenizer
        .encode(&m.tokenizer.apply_chat_template(&chat, true).unwrap(), false)
        .unwrap();
    let none = |_: u32, _: &str| ControlFlow::Continue(());
    let full = generate(&m, &ids, &greedy(40), None, none).unwrap();
    // A stop string from the middle of the reply (cut at its first appearance).
    let words: Vec<&str> = full.text.split_whitespace().collect();
    assert!(words.len() >= 4, "a reply of several words: {:?}", full.text);
    let stop = words[2].to_string();
    let at = full.text.find(&stop).expect("the stop string is in the reply");
    let opts = GenerateOptions {
        stop_strings: vec![stop.clone(), "never appears".into()],
        ..greedy(40)
    };
    let mut streamed = String::new();
    let cut = generate(&m, &ids, &opts, None, |_, t| {
        streamed.push_str(t);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(cut.stop_reason, StopReason::StopString);
    assert_eq!(cut.text, full.text[..at], "the reply ends before {stop:?}");
    assert_eq!(streamed, cut.text, "the stream never showed the stop string");
    assert!(cut.ids.len() < full.ids.len() && full.ids.starts_with(&cut.ids));

    let batched = generate_batch(
        &m,
        &[
            GenerateRequest {
                prompt: ids.clone(),
                opts: opts.clone(),
            },
            GenerateRequest {
                prompt: ids.clone(),
                opts: greedy(40),
            },
        ],
        None,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    assert_eq!(batched[0], cut, "batched, the stop string ends the same reply");
    assert_eq!(batched[1].text, full.text);

    // A string that never completes is held back, then given: the text is whole.
    let tail = &full.text[full.text.len() - 1..];
    let opts = GenerateOptions {
        stop_strings: vec![format!("{tail}\u{1}never")],
        ..greedy(40)
    };
    let mut streamed = String::new();
    let whole = generate(&m, &ids, &opts, None, |_, t| {
        streamed.push_str(t);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(whole.text, full.text);
    assert_eq!(streamed, full.text);
    let e = GenerateOptions {
        stop_strings: vec![String::new()],
        ..greedy(4)
    }
    .validate()
    .unwrap_err();
    assert!(e.to_string().contains("stop string 0 is empty"), "{e}");
}
