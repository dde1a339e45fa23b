//! Every backward pass against finite differences, and every backward's accumulation into
//! its gradient buffer.
//!
//! Each check differentiates `L = sum(r * out)` with a random weighting `r` (never
//! `sum(out)`: a softmax row sums to one, so its plain sum has a zero gradient and hides
//! any bug). Kernels are checked against an f64 re-implementation of their forward pass
//! (itself checked against the kernel's forward), whose central differences are exact to
//! ~1e-9; so the tolerance only has to absorb the f32 rounding of the analytic gradient.
//! The whole network has no f64 path: its finite differences run through the f32 forward
//! pass, with Richardson extrapolation and a tolerance derived from that pass's rounding.

mod common;

use common::tiny::{TinySpec, fresh_dir, write_model};
use nudge::adapter::{Adapter, LoraConfig};
use nudge::data::{TokenizedPair, TokenizedUnpaired};
use nudge::kernels::attention::{AttnGrads, AttnLayout, AttnSaved, AttnShape, attention_backward, attention_forward};
use nudge::kernels::logprob::{CHUNK, token_logprobs, token_logprobs_backward};
use nudge::kernels::lora::{LoraGrads, LoraWeights, dropout, lora_backward, lora_forward};
use nudge::kernels::matmul::{RowOrder, WeightRef, matmul_w_acc, matmul_wt};
use nudge::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use nudge::kernels::rope::{RopeTable, inv_freq, rope_backward, rope_forward};
use nudge::kernels::swiglu::{swiglu_backward, swiglu_forward};
use nudge::model::config::RopeScaling;
use nudge::model::weights::Proj;
use nudge::model::{Dropout, LoraCtx, Model, Recompute};
use nudge::objective::Loss;
use nudge::quant::DType;
use nudge::score::{Packed, ScoreItem, pack};
use nudge::train::{KlLogps, StepCtx, kto_step, pair_step};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// SplitMix64: a small deterministic source of test values.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    fn vec(&mut self, n: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi) as f32).collect()
    }
    /// Values of magnitude in [0.5, 1.5) with random signs: a prefilled gradient buffer
    /// whose every element would visibly change if a backward overwrote it.
    fn prefill(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let m = self.uniform(0.5, 1.5) as f32;
                if self.next_u64() & 1 == 0 { m } else { -m }
            })
            .collect()
    }
    fn tokens(&mut self, n: usize, vocab: usize) -> Vec<u32> {
        (0..n).map(|_| self.below(vocab) as u32).collect()
    }
}

fn up(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn dot64(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Central differences of `f` at every coordinate of `x`, all in f64.
fn fd_grad(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let lp = f(&xp);
            xp[i] = x0 - h;
            let lm = f(&xp);
            xp[i] = x0;
            (lp - lm) / (2.0 * h)
        })
        .collect()
}

/// Finite-difference step for the f64 references: truncation ~h² f''' ≈ 1e-10, rounding
/// ~1e-16 |L| / h ≈ 1e-11 |L|; both far below the f32 rounding of the analytic gradients.
const H64: f64 = 1e-5;

/// Largest |x|.
fn max_abs64(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0, |m: f64, x| m.max(x.abs() as f64))
}

/// Asserts that the f32 `got` matches the reference `want` element-wise within
/// `rtol` x max|want| (NaN fails), and that `want` is not ~0 (which would make it vacuous).
fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = max_abs64(want);
    assert!(
        scale > 1e-3,
        "{what}: reference is ~0 (max {scale:e}), the check would be vacuous"
    );
    let mut worst = (0usize, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w).abs();
        // A NaN anywhere is the worst error and fails below.
        if e.is_nan() {
            worst = (i, f64::NAN);
            break;
        }
        if e > worst.1 {
            worst = (i, e);
        }
    }
    let i = worst.0;
    eprintln!(
        "{what}: max error {:.2e} of max |reference| {scale:.3e}",
        worst.1 / scale
    );
    assert!(
        worst.1 <= rtol * scale,
        "{what}: element {i}: got {} want {} (error {:e} > {rtol:e} x max {scale:e})",
        got[i],
        want[i],
        worst.1
    );
}

/// Asserts `res == prefill + fresh` bit for bit.
fn assert_adds_exact(what: &str, res: &[f32], prefill: &[f32], fresh: &[f32]) {
    assert!(
        max_abs(fresh) > 1e-3,
        "{what}: fresh gradient is ~0, the check would be vacuous"
    );
    for (i, ((&r, &p), &g)) in res.iter().zip(prefill).zip(fresh).enumerate() {
        assert_eq!(r.to_bits(), (p + g).to_bits(), "{what}: element {i}: {r} != {p} + {g}");
    }
}

/// Asserts `res == prefill + fresh` up to the rounding of a different summation order:
/// within 1e-6 x (|prefill| + max|fresh|), i.e. a few f32 ulps. A backward that
/// overwrote the buffer would be off by |prefill| >= 0.5; one that added twice, by |fresh|.
fn assert_adds_rounded(what: &str, res: &[f32], prefill: &[f32], fresh: &[f32]) {
    let gmax = max_abs(fresh);
    assert!(gmax > 1e-3, "{what}: fresh gradient is ~0, the check would be vacuous");
    let inexact = res
        .iter()
        .zip(prefill)
        .zip(fresh)
        .filter(|((r, p), g)| r.to_bits() != (**p + **g).to_bits());
    eprintln!(
        "{what}: {} of {} elements differ from prefill + fresh by rounding",
        inexact.count(),
        res.len()
    );
    for (i, ((&r, &p), &g)) in res.iter().zip(prefill).zip(fresh).enumerate() {
        let want = p as f64 + g as f64;
        let tol = 1e-6 * (p.abs() as f64 + gmax);
        assert!(
            (r as f64 - want).abs() <= tol,
            "{what}: element {i}: {r} != {p} + {g} (tolerance {tol:e})"
        );
    }
}

