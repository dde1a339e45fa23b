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
//!
//! Work is cut by shape alone: a task is a run of query tokens of one span; inside it,
//! for each kv head, blocks of query rows (the head group's queries of a few tokens) are
//! multiplied against every visible key range with register-tiled small matrix products
//! ([`tile`]), with keys and values packed once per call. The results are the same bits
//! for any number of threads.
//!
//! This file holds the layout and the parts the two passes share (the partition into
//! tasks, the packing of keys and values, the register-tile panels); the passes
//! themselves, forward beside backward, are in `passes.rs`.

mod passes;
#[cfg(test)]
mod tests;

pub use passes::{
    AttnGrads, AttnInputs, AttnSaved, attention_backward, attention_backward_with_delta, attention_delta,
    attention_forward,
};

use super::simd::{Rows, RowsMut, Strided, exp16, max_vectors, sum_vectors, tile};
use crate::error::{Error, Result};
use rayon::prelude::*;
use std::cell::Cell;
use std::thread::LocalKey;

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

/// Query tokens per task (at least). A task owns its rows of the output (forward) and of
/// dq, and a private copy of the dk and dv it contributes (backward), summed in task
/// order at the end: the partition depends only on the layout, so no thread count changes
/// a bit.
const CHUNK: usize = 64;
/// Query tokens per backward task (at least): each holds a private copy of the dk and dv
/// of every key it sees, so tasks twice as long halve the copies (16 MiB for a 768-token
/// pair of a 1B model at 64). Attention is a few percent of a training step's work; its
/// tasks still number several per sequence.
const BACKWARD_CHUNK: usize = 128;
/// At most this many tasks per span: the dk/dv copies of a long span's tasks then take
/// about 8.5 copies of its keys rather than growing with its square.
const MAX_TASKS_PER_SPAN: usize = 16;
/// Query tokens per block inside a task: the block's score rows stay in cache.
const BLOCK: usize = 16;
/// Key tokens per task of the final dk/dv reduction.
const REDUCE: usize = 64;
/// Lanes of one vector of the register tiles.
const LANES: usize = 16;
/// A multiple of every register tile's row count (scratch rows are padded to it).
const ROW_PAD: usize = 12;

fn round_up(n: usize, m: usize) -> usize {
    n.div_ceil(m) * m
}

/// A row stride of at least `n` floats and an odd number of 64-byte vectors, so that the
/// rows of a plane do not all fall into the same few cache sets.
fn odd_stride(n: usize) -> usize {
    (n.div_ceil(LANES) | 1) * LANES
}

/// Query tokens `start..end` of one span and the keys they see.
struct Task {
    span_start: usize,
    start: usize,
    end: usize,
    /// Visible key ranges, outermost ancestor first, then the own span up to `end`;
    /// concatenated they number the task's keys `0..n_keys`.
    ranges: Vec<(usize, usize)>,
    n_keys: usize,
}

impl Task {
    /// Keys of the ancestor spans (visible to every query of the task).
    fn n_ancestors(&self) -> usize {
        self.n_keys - (self.end - self.span_start)
    }
}

/// The layout's query tokens in tasks of at least `min_rows` of a span.
fn tasks(layout: &AttnLayout, min_rows: usize) -> Vec<Task> {
    let mut out = Vec::new();
    for s in &layout.spans {
        let chunk = min_rows.max(s.len.div_ceil(MAX_TASKS_PER_SPAN));
        let mut start = s.start;
        while start < s.start + s.len {
            let end = (start + chunk).min(s.start + s.len);
            let mut ranges = Vec::new();
            layout.key_ranges(end - 1, &mut ranges);
            let n_keys = ranges.iter().map(|&(a, b)| b - a).sum();
            out.push(Task {
                span_start: s.start,
                start,
                end,
                ranges,
                n_keys,
            });
            start = end;
        }
    }
    out
}

