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

use super::simd::{AVX2, AVX512, PORTABLE, Rows, RowsMut, Strided, dot16, exp16, max_vectors, sum_vectors, tile};
use crate::error::{Error, Result};
use crate::isa::Isa;
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
/// At most this many tasks per span: the dk/dv copies of a long span's tasks then take
/// about 8.5 copies of its keys rather than growing with its square.
const MAX_TASKS_PER_SPAN: usize = 16;
/// Query tokens per block inside a task: the block's score rows stay in cache.
const BLOCK: usize = 16;
/// Key tokens per task of the final dk/dv reduction.
const REDUCE: usize = 64;
/// Lanes of one vector of the register tiles.
const LANES: usize = 16;
/// Largest register tile row count (scratch rows are padded to a multiple of it).
const MAX_R: usize = 4;

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

fn tasks(layout: &AttnLayout) -> Vec<Task> {
    let mut out = Vec::new();
    for s in &layout.spans {
        let chunk = CHUNK.max(s.len.div_ceil(MAX_TASKS_PER_SPAN));
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
            rows: round_up(BLOCK * group, MAX_R),
        }
    }
}

/// Keys and values of every token, per kv head, in the layouts the tiles read: made once
/// per call, shared by all tasks.
struct Packed<'a> {
    n: usize,
    /// Stride of the transposed planes: the tokens plus one vector of tile overrun.
    ldt: usize,
    /// [KV, hd, ldt] keys transposed.
    kt: &'a [f32],
    /// [KV, hd, ldt] values transposed (backward only).
    vt: &'a [f32],
    /// [KV, T, hdp] keys (backward only).
    kr: &'a [f32],
    /// [KV, T, hdp] values (forward only).
    vr: &'a [f32],
}

/// dst: [KV, hd, ldt], dst[kvh][d][t] = src[t * kvw + kvh * hd + d] ([T, KV*hd]);
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

/// dst: [KV, T, hdp], dst[kvh][t][d] = src[t * kvw + kvh * hd + d]; columns hd..hdp zero.
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
    let n = layout.n_tokens();
    let (hd, qw, kvw, h) = (shape.head_dim, shape.q_width(), shape.kv_width(), shape.n_heads);
    assert!(
        q.len() >= n * qw && out.len() >= n * qw,
        "attention: q/out shorter than {n} tokens"
    );
    assert!(
        k.len() >= n * kvw && v.len() >= n * kvw,
        "attention: k/v shorter than {n} tokens"
    );
    assert!(lse.len() >= n * h, "attention: lse shorter than {n} tokens");
    if n == 0 || hd == 0 {
        return;
    }
    let (hdp, ldt) = (round_up(hd, LANES), odd_stride(n + LANES - 1));
    let kv = shape.n_kv_heads;
    let tasks = tasks(layout);
    with_buf(&PACKED, kv * hd * ldt + kv * n * hdp, |buf| {
        let (kt, vr) = buf.split_at_mut(kv * hd * ldt);
        rayon::join(
            || pack_transposed(k, n, shape, ldt, kt),
            || pack_rows(v, n, shape, hdp, vr),
        );
        let packed = Packed {
            n,
            ldt,
            kt,
            vt: &[],
            kr: &[],
            vr,
        };
        let outs = split_rows(&mut out[..n * qw], &tasks, qw);
        let lses = split_rows(&mut lse[..n * h], &tasks, h);
        tasks
            .par_iter()
            .zip(outs.into_par_iter().zip(lses.into_par_iter()))
            .for_each(|(task, (o, l))| {
                let g = Geometry::new(shape, task);
                let len = 2 * g.rows * g.hdp + g.rows * g.ls;
                with_buf(&SCRATCH, len, |s| forward_task(q, &packed, &g, task, o, l, s));
            });
    });
}

