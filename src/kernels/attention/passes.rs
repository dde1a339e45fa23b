//! The forward and the backward pass of packed attention, a pair: the backward pass
//! recomputes the forward's probabilities from its log-sum-exps, tile for tile.

use super::*;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use crate::isa::Isa;
#[cfg(target_arch = "aarch64")]
use crate::kernels::simd::NEON;
#[cfg(target_arch = "x86_64")]
use crate::kernels::simd::{AVX2, AVX512};
use crate::kernels::simd::{PORTABLE, dot16};

/// q: `[T, H*hd]` (roped), k: `[T, KV*hd]` (roped), v: `[T, KV*hd]` → out: `[T, H*hd]`,
/// lse: `[T, H]` (log-sum-exp of each scaled score row, for the backward pass).
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
    let tasks = tasks(layout, CHUNK);
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

/// Calls `$tiles::<ISA, R, C>(args)` compiled for the widest instruction set the CPU has,
/// with that set's register tile (`4 x 4` vectors on AVX-512, `$r2 x $c2` on AVX2, `2 x 2`
/// otherwise).
macro_rules! with_widest_tiles {
    ($tiles:ident, avx2: $r2:literal x $c2:literal, $($arg:ident: $ty:ty),* $(,)?) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
            fn v512($($arg: $ty),*) {
                $tiles::<AVX512, 4, 4>($($arg),*)
            }
            #[target_feature(enable = "avx2,fma")]
            fn v256($($arg: $ty),*) {
                $tiles::<AVX2, $r2, $c2>($($arg),*)
            }
            match Isa::best() {
                // SAFETY: Isa::best() verified the CPU has these features.
                Isa::Avx512 => return unsafe { v512($($arg),*) },
                Isa::Avx2 => return unsafe { v256($($arg),*) },
                _ => {}
            }
        }
        #[cfg(target_arch = "aarch64")]
        if Isa::best() == Isa::Neon {
            return $tiles::<NEON, 2, 2>($($arg),*);
        }
        $tiles::<PORTABLE, 2, 2>($($arg),*)
    }};
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
    // AVX2 has 16 registers: 6 rows of one 16-lane vector (two ymm) keep 12 chains in
    // flight for 8 loads a step, where 2 x 2 vectors kept 8 for 6 (on Zen 3, whose two FMA
    // pipes need 8 to cover their latency, forward tasks took a fifth less time).
    with_widest_tiles!(
        forward_tiles,
        avx2: 6 x 1,
        q: &[f32],
        pk: &Packed<'_>,
        g: &Geometry,
        task: &Task,
        out: &mut [f32],
        lse: &mut [f32],
        buf: &mut [f32],
    )
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

/// What [`attention_backward_with_delta`] reads of its forward pass: the inputs `q`, `k`,
/// `v` and the `lse` of [`attention_forward`].
#[derive(Clone, Copy, Debug)]
pub struct AttnInputs<'a> {
    pub q: &'a [f32],   // [T, H*hd]
    pub k: &'a [f32],   // [T, KV*hd]
    pub v: &'a [f32],   // [T, KV*hd]
    pub lse: &'a [f32], // [T, H]
}

/// D = rowsum(dout ⊙ out) per token and head, delta: `[T, H]`: the softmax backward's
/// correction term, all the backward pass needs of the forward's output (so a caller can
/// reuse the output's buffer once it has this).
pub fn attention_delta(out: &[f32], dout: &[f32], n: usize, shape: AttnShape, delta: &mut [f32]) {
    let (hd, qw, h) = (shape.head_dim, shape.q_width(), shape.n_heads);
    assert!(
        out.len() >= n * qw && dout.len() >= n * qw && delta.len() >= n * h,
        "attention: out/dout/delta shorter than {n} tokens"
    );
    for t in 0..n {
        for head in 0..h {
            let a = t * qw + head * hd;
            delta[t * h + head] = dot16(&dout[a..a + hd], &out[a..a + hd]);
        }
    }
}

