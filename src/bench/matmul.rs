//! `nudge bench matmul`: the matrix products of a training step at a model's shapes, for
//! every stored weight format, as fractions of the machine's FMA peak.
//!
//! The products are those of one decoder layer over `rows` tokens: each projection's
//! `X·Wᵀ` (forward) and `dY·W` (the input gradient through the frozen weight), and the
//! LoRA branch's products (rank 8, forward and backward, all in f32): alone, and as
//! training runs them, added to a Q4_1 projection's products. Weights are random
//! (`weights::random_weight`): the kernels' speed does not depend on the values.

use super::fma_peak_gflops;
use super::weights::{DTYPES, Rng, random_weight};
use crate::kernels::lora::{
    LoraGrads, LoraWeights, lora_backward, lora_backward_weights, lora_down, lora_forward, lora_input_grad, lora_up,
};
use crate::kernels::matmul::{RowOrder, WeightRef, matmul_w_acc, matmul_w_acc_plus, matmul_wt, matmul_wt_plus};
use crate::model::config::Config;
use crate::quant::DType;
use serde::Serialize;
use std::time::Instant;

/// One product summed over a layer's seven projections.
#[derive(Debug, Serialize)]
pub struct MatmulFigure {
    /// The weight's stored format (`f32` for the LoRA products).
    pub dtype: String,
    /// `X·Wᵀ`, `dY·W`, `LoRA forward` or `LoRA backward` (the branch alone), `X·Wᵀ + LoRA`
    /// or `dY·W + LoRA` (a projection with its branch, as training runs it).
    pub product: &'static str,
    pub rows: usize,
    /// The projections measured: formats with 256-wide blocks skip those whose input is
    /// not a multiple of 256.
    pub projections: usize,
    pub gflops: f64,
    pub peak_gflops: f64,
    pub peak_fraction: f64,
}

/// A layer's projections as (name, out, in).
fn projections(c: &Config) -> [(&'static str, usize, usize); 7] {
    let (h, q, kv, i) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    [
        ("q_proj", q, h),
        ("k_proj", kv, h),
        ("v_proj", kv, h),
        ("o_proj", h, q),
        ("gate_proj", i, h),
        ("up_proj", i, h),
        ("down_proj", h, i),
    ]
}

/// Seconds of the fastest of `reps` runs of `f`, after one warm-up run.
fn best_seconds(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Every weight format's `X·Wᵀ` and `dY·W` and the LoRA products at `config`'s shapes over
/// `rows` tokens: flops over the summed best times of the layer's projections.
pub fn matmul_throughput(config: &Config, rows: usize, reps: usize) -> Vec<MatmulFigure> {
    // Measured before and after the products, the higher kept: a shared machine's other
    // work can halve an estimate for a while, which would double every fraction of it.
    let peak_before = fma_peak_gflops();
    let mut rng = Rng(7);
    // (format, product, projections, GFLOP/s): the fractions of the peak come at the end.
    let figure = |dtype: String, product: &'static str, projections: usize, flops: f64, seconds: f64| {
        (dtype, product, projections, flops / seconds / 1e9)
    };
    let mut out = Vec::new();
    for dtype in DTYPES {
        // (projections, flops, seconds) of X·Wᵀ and of dY·W.
        let (mut n, mut flops, mut fwd, mut bwd) = (0, 0.0, 0.0, 0.0);
        for (_, o, i) in projections(config) {
            if i % dtype.block_len() != 0 {
                continue;
            }
            let data = random_weight(&mut rng, dtype, o, i);
            let w = WeightRef::new(dtype, o, i, &data, RowOrder::Stored).expect("whole blocks");
            let x = rng.vec(rows * i);
            let mut y = vec![0f32; rows * o];
            fwd += best_seconds(reps, || matmul_wt(&x, rows, &w, &mut y));
            let dy = rng.vec(rows * o);
            let mut dx = vec![0f32; rows * i];
            bwd += best_seconds(reps, || matmul_w_acc(&dy, rows, &w, &mut dx));
            flops += 2.0 * (rows * o * i) as f64;
            n += 1;
        }
        if n > 0 {
            out.push(figure(dtype.to_string(), "X·Wᵀ", n, flops, fwd));
            out.push(figure(dtype.to_string(), "dY·W", n, flops, bwd));
        }
    }
    // The LoRA branch alone (f32), and as training runs it with a Q4_1 projection: the
    // up-projection (forward) and the input gradient (backward) ride on the frozen
    // product's tiles.
    let (r, fused_dtype) = (8, DType::Q4_1);
    let (mut flops, mut frozen_flops) = (0.0, 0.0);
    let (mut fwd, mut bwd, mut fused_fwd, mut fused_bwd) = (0.0, 0.0, 0.0, 0.0);
    for (_, o, i) in projections(config) {
        let (a, b) = (rng.vec(r * i), rng.vec(o * r));
        let w = LoraWeights {
            a: &a,
            b: &b,
            r,
            scale: 2.0,
        };
        let x = rng.vec(rows * i);
        let dy = rng.vec(rows * o);
        let mut u = vec![0f32; rows * r];
        let mut y = vec![0f32; rows * o];
        let (mut ga, mut gb, mut dx) = (vec![0f32; r * i], vec![0f32; o * r], vec![0f32; rows * i]);
        fwd += best_seconds(reps, || lora_forward(w, &x, rows, &mut u, &mut y));
        bwd += best_seconds(reps, || {
            let g = LoraGrads { a: &mut ga, b: &mut gb };
            lora_backward(w, &x, rows, &u, &dy, g, &mut dx)
        });
        let data = random_weight(&mut rng, fused_dtype, o, i);
        let wt = WeightRef::new(fused_dtype, o, i, &data, RowOrder::Stored).expect("whole blocks");
        fused_fwd += best_seconds(reps, || {
            lora_down(w, &x, rows, &mut u);
            matmul_wt_plus(&x, rows, &wt, lora_up(w, &u, rows), &mut y);
        });
        fused_bwd += best_seconds(reps, || {
            let g = LoraGrads { a: &mut ga, b: &mut gb };
            let du = lora_backward_weights(w, &x, rows, &u, &dy, g);
            matmul_w_acc_plus(&dy, rows, &wt, lora_input_grad(w, &du, rows), &mut dx);
        });
        flops += 2.0 * (rows * r * (i + o)) as f64;
        frozen_flops += 2.0 * (rows * o * i) as f64;
    }
    out.push(figure(DType::F32.to_string(), "LoRA forward", 7, flops, fwd));
    out.push(figure(DType::F32.to_string(), "LoRA backward", 7, 2.0 * flops, bwd));
    out.push(figure(
        fused_dtype.to_string(),
        "X·Wᵀ + LoRA",
        7,
        frozen_flops + flops,
        fused_fwd,
    ));
    out.push(figure(
        fused_dtype.to_string(),
        "dY·W + LoRA",
        7,
        frozen_flops + 2.0 * flops,
        fused_bwd,
    ));
    let peak = peak_before.max(fma_peak_gflops());
    out.into_iter()
        .map(|(dtype, product, projections, gflops)| MatmulFigure {
            dtype,
            product,
            rows,
            projections,
            gflops,
            peak_gflops: peak,
            peak_fraction: gflops / peak,
        })
        .collect()
}
