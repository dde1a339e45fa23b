//! The low-rank branch of a LoRA'd linear layer: y += s · (x Aᵀ) Bᵀ, and its backward.

use super::matmul::{Mat, MatMut, Update, gemm};

/// One LoRA pair as the kernels see it: `a: [r, in]`, `b: [out, r]`, and the branch's scale.
#[derive(Clone, Copy, Debug)]
pub struct LoraWeights<'a> {
    pub a: &'a [f32],
    pub b: &'a [f32],
    pub r: usize,
    pub scale: f32,
}

/// Where [`lora_backward`] adds the gradients of A (`[r, in]`) and B (`[out, r]`).
#[derive(Debug)]
pub struct LoraGrads<'a> {
    pub a: &'a mut [f32],
    pub b: &'a mut [f32],
}

impl LoraWeights<'_> {
    fn dims(&self) -> (usize, usize) {
        (self.a.len() / self.r, self.b.len() / self.r)
    }
}

/// x: `[T, in]` → u: `[T, r]` (= x Aᵀ, kept for the backward pass), y: `[T, out]` += scale · u Bᵀ.
pub fn lora_forward(w: LoraWeights, x: &[f32], t: usize, u: &mut [f32], y: &mut [f32]) {
    let (inp, out) = w.dims();
    let r = w.r;
    let a = Mat::new(w.a, r, inp);
    let b = Mat::new(w.b, out, r);
    gemm(1.0, Mat::new(x, t, inp), a.t(), MatMut::new(u, t, r), Update::Overwrite);
    gemm(w.scale, Mat::new(u, t, r), b.t(), MatMut::new(y, t, out), Update::Add);
}

/// Adds the gradients of A, B and of the branch's input, given dy: `[T, out]` and the `u`
/// of the forward pass: g.a: `[r, in]` += duᵀ x; g.b: `[out, r]` += scale · dyᵀ u;
/// dx: `[T, in]` += du A, with du = scale · dy B.
pub fn lora_backward(w: LoraWeights, x: &[f32], t: usize, u: &[f32], dy: &[f32], g: LoraGrads, dx: &mut [f32]) {
    let (inp, out) = w.dims();
    let r = w.r;
    let (a, b) = (Mat::new(w.a, r, inp), Mat::new(w.b, out, r));
    let dy_ = Mat::new(dy, t, out);
    gemm(
        w.scale,
        dy_.t(),
        Mat::new(u, t, r),
        MatMut::new(g.b, out, r),
        Update::Add,
    );
    let mut du = vec![0f32; t * r];
    gemm(w.scale, dy_, b, MatMut::new(&mut du, t, r), Update::Overwrite);
    let du = Mat::new(&du, t, r);
    gemm(1.0, du.t(), Mat::new(x, t, inp), MatMut::new(g.a, r, inp), Update::Add);
    gemm(1.0, du, a, MatMut::new(dx, t, inp), Update::Add);
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