/// Adds dL/dq, dL/dk, dL/dv given dL/dout: [T, H*hd], from the saved forward inputs,
/// output and lse. dk and dv receive contributions from many queries: each task adds its
/// own into a private copy, and the copies are summed in task order (deterministic for
/// any thread count).
pub fn attention_backward(saved: AttnSaved, dout: &[f32], layout: &AttnLayout, shape: AttnShape, grads: AttnGrads) {
    let AttnSaved { q, k, v, out, lse } = saved;
    let n = layout.n_tokens();
    let mut delta = vec![0f32; n * shape.n_heads];
    attention_delta(out, dout, n, shape, &mut delta);
    attention_backward_with_delta(AttnInputs { q, k, v, lse }, &delta, dout, layout, shape, grads);
}

/// [`attention_backward`] with the forward's output already reduced to `delta` by
/// [`attention_delta`]: the same bits.
pub fn attention_backward_with_delta(
    saved: AttnInputs,
    delta: &[f32],
    dout: &[f32],
    layout: &AttnLayout,
    shape: AttnShape,
    grads: AttnGrads,
) {
    let AttnInputs { q, k, v, lse } = saved;
    let AttnGrads { dq, dk, dv } = grads;
    let n = layout.n_tokens();
    let (hd, qw, kvw, h) = (shape.head_dim, shape.q_width(), shape.kv_width(), shape.n_heads);
    assert!(q.len() >= n * qw, "attention: q shorter than {n} tokens");
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
    assert!(
        lse.len() >= n * h && delta.len() >= n * h,
        "attention: lse/delta shorter than {n} tokens"
    );
    if n == 0 || hd == 0 {
        return;
    }
    let (hdp, ldt) = (round_up(hd, LANES), odd_stride(n + LANES - 1));
    let kv = shape.n_kv_heads;
    let tasks = tasks(layout, BACKWARD_CHUNK);
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
        let x = BwdInputs { q, delta, lse, dout };
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

/// dk, dv (`[T, KV*hd]`) += every task's copy, in task order, in parallel over key tokens.
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

/// The saved forward tensors the backward tasks read (k and v come packed).
struct BwdInputs<'a> {
    q: &'a [f32],
    delta: &'a [f32],
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
    with_widest_tiles!(
        backward_tiles,
        avx2: 6 x 1,
        x: &BwdInputs<'_>,
        pk: &Packed<'_>,
        g: &Geometry,
        task: &Task,
        dq: &mut [f32],
        part: &mut [f32],
        buf: &mut [f32],
    )
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
                lse_r[r] = x.lse[t * g.n_heads + head];
                d_r[r] = x.delta[t * g.n_heads + head];
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
            // so each tile's reduction starts at the first row that sees it. The scores are
            // zero up to `zero_to` only: where R keys would pass it, tiles of 2 finish (the
            // bits of an output do not depend on the tile that computes it).
            let mut j0 = 0;
            while j0 < block_lim {
                let r0 = g.group * (j0 + 1).saturating_sub(base + 1);
                let rows = nr - r0;
                let (pj, dsj) = (&p[r0 * g.ls + j0..], &ds[r0 * g.ls + j0..]);
                let (doj, qj) = (&dob[r0 * g.hdp..], &qb[r0 * g.hdp..]);
                macro_rules! key_tile {
                    ($keys:expr) => {{
                        panel::<ISA, { $keys }, C>(
                            rows,
                            Strided::columns(pj, g.ls),
                            Rows::new(doj, g.hdp),
                            nv,
                            RowsMut::new(&mut pdv[j0 * g.hdp..], g.hdp),
                            1.0,
                            true,
                        );
                        panel::<ISA, { $keys }, C>(
                            rows,
                            Strided::columns(dsj, g.ls),
                            Rows::new(qj, g.hdp),
                            nv,
                            RowsMut::new(&mut pdk[j0 * g.hdp..], g.hdp),
                            g.scale,
                            true,
                        );
                        j0 += $keys;
                    }};
                }
                if j0 + R <= zero_to {
                    key_tile!(R);
                } else {
                    key_tile!(2);
                }
            }
            b0 = b1;
        }
    }
}
