//! Throughput measurements shared by `nudge bench` and the criterion benches.
//! Figures are reported against a measured FMA peak of this machine, never asserted.

mod generate;
mod matmul;
pub mod random_model;
pub mod weights;

pub use generate::{GenerateBench, generate_throughput};
pub use matmul::{MatmulFigure, matmul_throughput};

use crate::error::Result;
use crate::kernels::attention::AttnLayout;
use crate::kernels::matmul::Precision;
use crate::model::Model;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct ScoreBench {
    pub model: String,
    /// The products' arithmetic: `f32` or `bf16`.
    pub precision: String,
    pub seq_len: usize,
    pub reps: usize,
    pub threads: usize,
    /// Mean over the timed repetitions.
    pub tokens_per_s: f64,
    pub best_tokens_per_s: f64,
    pub gflops: f64,
    pub peak_gflops: f64,
    pub peak_fraction: f64,
}

/// Multiply-adds of a forward pass over one sequence of `t` tokens (matmuls and attention;
/// the vocabulary projection at the last position only, as llama-bench counts it).
pub fn forward_flops(model: &Model, t: usize) -> f64 {
    let c = &model.config;
    let (h, q, kv, i) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.kv_dim() as f64,
        c.intermediate_size as f64,
    );
    let per_token = h * (q + 2.0 * kv) + q * h + 3.0 * h * i;
    let attn = 2.0 * (t as f64) * (t as f64 + 1.0) / 2.0 * q; // scores and weighted sum, causal
    2.0 * (c.num_hidden_layers as f64 * (per_token * t as f64 + attn) + h * c.vocab_size as f64)
}

/// Forward throughput on one sequence of `seq_len` tokens, after one warm-up pass.
pub fn score_throughput(path: &Path, seq_len: usize, reps: usize, precision: Precision) -> Result<ScoreBench> {
    let model = Model::open(path)?.with_precision(precision)?;
    let vocab = model.config.vocab_size as u64;
    // A fixed pseudo-random token stream: the cost does not depend on the ids.
    let mut s = 0x9e3779b97f4a7c15u64;
    let tokens: Vec<u32> = (0..seq_len)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 33) % vocab) as u32
        })
        .collect();
    let layout = AttnLayout::sequences(&[seq_len]);
    let run = || -> Result<f64> {
        let t0 = Instant::now();
        let h = model.hidden_states(&tokens, &layout)?;
        let hidden = model.config.hidden_size;
        let last = &h[(seq_len - 1) * hidden..];
        std::hint::black_box(model.logits(last).expect("logits of one row"));
        Ok(t0.elapsed().as_secs_f64())
    };
    // The peak is read before and after the runs and the higher kept (see `bench matmul`).
    let peak_before = fma_peak_gflops();
    run()?;
    let mut times = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        times.push(run()?);
    }
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    let gflops = forward_flops(&model, seq_len) / mean / 1e9;
    let peak = peak_before.max(fma_peak_gflops());
    Ok(ScoreBench {
        model: path.display().to_string(),
        precision: precision.name().to_string(),
        seq_len,
        reps: times.len(),
        threads: rayon::current_num_threads(),
        tokens_per_s: seq_len as f64 / mean,
        best_tokens_per_s: seq_len as f64 / best,
        gflops,
        peak_gflops: peak,
        peak_fraction: gflops / peak,
    })
}

/// Measured f32 FMA peak of this machine over all rayon threads, in GFLOP/s
/// (2 flops per lane per fused multiply-add, the unit `Isa::best` picks). The best of
/// three rounds: one round lasts a few milliseconds, and a round that met other work on
/// a shared machine read as low as half the peak, which doubled every fraction of it.
pub fn fma_peak_gflops() -> f64 {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    let iters = 20_000_000u64;
    let round = || -> f64 {
        let per_thread: Vec<f64> = (0..threads)
            .into_par_iter()
            .map(|_| {
                let t0 = Instant::now();
                let (flops, sink) = fma_loop(iters);
                std::hint::black_box(sink);
                flops / t0.elapsed().as_secs_f64()
            })
            .collect();
        per_thread.iter().sum::<f64>() / 1e9
    };
    (0..3).map(|_| round()).fold(0.0, f64::max)
}

