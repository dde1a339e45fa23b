//! One projection of a decoder layer, forward and backward: the frozen weight, its bias,
//! and the adapter's LoRA branch with its training-time dropout.

use super::{LoraCtx, add_into};
use crate::adapter::Adapter;
use crate::kernels::lora::{
    LoraGrads, LoraWeights, dropout_at, lora_backward, lora_backward_input, lora_backward_weights, lora_down,
    lora_forward, lora_input_grad, lora_up,
};
use crate::kernels::matmul::{WeightRef, matmul_w_acc, matmul_w_acc_plus, matmul_wt, matmul_wt_plus};
use crate::model::Model;
use crate::model::weights::Proj;

/// Projection `proj` of layer `layer`: `y = x · Wᵀ (+ bias) (+ scale · (drop(x) Aᵀ) Bᵀ)`.
#[derive(Clone, Copy)]
pub(super) struct Linear<'a> {
    layer: usize,
    proj: Proj,
    weight: WeightRef<'a>,        // [out, in]
    bias: Option<&'a [f32]>,      // [out]
    lora: Option<LoraBranch<'a>>, // the adapter's pair, when it has one here
}

/// The LoRA branch of a projection and the (probability, seed) of its dropout.
#[derive(Clone, Copy)]
struct LoraBranch<'a> {
    weights: LoraWeights<'a>,
    dropout: Option<(f32, u64)>,
}

/// The LoRA branches' intermediates of one layer, kept for the backward pass.
#[derive(Default)]
pub(crate) struct LoraActs {
    /// Per projection: `[T, r]` = drop(x) Aᵀ.
    pub(super) u: [Vec<f32>; 7],
    /// Scratch for a dropped-out input.
    xdrop: Vec<f32>,
}

impl Model {
    /// Projection `p` of layer `li`, with `lora`'s branch if its adapter has one there.
    pub(super) fn linear<'a>(&'a self, lora: &LoraCtx<'a>, li: usize, p: Proj) -> Linear<'a> {
        let l = &self.weights.layers[li];
        let bias = match p {
            Proj::Q => l.q_bias.as_deref(),
            Proj::K => l.k_bias.as_deref(),
            Proj::V => l.v_bias.as_deref(),
            _ => None,
        };
        let branch = lora.adapter.and_then(|a| {
            a.get(li, p).map(|pair| LoraBranch {
                weights: LoraWeights {
                    a: &pair.a,
                    b: &pair.b,
                    r: a.config.r,
                    scale: a.scale(),
                },
                dropout: lora.dropout_seed(li, p),
            })
        });
        Linear {
            layer: li,
            proj: p,
            weight: self.weights.view(l.proj(p)),
            bias,
            lora: branch,
        }
    }
}