/// One forward task, compiled for the widest instruction set the CPU has.
fn forward_task(
    q: &[f32],
    pk: &Packed<'_>,
    g: &Geometry,
    task: &Task,
    out: &mut [f32],
    lse: &mut [f32],
    buf: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn v512(
            q: &[f32],
            pk: &Packed<'_>,
            g: &Geometry,
            task: &Task,
            out: &mut [f32],
            lse: &mut [f32],
            buf: &mut [f32],
        ) {
            forward_tiles::<AVX512, 4, 4>(q, pk, g, task, out, lse, buf)
        }
        #[target_feature(enable = "avx2,fma")]
        fn v256(
            q: &[f32],
            pk: &Packed<'_>,
            g: &Geometry,
            task: &Task,
            out: &mut [f32],
            lse: &mut [f32],
            buf: &mut [f32],
        ) {
            forward_tiles::<AVX2, 2, 2>(q, pk, g, task, out, lse, buf)
        }
        match Isa::best() {
            // SAFETY: Isa::best() verified the CPU has these features.
            Isa::Avx512 => return unsafe { v512(q, pk, g, task, out, lse, buf) },
            Isa::Avx2 => return unsafe { v256(q, pk, g, task, out, lse, buf) },
            _ => {}
        }
    }
    forward_tiles::<PORTABLE, 2, 2>(q, pk, g, task, out, lse, buf)
}

/// One task of the forward pass with `R x (C * 16)` register tiles: for each kv head and
/// block of query rows (the group's heads of `BLOCK` tokens), the scores against each
/// visible key range, their softmax, and the output from each range's values.
#[inline(always)]
fn forward_tiles<const ISA: u8, const R: usize, const C: usize>(
    q: &[f32],
    pk: &Packed<'_>,
    g: &Geometry,
    task: &Task,
    out: &mut [f32], // [task tokens, H*hd]
    lse: &mut [f32], // [task tokens, H]
    buf: &mut [f32],
) {
    let (qb, buf) = buf.split_at_mut(g.rows * g.hdp);
    let (ob, buf) = buf.split_at_mut(g.rows * g.hdp);
    let s = &mut buf[..g.rows * g.ls];
    let anc = task.n_ancestors();
    for kvh in 0..g.n_kv_heads {
        let kt = &pk.kt[kvh * g.hd * pk.ldt..(kvh + 1) * g.hd * pk.ldt];
        let vr = &pk.vr[kvh * pk.n * g.hdp..(kvh + 1) * pk.n * g.hdp];
        let mut b0 = task.start;
        while b0 < task.end {
            let b1 = (b0 + BLOCK).min(task.end);
            let nr = (b1 - b0) * g.group;
            // Row r is token b0 + r / group, head kvh * group + r % group; it sees keys
            // 0..lim(r) (its ancestors, then its own span up to itself).
            let base = anc + (b0 - task.span_start);
            let lim = |r: usize| base + r / g.group + 1;
            let zero_to = round_up(lim(nr - 1), LANES);
            pack_queries(q, g, b0, nr, kvh, qb);
            for i0 in (0..nr).step_by(R) {
                let tile_lim = lim((i0 + R).min(nr) - 1);
                let mut o = 0;
                for &(a, b) in &task.ranges {
                    // Whole vectors: the overrun lands on the next range's columns (computed
                    // after) or past every row's limit.
                    let cnt = (b - a).min(tile_lim.saturating_sub(o));
                    if cnt > 0 {
                        let (qi, si) = (&qb[i0 * g.hdp..], &mut s[i0 * g.ls + o..]);
                        panel::<ISA, R, C>(
                            g.hd,
                            Strided::rows(qi, g.hdp),
                            Rows::new(&kt[a..], pk.ldt),
                            cnt.div_ceil(LANES),
                            RowsMut::new(si, g.ls),
                            g.scale,
                            false,
                        );
                    }
                    o += b - a;
                }
            }
            for r in 0..nr {
                let row = &mut s[r * g.ls..(r + 1) * g.ls];
                let (t, head) = (b0 + r / g.group, kvh * g.group + r % g.group);
                lse[(t - task.start) * g.n_heads + head] = softmax_row::<ISA>(row, lim(r), zero_to);
            }
            for i0 in (0..nr).step_by(R) {
                let tile_lim = lim((i0 + R).min(nr) - 1);
                let mut o = 0;
                for (idx, &(a, b)) in task.ranges.iter().enumerate() {
                    let cnt = (b - a).min(tile_lim.saturating_sub(o));
                    let (si, oi) = (&s[i0 * g.ls + o..], &mut ob[i0 * g.hdp..]);
                    panel::<ISA, R, C>(
                        cnt,
                        Strided::rows(si, g.ls),
                        Rows::new(&vr[a * g.hdp..], g.hdp),
                        g.hdp / LANES,
                        RowsMut::new(oi, g.hdp),
                        1.0,
                        idx > 0,
                    );
                    o += b - a;
                }
            }
            for r in 0..nr {
                let (t, head) = (b0 + r / g.group, kvh * g.group + r % g.group);
                let dst = (t - task.start) * g.qw + head * g.hd;
                out[dst..dst + g.hd].copy_from_slice(&ob[r * g.hdp..r * g.hdp + g.hd]);
            }
            b0 = b1;
        }
    }
}

