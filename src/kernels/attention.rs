//! Causal grouped-query attention over a packed batch.
//!
//! A packed batch is a list of spans of consecutive tokens. A span sees every token of
//! its ancestor spans and, causally, its own tokens. A plain sequence is one span; a
//! preference pair packs `prompt`, `chosen` (parent: prompt) and `rejected` (parent:
//! prompt) so the prompt is computed once and the two answers never see each other.
//!
//! The forward pass keeps only the log-sum-exp of each (token, head) score row; the
//! backward pass recomputes the probabilities from it (as flash attention does), so no
//! `tokens x tokens` matrix is ever stored.

use super::simd::{axpy, dot16, multiversion};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// A run of consecutive tokens of the packed batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
    /// Index of the span this one continues (all of its tokens are visible), if any.
    pub parent: Option<usize>,
}

/// The attention structure of a packed batch, with each token's rope position.
#[derive(Clone, Debug, Default)]
pub struct AttnLayout {
    pub spans: Vec<Span>,
    /// Per token: the span it belongs to.
    token_span: Vec<u32>,
    /// Per token: its position (ancestor lengths + offset in its span).
    positions: Vec<u32>,
}

impl AttnLayout {
    /// Spans must tile `0..n_tokens` in order, and a parent must come before its child.
    pub fn new(spans: Vec<Span>) -> Result<Self> {
        let mut token_span = Vec::new();
        let mut positions = Vec::new();
        let mut depth_len = Vec::with_capacity(spans.len()); // tokens before each span's start
        for (i, s) in spans.iter().enumerate() {
            if s.start != token_span.len() {
                return Err(Error::invalid(format!(
                    "attention span {i} starts at {} but the previous span ends at {}",
                    s.start,
                    token_span.len()
                )));
            }
            let before = match s.parent {
                None => 0usize,
                Some(p) if p < i => depth_len[p] + spans[p].len,
                Some(p) => {
                    return Err(Error::invalid(format!(
                        "attention span {i} has parent {p}, which does not come before it"
                    )));
                }
            };
            depth_len.push(before);
            for t in 0..s.len {
                token_span.push(i as u32);
                let pos = before + t;
                positions.push(u32::try_from(pos).map_err(|_| Error::invalid("position overflows u32"))?);
            }
        }
        Ok(AttnLayout {
            spans,
            token_span,
            positions,
        })
    }

    /// One causal sequence per entry of `lens`.
    pub fn sequences(lens: &[usize]) -> Self {
        let mut spans = Vec::with_capacity(lens.len());
        let mut start = 0;
        for &len in lens {
            spans.push(Span {
                start,
                len,
                parent: None,
            });
            start += len;
        }
        Self::new(spans).expect("tiling spans are valid")
    }

    pub fn n_tokens(&self) -> usize {
        self.token_span.len()
    }

    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// Longest position + 1 (the context the batch needs).
    pub fn max_len(&self) -> usize {
        self.positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0)
    }

    /// The key ranges token `t` attends to, outermost ancestor first.
    fn key_ranges(&self, t: usize, out: &mut Vec<(usize, usize)>) {
        out.clear();
        let si = self.token_span[t] as usize;
        let s = self.spans[si];
        out.push((s.start, t + 1));
        let mut p = s.parent;
        while let Some(pi) = p {
            let ps = self.spans[pi];
            out.push((ps.start, ps.start + ps.len));
            p = ps.parent;
        }
        out.reverse();
    }
}

#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

impl AttnShape {
    fn q_width(&self) -> usize {
        self.n_heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
}

const ROWS_PER_TASK: usize = 8;

/// q: [T, H*hd] (roped), k: [T, KV*hd] (roped), v: [T, KV*hd] → out: [T, H*hd],
/// lse: [T, H] (log-sum-exp of each scaled score row, for the backward pass).
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    layout: &AttnLayout,
    shape: AttnShape,
    out: &mut [f32],
    lse: &mut [f32],
) {
    let qw = shape.q_width();
    let h = shape.n_heads;
    out.par_chunks_mut(qw * ROWS_PER_TASK)
        .zip(lse.par_chunks_mut(h * ROWS_PER_TASK))
        .enumerate()
        .for_each(|(chunk, (o, l))| {
            let mut ranges = Vec::new();
            let mut scores = Vec::new();
            for r in 0..o.len() / qw {
                let t = chunk * ROWS_PER_TASK + r;
                layout.key_ranges(t, &mut ranges);
                attend_row(
                    q,
                    k,
                    v,
                    t,
                    &ranges,
                    shape,
                    &mut scores,
                    &mut o[r * qw..(r + 1) * qw],
                    &mut l[r * h..(r + 1) * h],
                );
            }
        });
}

