//! RMSNorm: y = x / sqrt(mean(x²) + eps) * w, row by row.

/// x: `[rows, dim]`, w: `[dim]`, y: `[rows, dim]`; returns nothing, writes y.
/// `inv_rms`: `[rows]`, receives 1/sqrt(mean(x²)+eps) for the backward pass.
pub fn rmsnorm_forward(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv_rms: &mut [f32]) {
    let dim = w.len();
    for ((xr, yr), r) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)).zip(inv_rms.iter_mut()) {
        let ss = super::simd::dot(xr, xr);
        // Same order of operations as transformers' LlamaRMSNorm: mean, + eps, rsqrt.
        let inv = 1.0 / (ss / dim as f32 + eps).sqrt();
        *r = inv;
        for ((o, &xi), &wi) in yr.iter_mut().zip(xr).zip(w) {
            *o = wi * (xi * inv);
        }
    }
}

/// Adds dL/dx into `dx` given dL/dy. The norm weight is frozen: no dL/dw.
/// x, dy, dx: `[rows, dim]`; w: `[dim]`; inv_rms: `[rows]` from the forward pass.
pub fn rmsnorm_backward(x: &[f32], w: &[f32], inv_rms: &[f32], dy: &[f32], dx: &mut [f32]) {
    let dim = w.len();
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
}