/// The block's query rows (row r: token b0 + r / group, head kvh * group + r % group) of
/// `src` ([T, H*hd]) into `dst` ([rows, hdp]); padding columns and rows zero.
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

/// row[j] = e^(row[j] - shift) over whole vectors (entries of -inf become 0).
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

/// Softmax of row[..lim] in place (row[lim..zero_to] becomes 0); returns its log-sum-exp.
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

/// row[j] = e^(row[j] - lse) for j < lim, 0 for lim <= j < zero_to: the probabilities
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

/// What [`attention_backward`] reads of its forward pass: the inputs `q`, `k`, `v` and the
/// outputs `out` and `lse` of [`attention_forward`] (same shapes).
#[derive(Clone, Copy, Debug)]
pub struct AttnSaved<'a> {
    pub q: &'a [f32],   // [T, H*hd]
    pub k: &'a [f32],   // [T, KV*hd]
    pub v: &'a [f32],   // [T, KV*hd]
    pub out: &'a [f32], // [T, H*hd]
    pub lse: &'a [f32], // [T, H]
}

/// The gradients [`attention_backward`] adds into, shaped like `q`, `k`, `v`.
#[derive(Debug)]
pub struct AttnGrads<'a> {
    pub dq: &'a mut [f32], // [T, H*hd]
    pub dk: &'a mut [f32], // [T, KV*hd]
    pub dv: &'a mut [f32], // [T, KV*hd]
}

