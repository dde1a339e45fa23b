//! The low-rank branch of a LoRA'd linear layer: y += s · (x Aᵀ) Bᵀ, and its backward.

use super::matmul::{LowRank, Mat, MatMut, Update, gemm, gemm_scaled_b};

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
    lora_down(w, x, t, u);
    let up = lora_up(w, u, t);
    gemm(up.alpha, up.u, up.v, MatMut::new(y, t, out), Update::Add);
}

/// The second half of [`lora_forward`], `scale · u Bᵀ` (u: `[T, r]`), as a product that
/// `matmul_wt_plus` adds to the frozen one's tiles: the same bits.
pub fn lora_up<'a>(w: LoraWeights<'a>, u: &'a [f32], t: usize) -> LowRank<'a> {
    let (_, out) = w.dims();
    LowRank {
        alpha: w.scale,
        u: Mat::new(u, t, w.r),
        v: Mat::new(w.b, out, w.r).t(),
    }
}

/// The first half of [`lora_forward`] alone, u: `[T, r]` = x: `[T, in]` · Aᵀ (the same bits):
/// all a backward pass needs when it recomputes a branch whose output it does not use.
pub fn lora_down(w: LoraWeights, x: &[f32], t: usize, u: &mut [f32]) {
    let (inp, _) = w.dims();
    let r = w.r;
    gemm(
        1.0,
        Mat::new(x, t, inp),
        Mat::new(w.a, r, inp).t(),
        MatMut::new(&mut u[..t * r], t, r),
        Update::Overwrite,
    );
}

/// Adds the gradients of A, B and of the branch's input, given dy: `[T, out]` and the `u`
/// of the forward pass: g.a: `[r, in]` += duᵀ x; g.b: `[out, r]` += dyᵀ (scale u);
/// dx: `[T, in]` += du A, with du = dy (scale B).
pub fn lora_backward(w: LoraWeights, x: &[f32], t: usize, u: &[f32], dy: &[f32], g: LoraGrads, dx: &mut [f32]) {
    let du = lora_backward_weights(w, x, t, u, dy, g);
    lora_backward_input(w, &du, t, dx);
}

/// The first part of [`lora_backward`]: the gradients of A and B, and du: `[T, r]` for
/// [`lora_backward_input`] (after which a caller may overwrite `x`).
pub fn lora_backward_weights(w: LoraWeights, x: &[f32], t: usize, u: &[f32], dy: &[f32], g: LoraGrads) -> Vec<f32> {
    let (inp, out) = w.dims();
    let r = w.r;
    // The scale goes on the thin operands (u and B), so that dy, the wide one, is read
    // where it lies: dB: [out, r] += dyᵀ · (scale u).
    gemm_scaled_b(
        Mat::new(&dy[..t * out], t, out).t(),
        w.scale,
        Mat::new(u, t, r),
        MatMut::new(g.b, out, r),
        Update::Add,
    );
    // du: [T, r] = dy · (scale B).
    let mut du = vec![0f32; t * r];
    gemm_scaled_b(
        Mat::new(&dy[..t * out], t, out),
        w.scale,
        Mat::new(w.b, out, r),
        MatMut::new(&mut du, t, r),
        Update::Overwrite,
    );
    // dA: [r, in] += duᵀ · x.
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
    let g = lora_input_grad(w, du, t);
    gemm(g.alpha, g.u, g.v, MatMut::new(dx, t, inp), Update::Add);
}

/// [`lora_backward_input`]'s `du A` (du: `[T, r]`) as a product that `matmul_w_acc_plus`
/// adds to the frozen one's tiles: the same bits.
pub fn lora_input_grad<'a>(w: LoraWeights<'a>, du: &'a [f32], t: usize) -> LowRank<'a> {
    let (inp, _) = w.dims();
    LowRank {
        alpha: 1.0,
        u: Mat::new(du, t, w.r),
        v: Mat::new(w.a, w.r, inp),
    }
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
