//! Causal grouped-query attention of a few new tokens against a KV cache (generation).
//!
//! The new tokens sit at positions `start..start + n`; the cache already holds their own
//! keys and values after the past ones, so token `i` attends to cache rows `0..=start + i`.
//! Each score row is reduced in the same order as the packed attention's, so a cached
//! step gives the logits of the full forward pass.

use super::attention::AttnShape;
use super::simd::{axpy, dot16, multiversion};
use rayon::prelude::*;

/// q: `[n, H*hd]` (roped) for positions `start..start + n`; k, v: `[≥ start + n, KV*hd]`
/// (roped keys) → out: `[n, H*hd]`.
pub fn attention_cached(q: &[f32], k: &[f32], v: &[f32], start: usize, shape: AttnShape, out: &mut [f32]) {
    let qw = shape.n_heads * shape.head_dim;
    let kvw = shape.n_kv_heads * shape.head_dim;
    let n = q.len() / qw.max(1);
    assert!(
        out.len() == q.len() && k.len() >= (start + n) * kvw && v.len() >= (start + n) * kvw,
        "attention_cached: {n} queries at {start} need {} cached rows",
        start + n
    );
    // One item per (row, head): a decoding step's single row is 9 or more heads, which
    // two threads share instead of one working while the other waits.
    let hd = shape.head_dim;
    out.par_chunks_mut(hd)
        .enumerate()
        .for_each_init(Vec::new, |scores, (item, o)| {
            let (i, head) = (item / shape.n_heads, item % shape.n_heads);
            attend_cached_head(&q[i * qw..(i + 1) * qw], head, k, v, start + i + 1, shape, scores, o);
        });
}

multiversion! {
    /// One head of one query row over cache rows `0..len` → `o: [hd]`.
    fn attend_cached_head(qrow: &[f32], head: usize, k: &[f32], v: &[f32], len: usize, shape: AttnShape, scores: &mut Vec<f32>, o: &mut [f32]) {
        let hd = shape.head_dim;
        let kvw = shape.n_kv_heads * hd;
        let kvh = head / (shape.n_heads / shape.n_kv_heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let qh = &qrow[head * hd..(head + 1) * hd];
        scores.clear();
        for j in 0..len {
            let kj = &k[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
            scores.push(dot16(qh, kj) * scale);
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        let inv = 1.0 / sum;
        o.fill(0.0);
        for (j, &p) in scores.iter().enumerate() {
            let vj = &v[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
            axpy(p * inv, vj, o);
        }
    }
}