impl Linear<'_> {
    /// y: `[T, out]` = x: `[T, in]` · Wᵀ (+ bias) (+ the LoRA branch, keeping its `u` in `acts`).
    /// `row0` is x's first row in the pass (the dropout mask is drawn for the whole pass).
    pub(super) fn forward(&self, x: &[f32], y: &mut [f32], acts: &mut LoraActs, row0: usize) {
        let t = x.len() / self.weight.cols;
        if let (Some(branch), None) = (self.lora, self.bias) {
            // The branch's up-projection is added to the frozen product's tiles: the bits
            // of `lora_forward` after `matmul_wt`.
            let (u, xin) = self.branch_input(branch, x, acts, row0);
            lora_down(branch.weights, xin, t, u);
            matmul_wt_plus(x, t, &self.weight, lora_up(branch.weights, u, t), y);
            return;
        }
        matmul_wt(x, t, &self.weight, y);
        if let Some(b) = self.bias {
            for row in y.chunks_exact_mut(b.len()) {
                add_into(row, b);
            }
        }
        if let Some(branch) = self.lora {
            let (u, xin) = self.branch_input(branch, x, acts, row0);
            lora_forward(branch.weights, xin, t, u, y);
        }
    }

    /// Only the LoRA branch's `u` of [`Self::forward`] (the same bits), into `acts`: what the
    /// backward pass needs of a projection whose output it does not use again.
    pub(super) fn forward_lora_u(&self, x: &[f32], acts: &mut LoraActs, row0: usize) {
        let t = x.len() / self.weight.cols;
        if let Some(branch) = self.lora {
            let (u, xin) = self.branch_input(branch, x, acts, row0);
            lora_down(branch.weights, xin, t, u);
        }
    }

    /// The branch's `u` buffer sized for x's rows, and its input (x after dropout).
    fn branch_input<'s>(
        &self,
        branch: LoraBranch,
        x: &'s [f32],
        acts: &'s mut LoraActs,
        row0: usize,
    ) -> (&'s mut [f32], &'s [f32]) {
        let t = x.len() / self.weight.cols;
        let LoraActs { u, xdrop } = acts;
        let u = &mut u[self.proj as usize];
        u.resize(t * branch.weights.r, 0.0);
        let xin = match branch.dropout {
            Some((prob, seed)) => {
                xdrop.resize(x.len(), 0.0);
                dropout_at(x, prob, seed, row0 * self.weight.cols, xdrop);
                &xdrop[..]
            }
            None => x,
        };
        (&mut u[..], xin)
    }

    /// The rows of a projection's `u` (`[T, r]` in `acts`) that belong to rows `rows` of its input.
    pub(super) fn u_rows<'s>(&self, acts: &'s LoraActs, rows: std::ops::Range<usize>) -> &'s [f32] {
        match self.lora {
            Some(branch) => &acts.u[self.proj as usize][rows.start * branch.weights.r..rows.end * branch.weights.r],
            None => &[],
        }
    }

    /// This projection's LoRA pair in the gradient buffer `grads`.
    fn lora_grads<'g>(&self, grads: &'g mut Adapter) -> LoraGrads<'g> {
        let g = grads.layers[self.layer][self.proj as usize]
            .as_mut()
            .expect("gradient buffer shaped like the adapter");
        LoraGrads {
            a: &mut g.a,
            b: &mut g.b,
        }
    }

    /// [`Self::backward`] into the buffer of its input, which the caller is done with:
    /// `x` becomes dL/dx (the bits `backward` adds into a zeroed buffer). The branch's
    /// gradients, which read x, are taken first.
    pub(super) fn backward_in_place(&self, x: &mut [f32], u: &[f32], dy: &[f32], grads: &mut Adapter, row0: usize) {
        let t = x.len() / self.weight.cols;
        let Some(branch) = self.lora else {
            x.fill(0.0);
            matmul_w_acc(dy, t, &self.weight, x);
            return;
        };
        let g = self.lora_grads(grads);
        match branch.dropout {
            None => {
                let du = lora_backward_weights(branch.weights, x, t, u, dy, g);
                x.fill(0.0);
                matmul_w_acc_plus(dy, t, &self.weight, lora_input_grad(branch.weights, &du, t), x);
            }
            Some((prob, seed)) => {
                let offset = row0 * self.weight.cols;
                let mut xd = vec![0f32; x.len()];
                dropout_at(x, prob, seed, offset, &mut xd);
                let du = lora_backward_weights(branch.weights, &xd, t, u, dy, g);
                x.fill(0.0);
                matmul_w_acc(dy, t, &self.weight, x);
                let mut dxd = xd;
                dxd.fill(0.0);
                lora_backward_input(branch.weights, &du, t, &mut dxd);
                // d drop(x)/dx is the same mask and scale.
                dropout_at(&dxd.clone(), prob, seed, offset, &mut dxd);
                add_into(x, &dxd);
            }
        }
    }

    /// Backward of [`Self::forward`] (whose input was `x`, at row `row0` of the pass, and
    /// whose branch intermediate was `u`: `[T, r]`): dx: `[T, in]` += dy: `[T, out]` · W (+ the
    /// LoRA branch's input gradient); the branch's gradients are added into `grads`.
    pub(super) fn backward(&self, x: &[f32], u: &[f32], dy: &[f32], dx: &mut [f32], grads: &mut Adapter, row0: usize) {
        let t = x.len() / self.weight.cols;
        let Some(branch) = self.lora else {
            matmul_w_acc(dy, t, &self.weight, dx);
            return;
        };
        let g = self.lora_grads(grads);
        match branch.dropout {
            None => {
                // The branch's input gradient is added to the frozen product's tiles: the
                // bits of `lora_backward` after `matmul_w_acc`.
                let du = lora_backward_weights(branch.weights, x, t, u, dy, g);
                matmul_w_acc_plus(dy, t, &self.weight, lora_input_grad(branch.weights, &du, t), dx);
            }
            Some((prob, seed)) => {
                matmul_w_acc(dy, t, &self.weight, dx);
                let offset = row0 * self.weight.cols;
                let mut xd = vec![0f32; x.len()];
                dropout_at(x, prob, seed, offset, &mut xd);
                let mut dxd = vec![0f32; x.len()];
                lora_backward(branch.weights, &xd, t, u, dy, g, &mut dxd);
                // d drop(x)/dx is the same mask and scale.
                dropout_at(&dxd.clone(), prob, seed, offset, &mut dxd);
                add_into(dx, &dxd);
            }
        }
    }
}