/// Adds dL/dq, dL/dk, dL/dv given dL/dout: [T, H*hd], from the saved forward inputs,
/// output and lse. dk and dv receive contributions from many queries: each task adds its
/// own into a private copy, and the copies are summed in task order (deterministic for
/// any thread count).
pub fn attention_backward(saved: AttnSaved, dout: &[f32], layout: &AttnLayout, shape: AttnShape, grads: AttnGrads) {
    let AttnSaved { q, k, v, out, lse } = saved;
    let AttnGrads { dq, dk, dv } = grads;
    let n = layout.n_tokens();
    let (hd, qw, kvw, h) = (shape.head_dim, shape.q_width(), shape.kv_width(), shape.n_heads);
    assert!(
        q.len() >= n * qw && out.len() >= n * qw,
        "attention: q/out shorter than {n} tokens"
    );
    assert!(
        dout.len() >= n * qw && dq.len() >= n * qw,
        "attention: dout/dq shorter than {n} tokens"
    );
    assert!(
        k.len() >= n * kvw && v.len() >= n * kvw,
        "attention: k/v shorter than {n} tokens"
    );
    assert!(
        dk.len() >= n * kvw && dv.len() >= n * kvw,
        "attention: dk/dv shorter than {n} tokens"
    );
    assert!(lse.len() >= n * h, "attention: lse shorter than {n} tokens");
    if n == 0 || hd == 0 {
        return;
    }
    let (hdp, ldt) = (round_up(hd, LANES), odd_stride(n + LANES - 1));
    let kv = shape.n_kv_heads;
    let tasks = tasks(layout);
    // Each task's dk/dv copy: [kv head][dk, dv][task keys (padded)][hdp].
    let sizes: Vec<usize> = tasks.iter().map(|t| kv * 2 * round_up(t.n_keys, LANES) * hdp).collect();
    let total: usize = sizes.iter().sum();
    with_buf(&PACKED, 2 * kv * hd * ldt + kv * n * hdp, |buf| {
        let (kt, buf) = buf.split_at_mut(kv * hd * ldt);
        let (vt, kr) = buf.split_at_mut(kv * hd * ldt);
        rayon::join(
            || pack_transposed(k, n, shape, ldt, kt),
            || {
                rayon::join(
                    || pack_transposed(v, n, shape, ldt, vt),
                    || pack_rows(k, n, shape, hdp, kr),
                )
            },
        );
        let packed = Packed {
            n,
            ldt,
            kt,
            vt,
            kr,
            vr: &[],
        };
        let x = BwdInputs { q, out, lse, dout };
        with_buf(&PARTIALS, total, |partials| {
            let mut parts = Vec::with_capacity(tasks.len());
            let mut rest = &mut *partials;
            for &len in &sizes {
                let (head, tail) = rest.split_at_mut(len);
                parts.push(head);
                rest = tail;
            }
            let dqs = split_rows(&mut dq[..n * qw], &tasks, qw);
            tasks
                .par_iter()
                .zip(dqs.into_par_iter().zip(parts.into_par_iter()))
                .for_each(|(task, (dqt, part))| {
                    let g = Geometry::new(shape, task);
                    let len = 3 * g.rows * g.hdp + 2 * g.rows * g.ls + 2 * g.rows;
                    with_buf(&SCRATCH, len, |s| backward_task(&x, &packed, &g, task, dqt, part, s));
                });
            reduce_partials(&tasks, &sizes, partials, shape, n, dk, dv);
        });
    });
}

/// dk, dv ([T, KV*hd]) += every task's copy, in task order, in parallel over key tokens.
fn reduce_partials(
    tasks: &[Task],
    sizes: &[usize],
    partials: &[f32],
    shape: AttnShape,
    n: usize,
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (hd, kvw) = (shape.head_dim, shape.kv_width());
    let hdp = round_up(hd, LANES);
    let offsets: Vec<usize> = sizes
        .iter()
        .scan(0, |acc, &s| {
            let o = *acc;
            *acc += s;
            Some(o)
        })
        .collect();
    dk[..n * kvw]
        .par_chunks_mut(REDUCE * kvw)
        .zip(dv[..n * kvw].par_chunks_mut(REDUCE * kvw))
        .enumerate()
        .for_each(|(ci, (dkc, dvc))| {
            let t0 = ci * REDUCE;
            let t1 = t0 + dkc.len() / kvw;
            for (task, &off) in tasks.iter().zip(&offsets) {
                let plane = round_up(task.n_keys, LANES) * hdp;
                let mut j0 = 0;
                for &(a, b) in &task.ranges {
                    for key in a.max(t0)..b.min(t1) {
                        let j = j0 + key - a;
                        for kvh in 0..shape.n_kv_heads {
                            let src = off + 2 * kvh * plane + j * hdp;
                            let dst = (key - t0) * kvw + kvh * hd;
                            add_into(&mut dkc[dst..dst + hd], &partials[src..]);
                            add_into(&mut dvc[dst..dst + hd], &partials[src + plane..]);
                        }
                    }
                    j0 += b - a;
                }
            }
        });
}

#[inline(always)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d += s;
    }
}

/// The saved forward tensors the backward tasks read (k and v come packed).
struct BwdInputs<'a> {
    q: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    dout: &'a [f32],
}

