//! `nudge bench generate`: decoding throughput, one row and a batch of rows, as llama.cpp's
//! `llama-bench -n` measures it (new tokens from a one-token context, greedy, no stop).

use crate::error::Result;
use crate::generate::{BatchOptions, GenerateOptions, GenerateRequest, generate, generate_batch_with};
use crate::model::Model;
use serde::Serialize;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct GenerateBench {
    pub model: String,
    pub new_tokens: usize,
    pub reps: usize,
    pub threads: usize,
    /// One row: new tokens per second, mean over the repetitions.
    pub tokens_per_s: f64,
    pub best_tokens_per_s: f64,
    /// Rows decoded together in the batched figure.
    pub batch_rows: usize,
    /// Batched: new tokens of all rows per second, mean over the repetitions.
    pub batch_tokens_per_s: f64,
    /// `batch_tokens_per_s / tokens_per_s`.
    pub batch_speedup: f64,
    /// Stored bytes of the model's matrices read per decoded token (one row), and the rate
    /// they are read at: decoding is bound by memory.
    pub weight_bytes_per_token: usize,
    pub weight_gb_per_s: f64,
    /// MB of the matrices' copy regrouped for decoding (0 with `--no-decode-copy`, or
    /// where the decoding kernels read the stored layout).
    pub decode_copy_mb: f64,
}

/// Decoding throughput of one row and of `batch_rows` rows, each `new_tokens` new tokens,
/// timed `reps` times after one warm-up.
pub fn generate_throughput(
    path: &Path,
    new_tokens: usize,
    batch_rows: usize,
    reps: usize,
    decode_copy: bool,
) -> Result<GenerateBench> {
    let model = Model::open(path)?;
    let model = if decode_copy {
        model
    } else {
        model.without_decode_copy()
    };
    // Decoding does not depend on the ids: one fixed token starts every row.
    let opts = GenerateOptions {
        max_new_tokens: new_tokens,
        stop_tokens: Some(Vec::new()),
        stop_strings: Vec::new(),
        ..GenerateOptions::default()
    };
    let prompt = [1u32.min(model.config.vocab_size as u32 - 1)];
    let one = || -> Result<f64> {
        let t0 = Instant::now();
        let g = generate(&model, &prompt, &opts, None, |_, _| ControlFlow::Continue(()))?;
        Ok(g.ids.len() as f64 / t0.elapsed().as_secs_f64())
    };
    let requests: Vec<GenerateRequest> = (0..batch_rows.max(1))
        .map(|_| GenerateRequest {
            prompt: prompt.to_vec(),
            opts: opts.clone(),
        })
        .collect();
    let batch = BatchOptions {
        max_rows: requests.len(),
        ..BatchOptions::default()
    };
    let many = || -> Result<f64> {
        let t0 = Instant::now();
        let out = generate_batch_with(&model, &requests, None, &batch, |_| ControlFlow::Continue(()))?;
        let tokens: usize = out.iter().map(|g| g.ids.len()).sum();
        Ok(tokens as f64 / t0.elapsed().as_secs_f64())
    };
    one()?;
    many()?;
    let reps = reps.max(1);
    let mut singles = Vec::with_capacity(reps);
    let mut batches = Vec::with_capacity(reps);
    for _ in 0..reps {
        singles.push(one()?);
        batches.push(many()?);
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let tokens_per_s = mean(&singles);
    let batch_tokens_per_s = mean(&batches);
    // Every projection of every layer and the vocabulary projection (the embedding table
    // gives one row a token, unless it is the projection too).
    let w = &model.weights;
    let weight_bytes_per_token = w.lm_head.len
        + w.layers
            .iter()
            .flat_map(|l| crate::model::weights::Proj::ALL.map(|p| l.proj(p).len))
            .sum::<usize>();
    Ok(GenerateBench {
        model: path.display().to_string(),
        new_tokens,
        reps,
        threads: rayon::current_num_threads(),
        tokens_per_s,
        best_tokens_per_s: singles.iter().copied().fold(0.0, f64::max),
        batch_rows: requests.len(),
        batch_tokens_per_s,
        batch_speedup: batch_tokens_per_s / tokens_per_s,
        weight_bytes_per_token,
        weight_gb_per_s: weight_bytes_per_token as f64 * tokens_per_s / 1e9,
        decode_copy_mb: w.decode_copy_bytes() as f64 / 1e6,
    })
}
