//! Token log-probabilities through the output projection, a chunk of positions at a time,
//! so that `positions x vocab` logits never exist for more than one chunk.

use super::matmul::{WeightRef, matmul_w_acc, matmul_wt};

/// Positions per chunk: 32 x 49152 logits is 6 MB.
pub const CHUNK: usize = 32;

/// log-softmax of each logits row, gathered at its target, plus the row's log-sum-exp.
fn log_softmax_gather(logits: &[f32], vocab: usize, targets: &[u32], logp: &mut [f32], lse: &mut [f32]) {
    for (((row, &t), lp), l) in logits
        .chunks_exact(vocab)
        .zip(targets)
        .zip(logp.iter_mut())
        .zip(lse.iter_mut())
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
        let lse_row = max as f64 + sum.ln();
        *l = lse_row as f32;
        *lp = (row[t as usize] as f64 - lse_row) as f32;
    }
}

/// h: [P, hidden] final hidden states; targets: [P] (validated < vocab);
/// lm_head: [vocab, hidden]; logp: [P] receives log p(target | h).
pub fn token_logprobs(h: &[f32], targets: &[u32], lm_head: &WeightRef, logp: &mut [f32]) {
    let (vocab, hidden) = (lm_head.rows, lm_head.cols);
    let mut logits = vec![0f32; CHUNK * vocab];
    let mut lse = [0f32; CHUNK];
    for (c, tgt) in targets.chunks(CHUNK).enumerate() {
        let p0 = c * CHUNK;
        let m = tgt.len();
        matmul_wt(&h[p0 * hidden..(p0 + m) * hidden], m, lm_head, &mut logits[..m * vocab]);
        log_softmax_gather(&logits[..m * vocab], vocab, tgt, &mut logp[p0..p0 + m], &mut lse[..m]);
    }
}

/// Full logits at a few positions (for inspection and golden checks): [P, vocab].
pub fn logits(h: &[f32], m: usize, lm_head: &WeightRef) -> Vec<f32> {
    let mut out = vec![0f32; m * lm_head.rows];
    matmul_wt(h, m, lm_head, &mut out);
    out
}

/// Adds dL/dh given dL/dlogp: d logp/d logits = onehot(target) - softmax(logits),
/// recomputed chunk by chunk. h, dh: [P, hidden]; targets, dlogp: [P].
pub fn token_logprobs_backward(h: &[f32], targets: &[u32], lm_head: &WeightRef, dlogp: &[f32], dh: &mut [f32]) {
    let (vocab, hidden) = (lm_head.rows, lm_head.cols);
    let mut logits = vec![0f32; CHUNK * vocab];
    for (c, tgt) in targets.chunks(CHUNK).enumerate() {
        let p0 = c * CHUNK;
        let m = tgt.len();
        let lg = &mut logits[..m * vocab];
        matmul_wt(&h[p0 * hidden..(p0 + m) * hidden], m, lm_head, lg);
        for (r, row) in lg.chunks_exact_mut(vocab).enumerate() {
            let g = dlogp[p0 + r];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let lse = max as f64 + sum.ln();
            for x in row.iter_mut() {
                *x = -g * ((*x as f64 - lse).exp() as f32);
            }
            row[tgt[r] as usize] += g;
        }
        matmul_w_acc(lg, m, lm_head, &mut dh[p0 * hidden..(p0 + m) * hidden]);
    }
}