/// One backward task, compiled for the widest instruction set the CPU has.
fn backward_task(
    x: &BwdInputs<'_>,
    pk: &Packed<'_>,
    g: &Geometry,
    task: &Task,
    dq: &mut [f32],
    part: &mut [f32],
    buf: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        fn v512(
            x: &BwdInputs<'_>,
            pk: &Packed<'_>,
            g: &Geometry,
            task: &Task,
            dq: &mut [f32],
            part: &mut [f32],
            buf: &mut [f32],
        ) {
            backward_tiles::<AVX512, 4, 4>(x, pk, g, task, dq, part, buf)
        }
        #[target_feature(enable = "avx2,fma")]
        fn v256(
            x: &BwdInputs<'_>,
            pk: &Packed<'_>,
            g: &Geometry,
            task: &Task,
            dq: &mut [f32],
            part: &mut [f32],
            buf: &mut [f32],
        ) {
            backward_tiles::<AVX2, 2, 2>(x, pk, g, task, dq, part, buf)
        }
        match Isa::best() {
            // SAFETY: Isa::best() verified the CPU has these features.
            Isa::Avx512 => return unsafe { v512(x, pk, g, task, dq, part, buf) },
            Isa::Avx2 => return unsafe { v256(x, pk, g, task, dq, part, buf) },
            _ => {}
        }
    }
    backward_tiles::<PORTABLE, 2, 2>(x, pk, g, task, dq, part, buf)
}

