//! RMSNorm: y = x / sqrt(mean(x²) + eps) * w, row by row.

use rayon::prelude::*;

/// Rows per parallel task: a row is a few hundred multiply-adds, and the rows are
/// independent (the same bits however they are shared out).
const TASK_ROWS: usize = 16;

/// x: `[rows, dim]`, w: `[dim]`, y: `[rows, dim]`; returns nothing, writes y.
/// `inv_rms`: `[rows]`, receives 1/sqrt(mean(x²)+eps) for the backward pass.
pub fn rmsnorm_forward(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv_rms: &mut [f32]) {
    let dim = w.len();
    if dim == 0 {
        return;
    }
    let rows = inv_rms.len().min(x.len() / dim).min(y.len() / dim);
    (x[..rows * dim].par_chunks(TASK_ROWS * dim))
        .zip(y[..rows * dim].par_chunks_mut(TASK_ROWS * dim))
        .zip(inv_rms[..rows].par_chunks_mut(TASK_ROWS))
        .for_each(|((x, y), inv_rms)| {
            for ((xr, yr), r) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)).zip(inv_rms.iter_mut()) {
                let ss = super::simd::dot(xr, xr);
                // Same order of operations as transformers' LlamaRMSNorm: mean, + eps, rsqrt.
                let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
                *r = inv;
                for ((o, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
                    *o = wi * (xi * inv);
                }
            }
        });
}

/// Adds dL/dx into `dx` given dL/dy. The norm weight is frozen: no dL/dw.
/// x, dy, dx: `[rows, dim]`; w: `[dim]`; inv_rms: `[rows]` from the forward pass.
pub fn rmsnorm_backward(x: &[f32], w: &[f32], inv_rms: &[f32], dy: &[f32], dx: &mut [f32]) {
    let dim = w.len();
    if dim == 0 {
        return;
    }
    let rows = inv_rms.len().min(x.len() / dim).min(dy.len() / dim).min(dx.len() / dim);
    (x[..rows * dim].par_chunks(TASK_ROWS * dim))
        .zip(dy[..rows * dim].par_chunks(TASK_ROWS * dim))
        .zip(dx[..rows * dim].par_chunks_mut(TASK_ROWS * dim))
        .zip(inv_rms[..rows].par_chunks(TASK_ROWS))
        .for_each(|(((x, dy), dx), inv_rms)| {
            for (((xr, dyr), dxr), &inv) in x
                .chunks_exact(dim)
                .zip(dy.chunks_exact(dim))
                .zip(dx.chunks_exact_mut(dim))
                .zip(inv_rms)
            {
                // y = w * x * inv  with inv = (mean(x²)+eps)^-1/2
                // dx = inv * (w*dy) - x * inv³/dim * sum(w*dy*x)
                let mut dot = 0f32;
                for ((&xi, &dyi), &wi) in xr.iter().zip(dyr).zip(w) {
                    dot += wi * dyi * xi;
                }
                let c = dot * inv * inv * inv / dim as f32;
                for (((o, &xi), &dyi), &wi) in dxr.iter_mut().zip(xr).zip(dyr).zip(w) {
                    *o += inv * wi * dyi - c * xi;
                }
            }
        });
}
