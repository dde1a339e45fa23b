//! Generation with a KV cache: cached steps give the full forward pass's logits (with and
//! without an adapter), greedy and seeded sampling are reproducible and match stepping
//! with full forwards, the sampler follows its distribution, and generation stops where
//! it should.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::adapter::{Adapter, LoraConfig};
use nudge::generate::{GenerateOptions, Generated, Generator, KvCache, Sampler, StopReason, argmax, generate};
use nudge::kernels::attention::AttnLayout;
use nudge::model::{LoraCtx, Model};
use nudge::rng::Rng;
use nudge::tokenizer::ChatMessage;
use std::ops::ControlFlow;
use std::time::Instant;

fn tiny(name: &str, spec: &TinySpec) -> Model {
    let d = fresh_dir(name);
    write_model(&d, spec);
    Model::open(&d).expect("tiny model opens")
}

fn real() -> Model {
    Model::open(common::model_path()).expect("real model opens")
}

/// Every projection adapted, B small and random (a fresh adapter's B is zero and would
/// change nothing).
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

/// Logits of one full (uncached) forward pass at every position: [T, vocab].
fn full_logits(m: &Model, tokens: &[u32], adapter: Option<&Adapter>) -> Vec<f32> {
    let layout = AttnLayout::sequences(&[tokens.len()]);
    let lora = LoraCtx {
        adapter,
        ..LoraCtx::default()
    };
    let h = m.hidden_states_with(tokens, &layout, lora).expect("forward");
    m.logits(&h).unwrap()
}