fn f32_weight_bytes(w: &[f32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A packed batch of two items, each a prompt with two completions (as `score::pack`
/// builds for preference pairs): spans prompt, chosen (parent prompt), rejected (parent
/// prompt), twice.
fn two_pair_layout() -> AttnLayout {
    let prompts = [vec![0u32; 5], vec![0u32; 3]];
    let chosen = [vec![0u32; 4], vec![0u32; 2]];
    let rejected = [vec![0u32; 3], vec![0u32; 5]];
    let items: Vec<ScoreItem> = (0..2)
        .map(|i| ScoreItem {
            prompt: &prompts[i],
            completions: vec![&chosen[i], &rejected[i]],
        })
        .collect();
    let layout = pack(&items).expect("packs").layout;
    // Positions restart after the prompt for each completion, and at 0 for each item.
    let want: Vec<u32> = [0..5, 5..9, 5..8, 0..3, 3..5, 3..8].into_iter().flatten().collect();
    assert_eq!(layout.positions(), &want[..], "packed rope positions");
    layout
}

// ---------------------------------------------------------------------------------------
// Kernels against f64 finite differences
// ---------------------------------------------------------------------------------------

fn rmsnorm64(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let dim = w.len();
    x.chunks_exact(dim)
        .flat_map(|row| {
            let inv = 1.0 / (dot64(row, row) / dim as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(x, w)| x * inv * w)
        })
        .collect()
}

/// f32 rounding of the backward: each dx is two O(1) terms and a 40-term dot product,
/// ~1e-7 relative (observed <= 5e-7 of the row's largest gradient); tolerance 1e-5, while
/// a wrong sign or a missing term is off by O(1) relative.
#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let mut rng = Rng(11);
    let (rows, dim, eps) = (6, 40, 1e-5f32);
    // Rows of very different scale, one nearly zero so that eps matters.
    let mut x = rng.vec(rows * dim, -2.0, 2.0);
    for (i, row) in x.chunks_exact_mut(dim).enumerate() {
        let s = [1.0, 0.1, 3.0, 0.002, 0.7, 1.5][i];
        row.iter_mut().for_each(|v| *v *= s);
    }
    let w = rng.vec(dim, 0.5, 1.5);
    let r = rng.vec(rows * dim, -1.0, 1.0);
    let (mut y, mut inv) = (vec![0f32; rows * dim], vec![0f32; rows]);
    rmsnorm_forward(&x, &w, eps, &mut y, &mut inv);
    let (w64, r64) = (up(&w), up(&r));
    assert_close("rmsnorm forward", &y, &rmsnorm64(&up(&x), &w64, eps as f64), 1e-6);

    let mut dx = vec![0f32; rows * dim];
    rmsnorm_backward(&x, &w, &inv, &r, &mut dx);
    // A step far below the tiny row's scale (0.002), where H64 would be 0.5% of x.
    let fd = fd_grad(&up(&x), 1e-8, |x| dot64(&r64, &rmsnorm64(x, &w64, eps as f64)));
    // Row scales differ by 1000x (so do their gradients): each row on its own scale.
    for (i, (g, f)) in dx.chunks_exact(dim).zip(fd.chunks_exact(dim)).enumerate() {
        assert_close(&format!("rmsnorm dx row {i}"), g, f, 1e-5);
    }
}

/// The rotation in f64, with angles computed here from the positions (not the table).
fn rope64(x: &[f64], n_heads: usize, freqs: &[f32], positions: &[u32]) -> Vec<f64> {
    let half = freqs.len();
    let mut out = x.to_vec();
    for (row, &p) in out.chunks_exact_mut(n_heads * 2 * half).zip(positions) {
        for head in row.chunks_exact_mut(2 * half) {
            for i in 0..half {
                let angle = (p as f32 * freqs[i]) as f64;
                let (s, c) = angle.sin_cos();
                let (a, b) = (head[i], head[i + half]);
                head[i] = a * c - b * s;
                head[i + half] = b * c + a * s;
            }
        }
    }
    out
}

/// rope is a rotation: its exact gradient is the transposed rotation of r. The backward
/// does two products per element in f32 (observed <= 1e-7 relative); tolerance 1e-5.
#[test]
fn rope_backward_matches_finite_differences() {
    let mut rng = Rng(12);
    let layout = two_pair_layout();
    let (heads, hd) = (3, 12);
    let freqs = inv_freq(hd, 10000.0, &RopeScaling::None);
    let table = RopeTable::new(&freqs, layout.positions());
    let t = layout.n_tokens();
    let x = rng.vec(t * heads * hd, -1.0, 1.0);
    let r = rng.vec(t * heads * hd, -1.0, 1.0);
    let mut y = x.clone();
    rope_forward(&mut y, heads, &table);
    let r64 = up(&r);
    let pos = layout.positions();
    assert_close("rope forward", &y, &rope64(&up(&x), heads, &freqs, pos), 1e-6);

    let mut dx = r.clone();
    rope_backward(&mut dx, heads, &table);
    let fd = fd_grad(&up(&x), H64, |x| dot64(&r64, &rope64(x, heads, &freqs, pos)));
    assert_close("rope dx", &dx, &fd, 1e-5);
}

fn swiglu64(gate: &[f64], up: &[f64]) -> Vec<f64> {
    gate.iter().zip(up).map(|(g, u)| g / (1.0 + (-g).exp()) * u).collect()
}

/// One sigmoid and a few products per element in f32 (observed <= 4e-7 of the largest);
/// tolerance 1e-5.
#[test]
fn swiglu_backward_matches_finite_differences() {
    let mut rng = Rng(13);
    let n = 300;
    // Gates well into both saturated tails and around zero.
    let gate = rng.vec(n, -9.0, 9.0);
    let upv = rng.vec(n, -2.0, 2.0);
    let r = rng.vec(n, -1.0, 1.0);
    let mut h = vec![0f32; n];
    swiglu_forward(&gate, &upv, &mut h);
    let (g64, u64_, r64) = (up(&gate), up(&upv), up(&r));
    assert_close("swiglu forward", &h, &swiglu64(&g64, &u64_), 1e-6);

    let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
    swiglu_backward(&gate, &upv, &r, &mut dg, &mut du);
    let fd_g = fd_grad(&g64, H64, |g| dot64(&r64, &swiglu64(g, &u64_)));
    let fd_u = fd_grad(&u64_, H64, |u| dot64(&r64, &swiglu64(&g64, u)));
    assert_close("swiglu dgate", &dg, &fd_g, 1e-5);
    assert_close("swiglu dup", &du, &fd_u, 1e-5);
}

/// Which keys each token sees, from the spans alone: its own span up to itself, and
/// every ancestor span whole.
fn visible(layout: &AttnLayout) -> Vec<Vec<usize>> {
    let spans = &layout.spans;
    let mut out = Vec::new();
    for (si, s) in spans.iter().enumerate() {
        let mut ancestors = Vec::new();
        let mut p = s.parent;
        while let Some(pi) = p {
            ancestors.push(pi);
            p = spans[pi].parent;
        }
        for t in s.start..s.start + s.len {
            let keys = (0..layout.n_tokens())
                .filter(|&j| {
                    let sj = spans
                        .iter()
                        .position(|x| (x.start..x.start + x.len).contains(&j))
                        .unwrap();
                    (sj == si && j <= t) || ancestors.contains(&sj)
                })
                .collect();
            out.push(keys);
        }
    }
    out
}

fn attention64(q: &[f64], k: &[f64], v: &[f64], vis: &[Vec<usize>], shape: AttnShape) -> Vec<f64> {
    let (h, kvh, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
    let group = h / kvh;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f64; vis.len() * h * hd];
    for (t, keys) in vis.iter().enumerate() {
        for head in 0..h {
            let kv = head / group;
            let qh = &q[(t * h + head) * hd..(t * h + head + 1) * hd];
            let s: Vec<f64> = keys
                .iter()
                .map(|&j| dot64(qh, &k[(j * kvh + kv) * hd..(j * kvh + kv + 1) * hd]) * scale)
                .collect();
            let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
            let o = &mut out[(t * h + head) * hd..(t * h + head + 1) * hd];
            for (&j, sj) in keys.iter().zip(&s) {
                let p = (sj - m).exp() / z;
                for (oi, vi) in o.iter_mut().zip(&v[(j * kvh + kv) * hd..(j * kvh + kv + 1) * hd]) {
                    *oi += p * vi;
                }
            }
        }
    }
    out
}

/// Grouped-query attention (4 query heads on 2 kv heads) over two packed pairs. Each
/// gradient element sums up to ~20 keys x 20 dims of f32 products (observed <= 3e-7 of the
/// largest); tolerance 1e-5.
#[test]
fn attention_backward_matches_finite_differences() {
    let mut rng = Rng(14);
    let layout = two_pair_layout();
    let shape = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 20,
    };
    let t = layout.n_tokens();
    let (qw, kw) = (shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim);
    // Scores of O(1), so the softmax is neither flat nor one-hot.
    let q = rng.vec(t * qw, -1.5, 1.5);
    let k = rng.vec(t * kw, -1.5, 1.5);
    let v = rng.vec(t * kw, -1.0, 1.0);
    let r = rng.vec(t * qw, -1.0, 1.0);
    let (mut out, mut lse) = (vec![0f32; t * qw], vec![0f32; t * shape.n_heads]);
    attention_forward(&q, &k, &v, &layout, shape, &mut out, &mut lse);
    let vis = visible(&layout);
    let (q64, k64, v64, r64) = (up(&q), up(&k), up(&v), up(&r));
    assert_close(
        "attention forward",
        &out,
        &attention64(&q64, &k64, &v64, &vis, shape),
        1e-5,
    );

    let (mut dq, mut dk, mut dv) = (vec![0f32; t * qw], vec![0f32; t * kw], vec![0f32; t * kw]);
    let saved = AttnSaved {
        q: &q,
        k: &k,
        v: &v,
        out: &out,
        lse: &lse,
    };
    let grads = AttnGrads {
        dq: &mut dq,
        dk: &mut dk,
        dv: &mut dv,
    };
    attention_backward(saved, &r, &layout, shape, grads);
    let fd_q = fd_grad(&q64, H64, |q| dot64(&r64, &attention64(q, &k64, &v64, &vis, shape)));
    let fd_k = fd_grad(&k64, H64, |k| dot64(&r64, &attention64(&q64, k, &v64, &vis, shape)));
    let fd_v = fd_grad(&v64, H64, |v| dot64(&r64, &attention64(&q64, &k64, v, &vis, shape)));
    assert_close("attention dq", &dq, &fd_q, 1e-5);
    assert_close("attention dk", &dk, &fd_k, 1e-5);
    assert_close("attention dv", &dv, &fd_v, 1e-5);
}

/// y0 + s · (x Aᵀ) Bᵀ in f64.
fn lora64(x: &[f64], a: &[f64], b: &[f64], y0: &[f64], r: usize, s: f64) -> Vec<f64> {
    let inp = a.len() / r;
    let out = b.len() / r;
    let mut y = y0.to_vec();
    for (xr, yr) in x.chunks_exact(inp).zip(y.chunks_exact_mut(out)) {
        let u: Vec<f64> = a.chunks_exact(inp).map(|ar| dot64(xr, ar)).collect();
        for (yo, br) in yr.iter_mut().zip(b.chunks_exact(r)) {
            *yo += s * dot64(&u, br);
        }
    }
    y
}

/// Two chained f32 GEMMs of <= 40-term reductions (observed <= 3e-7 of the largest);
/// tolerance 1e-5.
#[test]
fn lora_backward_matches_finite_differences() {
    // Rank 1 too: its products have one-column operands (found by fuzzing a PEFT adapter).
    for r in [4, 1] {
        lora_backward_check(r);
    }
}

fn lora_backward_check(r: usize) {
    let mut rng = Rng(15);
    let (t, inp, out, s) = (9, 40, 24, 1.5f32);
    let x = rng.vec(t * inp, -1.0, 1.0);
    let a = rng.vec(r * inp, -0.5, 0.5);
    let b = rng.vec(out * r, -0.5, 0.5);
    let y0 = rng.vec(t * out, -1.0, 1.0);
    let w = rng.vec(t * out, -1.0, 1.0);
    let (mut u, mut y) = (vec![0f32; t * r], y0.clone());
    let lw = LoraWeights {
        a: &a,
        b: &b,
        r,
        scale: s,
    };
    lora_forward(lw, &x, t, &mut u, &mut y);
    let (x64, a64, b64, y64, w64) = (up(&x), up(&a), up(&b), up(&y0), up(&w));
    let s64 = s as f64;
    assert_close("lora forward", &y, &lora64(&x64, &a64, &b64, &y64, r, s64), 1e-6);

    let (mut ga, mut gb, mut dx) = (vec![0f32; a.len()], vec![0f32; b.len()], vec![0f32; x.len()]);
    let g = LoraGrads { a: &mut ga, b: &mut gb };
    lora_backward(lw, &x, t, &u, &w, g, &mut dx);
    let l = |x: &[f64], a: &[f64], b: &[f64]| dot64(&w64, &lora64(x, a, b, &y64, r, s64));
    assert_close("lora ga", &ga, &fd_grad(&a64, H64, |a| l(&x64, a, &b64)), 1e-5);
    assert_close("lora gb", &gb, &fd_grad(&b64, H64, |b| l(&x64, &a64, b)), 1e-5);
    assert_close("lora dx", &dx, &fd_grad(&x64, H64, |x| l(x, &a64, &b64)), 1e-5);
}

/// The mask the LoRA branch's dropout uses: its rate, its scale, its dependence on
/// (seed, index) only, and its adjointness (the backward applies the same mask to the
/// gradient, which is right only because the map is diagonal).
#[test]
fn dropout_is_a_fixed_diagonal_map_of_seed_and_index() {
    let mut rng = Rng(16);
    let (n, p) = (20000, 0.3f32);
    let x = rng.vec(n, 0.5, 1.5);
    let mut y = vec![0f32; n];
    dropout(&x, p, 42, &mut y);
    let keep = 1.0 / (1.0 - p);
    let mut dropped = 0;
    for (&xi, &yi) in x.iter().zip(&y) {
        if yi == 0.0 {
            dropped += 1;
        } else {
            assert_eq!(yi, xi * keep, "kept values are scaled by 1/(1-p)");
        }
    }
    // Binomial(20000, 0.3): standard deviation ~65; 5 of them.
    let want = (p * n as f32) as i64;
    assert!(
        (dropped - want).abs() < 325,
        "dropped {dropped} of {n}, expected ~{want}"
    );
    // A prefix gets the prefix of the mask; another seed gives another mask.
    let mut y_short = vec![0f32; 100];
    dropout(&x[..100], p, 42, &mut y_short);
    assert_eq!(y_short, y[..100]);
    let mut y_other = vec![0f32; n];
    dropout(&x, p, 43, &mut y_other);
    let differ = y
        .iter()
        .zip(&y_other)
        .filter(|(a, b)| (**a == 0.0) != (**b == 0.0))
        .count();
    assert!(
        differ > n / 5,
        "seeds 42 and 43 give nearly the same mask ({differ} differ)"
    );
    // Adjoint: <dy, drop(x)> = <drop(dy), x>.
    let dy = rng.vec(n, -1.0, 1.0);
    let mut ddy = vec![0f32; n];
    dropout(&dy, p, 42, &mut ddy);
    let lhs: f64 = dy.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
    let rhs: f64 = ddy.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
    assert!((lhs - rhs).abs() < 1e-9 * lhs.abs().max(1.0) + 1e-3, "{lhs} vs {rhs}");
}

fn logprobs64(hbase: &[f64], idx: &[usize], targets: &[u32], w: &[f64], vocab: usize) -> Vec<f64> {
    let hidden = w.len() / vocab;
    idx.iter()
        .zip(targets)
        .map(|(&i, &t)| {
            let h = &hbase[i * hidden..(i + 1) * hidden];
            let logits: Vec<f64> = w.chunks_exact(hidden).map(|wr| dot64(h, wr)).collect();
            let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            logits[t as usize] - lse
        })
        .collect()
}

/// 75 positions (three chunks of [`CHUNK`]) gathered from 30 hidden rows with repeats,
/// many sharing a target id, some the same (row, target) pair: dL/dh of the shared rows
/// is the scatter-add of the kernel's per-position gradients. f32 rounding of the logits
/// and of a 50-term reduction per element (observed <= 2e-7 of the largest); tolerance
/// 1e-5.
#[test]
fn token_logprobs_backward_matches_finite_differences() {
    let mut rng = Rng(17);
    let (rows, hidden, vocab, p) = (30, 24, 50, 75);
    assert!(p > 2 * CHUNK);
    let hbase = rng.vec(rows * hidden, -1.0, 1.0);
    let w = rng.vec(vocab * hidden, -0.6, 0.6);
    let mut idx: Vec<usize> = (0..p).map(|_| rng.below(rows)).collect();
    let mut targets: Vec<u32> = (0..p).map(|_| rng.below(8) as u32 * 6).collect();
    // The same (row, target) at positions in different chunks.
    (idx[70], targets[70]) = (idx[3], targets[3]);
    (idx[40], targets[40]) = (idx[3], targets[3]);
    let r = rng.vec(p, -1.0, 1.0);
    let wb = f32_weight_bytes(&w);
    let lm_head = WeightRef::new(DType::F32, vocab, hidden, &wb, RowOrder::Stored).unwrap();
    let hrows: Vec<f32> = idx
        .iter()
        .flat_map(|&i| hbase[i * hidden..(i + 1) * hidden].iter().copied())
        .collect();
    let mut logp = vec![0f32; p];
    token_logprobs(&hrows, &targets, &lm_head, &mut logp);
    let (hb64, w64, r64) = (up(&hbase), up(&w), up(&r));
    assert_close(
        "log-probs",
        &logp,
        &logprobs64(&hb64, &idx, &targets, &w64, vocab),
        1e-6,
    );

    let mut dh = vec![0f32; p * hidden];
    token_logprobs_backward(&hrows, &targets, &lm_head, &r, &mut dh);
    let mut dbase = vec![0f32; rows * hidden];
    for (&i, d) in idx.iter().zip(dh.chunks_exact(hidden)) {
        for (o, g) in dbase[i * hidden..(i + 1) * hidden].iter_mut().zip(d) {
            *o += g;
        }
    }
    let fd = fd_grad(&hb64, H64, |h| dot64(&r64, &logprobs64(h, &idx, &targets, &w64, vocab)));
    assert_close("log-prob dh (scattered to shared rows)", &dbase, &fd, 1e-5);
}

/// Random weight bytes of `dtype` (values O(0.3)).
fn random_weight(rng: &mut Rng, dtype: DType, rows: usize, cols: usize) -> Vec<u8> {
    match dtype {
        DType::F32 => f32_weight_bytes(&rng.vec(rows * cols, -0.5, 0.5)),
        DType::F16 => rng
            .vec(rows * cols, -0.5, 0.5)
            .iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect(),
        DType::Q8_0 => {
            let mut out = Vec::new();
            for _ in 0..rows * cols / 32 {
                let d = half::f16::from_f32(rng.uniform(0.002, 0.006) as f32);
                out.extend_from_slice(&d.to_le_bytes());
                out.extend((0..32).map(|_| rng.next_u64() as u8));
            }
            out
        }
        other => panic!("no generator for {other}"),
    }
}

/// dL/dx of `L = sum(r * x Wᵀ)` is `r W` exactly (the product is linear, so the central
/// difference has no truncation error). The kernel reduces 72 f32 products per element
/// (observed <= 3e-7 of the largest); tolerance 1e-5. Weight rows are taken from
/// `WeightRef::row`, so the rope row permutation of GGUF Q/K weights is part of what is
/// checked.
#[test]
fn matmul_w_acc_is_the_backward_of_matmul_wt() {
    let mut rng = Rng(18);
    let (m, n, k) = (5, 72, 96);
    for dtype in [DType::F32, DType::F16, DType::Q8_0] {
        for order in [RowOrder::Stored, RowOrder::RopeUnpermute { head_dim: 8 }] {
            let what = format!("{dtype} {order:?}");
            let bytes = random_weight(&mut rng, dtype, n, k);
            let w = WeightRef::new(dtype, n, k, &bytes, order).unwrap();
            let mut wl = vec![0f32; n * k];
            for (i, row) in wl.chunks_exact_mut(k).enumerate() {
                w.row(i, row);
            }
            let w64 = up(&wl);
            let x = rng.vec(m * k, -1.0, 1.0);
            let r = rng.vec(m * n, -1.0, 1.0);
            let r64 = up(&r);
            let fwd = |x: &[f64]| -> Vec<f64> {
                x.chunks_exact(k)
                    .flat_map(|xr| w64.chunks_exact(k).map(move |wr| dot64(xr, wr)))
                    .collect()
            };
            let mut y = vec![0f32; m * n];
            matmul_wt(&x, m, &w, &mut y);
            assert_close(&format!("{what} matmul_wt"), &y, &fwd(&up(&x)), 1e-5);
            let mut dx = vec![0f32; m * k];
            matmul_w_acc(&r, m, &w, &mut dx);
            let fd = fd_grad(&up(&x), 1e-3, |x| dot64(&r64, &fwd(x)));
            assert_close(&format!("{what} matmul_w_acc"), &dx, &fd, 1e-5);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The whole network
// ---------------------------------------------------------------------------------------

fn tiny_model(name: &str, spec: &TinySpec) -> Model {
    let dir = fresh_dir(name);
    write_model(&dir, spec);
    Model::open(&dir).expect("tiny model opens")
}

/// An adapter with random B (a fresh adapter has B = 0, which makes every A gradient 0).
fn adapter_with_b(model: &Model, config: LoraConfig, seed: u64) -> Adapter {
    let mut a = Adapter::new(&model.config, config, seed, "tiny").expect("adapter");
    let mut rng = Rng(seed ^ 0xb);
    for pair in a.layers.iter_mut().flatten().flatten() {
        pair.b = rng.vec(pair.b.len(), -0.15, 0.15);
    }
    a
}

/// Pairs with random tokens; `lens` holds (prompt, chosen, rejected) lengths.
fn random_pairs(rng: &mut Rng, vocab: usize, lens: &[(usize, usize, usize)]) -> Vec<TokenizedPair> {
    lens.iter()
        .enumerate()
        .map(|(i, &(p, c, r))| TokenizedPair {
            row: i + 1,
            prompt: rng.tokens(p, vocab),
            chosen: rng.tokens(c, vocab),
            rejected: rng.tokens(r, vocab),
            margin: None,
            weight: None,
        })
        .collect()
}

fn pack_pairs(pairs: &[TokenizedPair]) -> Packed {
    let items: Vec<ScoreItem> = pairs
        .iter()
        .map(|p| ScoreItem {
            prompt: &p.prompt,
            completions: vec![&p.chosen, &p.rejected],
        })
        .collect();
    pack(&items).expect("packs")
}

/// Log-probs of the completion tokens from the final hidden states `h`, with the gathered
/// rows and ids they came from.
fn completion_logps(model: &Model, h: &[f32], targets: &[(usize, u32)]) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let hidden = model.config.hidden_size;
    let rows: Vec<f32> = targets
        .iter()
        .flat_map(|&(p, _)| h[p * hidden..(p + 1) * hidden].iter().copied())
        .collect();
    let ids: Vec<u32> = targets.iter().map(|&(_, id)| id).collect();
    let mut logp = vec![0f32; ids.len()];
    token_logprobs(&rows, &ids, &model.weights.view(&model.weights.lm_head), &mut logp);
    (logp, rows, ids)
}

/// `L = sum_i r_i logp_i` over the completion tokens, through the training forward pass.
fn weighted_logp(model: &Model, batch: &Packed, r: &[f32], lora: LoraCtx) -> f64 {
    let (h, _tape) = model
        .forward_train(&batch.tokens, &batch.layout, lora, Recompute::Always)
        .expect("forward");
    let (logp, ..) = completion_logps(model, &h, &batch.targets);
    logp.iter().zip(r).map(|(&l, &w)| l as f64 * w as f64).sum()
}

/// The token log-probs and dL/d(adapter) of [`weighted_logp`] by the backward pass, added
/// into `grads`.
fn weighted_logp_grad(
    model: &Model,
    batch: &Packed,
    r: &[f32],
    lora: LoraCtx,
    recompute: Recompute,
    grads: &mut Adapter,
) -> Vec<f32> {
    let (h, tape) = model
        .forward_train(&batch.tokens, &batch.layout, lora, recompute)
        .expect("forward");
    let (logp, rows, ids) = completion_logps(model, &h, &batch.targets);
    let hidden = model.config.hidden_size;
    let mut drows = vec![0f32; rows.len()];
    let lm_head = model.weights.view(&model.weights.lm_head);
    token_logprobs_backward(&rows, &ids, &lm_head, r, &mut drows);
    let mut dh = vec![0f32; h.len()];
    for (&(p, _), d) in batch.targets.iter().zip(drows.chunks_exact(hidden)) {
        for (o, g) in dh[p * hidden..(p + 1) * hidden].iter_mut().zip(d) {
            *o += g;
        }
    }
    model.backward(tape, lora, dh, grads).expect("backward");
    logp
}

/// d loss / d (parameter tensor `ti`, entry `j`) by central differences through the f32
/// network, with one Richardson step, (4 D(h/2) - D(h)) / 3, which cancels the h² term.
/// The step actually taken is the difference of the two f32 parameter values.
fn fd_entry(adapter: &Adapter, ti: usize, j: usize, h: f32, loss: &dyn Fn(&Adapter) -> f64) -> f64 {
    let mut p = adapter.clone();
    let x0 = adapter.params()[ti][j];
    let mut d = |h: f32| {
        let (xp, xm) = (x0 + h, x0 - h);
        p.params_mut()[ti][j] = xp;
        let lp = loss(&p);
        p.params_mut()[ti][j] = xm;
        let lm = loss(&p);
        (lp - lm) / (xp as f64 - xm as f64)
    };
    let (d1, d2) = (d(h), d(h / 2.0));
    (4.0 * d2 - d1) / 3.0
}

fn assert_same_grads(what: &str, a: &Adapter, b: &Adapter) {
    for ((name, x), (_, y)) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.len(), y.len());
        for (i, (u, v)) in x.iter().zip(y).enumerate() {
            assert_eq!(u.to_bits(), v.to_bits(), "{what}: {name}[{i}]: {u} vs {v}");
        }
    }
}

/// Bytes the training forward pass keeps per layer when it keeps the layer whole
/// (mirrors the engine's accounting), to pick a budget that keeps only some layers.
fn layer_bytes(model: &Model, t: usize, r: usize) -> usize {
    let c = &model.config;
    4 * t
        * (4 * c.hidden_size
            + 2
            + 2 * c.q_dim()
            + 2 * c.kv_dim()
            + c.num_attention_heads
            + 3 * c.intermediate_size
            + 7 * r)
}

/// Step and tolerance of the network's finite differences. The f32 forward pass rounds
/// the loss `L = sum r_i logp_i` by a few 1e-6, which a difference quotient divides by
/// the step: with h = 1e-3 the quotients scatter by ~7e-3 around the gradient. That
/// scatter falls as 1/h, so the step is large (0.03, against parameters of ~0.15), and
/// the Richardson step cancels the h² truncation error such a step would bring. Observed
/// worst error <= 2.5e-4 of the tensor's largest gradient (gradients are 0.3 to 7 per
/// tensor); tolerance 2e-3 of it. A wrong sign or a missing term moves an entry by a
/// sizable fraction of the gradient.
const NET_H: f32 = 0.03;
const NET_RTOL: f64 = 2e-3;

/// Compares the backward pass with finite differences at a few entries of every tensor:
/// the entry with the largest gradient and `n_random` random ones.
fn check_entries(
    what: &str,
    adapter: &Adapter,
    grads: &Adapter,
    n_random: usize,
    seed: u64,
    loss: &dyn Fn(&Adapter) -> f64,
) {
    let mut rng = Rng(seed);
    let names: Vec<String> = grads.tensors().into_iter().map(|(n, _)| n).collect();
    let g = grads.params();
    let mut worst = 0f64;
    for (ti, (name, g)) in names.iter().zip(&g).enumerate() {
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{what}: {name} has a non-finite gradient"
        );
        let scale = max_abs(g);
        assert!(
            scale > 1e-2,
            "{what}: {name}: gradient ~0 (max {scale:e}), nothing to check"
        );
        let argmax = (0..g.len()).max_by(|&i, &j| g[i].abs().total_cmp(&g[j].abs())).unwrap();
        let entries = std::iter::once(argmax).chain((0..n_random).map(|_| rng.below(g.len())));
        for j in entries {
            let fd = fd_entry(adapter, ti, j, NET_H, loss);
            let e = (fd - g[j] as f64).abs();
            worst = worst.max(e / scale);
            assert!(
                e <= NET_RTOL * scale,
                "{what}: {name}[{j}]: backward {} vs finite differences {fd} (error {e:e} > {NET_RTOL:e} x max {scale:e})",
                g[j]
            );
        }
    }
    eprintln!("{what}: worst error {worst:.2e} of the tensor's largest gradient");
}

