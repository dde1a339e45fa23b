//! The model's head: the vocabulary projection (`lm_head`) of final hidden states, as
//! next-token logits or as the log-probs of given target tokens, and the backward of the
//! latter. Scoring, training, generation and the benches all reach the vocabulary here.

use super::{LoraCtx, Model};
use crate::adapter::Adapter;
use crate::error::Result;
use crate::kernels::attention::AttnLayout;
use crate::kernels::logprob::{token_logprobs, token_logprobs_backward};
use crate::kernels::matmul::matmul_wt;
use ndarray::Array2;

/// The hidden rows that predict target tokens, gathered from a packed forward pass, kept
/// for [`Model::target_logprobs_backward`].
pub struct TargetRows {
    rows: Vec<f32>,        // [P, hidden]
    ids: Vec<u32>,         // [P] the tokens they predict
    positions: Vec<usize>, // [P] their rows in the packed pass
}

impl Model {
    /// The next-token logits at every position of one sequence, with `adapter` applied if
    /// given: `[tokens.len(), vocab]`, as `model(input_ids).logits[0]` in transformers.
    pub fn forward_logits(&self, tokens: &[u32], adapter: Option<&Adapter>) -> Result<Array2<f32>> {
        let layout = AttnLayout::sequences(&[tokens.len()]);
        let h = self.hidden_states_with(
            tokens,
            &layout,
            LoraCtx {
                adapter,
                ..LoraCtx::default()
            },
        )?;
        let logits = self.logits(&h)?;
        Ok(Array2::from_shape_vec((tokens.len(), self.config.vocab_size), logits)
            .expect("the head gives vocab logits per row"))
    }

    /// Next-token logits of hidden rows `h`: `[m, hidden]` → `[m, vocab]`.
    pub fn logits(&self, h: &[f32]) -> Result<Vec<f32>> {
        let head = self.weights.view(&self.weights.lm_head);
        let m = h.len() / head.cols.max(1);
        let mut out = crate::buffers::zeros::<f32>(m * head.rows, "the logits")?;
        matmul_wt(&h[..m * head.cols], m, &head, &mut out);
        Ok(out)
    }

    /// `log p(id | h[pos])` for each `(pos, id)` of `targets` (ids already checked
    /// against the vocabulary), with the rows kept for the backward pass.
    /// h: `[T, hidden]` → `[P]` log-probs.
    pub fn target_logprobs(&self, h: &[f32], targets: &[(usize, u32)]) -> (Vec<f32>, TargetRows) {
        let hidden = self.config.hidden_size;
        // Only the rows that predict a target reach the vocabulary.
        let mut rows = Vec::with_capacity(targets.len() * hidden);
        let mut ids = Vec::with_capacity(targets.len());
        let mut positions = Vec::with_capacity(targets.len());
        for &(pos, id) in targets {
            rows.extend_from_slice(&h[pos * hidden..(pos + 1) * hidden]);
            ids.push(id);
            positions.push(pos);
        }
        let mut logp = vec![0f32; ids.len()];
        token_logprobs(&rows, &ids, &self.weights.view(&self.weights.lm_head), &mut logp);
        (logp, TargetRows { rows, ids, positions })
    }

    /// Adds to `dh` (`[T, hidden]`, the packed pass's rows) the gradient of a loss whose
    /// derivative with respect to each target's log-prob is `dlogp`: `[P]`. A row that
    /// predicts several targets (a prompt's last row, before each of its completions)
    /// receives their sum.
    pub fn target_logprobs_backward(&self, t: &TargetRows, dlogp: &[f32], dh: &mut [f32]) {
        let hidden = self.config.hidden_size;
        let mut drows = vec![0f32; t.rows.len()];
        let head = self.weights.view(&self.weights.lm_head);
        token_logprobs_backward(&t.rows, &t.ids, &head, dlogp, &mut drows);
        for (&pos, dr) in t.positions.iter().zip(drows.chunks_exact(hidden)) {
            for (d, &g) in dh[pos * hidden..(pos + 1) * hidden].iter_mut().zip(dr) {
                *d += g;
            }
        }
    }
}