/// Logits at positions `split - 1..T` from a prefill of `tokens[..split]` and one
/// decode step per later token: [T - split + 1, vocab].
fn cached_logits(m: &Model, tokens: &[u32], split: usize, adapter: Option<&Adapter>) -> Vec<f32> {
    let mut cache = KvCache::new(&m.config);
    let mut out = m.prefill(&tokens[..split], &mut cache, adapter).expect("prefill");
    for &t in &tokens[split..] {
        out.extend(m.decode_step(t, &mut cache, adapter).expect("decode step"));
    }
    assert_eq!(cache.len(), tokens.len());
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Cached logits equal the full forward's at every position, for several prefill lengths
/// and with or without the adapter; and the adapter does change them.
fn check_cached_equals_full(m: &Model, tokens: &[u32], adapter: &Adapter, what: &str) {
    let vocab = m.config.vocab_size;
    let t = tokens.len();
    let mut full_by = Vec::new();
    for a in [None, Some(adapter)] {
        let full = full_logits(m, tokens, a);
        for split in [1, t / 2, t] {
            let cached = cached_logits(m, tokens, split, a);
            let d = max_abs_diff(&cached, &full[(split - 1) * vocab..]);
            println!(
                "{what}: adapter {}, prefill {split} + {} steps: max |Δlogit| {d:e}",
                a.is_some(),
                t - split
            );
            // The cached decode attends one query at a time, the full forward in blocks of
            // queries: the same sums in another order, so equal to float rounding, scaled by
            // the size of the logits (about 20 on the real model).
            let scale = full.iter().fold(1f32, |m, x| m.max(x.abs()));
            assert!(
                d <= 5e-6 * scale,
                "{what}: prefill {split}: cached logits differ by {d} (logits up to {scale})"
            );
        }
        full_by.push(full);
    }
    let effect = max_abs_diff(&full_by[0], &full_by[1]);
    assert!(effect > 1e-2, "{what}: the adapter changes the logits by only {effect}");
}

#[test]
fn tiny_cached_steps_equal_the_full_forward() {
    let specs = [
        ("gen-tiny-llama", TinySpec::default()),
        (
            "gen-tiny-qwen2",
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
        let tokens: Vec<u32> = (0..23).map(|i| ((i * 17 + 5) % spec.vocab) as u32).collect();
        let a = random_adapter(&m, 3, 0.05);
        check_cached_equals_full(&m, &tokens, &a, name);
    }
}

#[test]
fn real_cached_steps_equal_the_full_forward() {
    let m = real();
    let text = m
        .tokenizer
        .apply_chat_template(
            &[
                ChatMessage::new("user", "Name a color."),
                ChatMessage::new("assistant", "Blue, like the sky on a clear day."),
            ],
            false,
        )
        .expect("template");
    let tokens = m.tokenizer.encode(&text, false).expect("encode");
    assert!(tokens.len() > 10, "{} tokens", tokens.len());
    let a = random_adapter(&m, 9, 0.01);
    check_cached_equals_full(&m, &tokens, &a, "SmolLM2");
}

#[test]
fn prefill_in_chunks_and_a_rewound_cache_give_the_same_logits() {
    let m = tiny("gen-chunks", &TinySpec::default());
    let tokens: Vec<u32> = (0..20).map(|i| ((i * 7 + 3) % 64) as u32).collect();
    let a = random_adapter(&m, 4, 0.05);
    let full = full_logits(&m, &tokens, Some(&a));
    let mut cache = KvCache::new(&m.config);
    let mut got = Vec::new();
    for chunk in [&tokens[..3], &tokens[3..11], &tokens[11..]] {
        let h = m.extend(chunk, &mut cache, Some(&a)).expect("extend");
        got.extend(m.logits(&h).unwrap());
    }
    assert!(max_abs_diff(&got, &full) <= 1e-5);
    assert_eq!(cache.len(), 20);
    assert_eq!(cache.bytes(), 2 * 2 * 20 * m.config.kv_dim() * 4);
    // Rewind to 8 positions and run a different continuation.
    cache.truncate(8);
    let mut other = tokens[..8].to_vec();
    other.extend([9, 9, 30]);
    let full_other = full_logits(&m, &other, Some(&a));
    let h = m
        .extend(&other[8..], &mut cache, Some(&a))
        .expect("extend after truncate");
    let v = m.config.vocab_size;
    assert!(max_abs_diff(&m.logits(&h).unwrap(), &full_other[8 * v..]) <= 1e-5);
    cache.clear();
    assert!(cache.is_empty());
    assert_eq!(cache.layer(0).map(|(k, v)| k.len() + v.len()), Some(0));
}

/// Greedy continuation computed with a full forward pass per new token.
fn argmax_stepping(m: &Model, prompt: &[u32], n: usize, adapter: Option<&Adapter>) -> Vec<u32> {
    let v = m.config.vocab_size;
    let vocab = m.tokenizer.vocab_size().min(v);
    let mut seq = prompt.to_vec();
    for _ in 0..n {
        let l = full_logits(m, &seq, adapter);
        let last = &l[(seq.len() - 1) * v..(seq.len() - 1) * v + vocab];
        seq.push(argmax(last));
    }
    seq[prompt.len()..].to_vec()
}

fn run(m: &Model, prompt: &[u32], opts: &GenerateOptions, adapter: Option<&Adapter>) -> Generated {
    generate(m, prompt, opts, adapter, |_, _| ControlFlow::Continue(())).expect("generates")
}

fn no_stop(max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        stop_tokens: Some(vec![]),
        stop_strings: Vec::new(),
        ..GenerateOptions::default()
    }
}

#[test]
fn greedy_is_deterministic_and_equals_argmax_stepping() {
    let m = tiny("gen-greedy", &TinySpec::default());
    let a = random_adapter(&m, 5, 0.05);
    let prompt = [1u32, 10, 20, 30];
    for adapter in [None, Some(&a)] {
        let g = run(&m, &prompt, &no_stop(20), adapter);
        assert_eq!(g.stop_reason, StopReason::Length);
        assert_eq!(g.ids.len(), 20);
        assert_eq!(g.ids, argmax_stepping(&m, &prompt, 20, adapter));
        assert_eq!(run(&m, &prompt, &no_stop(20), adapter), g);
        let words: Vec<String> = g.ids.iter().map(|i| format!("t{i}")).collect();
        assert_eq!(g.text.split_whitespace().collect::<Vec<_>>(), words);
    }
    let base = run(&m, &prompt, &no_stop(20), None);
    let adapted = run(&m, &prompt, &no_stop(20), Some(&a));
    println!("greedy: base {:?}\n     adapted {:?}", base.ids, adapted.ids);
}

#[test]
fn seeded_sampling_is_reproducible_and_top_k_1_is_greedy() {
    let m = tiny("gen-sample", &TinySpec::default());
    let prompt = [1u32, 4, 8];
    let opts = |seed, top_k, top_p| GenerateOptions {
        temperature: 1.5,
        top_k,
        top_p,
        seed,
        ..no_stop(30)
    };
    for (top_k, top_p) in [(0, 1.0), (20, 0.9)] {
        let a = run(&m, &prompt, &opts(42, top_k, top_p), None);
        assert_eq!(run(&m, &prompt, &opts(42, top_k, top_p), None), a);
        let b = run(&m, &prompt, &opts(43, top_k, top_p), None);
        assert_ne!(a.ids, b.ids, "two seeds drew the same 30 tokens");
    }
    let greedy = run(&m, &prompt, &no_stop(30), None);
    for seed in [1, 2, 3] {
        assert_eq!(run(&m, &prompt, &opts(seed, 1, 1.0), None).ids, greedy.ids);
    }
}

/// Draw frequencies of a sampler over fixed logits.
fn frequencies(opts: &GenerateOptions, logits: &[f32], draws: usize) -> Vec<f64> {
    let mut s = Sampler::new(opts).expect("sampler");
    let mut n = vec![0usize; logits.len()];
    for _ in 0..draws {
        n[s.sample(logits) as usize] += 1;
    }
    n.into_iter().map(|c| c as f64 / draws as f64).collect()
}

fn softmax(x: &[f64]) -> Vec<f64> {
    let max = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|v| (v - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 0.01, "{what}: token {i}: drawn {g:.4}, expected {w:.4}");
    }
}