#[cfg(target_arch = "x86_64")]
fn fma_loop(iters: u64) -> (f64, f32) {
    use crate::isa::Isa;
    match Isa::best() {
        // SAFETY: Isa::best() checked the features.
        Isa::Avx512 => unsafe { fma_loop_avx512(iters) },
        Isa::Avx2 => unsafe { fma_loop_avx2(iters) },
        _ => fma_loop_scalar(iters),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_loop(iters: u64) -> (f64, f32) {
    fma_loop_scalar(iters)
}

fn fma_loop_scalar(iters: u64) -> (f64, f32) {
    let mut acc = [1.0f32; 32];
    for _ in 0..iters / 16 {
        for a in acc.iter_mut() {
            *a = a.mul_add(0.999_999, 1e-7);
        }
    }
    (2.0 * 32.0 * (iters / 16) as f64, acc.iter().sum())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn fma_loop_avx512(iters: u64) -> (f64, f32) {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut r = [_mm512_set1_ps(1.0); 12];
    for _ in 0..iters / 12 {
        for x in r.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in r {
        s = _mm512_add_ps(s, x);
    }
    (2.0 * 16.0 * 12.0 * (iters / 12) as f64, _mm512_reduce_add_ps(s))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: u64) -> (f64, f32) {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut r = [_mm256_set1_ps(1.0); 12];
    for _ in 0..iters / 12 {
        for x in r.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm256_setzero_ps();
    for x in r {
        s = _mm256_add_ps(s, x);
    }
    let mut out = [0f32; 8];
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), s) };
    (2.0 * 8.0 * 12.0 * (iters / 12) as f64, out.iter().sum())
}

/// Multiply-adds (×2 = flops) of one training micro-batch of `t` packed tokens with `p`
/// completion positions, with layers recomputed as `plan` says.
pub fn train_flops(
    model: &Model,
    t: usize,
    p: usize,
    plan: crate::model::RecomputePlan,
    lora_r: usize,
    lora_targets: usize,
) -> f64 {
    let c = &model.config;
    let (h, q, kv, i) = (
        c.hidden_size as f64,
        c.q_dim() as f64,
        c.kv_dim() as f64,
        c.intermediate_size as f64,
    );
    let layers = c.num_hidden_layers as f64;
    let tf = t as f64;
    let per_token = h * (q + 2.0 * kv) + q * h + 3.0 * h * i;
    // An upper bound for packed causal attention (every token sees at most t keys / 2 on average).
    let attn = tf * tf / 2.0 * q * 2.0;
    let lora = tf * lora_r as f64 * (h + i) * lora_targets as f64;
    let fwd = per_token * tf + attn + lora;
    // Backward: dX through every frozen matrix (1×), attention's dq/dk/dv (2× its forward),
    // LoRA's dA, dB and dX (3×).
    let bwd = per_token * tf + 2.0 * attn + 3.0 * lora;
    // A recomputed layer skips the down projection (only its LoRA branch's input is needed);
    // the layers between checkpoints are run forward once more, whole.
    let recompute = plan.recomputed as f64 * (fwd - h * i * tf) + plan.refill_forwards() as f64 * fwd;
    let head = 3.0 * (p as f64) * (c.vocab_size as f64) * h;
    2.0 * (layers * (fwd + bwd) + recompute + head)
}

#[derive(Debug, Serialize)]
pub struct TrainBench {
    pub model: String,
    /// The frozen products' arithmetic: `f32` or `bf16`.
    pub precision: String,
    pub data: String,
    pub steps: usize,
    pub pairs_per_step: usize,
    pub pairs_per_pass: usize,
    pub memory_budget_mb: usize,
    pub threads: usize,
    /// Pair-tokens as TRL counts them (prompt + chosen + prompt + rejected) per second of
    /// optimizer steps, with the reference log-probs already cached.
    pub pair_tokens_per_s: f64,
    /// The same including the one-time reference pass over the pairs used.
    pub pair_tokens_per_s_with_reference: f64,
    pub reference_seconds: f64,
    pub gflops: f64,
    pub peak_gflops: f64,
    pub peak_fraction: f64,
    /// The process's peak resident memory (VmHWM), including the mapped model pages.
    pub peak_rss_mb: f64,
    pub final_loss: f64,
}

/// Peak resident set size of this process in bytes (Linux; 0 elsewhere).
pub fn peak_rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<usize>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Pairs per optimizer step, and per forward-backward pass (the working memory of a pass
/// grows with its tokens; the gradient is accumulated over the passes of a step).
#[derive(Clone, Copy, Debug)]
pub struct PairsPerStep {
    pub step: usize,
    pub micro: usize,
}

/// What `nudge bench train` trains on.
#[derive(Clone, Copy, Debug)]
pub enum TrainData<'a> {
    /// Preference pairs as JSONL text, and the name reports give it.
    Jsonl { text: &'a str, name: &'a Path },
    /// Pairs of random token ids whose sequences (prompt + completion) have `seq_len`
    /// tokens: half prompt, half completion.
    Synthetic { seq_len: usize },
}

/// `seq_len`-token pairs of pseudo-random ids below `vocab` (the cost does not depend on
/// the ids).
fn synthetic_pairs(n: usize, seq_len: usize, vocab: usize) -> crate::data::PreferenceSet {
    let mut rng = crate::rng::Rng::new(17);
    let mut ids = |len: usize| -> Vec<u32> { (0..len).map(|_| rng.below(vocab) as u32).collect() };
    let prompt_len = seq_len / 2;
    crate::data::PreferenceSet {
        pairs: (0..n)
            .map(|i| crate::data::TokenizedPair {
                row: i + 1,
                prompt: ids(prompt_len),
                chosen: ids(seq_len - prompt_len),
                rejected: ids(seq_len - prompt_len),
                margin: None,
                weight: None,
            })
            .collect(),
        ..Default::default()
    }
}

/// `nudge bench train`: LoRA r=8, alpha=16 on all seven projections, sigmoid DPO,
/// `pairs_per_step` pairs per step, over the first steps of `data`.
pub fn train_throughput(
    model_path: &Path,
    data: TrainData,
    steps: usize,
    pairs: PairsPerStep,
    memory_budget: usize,
    precision: Precision,
) -> Result<TrainBench> {
    let PairsPerStep {
        step: pairs_per_step,
        micro: micro_batch,
    } = pairs;
    use crate::adapter::{Adapter, LoraConfig};
    use crate::data::{PreferenceSet, Truncation};
    use crate::model::Recompute;
    use crate::train::{Control, TrainConfig, Trainer};
    let model = Model::open(model_path)?.with_precision(precision)?;
    let (mut data, data_name) = match data {
        TrainData::Jsonl { text, name } => {
            let limits = Truncation::max_length(model.config.max_position_embeddings);
            let set = PreferenceSet::from_jsonl_text(&model.tokenizer, text, name, &limits)?;
            (set, name.display().to_string())
        }
        TrainData::Synthetic { seq_len } => {
            let vocab = model.tokenizer.vocab_size().min(model.config.vocab_size);
            let n = steps * pairs_per_step;
            (
                synthetic_pairs(n, seq_len, vocab),
                format!("{n} random pairs of {seq_len} tokens"),
            )
        }
    };
    data.pairs.truncate(steps * pairs_per_step);
    let adapter = Adapter::new(
        &model.config,
        LoraConfig::default(),
        1,
        model_path.display().to_string(),
    )?;
    let (r, targets) = (adapter.config.r, adapter.config.target_modules.len());
    let config = TrainConfig {
        batch_size: pairs_per_step,
        micro_batch_size: micro_batch.clamp(1, pairs_per_step),
        shuffle: false,
        max_steps: Some(steps),
        epochs: 1,
        recompute: Recompute::Budget(memory_budget),
        ..TrainConfig::default()
    };
    let pairs = data.pairs.clone();
    let mut trainer = Trainer::new(&model, adapter, config, data)?;
    // One reading of the peak that met other work made the fraction 0.88: the higher of a
    // reading before and one after the run is kept.
    let peak_before = fma_peak_gflops();
    let t0 = Instant::now();
    let items: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .flat_map(|p| [(&p.prompt[..], &p.chosen[..]), (&p.prompt[..], &p.rejected[..])])
        .collect();
    trainer.refs.fill(&model, &items)?;
    let reference_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut last_loss = f64::NAN;
    trainer.run(&mut |m| {
        last_loss = m.loss;
        Control::Continue
    })?;
    let train_seconds = t1.elapsed().as_secs_f64();
    let pair_tokens: usize = pairs.iter().map(PreferenceSet::pair_tokens).sum();
    // Flops of the steps as run: layers kept under the budget are not recomputed.
    let mut flops = 0.0;
    for chunk in pairs.chunks(micro_batch.clamp(1, pairs_per_step)) {
        let t: usize = chunk
            .iter()
            .map(|p| p.prompt.len() + p.chosen.len() + p.rejected.len())
            .sum();
        let p: usize = chunk.iter().map(|p| p.chosen.len() + p.rejected.len()).sum();
        let plan = model.recompute_plan(t, r, Recompute::Budget(memory_budget));
        flops += train_flops(&model, t, p, plan, r, targets);
    }
    let gflops = flops / train_seconds / 1e9;
    let peak = peak_before.max(fma_peak_gflops());
    Ok(TrainBench {
        model: model_path.display().to_string(),
        precision: precision.name().to_string(),
        data: data_name,
        steps,
        pairs_per_step,
        pairs_per_pass: micro_batch.clamp(1, pairs_per_step),
        memory_budget_mb: memory_budget >> 20,
        threads: rayon::current_num_threads(),
        pair_tokens_per_s: pair_tokens as f64 / train_seconds,
        pair_tokens_per_s_with_reference: pair_tokens as f64 / (train_seconds + reference_seconds),
        reference_seconds,
        gflops,
        peak_gflops: peak,
        peak_fraction: gflops / peak,
        peak_rss_mb: peak_rss_bytes() as f64 / (1 << 20) as f64,
        final_loss: last_loss,
    })
}