/// The gradient of `sum_i r_i logp_i` over the completion tokens of two packed pairs,
/// through forward_train, token_logprobs(_backward) and Model::backward, against finite
/// differences; and the same bits whatever the recomputation policy.
fn check_network(name: &str, spec: TinySpec, config: LoraConfig, dropout: Option<Dropout>) {
    let model = tiny_model(name, &spec);
    let r_lora = config.r;
    let adapter = adapter_with_b(&model, config, spec.seed + 100);
    let mut rng = Rng(spec.seed + 200);
    let pairs = random_pairs(&mut rng, spec.vocab, &[(6, 5, 4), (5, 3, 6)]);
    let batch = pack_pairs(&pairs);
    let r = rng.vec(batch.targets.len(), -1.0, 1.0);
    let lora = LoraCtx {
        adapter: Some(&adapter),
        dropout,
        cancel: None,
    };

    // Budgets that keep the last k layers whole and recompute the others, for every
    // 0 < k < layers (one and a half layers' worth keeps one layer, and so on).
    let per_layer = layer_bytes(&model, batch.tokens.len(), r_lora);
    let budgets = (1..spec.layers).map(|k| Recompute::Budget(k * per_layer + per_layer / 2));
    // A budget too small even for every layer's input: checkpoints at some layers, the
    // inputs of the layers between them rebuilt during the backward pass.
    let t = batch.tokens.len();
    let tiny = Recompute::Budget(1);
    let plan = model.recompute_plan(t, r_lora, tiny);
    assert!(plan.longest_segment > 1 && plan.refill_forwards() > 0, "{plan:?}");
    let mut runs = Vec::new();
    for rc in [Recompute::Never, Recompute::Always, tiny].into_iter().chain(budgets) {
        let mut g = adapter.zeros_like();
        let logp = weighted_logp_grad(&model, &batch, &r, lora, rc, &mut g);
        runs.push((rc, logp, g));
    }
    for (rc, logp, g) in &runs[1..] {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(logp),
            bits(&runs[0].1),
            "{name}: log-probs with {rc:?} differ from Never"
        );
        assert_same_grads(&format!("{name}: {rc:?} vs Never"), g, &runs[0].2);
    }
    // The MLP a few rows at a time (forward where the intermediates are not kept, backward
    // always): the same log-probs, and the same gradients up to the order their rows are
    // summed in (dropout draws the whole pass's mask).
    let chunked = Model::open(&model.path).expect("reopens").with_mlp_chunk_rows(3);
    for rc in [Recompute::Never, tiny] {
        let mut g = adapter.zeros_like();
        let logp = weighted_logp_grad(&chunked, &batch, &r, lora, rc, &mut g);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&logp),
            bits(&runs[0].1),
            "{name}: MLP in chunks, {rc:?}: log-probs"
        );
        for ((tn, x), (_, y)) in g.tensors().iter().zip(runs[0].2.tensors()) {
            let scale = y.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                assert!(
                    ((u - v).abs() as f64) <= 1e-5 * scale,
                    "{name}: MLP in chunks, {rc:?}: {tn}[{i}]: {u} vs {v} (max {scale:e})"
                );
            }
        }
    }
    let loss = |a: &Adapter| {
        weighted_logp(
            &model,
            &batch,
            &r,
            LoraCtx {
                adapter: Some(a),
                dropout,
                cancel: None,
            },
        )
    };
    check_entries(name, &adapter, &runs[0].2, 3, spec.seed + 300, &loss);
}