#[test]
fn the_sampler_follows_temperature_top_k_and_top_p() {
    let logits = [0.5f32, 2.0, -1.0, 1.0, 1.5, f32::NEG_INFINITY];
    let draws = 40_000;
    let opts = |temperature, top_k, top_p| GenerateOptions {
        temperature,
        top_k,
        top_p,
        seed: 7,
        ..GenerateOptions::default()
    };
    // Temperature 2: softmax(logits / 2).
    let scaled: Vec<f64> = logits.iter().map(|&l| l as f64 / 2.0).collect();
    assert_close(
        &frequencies(&opts(2.0, 0, 1.0), &logits, draws),
        &softmax(&scaled),
        "T=2",
    );
    // Top-3 (ids 1, 4, 3) at temperature 1, renormalized.
    let mut want = vec![0.0; 6];
    let p = softmax(&[2.0, 1.5, 1.0]);
    (want[1], want[4], want[3]) = (p[0], p[1], p[2]);
    assert_close(&frequencies(&opts(1.0, 3, 1.0), &logits, draws), &want, "top-k 3");
    // Probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.75 keeps the first two.
    let probs = [0.3f32, 0.05, 0.5, 0.15];
    let lp: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
    assert_close(
        &frequencies(&opts(1.0, 0, 0.75), &lp, draws),
        &[0.375, 0.0, 0.625, 0.0],
        "top-p 0.75",
    );
    assert_close(
        &frequencies(&opts(1.0, 0, 0.45), &lp, draws),
        &[0.0, 0.0, 1.0, 0.0],
        "top-p 0.45",
    );
    // Greedy: the first of equal maxima; NaN never wins.
    assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
    assert_eq!(argmax(&[f32::NAN, -5.0, f32::NAN, -4.0]), 3);
    let mut s = Sampler::new(&opts(0.0, 0, 1.0)).unwrap();
    assert_eq!(s.sample(&logits), 1);
    // Bad settings are refused.
    for bad in [
        opts(-1.0, 0, 1.0),
        opts(f32::NAN, 0, 1.0),
        opts(1.0, 0, 0.0),
        opts(1.0, 0, 1.5),
    ] {
        assert!(matches!(Sampler::new(&bad), Err(Error::Invalid(_))));
    }
}