/// Sizes shared by the forward and backward tasks.
#[derive(Clone, Copy)]
struct Geometry {
    hd: usize,
    /// head_dim rounded up to whole vectors (padding columns are zero).
    hdp: usize,
    group: usize,
    qw: usize,
    n_kv_heads: usize,
    n_heads: usize,
    scale: f32,
    /// The task's keys rounded up to whole vectors (rows of its dk/dv copy).
    nkp: usize,
    /// Stride of score rows: the task's keys plus one vector of tile overrun.
    ls: usize,
    /// Score rows of a full block, padded for the register tiles.
    rows: usize,
}

impl Geometry {
    fn new(shape: AttnShape, task: &Task) -> Self {
        let hd = shape.head_dim;
        let group = shape.n_heads / shape.n_kv_heads;
        Geometry {
            hd,
            hdp: round_up(hd, LANES),
            group,
            qw: shape.q_width(),
            n_kv_heads: shape.n_kv_heads,
            n_heads: shape.n_heads,
            scale: 1.0 / (hd as f32).sqrt(),
            nkp: round_up(task.n_keys, LANES),
            ls: odd_stride(task.n_keys + LANES - 1),
            rows: round_up(BLOCK * group, ROW_PAD),
        }
    }
}

/// Keys and values of every token, per kv head, in the layouts the tiles read: made once
/// per call, shared by all tasks.
struct Packed<'a> {
    n: usize,
    /// Stride of the transposed planes: the tokens plus one vector of tile overrun.
    ldt: usize,
    /// `[KV, hd, ldt]` keys transposed.
    kt: &'a [f32],
    /// `[KV, hd, ldt]` values transposed (backward only).
    vt: &'a [f32],
    /// `[KV, T, hdp]` keys (backward only).
    kr: &'a [f32],
    /// `[KV, T, hdp]` values (forward only).
    vr: &'a [f32],
}

/// dst: `[KV, hd, ldt]`, `dst[kvh][d][t]` = `src[t * kvw + kvh * hd + d]` (`[T, KV*hd]`);
/// columns T..ldt zero.
fn pack_transposed(src: &[f32], n: usize, shape: AttnShape, ldt: usize, dst: &mut [f32]) {
    let (hd, kvw) = (shape.head_dim, shape.kv_width());
    dst.par_chunks_mut(hd * ldt).enumerate().for_each(|(kvh, plane)| {
        // 16 tokens at a time: their rows stay in L1 while each column is written.
        for t0 in (0..n).step_by(LANES) {
            let rows = &src[t0 * kvw..(t0 + LANES).min(n) * kvw];
            for d in 0..hd {
                let col = &mut plane[d * ldt + t0..];
                for (c, row) in col.iter_mut().zip(rows.chunks_exact(kvw)) {
                    *c = row[kvh * hd + d];
                }
            }
        }
        for d in 0..hd {
            plane[d * ldt + n..(d + 1) * ldt].fill(0.0);
        }
    });
}

/// dst: `[KV, T, hdp]`, `dst[kvh][t][d]` = `src[t * kvw + kvh * hd + d]`; columns hd..hdp zero.
fn pack_rows(src: &[f32], n: usize, shape: AttnShape, hdp: usize, dst: &mut [f32]) {
    let (hd, kvw) = (shape.head_dim, shape.kv_width());
    dst.par_chunks_mut(n * hdp).enumerate().for_each(|(kvh, plane)| {
        for (row, s) in plane.chunks_exact_mut(hdp).zip(src.chunks_exact(kvw)) {
            row[..hd].copy_from_slice(&s[kvh * hd..(kvh + 1) * hd]);
            row[hd..].fill(0.0);
        }
    });
}

