//! The low-rank branch of a LoRA'd linear layer: y += s · (x Aᵀ) Bᵀ, and its backward.

use super::matmul::{Mat, MatMut, Update, gemm};

/// Rows of dB per product in [`lora_backward_weights`].
const DB_ROWS: usize = 512;

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
    let (_, out) = w.dims();
    let r = w.r;
    lora_down(w, x, t, u);
    let b = Mat::new(w.b, out, r);
    gemm(w.scale, Mat::new(u, t, r), b.t(), MatMut::new(y, t, out), Update::Add);
}

/// The first half of [`lora_forward`] alone, u: `[T, r]` = x: `[T, in]` · Aᵀ (the same bits):
/// all a backward pass needs when it recomputes a branch whose output it does not use.
pub fn lora_down(w: LoraWeights, x: &[f32], t: usize, u: &mut [f32]) {
    let (inp, _) = w.dims();
    let r = w.r;
    let a = Mat::new(w.a, r, inp);
    gemm(1.0, Mat::new(x, t, inp), a.t(), MatMut::new(u, t, r), Update::Overwrite);
}

/// Adds the gradients of A, B and of the branch's input, given dy: `[T, out]` and the `u`
/// of the forward pass: g.a: `[r, in]` += duᵀ x; g.b: `[out, r]` += scale · dyᵀ u;
/// dx: `[T, in]` += du A, with du = scale · dy B.
pub fn lora_backward(w: LoraWeights, x: &[f32], t: usize, u: &[f32], dy: &[f32], g: LoraGrads, dx: &mut [f32]) {
    let du = lora_backward_weights(w, x, t, u, dy, g);
    lora_backward_input(w, &du, t, dx);
}

/// The first part of [`lora_backward`]: the gradients of A and B, and du: `[T, r]` for
/// [`lora_backward_input`] (after which a caller may overwrite `x`).
pub fn lora_backward_weights(w: LoraWeights, x: &[f32], t: usize, u: &[f32], dy: &[f32], g: LoraGrads) -> Vec<f32> {
    let (inp, out) = w.dims();
    let r = w.r;
    let b = Mat::new(w.b, out, r);
    let dy_ = Mat::new(dy, t, out);
    // dB in blocks of its rows: the product packs its left operand, dyᵀ, whole, which for
    // a wide projection is larger than everything else it touches (the same bits).
    for o0 in (0..out).step_by(DB_ROWS) {
        let o1 = (o0 + DB_ROWS).min(out);
        gemm(
            w.scale,
            Mat::new(&dy[o0..], t, o1 - o0).with_ld(out).t(),
            Mat::new(u, t, r),
            MatMut::new(&mut g.b[o0 * r..o1 * r], o1 - o0, r),
            Update::Add,
        );
    }
    let mut du = vec![0f32; t * r];
    gemm(w.scale, dy_, b, MatMut::new(&mut du, t, r), Update::Overwrite);
    gemm(
        1.0,
        Mat::new(&du, t, r).t(),
        Mat::new(x, t, inp),
        MatMut::new(g.a, r, inp),
        Update::Add,
    );
    du
}

/// The second part of [`lora_backward`]: dx: `[T, in]` += du A.
pub fn lora_backward_input(w: LoraWeights, du: &[f32], t: usize, dx: &mut [f32]) {
    let (inp, _) = w.dims();
    let r = w.r;
    let a = Mat::new(w.a, r, inp);
    gemm(1.0, Mat::new(du, t, r), a, MatMut::new(dx, t, inp), Update::Add);
}

/// Inverted dropout with a mask that is a pure function of (seed, index), so the backward
/// pass regenerates it instead of storing it. x, out: `[n]`; returns nothing, writes out.
pub fn dropout(x: &[f32], p: f32, seed: u64, out: &mut [f32]) {
    dropout_at(x, p, seed, 0, out);
}

/// [`dropout`] of elements `offset..offset + n` of a longer input: a pass that works on a
/// tensor's rows in chunks draws the mask the whole tensor would get.
pub fn dropout_at(x: &[f32], p: f32, seed: u64, offset: usize, out: &mut [f32]) {
    let keep = 1.0 / (1.0 - p);
    let threshold = (p as f64 * (1u64 << 32) as f64) as u64;
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = if mix(seed, (offset + i) as u64) >> 32 < threshold {
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
