//! End-to-end throughput on the real model: the forward pass over a 512-token sequence
//! (what llama-bench's `-p 512` measures), one LoRA DPO training step of two pairs of
//! the benchmark set in `benches/data/`, and one generation step with a KV cache of 64 tokens for one
//! row and for 16 rows decoded together (what llama-bench's `-n` measures, and its batched
//! version). `NUDGE_MODEL` names the model (default: the fetched GGUF).
//!
//! `cargo bench --bench engine -- --warm-up-time 2 --measurement-time 20`
//! (`nudge bench score|train` print the same figures with FMA-peak fractions and peak RSS.)

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nudge::adapter::{Adapter, LoraConfig};
use nudge::data::{PreferenceSet, Truncation};
use nudge::generate::KvCache;
use nudge::kernels::attention::AttnLayout;
use nudge::model::{Model, Recompute};
use nudge::objective::Loss;
use nudge::train::{StepCtx, pair_step};
use std::path::PathBuf;

fn model_path() -> PathBuf {
    std::env::var_os("NUDGE_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

fn benches(c: &mut Criterion) {
    let path = model_path();
    let model = Model::open(&path).unwrap_or_else(|e| panic!("{e} (run scripts/fetch-model.sh or set NUDGE_MODEL)"));
    let n = 512;
    let tokens: Vec<u32> = (0..n as u32)
        .map(|i| (i * 7919) % model.config.vocab_size as u32)
        .collect();
    let layout = AttnLayout::sequences(&[n]);
    let mut g = c.benchmark_group("forward");
    g.sample_size(10);
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("512_tokens", |b| {
        b.iter(|| model.hidden_states(&tokens, &layout).expect("forward"))
    });
    g.finish();

    // Decode steps after 64 cached tokens; each iteration rewinds the caches to 64.
    let past = 64;
    let mut g = c.benchmark_group("decode");
    g.sample_size(10);
    for rows in [1usize, 16] {
        let mut caches: Vec<KvCache> = (0..rows)
            .map(|r| {
                let mut cache = KvCache::new(&model.config);
                model.extend(&tokens[r..r + past], &mut cache, None).expect("prefill");
                cache
            })
            .collect();
        let step: Vec<u32> = tokens[past..past + rows].to_vec();
        g.throughput(Throughput::Elements(rows as u64));
        g.bench_function(format!("{rows}_rows_after_{past}_tokens"), |b| {
            b.iter(|| {
                let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
                let logits = model.decode_batch(&step, &mut refs, None).expect("step");
                for c in caches.iter_mut() {
                    c.truncate(past);
                }
                logits
            })
        });
    }
    g.finish();

    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/data/prefs-64.jsonl");
    let set = PreferenceSet::from_jsonl(&model.tokenizer, &data, &Truncation::default()).expect("benchmark set");
    let pairs: Vec<_> = set.pairs.iter().take(2).collect();
    let adapter = Adapter::new(&model.config, LoraConfig::default(), 1, "bench").expect("adapter");
    let refs = vec![(0.0, 0.0); pairs.len()];
    let pair_tokens: usize = pairs.iter().map(|p| PreferenceSet::pair_tokens(p)).sum();
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10);
    g.throughput(Throughput::Elements(pair_tokens as u64));
    g.bench_function("2_pairs_r8_all_projections", |b| {
        b.iter(|| {
            let mut grads = adapter.zeros_like();
            let loss = Loss::Sigmoid { beta: 0.1 };
            let ctx = StepCtx::new(&model, &adapter, &loss).recompute(Recompute::Budget(128 << 20));
            pair_step(&ctx, &pairs, &refs, 1.0, &mut grads).expect("step")
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