thread_local! {
    /// Per-thread task scratch, kept between calls (no fresh pages per layer).
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The caller's packed keys and values.
    static PACKED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// The caller's per-task dk/dv copies of the backward pass.
    static PARTIALS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

fn with_buf<T>(key: &'static LocalKey<Cell<Vec<f32>>>, len: usize, f: impl FnOnce(&mut [f32]) -> T) -> T {
    let mut buf = key.with(Cell::take);
    if buf.len() < len {
        // Exactly: a doubled capacity would stay with the thread for good.
        buf.reserve_exact(len - buf.len());
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    key.with(|c| c.set(buf));
    out
}

/// Splits `data` into consecutive pieces of `(end - start) * width` elements, one per task.
fn split_rows<'a>(mut data: &'a mut [f32], tasks: &[Task], width: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        let (head, tail) = std::mem::take(&mut data).split_at_mut((t.end - t.start) * width);
        out.push(head);
        data = tail;
    }
    out
}

/// The block's query rows (row r: token b0 + r / group, head kvh * group + r % group) of
/// `src` (`[T, H*hd]`) into `dst` (`[rows, hdp]`); padding columns and rows zero.
#[inline(always)]
fn pack_queries(src: &[f32], g: &Geometry, b0: usize, nr: usize, kvh: usize, dst: &mut [f32]) {
    for (r, row) in dst.chunks_exact_mut(g.hdp).enumerate() {
        if r < nr {
            let (t, head) = (b0 + r / g.group, kvh * g.group + r % g.group);
            let a = t * g.qw + head * g.hd;
            row[..g.hd].copy_from_slice(&src[a..a + g.hd]);
            row[g.hd..].fill(0.0);
        } else {
            row.fill(0.0);
        }
    }
}

/// `row[j]` = e^(`row[j]` - shift) over whole vectors (entries of -inf become 0).
#[inline(always)]
fn exp_vectors(row: &mut [f32], shift: f32) {
    for c in row.chunks_exact_mut(LANES) {
        let c: &mut [f32; LANES] = c.try_into().expect("a vector");
        let mut d = [0f32; LANES];
        for l in 0..LANES {
            d[l] = c[l] - shift;
        }
        *c = exp16(&d);
    }
}

/// Softmax of `row[..lim]` in place (`row[lim..zero_to]` becomes 0); returns its log-sum-exp.
/// `row` covers `lim` rounded up to a vector, and `zero_to`.
#[inline(always)]
fn softmax_row<const ISA: u8>(row: &mut [f32], lim: usize, zero_to: usize) -> f32 {
    let end = round_up(lim, LANES);
    row[lim..end].fill(f32::NEG_INFINITY);
    let max = max_vectors::<ISA>(&row[..end]);
    exp_vectors(&mut row[..end], max);
    let total = sum_vectors::<ISA>(&row[..end]);
    row[end..zero_to].fill(0.0);
    let inv = 1.0 / total;
    for p in &mut row[..lim] {
        *p *= inv;
    }
    max + total.ln()
}

/// `row[j]` = e^(`row[j]` - lse) for j < lim, 0 for lim <= j < zero_to: the probabilities
/// recomputed from the scores and their log-sum-exp.
#[inline(always)]
fn probs_row(row: &mut [f32], lim: usize, lse: f32, zero_to: usize) {
    let end = round_up(lim, LANES);
    row[lim..end].fill(f32::NEG_INFINITY);
    exp_vectors(&mut row[..end], lse);
    row[end..zero_to].fill(0.0);
}

/// `c[i][16v + l] = (add ? c : 0) + alpha * Σ_p a[i][p] * b[p][16v + l]` for rows `i < R`
/// and `nv` vectors of columns: [`tile`]s of `R x C` vectors, then single vectors.
#[inline(always)]
fn panel<const ISA: u8, const R: usize, const C: usize>(
    k: usize,
    a: Strided, // [R, k]
    b: Rows,    // [k, 16 nv]
    nv: usize,
    mut c: RowsMut, // [R, 16 nv]
    alpha: f32,
    add: bool,
) {
    let mut v = 0;
    while v + C <= nv {
        tile::<ISA, R, C>(k, a, b.from_col(v * LANES), c.from_col(v * LANES), alpha, add);
        v += C;
    }
    while v < nv {
        tile::<ISA, R, 1>(k, a, b.from_col(v * LANES), c.from_col(v * LANES), alpha, add);
        v += 1;
    }
}

#[inline(always)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}