/// One task of the backward pass. Per kv head and block of query rows it recomputes
/// P = exp(S - lse), then dP = dO Vᵀ, dS = P ⊙ (dP - D) with D = rowsum(dO ⊙ O),
/// dQ = scale dS K into dq, and adds dV += Pᵀ dO, dK += scale dSᵀ Q into the task's copy
/// (`part`: [kv head][dk, dv][keys (padded)][hdp]), block after block.
#[inline(always)]
fn backward_tiles<const ISA: u8, const R: usize, const C: usize>(
    x: &BwdInputs<'_>,
    pk: &Packed<'_>,
    g: &Geometry,
    task: &Task,
    dq: &mut [f32], // [task tokens, H*hd]
    part: &mut [f32],
    buf: &mut [f32],
) {
    let (qb, buf) = buf.split_at_mut(g.rows * g.hdp);
    let (dob, buf) = buf.split_at_mut(g.rows * g.hdp);
    let (dqb, buf) = buf.split_at_mut(g.rows * g.hdp);
    let (p, buf) = buf.split_at_mut(g.rows * g.ls);
    let (ds, buf) = buf.split_at_mut(g.rows * g.ls);
    let (lse_r, buf) = buf.split_at_mut(g.rows);
    let d_r = &mut buf[..g.rows];
    part.fill(0.0);
    let plane = g.nkp * g.hdp;
    let anc = task.n_ancestors();
    let nv = g.hdp / LANES;
    for kvh in 0..g.n_kv_heads {
        let kt = &pk.kt[kvh * g.hd * pk.ldt..(kvh + 1) * g.hd * pk.ldt];
        let vt = &pk.vt[kvh * g.hd * pk.ldt..(kvh + 1) * g.hd * pk.ldt];
        let kr = &pk.kr[kvh * pk.n * g.hdp..(kvh + 1) * pk.n * g.hdp];
        let (pdk, pdv) = part[2 * kvh * plane..2 * (kvh + 1) * plane].split_at_mut(plane);
        let mut b0 = task.start;
        while b0 < task.end {
            let b1 = (b0 + BLOCK).min(task.end);
            let nr = (b1 - b0) * g.group;
            let base = anc + (b0 - task.span_start);
            let lim = |r: usize| base + r / g.group + 1;
            let block_lim = lim(nr - 1);
            let zero_to = round_up(block_lim, LANES);
            pack_queries(x.q, g, b0, nr, kvh, qb);
            pack_queries(x.dout, g, b0, nr, kvh, dob);
            for r in 0..nr {
                let (t, head) = (b0 + r / g.group, kvh * g.group + r % g.group);
                let a = t * g.qw + head * g.hd;
                lse_r[r] = x.lse[t * g.n_heads + head];
                // D = dout · out: the softmax backward's correction term.
                d_r[r] = dot16(&x.dout[a..a + g.hd], &x.out[a..a + g.hd]);
            }
            for i0 in (0..nr).step_by(R) {
                let tile_lim = lim((i0 + R).min(nr) - 1);
                let (qi, doi) = (&qb[i0 * g.hdp..], &dob[i0 * g.hdp..]);
                let mut o = 0;
                for &(a, b) in &task.ranges {
                    let cnt = (b - a).min(tile_lim.saturating_sub(o));
                    if cnt > 0 {
                        let nvk = cnt.div_ceil(LANES);
                        let (pi, dsi) = (&mut p[i0 * g.ls + o..], &mut ds[i0 * g.ls + o..]);
                        panel::<ISA, R, C>(
                            g.hd,
                            Strided::rows(qi, g.hdp),
                            Rows::new(&kt[a..], pk.ldt),
                            nvk,
                            RowsMut::new(pi, g.ls),
                            g.scale,
                            false,
                        );
                        panel::<ISA, R, C>(
                            g.hd,
                            Strided::rows(doi, g.hdp),
                            Rows::new(&vt[a..], pk.ldt),
                            nvk,
                            RowsMut::new(dsi, g.ls),
                            1.0,
                            false,
                        );
                    }
                    o += b - a;
                }
            }
            for r in 0..nr {
                let l = lim(r);
                let pr = &mut p[r * g.ls..(r + 1) * g.ls];
                probs_row(pr, l, lse_r[r], zero_to);
                let dsr = &mut ds[r * g.ls..(r + 1) * g.ls];
                for (s, &pj) in dsr[..l].iter_mut().zip(&pr[..l]) {
                    *s = pj * (*s - d_r[r]);
                }
                dsr[l..zero_to].fill(0.0);
            }
            for i0 in (0..nr).step_by(R) {
                let tile_lim = lim((i0 + R).min(nr) - 1);
                let mut o = 0;
                for (idx, &(a, b)) in task.ranges.iter().enumerate() {
                    let cnt = (b - a).min(tile_lim.saturating_sub(o));
                    let (dsi, dqi) = (&ds[i0 * g.ls + o..], &mut dqb[i0 * g.hdp..]);
                    panel::<ISA, R, C>(
                        cnt,
                        Strided::rows(dsi, g.ls),
                        Rows::new(&kr[a * g.hdp..], g.hdp),
                        nv,
                        RowsMut::new(dqi, g.hdp),
                        g.scale,
                        idx > 0,
                    );
                    o += b - a;
                }
            }
            for r in 0..nr {
                let (t, head) = (b0 + r / g.group, kvh * g.group + r % g.group);
                let dst = (t - task.start) * g.qw + head * g.hd;
                add_into(&mut dq[dst..dst + g.hd], &dqb[r * g.hdp..]);
            }
            // Key tiles of R keys; a key beyond a row's own position gets nothing from it,
            // so each tile's reduction starts at the first row that sees it.
            for j0 in (0..block_lim).step_by(R) {
                let r0 = g.group * (j0 + 1).saturating_sub(base + 1);
                let rows = nr - r0;
                let (pj, dsj) = (&p[r0 * g.ls + j0..], &ds[r0 * g.ls + j0..]);
                let (doj, qj) = (&dob[r0 * g.hdp..], &qb[r0 * g.hdp..]);
                panel::<ISA, R, C>(
                    rows,
                    Strided::columns(pj, g.ls),
                    Rows::new(doj, g.hdp),
                    nv,
                    RowsMut::new(&mut pdv[j0 * g.hdp..], g.hdp),
                    1.0,
                    true,
                );
                panel::<ISA, R, C>(
                    rows,
                    Strided::columns(dsj, g.ls),
                    Rows::new(qj, g.hdp),
                    nv,
                    RowsMut::new(&mut pdk[j0 * g.hdp..], g.hdp),
                    g.scale,
                    true,
                );
            }
            b0 = b1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
            })
            .collect()
    }

    fn spans(list: &[(usize, Option<usize>)]) -> AttnLayout {
        let mut start = 0;
        let spans = list
            .iter()
            .map(|&(len, parent)| {
                let s = Span { start, len, parent };
                start += len;
                s
            })
            .collect();
        AttnLayout::new(spans).expect("valid layout")
    }

    /// Layouts covering: one causal sequence longer than a task, several sequences, two
    /// packed preference pairs, a chain of spans deeper than one level with a span longer
    /// than a task, an empty span and single tokens.
    fn layouts() -> Vec<(&'static str, AttnLayout)> {
        vec![
            // Longer than 16 tasks of 64 tokens.
            ("one sequence", AttnLayout::sequences(&[1100])),
            ("sequences", AttnLayout::sequences(&[5, 70, 1, 17])),
            (
                "preference pairs",
                spans(&[
                    (23, None),
                    (19, Some(0)),
                    (7, Some(0)),
                    (40, None),
                    (33, Some(3)),
                    (29, Some(3)),
                ]),
            ),
            (
                "chain",
                spans(&[
                    (10, None),
                    (9, Some(0)),
                    (0, Some(1)),
                    (80, Some(1)),
                    (3, Some(0)),
                    (1, Some(4)),
                ]),
            ),
        ]
    }

    fn shapes() -> Vec<AttnShape> {
        vec![
            AttnShape {
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 64,
            },
            AttnShape {
                n_heads: 4,
                n_kv_heads: 1,
                head_dim: 24,
            },
            AttnShape {
                n_heads: 2,
                n_kv_heads: 2,
                head_dim: 8,
            },
        ]
    }

    struct Case {
        q: Vec<f32>,
        k: Vec<f32>,
        v: Vec<f32>,
        dout: Vec<f32>,
    }

    fn case(layout: &AttnLayout, shape: AttnShape, seed: u64) -> Case {
        let n = layout.n_tokens();
        Case {
            q: values(n * shape.q_width(), seed, 3.0),
            k: values(n * shape.kv_width(), seed + 1, 3.0),
            v: values(n * shape.kv_width(), seed + 2, 2.0),
            dout: values(n * shape.q_width(), seed + 3, 2.0),
        }
    }

    /// Row by row in f64: out, lse, and the gradients dq, dk, dv.
    fn reference<'c>(c: &'c Case, layout: &AttnLayout, shape: AttnShape) -> [Vec<f64>; 5] {
        let n = layout.n_tokens();
        let (hd, qw, kvw, h) = (shape.head_dim, shape.q_width(), shape.kv_width(), shape.n_heads);
        let group = h / shape.n_kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let (mut out, mut lse) = (vec![0f64; n * qw], vec![0f64; n * h]);
        let (mut dq, mut dk, mut dv) = (vec![0f64; n * qw], vec![0f64; n * kvw], vec![0f64; n * kvw]);
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
        let mut ranges = Vec::new();
        for t in 0..n {
            layout.key_ranges(t, &mut ranges);
            let keys: Vec<usize> = ranges.iter().flat_map(|&(a, b)| a..b).collect();
            for head in 0..h {
                let kvh = head / group;
                let qa = t * qw + head * hd;
                let qh = &c.q[qa..qa + hd];
                let kv = |x: &'c [f32], j: usize| -> &'c [f32] { &x[j * kvw + kvh * hd..j * kvw + (kvh + 1) * hd] };
                let s: Vec<f64> = keys.iter().map(|&j| dot(qh, kv(&c.k, j)) * scale).collect();
                let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - max).exp()).sum();
                let l = max + sum.ln();
                lse[t * h + head] = l;
                let p: Vec<f64> = s.iter().map(|x| (x - l).exp()).collect();
                for (&j, &pj) in keys.iter().zip(&p) {
                    for (d, &vd) in kv(&c.v, j).iter().enumerate() {
                        out[qa + d] += pj * vd as f64;
                    }
                }
                let doh = &c.dout[qa..qa + hd];
                let dsum: f64 = (0..hd).map(|d| doh[d] as f64 * out[qa + d]).sum();
                for (&j, &pj) in keys.iter().zip(&p) {
                    let dp = dot(doh, kv(&c.v, j));
                    let ds = pj * (dp - dsum);
                    let kj = kv(&c.k, j);
                    for d in 0..hd {
                        dq[qa + d] += ds * scale * kj[d] as f64;
                        dk[j * kvw + kvh * hd + d] += ds * scale * qh[d] as f64;
                        dv[j * kvw + kvh * hd + d] += pj * doh[d] as f64;
                    }
                }
            }
        }
        [out, lse, dq, dk, dv]
    }

    fn assert_close(name: &str, what: &str, got: &[f32], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{name}: {what} length");
        let scale = want.iter().fold(0f64, |m, x| m.max(x.abs())).max(1e-3);
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * scale,
                "{name}: {what}[{i}] = {g}, reference {w} (tolerance {tol} x {scale})"
            );
        }
    }

    fn run(c: &Case, layout: &AttnLayout, shape: AttnShape, init: f32) -> [Vec<f32>; 5] {
        let n = layout.n_tokens();
        let (qw, kvw) = (shape.q_width(), shape.kv_width());
        let (mut out, mut lse) = (vec![f32::NAN; n * qw], vec![f32::NAN; n * shape.n_heads]);
        attention_forward(&c.q, &c.k, &c.v, layout, shape, &mut out, &mut lse);
        let (mut dq, mut dk, mut dv) = (vec![init; n * qw], vec![init; n * kvw], vec![init; n * kvw]);
        let saved = AttnSaved {
            q: &c.q,
            k: &c.k,
            v: &c.v,
            out: &out,
            lse: &lse,
        };
        let grads = AttnGrads {
            dq: &mut dq,
            dk: &mut dk,
            dv: &mut dv,
        };
        attention_backward(saved, &c.dout, layout, shape, grads);
        [out, lse, dq, dk, dv]
    }

    #[test]
    fn forward_and_backward_match_the_row_by_row_reference() {
        for (name, layout) in layouts() {
            for shape in shapes() {
                let c = case(&layout, shape, 7);
                let want = reference(&c, &layout, shape);
                // The gradients are added to what the buffers hold.
                let got = run(&c, &layout, shape, 0.5);
                let label = format!("{name}, {shape:?}");
                assert_close(&label, "out", &got[0], &want[0], 2e-6);
                assert_close(&label, "lse", &got[1], &want[1], 2e-6);
                for (i, what) in [(2, "dq"), (3, "dk"), (4, "dv")] {
                    let shifted: Vec<f64> = want[i].iter().map(|x| x + 0.5).collect();
                    assert_close(&label, what, &got[i], &shifted, 4e-6);
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        for ((_, layout), shape) in layouts().into_iter().zip(shapes().into_iter().cycle()) {
            let c = case(&layout, shape, 11);
            let runs: Vec<[Vec<f32>; 5]> = [1, 2, 3]
                .iter()
                .map(|&threads| {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("thread pool");
                    pool.install(|| run(&c, &layout, shape, 0.0))
                })
                .collect();
            for r in &runs[1..] {
                for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&r[i]),
                        bits(&runs[0][i]),
                        "{what} differs between thread counts, {shape:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn extreme_scores_stay_finite() {
        // Scores of several hundred: the softmax must subtract the row maximum.
        let layout = AttnLayout::sequences(&[40]);
        let shape = shapes()[0];
        let mut c = case(&layout, shape, 3);
        for x in c.q.iter_mut() {
            *x *= 40.0;
        }
        let want = reference(&c, &layout, shape);
        let got = run(&c, &layout, shape, 0.0);
        assert!(got.iter().all(|g| g.iter().all(|x| x.is_finite())));
        assert_close("large scores", "out", &got[0], &want[0], 1e-5);
        assert_close("large scores", "lse", &got[1], &want[1], 1e-6);
    }
}