/// Llama layout, tied embeddings, three layers, LoRA on all seven projections.
#[test]
fn network_gradients_match_finite_differences() {
    let spec = TinySpec {
        layers: 3,
        ..TinySpec::default()
    };
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..LoraConfig::default()
    };
    check_network("gradcheck-llama", spec, config, None);
}

/// Qwen2 (q/k/v biases), untied lm_head, rsLoRA on a subset of the projections.
#[test]
fn network_gradients_match_finite_differences_qwen2_untied() {
    let spec = TinySpec {
        qwen2: true,
        tied: false,
        seed: 31,
        ..TinySpec::default()
    };
    let config = LoraConfig {
        r: 3,
        lora_alpha: 4.0,
        use_rslora: true,
        target_modules: vec![Proj::Q, Proj::V, Proj::O, Proj::Down],
        ..LoraConfig::default()
    };
    check_network("gradcheck-qwen2", spec, config, None);
}

/// Dropout on the LoRA branch's input: the masks are a function of the seed, so the
/// finite differences see the same masks as the backward pass (and recomputation).
#[test]
fn network_gradients_match_finite_differences_with_lora_dropout() {
    let spec = TinySpec {
        seed: 47,
        ..TinySpec::default()
    };
    let config = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.25,
        ..LoraConfig::default()
    };
    let dropout = Some(Dropout { p: 0.25, seed: 99 });
    check_network("gradcheck-dropout", spec, config, dropout);
}

