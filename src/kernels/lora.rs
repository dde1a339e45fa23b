//! The low-rank branch of a LoRA'd linear layer: y += s · (x Aᵀ) Bᵀ, and its backward.

use super::matmul::gemm;

/// x: `[T, in]`, a: `[r, in]`, b: `[out, r]` → u: `[T, r]` (= x Aᵀ, kept for the backward pass),
/// y: `[T, out]` += scale · u Bᵀ.
pub fn lora_forward(x: &[f32], t: usize, a: &[f32], b: &[f32], r: usize, scale: f32, u: &mut [f32], y: &mut [f32]) {
    let inp = a.len() / r;
    let out = b.len() / r;
    gemm(false, true, t, r, inp, 1.0, x, inp, a, inp, false, u, r);
    gemm(false, true, t, out, r, scale, u, r, b, r, true, y, out);
}

/// Adds the gradients of A, B and of the branch's input, given dy: `[T, out]`.
/// ga: `[r, in]` += duᵀ x; gb: `[out, r]` += scale · dyᵀ u; dx: `[T, in]` += du A
/// with du = scale · dy B.
#[allow(clippy::too_many_arguments)]
pub fn lora_backward(
    x: &[f32],
    t: usize,
    a: &[f32],
    b: &[f32],
    r: usize,
    scale: f32,
    u: &[f32],
    dy: &[f32],
    ga: &mut [f32],
    gb: &mut [f32],
    dx: &mut [f32],
) {
    let inp = a.len() / r;
    let out = b.len() / r;
    gemm(true, false, out, r, t, scale, dy, out, u, r, true, gb, r);
    let mut du = vec![0f32; t * r];
    gemm(false, false, t, r, out, scale, dy, out, b, r, false, &mut du, r);
    gemm(true, false, r, inp, t, 1.0, &du, r, x, inp, true, ga, inp);
    gemm(false, false, t, inp, r, 1.0, &du, r, a, inp, true, dx, inp);
}

/// Inverted dropout with a mask that is a pure function of (seed, index), so the backward
/// pass regenerates it instead of storing it. x, out: `[n]`; returns nothing, writes out.
pub fn dropout(x: &[f32], p: f32, seed: u64, out: &mut [f32]) {
    let keep = 1.0 / (1.0 - p);
    let threshold = (p as f64 * (1u64 << 32) as f64) as u64;
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = if mix(seed, i as u64) >> 32 < threshold {
            0.0
        } else {
            v * keep
        };
    }
}

fn mix(seed: u64, i: u64) -> u64 {
    let mut z = seed ^ i.wrapping_mul(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}