multiversion! {
    fn attend_row(q: &[f32], k: &[f32], v: &[f32], t: usize, ranges: &[(usize, usize)], shape: AttnShape, scores: &mut Vec<f32>, o: &mut [f32], lse: &mut [f32]) {
        let (hd, kvw) = (shape.head_dim, shape.kv_width());
        let group = shape.n_heads / shape.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let qrow = &q[t * shape.q_width()..(t + 1) * shape.q_width()];
        for head in 0..shape.n_heads {
            let kvh = head / group;
            let qh = &qrow[head * hd..(head + 1) * hd];
            scores.clear();
            for &(a, b) in ranges {
                for j in a..b {
                    let kj = &k[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
                    scores.push(dot16(qh, kj) * scale);
                }
            }
            let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let inv = 1.0 / sum;
            let oh = &mut o[head * hd..(head + 1) * hd];
            oh.fill(0.0);
            let mut idx = 0;
            for &(a, b) in ranges {
                for j in a..b {
                    let vj = &v[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
                    axpy(scores[idx] * inv, vj, oh);
                    idx += 1;
                }
            }
            lse[head] = max + sum.ln();
        }
    }
}

/// Adds dL/dq, dL/dk, dL/dv given dL/dout, from the saved forward inputs, output and lse.
/// Shapes as in [`attention_forward`]. dk and dv receive contributions from many queries,
/// so they are accumulated per span in a fixed order (deterministic for any thread count).
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    layout: &AttnLayout,
    shape: AttnShape,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    // dq rows depend only on their own query: parallel over token chunks.
    // dk/dv rows gather from every query that sees them: computed serially per key in a
    // fixed order by the same routine, walked from the key side.
    let n = layout.n_tokens();
    let qw = shape.q_width();
    let h = shape.n_heads;
    // D_t,h = dout · out (rowwise per head): the softmax backward's correction term.
    let mut dsum = vec![0f32; n * h];
    for t in 0..n {
        for head in 0..h {
            let a = t * qw + head * shape.head_dim;
            dsum[t * h + head] = dot16(&dout[a..a + shape.head_dim], &out[a..a + shape.head_dim]);
        }
    }
    dq.par_chunks_mut(qw * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, dqc)| {
            let mut ranges = Vec::new();
            for r in 0..dqc.len() / qw {
                let t = chunk * ROWS_PER_TASK + r;
                layout.key_ranges(t, &mut ranges);
                grad_q_row(
                    q,
                    k,
                    v,
                    lse,
                    dout,
                    &dsum,
                    t,
                    &ranges,
                    shape,
                    &mut dqc[r * qw..(r + 1) * qw],
                );
            }
        });
    // For dk/dv, each key j is seen by queries t >= j of its own span and all queries of
    // descendant spans. Walk queries in order and scatter: one task per kv head keeps
    // the reduction order fixed (token order) and the writes disjoint.
    let kvw = shape.kv_width();
    let hd = shape.head_dim;
    let mut dk_heads: Vec<Vec<f32>> = vec![vec![0f32; n * hd]; shape.n_kv_heads];
    let mut dv_heads: Vec<Vec<f32>> = vec![vec![0f32; n * hd]; shape.n_kv_heads];
    dk_heads
        .par_iter_mut()
        .zip(dv_heads.par_iter_mut())
        .enumerate()
        .for_each(|(kvh, (dkh, dvh))| {
            let mut ranges = Vec::new();
            let mut p = Vec::new();
            for t in 0..n {
                layout.key_ranges(t, &mut ranges);
                grad_kv_row(q, k, v, lse, dout, &dsum, t, kvh, &ranges, shape, &mut p, dkh, dvh);
            }
        });
    for t in 0..n {
        for kvh in 0..shape.n_kv_heads {
            let dst = t * kvw + kvh * hd;
            for i in 0..hd {
                dk[dst + i] += dk_heads[kvh][t * hd + i];
                dv[dst + i] += dv_heads[kvh][t * hd + i];
            }
        }
    }
}

multiversion! {
    fn grad_q_row(q: &[f32], k: &[f32], v: &[f32], lse: &[f32], dout: &[f32], dsum: &[f32], t: usize, ranges: &[(usize, usize)], shape: AttnShape, dq: &mut [f32]) {
        let (hd, kvw, qw) = (shape.head_dim, shape.kv_width(), shape.q_width());
        let group = shape.n_heads / shape.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for head in 0..shape.n_heads {
            let kvh = head / group;
            let qh = &q[t * qw + head * hd..t * qw + (head + 1) * hd];
            let doh = &dout[t * qw + head * hd..t * qw + (head + 1) * hd];
            let l = lse[t * shape.n_heads + head];
            let d = dsum[t * shape.n_heads + head];
            let dqh = &mut dq[head * hd..(head + 1) * hd];
            for &(a, b) in ranges {
                for j in a..b {
                    let kj = &k[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
                    let vj = &v[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
                    let p = (dot16(qh, kj) * scale - l).exp();
                    let ds = p * (dot16(doh, vj) - d);
                    axpy(ds * scale, kj, dqh);
                }
            }
        }
    }
}

multiversion! {
    fn grad_kv_row(q: &[f32], k: &[f32], v: &[f32], lse: &[f32], dout: &[f32], dsum: &[f32], t: usize, kvh: usize, ranges: &[(usize, usize)], shape: AttnShape, _p: &mut Vec<f32>, dk: &mut [f32], dv: &mut [f32]) {
        let (hd, kvw, qw) = (shape.head_dim, shape.kv_width(), shape.q_width());
        let group = shape.n_heads / shape.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        for head in kvh * group..(kvh + 1) * group {
            let qh = &q[t * qw + head * hd..t * qw + (head + 1) * hd];
            let doh = &dout[t * qw + head * hd..t * qw + (head + 1) * hd];
            let l = lse[t * shape.n_heads + head];
            let d = dsum[t * shape.n_heads + head];
            for &(a, b) in ranges {
                for j in a..b {
                    let kj = &k[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
                    let vj = &v[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd];
                    let p = (dot16(qh, kj) * scale - l).exp();
                    let ds = p * (dot16(doh, vj) - d);
                    axpy(p, doh, &mut dv[j * hd..(j + 1) * hd]);
                    axpy(ds * scale, qh, &mut dk[j * hd..(j + 1) * hd]);
                }
            }
        }
    }
}