fn small_lora() -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        ..LoraConfig::default()
    }
}

/// The objective's loss through the whole network: `pair_step`'s gradient against finite
/// differences of its reported loss, for DPO's sigmoid loss (summed log-probs, reference
/// log-probs, a weighted pair) and for IPO and SimPO (per-token averages).
#[test]
fn pair_step_gradients_match_finite_differences() {
    let spec = TinySpec {
        seed: 53,
        ..TinySpec::default()
    };
    let model = tiny_model("gradcheck-pair-step", &spec);
    let adapter = adapter_with_b(&model, small_lora(), 7);
    let mut rng = Rng(54);
    let mut pairs = random_pairs(&mut rng, spec.vocab, &[(6, 5, 4), (5, 3, 6)]);
    pairs[1].weight = Some(0.6);
    let pair_refs: Vec<&TokenizedPair> = pairs.iter().collect();
    // References a little away from the policy, so every loss has a sizable slope.
    let mut g = adapter.zeros_like();
    let sigmoid = Loss::Sigmoid { beta: 0.5 };
    let first = pair_step(
        &StepCtx::new(&model, &adapter, &sigmoid),
        &pair_refs,
        &[(0.0, 0.0); 2],
        1.0,
        &mut g,
    )
    .unwrap();
    let refs: Vec<(f64, f64)> = first
        .policy
        .iter()
        .map(|&(c, r)| (c + rng.uniform(-1.5, 1.5), r + rng.uniform(-1.5, 1.5)))
        .collect();
    for loss in [
        Loss::Sigmoid { beta: 0.5 },
        Loss::Ipo { beta: 0.5 },
        Loss::Simpo { beta: 2.0, gamma: 0.5 },
    ] {
        let step = |a: &Adapter, grads: &mut Adapter| {
            let ctx = StepCtx::new(&model, a, &loss).recompute(Recompute::Always);
            pair_step(&ctx, &pair_refs, &refs, 1.0, grads).unwrap()
        };
        let mut grads = adapter.zeros_like();
        let s = step(&adapter, &mut grads);
        assert!(s.loss.loss.is_finite());
        let f = |a: &Adapter| step(a, &mut a.zeros_like()).loss.loss;
        check_entries(&format!("pair_step {}", loss.name()), &adapter, &grads, 1, 55, &f);
    }
}