#[test]
fn generation_stops_at_a_stop_token_and_when_the_callback_says() {
    let m = tiny("gen-stop", &TinySpec::default());
    let prompt = [1u32, 10, 20, 30];
    let sampled = |seed, stop_tokens| GenerateOptions {
        temperature: 1.5,
        seed,
        max_new_tokens: 24,
        stop_tokens,
        ..GenerateOptions::default()
    };
    let free = run(&m, &prompt, &sampled(5, Some(vec![])), None);
    // The first token after the third that has not appeared before becomes the stop token.
    let i = (3..free.ids.len())
        .find(|&i| !free.ids[..i].contains(&free.ids[i]))
        .expect("a new token");
    let stop = free.ids[i];
    let mut seen = Vec::new();
    let g = generate(&m, &prompt, &sampled(5, Some(vec![stop])), None, |t, _| {
        seen.push(t);
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(g.stop_reason, StopReason::Eos);
    assert_eq!(g.ids, free.ids[..=i]);
    assert_eq!(seen, free.ids[..i], "the callback sees every token but the stop token");
    assert_eq!(g.text, m.tokenizer.decode(&free.ids[..i], true).unwrap());

    // By default the model's EOS (t2 in the tokenizer and config) stops generation: find
    // a seed whose free run draws it, and stop there.
    assert_eq!(GenerateOptions::default().stop_tokens_for(&m), vec![2]);
    let (seed, free, p) = (0..200)
        .find_map(|seed| {
            let free = run(&m, &prompt, &sampled(seed, Some(vec![])), None);
            let p = free.ids.iter().position(|&t| t == 2)?;
            Some((seed, free, p))
        })
        .expect("some seed draws EOS");
    let g = run(&m, &prompt, &sampled(seed, None), None);
    assert_eq!(g.stop_reason, StopReason::Eos);
    assert_eq!(g.ids, free.ids[..=p]);

    // The callback stops generation after its third token.
    let mut n = 0;
    let g = generate(&m, &prompt, &no_stop(24), None, |_, _| {
        n += 1;
        if n == 3 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(g.stop_reason, StopReason::Callback);
    assert_eq!(g.ids, run(&m, &prompt, &no_stop(3), None).ids);

    // The step-wise generator ends the same way and then stays ended.
    let mut step = Generator::new(&m, &prompt, &no_stop(2), None).unwrap();
    assert!(step.next_token().unwrap().is_some());
    assert!(step.next_token().unwrap().is_some());
    assert_eq!(step.next_token().unwrap(), None);
    assert_eq!(step.stop_reason(), Some(StopReason::Length));
    assert_eq!(step.next_token().unwrap(), None);
    assert_eq!(step.cache().len(), prompt.len() + 1);
}

#[test]
fn bad_prompts_and_full_contexts_give_typed_errors() {
    let spec = TinySpec::default(); // max_position_embeddings 128
    let m = tiny("gen-errors", &spec);
    let opts = no_stop(20);
    let ok = |_: u32, _: &str| ControlFlow::Continue(());
    assert!(matches!(generate(&m, &[], &opts, None, ok), Err(Error::Invalid(_))));
    let long: Vec<u32> = (0..129).map(|i| (i % 60) as u32).collect();
    assert!(matches!(
        generate(&m, &long, &opts, None, ok),
        Err(Error::SequenceTooLong { len: 129, max: 128 })
    ));
    // A prompt of 120 tokens leaves room for 8 new ones.
    let g = generate(&m, &long[..120], &opts, None, ok).unwrap();
    assert_eq!(g.stop_reason, StopReason::ContextFull);
    assert_eq!(g.ids.len(), 8);
    assert_eq!(g.ids, argmax_stepping(&m, &long[..120], 8, None));
    let bad = GenerateOptions {
        temperature: -0.5,
        ..opts.clone()
    };
    assert!(matches!(generate(&m, &[1, 2], &bad, None, ok), Err(Error::Invalid(_))));
    assert!(matches!(
        generate(&m, &[1, 64, 2], &opts, None, ok),
        Err(Error::TokenOutOfVocabulary {
            id: 64,
            position: 1,
            ..
        })
    ));

    // Cache-level errors leave the cache as it was.
    let mut cache = KvCache::new(&m.config);
    assert!(matches!(m.prefill(&[], &mut cache, None), Err(Error::Invalid(_))));
    m.prefill(&long[..128], &mut cache, None).unwrap();
    assert!(matches!(
        m.decode_step(5, &mut cache, None),
        Err(Error::SequenceTooLong { len: 129, max: 128 })
    ));
    assert_eq!(cache.len(), 128);
    cache.truncate(4);
    assert!(matches!(
        m.decode_step(99, &mut cache, None),
        Err(Error::TokenOutOfVocabulary {
            id: 99,
            position: 4,
            ..
        })
    ));
    assert_eq!(cache.len(), 4);
    // A cache or an adapter shaped for another model is refused.
    let other = tiny(
        "gen-errors-other",
        &TinySpec {
            layers: 3,
            ..TinySpec::default()
        },
    );
    let mut foreign = KvCache::new(&other.config);
    assert!(matches!(m.prefill(&[1, 2], &mut foreign, None), Err(Error::Invalid(_))));
    let wrong = random_adapter(&other, 1, 0.1);
    assert!(m.prefill(&[1, 2], &mut cache, Some(&wrong)).is_err());
    assert_eq!(cache.len(), 4);
}

#[test]
fn real_model_answers_a_chat_prompt() {
    let m = real();
    let text = m
        .tokenizer
        .apply_chat_template(&[ChatMessage::new("user", "What is the capital of France?")], true)
        .expect("template");
    let prompt = m.tokenizer.encode(&text, false).expect("encode");
    let opts = GenerateOptions {
        max_new_tokens: 48,
        ..GenerateOptions::default()
    };
    let mut streamed = String::new();
    let mut times = Vec::new();
    let start = Instant::now();
    let g = generate(&m, &prompt, &opts, None, |_, delta| {
        times.push(Instant::now());
        streamed.push_str(delta);
        ControlFlow::Continue(())
    })
    .expect("generates");
    let end = Instant::now();
    println!("prompt: {text:?}\nreply ({}): {:?}", g.stop_reason.as_str(), g.text);
    if let Some(&first) = times.first() {
        let steps = g.ids.len() - 1;
        println!(
            "prefill of {} tokens + first sample {:.0} ms; {steps} decode steps at {:.1} tokens/s",
            prompt.len(),
            (first - start).as_secs_f64() * 1e3,
            steps as f64 / (end - first).as_secs_f64()
        );
    }
    assert!(matches!(g.stop_reason, StopReason::Eos | StopReason::Length));
    assert!(!g.text.trim().is_empty(), "empty reply");
    assert_eq!(streamed, g.text, "the streamed pieces make the reply");
    if g.stop_reason == StopReason::Eos {
        let last = g.ids.last().expect("the stop token");
        assert!(opts.stop_tokens_for(&m).contains(last));
    }
    // The first tokens match greedy stepping with full forward passes.
    let n = g.ids.len().min(6);
    assert_eq!(g.ids[..n], argmax_stepping(&m, &prompt, n, None)[..]);
}

/// Over a large vocabulary the nucleus is found by sorting a growing head of the
/// candidates, not all of them: every draw must still come from the exact nucleus (the
/// smallest most-likely set whose mass reaches top-p), and a flat tail must be reached.
#[test]
fn top_p_over_a_large_vocabulary_draws_only_from_the_exact_nucleus() {
    let n = 20_000;
    let logits: Vec<f32> = random_vec(n, 11, 3.0);
    for top_p in [0.5f32, 0.95] {
        // The reference nucleus: sort everything, most likely first (ties by id).
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let max = logits[order[0]] as f64;
        let w: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
        let want = top_p as f64 * w.iter().sum::<f64>();
        let mut acc = 0.0;
        let size = order.iter().position(|&i| {
            acc += w[i];
            acc >= want
        });
        let nucleus: std::collections::HashSet<usize> = order[..size.unwrap() + 1].iter().copied().collect();
        assert!(
            nucleus.len() > 256,
            "the test needs a nucleus past the first heads: {}",
            nucleus.len()
        );
        let opts = GenerateOptions {
            temperature: 1.0,
            top_p,
            seed: 3,
            ..GenerateOptions::default()
        };
        let mut s = Sampler::new(&opts).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..5000 {
            let t = s.sample(&logits) as usize;
            assert!(nucleus.contains(&t), "top-p {top_p}: token {t} is outside the nucleus");
            seen.insert(t);
        }
        assert!(
            seen.len() > 200,
            "top-p {top_p}: only {} distinct tokens drawn",
            seen.len()
        );
    }
}

/// Top-p's mass is of the whole vocabulary, a long flat tail included: 10 likely tokens
/// (weight 1 each) over 100,000 unlikely ones (5e-5 each, a third of the mass together).
/// At top-p 0.58 (8.7 of 15) the nucleus is the first 9 likely tokens (ties go by id), not 6, as it
/// would be if the tail's mass were forgotten.
#[test]
fn top_p_counts_the_mass_of_a_long_tail() {
    let mut logits = vec![0.00005f32.ln(); 100_010];
    logits[..10].fill(0.0);
    let opts = GenerateOptions {
        temperature: 1.0,
        top_p: 0.58,
        seed: 5,
        ..GenerateOptions::default()
    };
    let mut s = Sampler::new(&opts).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..3000 {
        seen.insert(s.sample(&logits));
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), (0..9).collect::<Vec<u32>>());
}

#[test]
fn the_decoding_copy_changes_no_bit_and_costs_the_quantized_matrices() {
    let with = real();
    let without = real().without_decode_copy();
    let prompt = with
        .tokenizer
        .encode("The capital of France is", false)
        .expect("encode");
    let tokens: Vec<u32> = prompt.iter().copied().chain([28, 1000, 42]).collect();
    let a = random_adapter(&with, 5, 0.01);
    assert_eq!(with.weights.decode_copy_bytes(), 0, "made before any generation");
    for adapter in [None, Some(&a)] {
        let x = cached_logits(&with, &tokens, prompt.len(), adapter);
        let y = cached_logits(&without, &tokens, prompt.len(), adapter);
        assert!(
            x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
            "decoding logits differ"
        );
        assert_eq!(
            argmax_stepping(&with, &prompt, 8, adapter),
            argmax_stepping(&without, &prompt, 8, adapter)
        );
    }
    assert_eq!(without.weights.decode_copy_bytes(), 0);
    // The copy holds every projection and the output head, which decoding reads, where
    // this CPU has kernels for it (AVX-512 or AVX2): as many bytes as they are stored in.
    let stored: usize = with
        .weights
        .layers
        .iter()
        .flat_map(|l| nudge::model::weights::Proj::ALL.map(|p| l.proj(p).len))
        .sum::<usize>()
        + with.weights.lm_head.len;
    let made = with.weights.decode_copy_bytes();
    if matches!(nudge::isa::Isa::best(), nudge::isa::Isa::Avx512 | nudge::isa::Isa::Avx2) {
        assert!(
            made >= stored && made < stored + stored / 8,
            "{made} bytes for {stored} stored"
        );
    } else {
        assert_eq!(made, 0);
    }
}