/// KTO through the whole network: labels of both kinds, one weighted example, the KL
/// estimate held constant (it is detached).
#[test]
fn kto_step_gradients_match_finite_differences() {
    let spec = TinySpec {
        seed: 61,
        ..TinySpec::default()
    };
    let model = tiny_model("gradcheck-kto-step", &spec);
    let adapter = adapter_with_b(&model, small_lora(), 8);
    let mut rng = Rng(62);
    let examples: Vec<TokenizedUnpaired> = [(5, 4, true, None), (4, 6, false, Some(0.7)), (6, 3, true, None)]
        .into_iter()
        .enumerate()
        .map(|(i, (p, c, label, weight))| TokenizedUnpaired {
            row: i + 1,
            prompt: rng.tokens(p, spec.vocab),
            completion: rng.tokens(c, spec.vocab),
            label,
            weight,
        })
        .collect();
    let ex: Vec<&TokenizedUnpaired> = examples.iter().collect();
    let (kl_policy, kl_ref) = ([-20.0, -18.0], [-20.5, -18.3]);
    let loss = Loss::Kto {
        beta: 0.5,
        desirable_weight: 1.0,
        undesirable_weight: 1.4,
    };
    let step = |a: &Adapter, refs: &[f64], grads: &mut Adapter| {
        let ctx = StepCtx::new(&model, a, &loss).recompute(Recompute::Always);
        let kl = KlLogps {
            policy: &kl_policy,
            reference: &kl_ref,
        };
        kto_step(&ctx, &ex, refs, kl, 1.0, grads).unwrap()
    };
    // References a little away from the policy, so that no sigmoid saturates.
    let items: Vec<ScoreItem> = examples
        .iter()
        .map(|e| ScoreItem {
            prompt: &e.prompt,
            completions: vec![&e.completion],
        })
        .collect();
    let policy = model.score_packed_with(&items, Some(&adapter)).unwrap();
    let refs: Vec<f64> = policy.iter().map(|p| p[0].logp + rng.uniform(-1.5, 1.5)).collect();
    let mut grads = adapter.zeros_like();
    let s = step(&adapter, &refs, &mut grads);
    assert!(s.batch.kl > 0.0, "the KL estimate takes part");
    let f = |a: &Adapter| step(a, &refs, &mut a.zeros_like()).batch.loss;
    check_entries("kto_step", &adapter, &grads, 1, 63, &f);
}

// ---------------------------------------------------------------------------------------
// Backward passes add into their gradient buffers
// ---------------------------------------------------------------------------------------

/// Runs `backward` once into zeroed buffers (the fresh gradient) and once into buffers
/// prefilled with values of magnitude >= 0.5, and checks result = prefill + fresh for each
/// buffer: bit for bit where `exact[i]`, else to rounding.
fn check_adds(what: &str, sizes: &[usize], exact: &[bool], seed: u64, backward: impl Fn(&mut [Vec<f32>])) {
    let mut rng = Rng(seed);
    let mut fresh: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![0f32; n]).collect();
    backward(&mut fresh);
    let prefill: Vec<Vec<f32>> = sizes.iter().map(|&n| rng.prefill(n)).collect();
    let mut res = prefill.clone();
    backward(&mut res);
    for (i, ((r, p), g)) in res.iter().zip(&prefill).zip(&fresh).enumerate() {
        let name = format!("{what} (buffer {i})");
        if exact[i] {
            assert_adds_exact(&name, r, p, g);
        } else {
            assert_adds_rounded(&name, r, p, g);
        }
    }
}

/// Every kernel backward adds. Where the result is bit-exact it is because the kernel
/// computes its contribution apart and adds it in one step: element-wise kernels
/// (rmsnorm, swiglu), and the matrix
/// products when the reduction fits one fused-multiply-add chain of 64 steps, whose sum
/// is then added to the output. Longer reductions add a partial sum per chain, and
/// attention adds its dq terms and its per-task dk/dv sums onto the buffer one by one: there
/// `prefill + g` differs from the result by rounding only.
/// `rope_backward` is not in the list: it rotates its buffer in place (the network calls
/// it on buffers that hold only attention's fresh dq/dk).
#[test]
fn every_kernel_backward_adds_into_its_gradient_buffer() {
    let mut rng = Rng(71);
    // rmsnorm
    let (rows, dim) = (5, 40);
    let x = rng.vec(rows * dim, -2.0, 2.0);
    let w = rng.vec(dim, 0.5, 1.5);
    let dy = rng.vec(rows * dim, -1.0, 1.0);
    let (mut y, mut inv) = (vec![0f32; rows * dim], vec![0f32; rows]);
    rmsnorm_forward(&x, &w, 1e-5, &mut y, &mut inv);
    check_adds("rmsnorm dx", &[rows * dim], &[true], 1, |b| {
        rmsnorm_backward(&x, &w, &inv, &dy, &mut b[0])
    });

    // swiglu
    let n = 200;
    let (gate, upv, dh) = (rng.vec(n, -6.0, 6.0), rng.vec(n, -2.0, 2.0), rng.vec(n, -1.0, 1.0));
    check_adds("swiglu dgate, dup", &[n, n], &[true, true], 2, |b| {
        let (g, u) = b.split_at_mut(1);
        swiglu_backward(&gate, &upv, &dh, &mut g[0], &mut u[0])
    });

    // attention
    let layout = two_pair_layout();
    let shape = AttnShape {
        n_heads: 4,
        n_kv_heads: 2,
        head_dim: 16,
    };
    let t = layout.n_tokens();
    let (qw, kw) = (64, 32);
    let (q, k, v) = (
        rng.vec(t * qw, -1.5, 1.5),
        rng.vec(t * kw, -1.5, 1.5),
        rng.vec(t * kw, -1.0, 1.0),
    );
    let dout = rng.vec(t * qw, -1.0, 1.0);
    let (mut out, mut lse) = (vec![0f32; t * qw], vec![0f32; t * 4]);
    attention_forward(&q, &k, &v, &layout, shape, &mut out, &mut lse);
    check_adds(
        "attention dq, dk, dv",
        &[t * qw, t * kw, t * kw],
        &[false, false, false],
        3,
        |b| {
            let (dq, rest) = b.split_at_mut(1);
            let (dk, dv) = rest.split_at_mut(1);
            let saved = AttnSaved {
                q: &q,
                k: &k,
                v: &v,
                out: &out,
                lse: &lse,
            };
            let grads = AttnGrads {
                dq: &mut dq[0],
                dk: &mut dk[0],
                dv: &mut dv[0],
            };
            attention_backward(saved, &dout, &layout, shape, grads)
        },
    );

    // lora: reductions over t tokens (ga, gb), out features (du) and r (dx)
    for (t, exact) in [(9, true), (100, false)] {
        let (inp, out, r, s) = (40, 24, 4, 2.0);
        let x = rng.vec(t * inp, -1.0, 1.0);
        let a = rng.vec(r * inp, -0.5, 0.5);
        let b = rng.vec(out * r, -0.5, 0.5);
        let dy = rng.vec(t * out, -1.0, 1.0);
        let (mut u, mut y) = (vec![0f32; t * r], vec![0f32; t * out]);
        let lw = LoraWeights {
            a: &a,
            b: &b,
            r,
            scale: s,
        };
        lora_forward(lw, &x, t, &mut u, &mut y);
        let what = format!("lora ga, gb, dx ({t} tokens)");
        check_adds(&what, &[r * inp, out * r, t * inp], &[exact, exact, true], 4, |buf| {
            let (ga, rest) = buf.split_at_mut(1);
            let (gb, dx) = rest.split_at_mut(1);
            let g = LoraGrads {
                a: &mut ga[0],
                b: &mut gb[0],
            };
            lora_backward(lw, &x, t, &u, &dy, g, &mut dx[0])
        });
    }

    // matmul_w_acc: the reduction runs over the weight's rows
    for (n, exact) in [(40, true), (72, false)] {
        let (m, kk) = (5, 64);
        let bytes = random_weight(&mut rng, DType::Q8_0, n, kk);
        let wr = WeightRef::new(DType::Q8_0, n, kk, &bytes, RowOrder::Stored).unwrap();
        let dy = rng.vec(m * n, -1.0, 1.0);
        check_adds(&format!("matmul_w_acc ({n} rows)"), &[m * kk], &[exact], 5, |b| {
            matmul_w_acc(&dy, m, &wr, &mut b[0])
        });
    }

    // token_logprobs_backward: the reduction runs over the vocabulary
    for (vocab, exact) in [(50, true), (130, false)] {
        let (p, hidden) = (40, 24);
        let h = rng.vec(p * hidden, -1.0, 1.0);
        let wb = f32_weight_bytes(&rng.vec(vocab * hidden, -0.6, 0.6));
        let lm = WeightRef::new(DType::F32, vocab, hidden, &wb, RowOrder::Stored).unwrap();
        let targets: Vec<u32> = (0..p).map(|_| rng.below(vocab) as u32).collect();
        let dlogp = rng.vec(p, -1.0, 1.0);
        check_adds(
            &format!("token_logprobs_backward (vocab {vocab})"),
            &[p * hidden],
            &[exact],
            6,
            |b| token_logprobs_backward(&h, &targets, &lm, &dlogp, &mut b[0]),
        );
    }
}

fn adapter_buffers(a: &Adapter) -> Vec<Vec<f32>> {
    a.params().iter().map(|t| t.to_vec()).collect()
}

fn set_buffers(a: &mut Adapter, bufs: &[Vec<f32>]) {
    for (t, b) in a.params_mut().into_iter().zip(bufs) {
        t.copy_from_slice(b);
    }
}

/// Model::backward and pair_step add into the adapter-shaped gradient buffer (gradient
/// accumulation over micro-batches relies on it). Each LoRA tensor receives one GEMM per
/// layer and projection reducing over the tokens: exact for the 29-token batch (one chain),
/// to rounding for a batch of more than 64 tokens.
#[test]
fn model_backward_and_pair_step_add_into_the_gradient_buffer() {
    let spec = TinySpec {
        seed: 73,
        ..TinySpec::default()
    };
    let model = tiny_model("gradcheck-adds", &spec);
    let adapter = adapter_with_b(&model, small_lora(), 9);
    let mut rng = Rng(74);
    let pairs = random_pairs(&mut rng, spec.vocab, &[(6, 5, 4), (5, 3, 6)]);
    let batch = pack_pairs(&pairs);
    assert!(batch.tokens.len() <= 64);
    let r = rng.vec(batch.targets.len(), -1.0, 1.0);
    let lora = LoraCtx {
        adapter: Some(&adapter),
        dropout: Some(Dropout { p: 0.2, seed: 5 }),
        cancel: None,
    };
    let sizes: Vec<usize> = adapter.params().iter().map(|t| t.len()).collect();
    let run = |b: &mut [Vec<f32>]| {
        let mut g = adapter.zeros_like();
        set_buffers(&mut g, b);
        weighted_logp_grad(&model, &batch, &r, lora, Recompute::Budget(1), &mut g);
        b.clone_from_slice(&adapter_buffers(&g));
    };
    check_adds("Model::backward", &sizes, &vec![true; sizes.len()], 75, run);

    let long = random_pairs(&mut rng, spec.vocab, &[(20, 15, 12), (18, 9, 14)]);
    let long_refs: Vec<&TokenizedPair> = long.iter().collect();
    assert!(pack_pairs(&long).tokens.len() > 64);
    let run = |b: &mut [Vec<f32>]| {
        let mut g = adapter.zeros_like();
        set_buffers(&mut g, b);
        let loss = Loss::Sigmoid { beta: 0.5 };
        let ctx = StepCtx::new(&model, &adapter, &loss);
        pair_step(&ctx, &long_refs, &[(-40.0, -40.0); 2], 0.5, &mut g).unwrap();
        b.clone_from_slice(&adapter_buffers(&g));
    };
    check_adds("pair_step", &sizes, &vec![false; sizes.len()], 76, run);
}

// ---------------------------------------------------------------------------------------
// Packing and threads
// ---------------------------------------------------------------------------------------

/// A pair packed as prompt + chosen + rejected (the prompt computed once) against chosen
/// and rejected run as two separate sequences, each after its own copy of the prompt.
/// Log-probs are bit-identical: a completion token sees the same keys in the same order,
/// at the same rope positions, and the matrix products are batch-invariant. Gradients
/// agree to rounding: the prompt's key/value gradients and the LoRA reductions over tokens
/// sum the two completions' contributions in a different order (observed <= 4e-7 of the
/// largest; tolerance 1e-5).
#[test]
fn packed_pairs_equal_separate_sequences() {
    let spec = TinySpec {
        seed: 81,
        ..TinySpec::default()
    };
    let model = tiny_model("gradcheck-packing", &spec);
    let adapter = adapter_with_b(&model, small_lora(), 10);
    let mut rng = Rng(82);
    let pairs = random_pairs(&mut rng, spec.vocab, &[(6, 5, 4), (5, 3, 6)]);
    let pair_refs: Vec<&TokenizedPair> = pairs.iter().collect();
    let lora = LoraCtx {
        adapter: Some(&adapter),
        dropout: None,
        cancel: None,
    };
    let refs = [(-20.0, -19.0), (-15.0, -17.5)];
    let mut g_packed = adapter.zeros_like();
    let loss = Loss::Sigmoid { beta: 0.5 };
    let step = pair_step(
        &StepCtx::new(&model, &adapter, &loss),
        &pair_refs,
        &refs,
        1.0,
        &mut g_packed,
    )
    .unwrap();
    let packed = pack_pairs(&pairs);
    let (h, _) = model
        .forward_train(&packed.tokens, &packed.layout, lora, Recompute::Always)
        .unwrap();
    let (packed_logp, ..) = completion_logps(&model, &h, &packed.targets);

    let mut g_sep = adapter.zeros_like();
    let mut at = 0;
    for (i, p) in pairs.iter().enumerate() {
        let halves = [
            (&p.chosen, step.loss.d_chosen[i], step.policy[i].0),
            (&p.rejected, step.loss.d_rejected[i], step.policy[i].1),
        ];
        for (completion, d, policy) in halves {
            let tokens: Vec<u32> = p.prompt.iter().chain(completion.iter()).copied().collect();
            let n = p.prompt.len();
            let batch = Packed {
                layout: AttnLayout::sequences(&[tokens.len()]),
                targets: completion.iter().enumerate().map(|(j, &id)| (n - 1 + j, id)).collect(),
                tokens,
            };
            let r = vec![d as f32; completion.len()];
            let logp = weighted_logp_grad(&model, &batch, &r, lora, Recompute::Never, &mut g_sep);
            // Attention runs blocks of queries, so a token's sums may be ordered differently
            // packed and alone: equal to float rounding.
            for (j, (a, b)) in logp.iter().zip(&packed_logp[at..]).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1.0),
                    "pair {i}, token {j}: separate {a} vs packed {b}"
                );
            }
            at += completion.len();
            let sum: f64 = logp.iter().map(|&x| x as f64).sum();
            assert!(
                (sum - policy).abs() <= 1e-5 * sum.abs().max(1.0),
                "pair {i}: summed log-prob {sum} vs {policy}"
            );
        }
    }
    assert_eq!(at, packed_logp.len());
    let mut worst = 0f64;
    for ((name, a), (_, b)) in g_packed.tensors().iter().zip(g_sep.tensors()) {
        let scale = max_abs(a.as_slice().expect("contiguous"));
        assert!(scale > 1e-3, "{name}: gradient ~0");
        for (j, (x, y)) in a.iter().zip(b).enumerate() {
            let e = (*x as f64 - *y as f64).abs();
            worst = worst.max(e / scale);
            assert!(
                e <= 1e-5 * scale,
                "{name}[{j}]: packed {x} vs separate {y} (max {scale:e})"
            );
        }
    }
    eprintln!("packed vs separate gradients: worst difference {worst:.2e} of the tensor's largest");
}

fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

/// pair_step gives the same bits on 1, 2 and 3 threads, on a model and batch large enough
/// that the matrix products and attention split into several tasks (with dropout and
/// partial recomputation on).
#[test]
fn pair_step_is_bit_identical_for_1_2_and_3_threads() {
    let spec = TinySpec {
        vocab: 300,
        hidden: 64,
        intermediate: 160,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        seed: 91,
        ..TinySpec::default()
    };
    let model = tiny_model("gradcheck-threads", &spec);
    let adapter = adapter_with_b(&model, small_lora(), 11);
    let mut rng = Rng(92);
    let pairs = random_pairs(&mut rng, spec.vocab, &[(20, 15, 12), (18, 9, 14), (10, 20, 7)]);
    let pair_refs: Vec<&TokenizedPair> = pairs.iter().collect();
    let t = pack_pairs(&pairs).tokens.len();
    let budget = Recompute::Budget(layer_bytes(&model, t, 4) * 3 / 2);
    let refs = [(-80.0, -70.0), (-60.0, -75.0), (-50.0, -40.0)];
    let run = || {
        let mut g = adapter.zeros_like();
        let loss = Loss::Sigmoid { beta: 0.1 };
        let dropout = Some(Dropout { p: 0.1, seed: 3 });
        let ctx = StepCtx::new(&model, &adapter, &loss).recompute(budget).dropout(dropout);
        let s = pair_step(&ctx, &pair_refs, &refs, 1.0, &mut g).unwrap();
        (s.loss.loss, s.policy, g)
    };
    let (loss1, policy1, g1) = in_pool(1, run);
    for threads in [2, 3] {
        let (loss, policy, g) = in_pool(threads, run);
        assert_eq!(loss.to_bits(), loss1.to_bits(), "{threads} threads: loss");
        assert_eq!(policy, policy1, "{threads} threads: policy log-probs");
        assert_same_grads(&format!("{threads} threads vs 1"), &g, &g1);
    }
    assert!(adapter_buffers(&g1).iter().all(|t| max_abs(t) > 0.0));
}
