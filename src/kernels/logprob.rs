//! Token log-probabilities through the output projection, a chunk of positions at a time,
//! so that `positions x vocab` logits never exist for more than one chunk.

use super::matmul::{WeightRef, matmul_w_acc, matmul_wt};
use super::simd::{exp16, hmax16, multiversion};
use rayon::prelude::*;

/// Positions per chunk: 32 x 49152 logits is 6 MB.
pub const CHUNK: usize = 32;

/// log-softmax of each logits row, gathered at its target, plus the row's log-sum-exp.
fn log_softmax_gather(logits: &[f32], vocab: usize, targets: &[u32], logp: &mut [f32], lse: &mut [f32]) {
    // A row is a whole vocabulary: one task each (rows are independent, the same bits).
    (logits.par_chunks_exact(vocab))
        .zip(targets)
        .zip(logp.par_iter_mut())
        .zip(lse.par_iter_mut())
        .for_each(|(((row, &t), lp), l)| {
            let max = row_max(row);
            let lse_row = max as f64 + sum_exp(row, max).ln();
            *l = lse_row as f32;
            *lp = (row[t as usize] as f64 - lse_row) as f32;
        });
}

multiversion! {
    fn row_max(row: &[f32]) -> f32 {
        let mut m = [f32::NEG_INFINITY; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            for l in 0..16 {
                m[l] = if c[l] > m[l] { c[l] } else { m[l] };
            }
        }
        // The tail as a whole vector padded with -inf: per-lane updates derail LLVM's
        // vectorization of the loop.
        let c = tail(chunks.remainder());
        for l in 0..16 {
            m[l] = if c[l] > m[l] { c[l] } else { m[l] };
        }
        hmax16(&m)
    }
}

/// Up to 16 values as a vector padded with -inf (whose exponential is 0).
#[inline(always)]
fn tail(rest: &[f32]) -> [f32; 16] {
    let mut c = [f32::NEG_INFINITY; 16];
    c[..rest.len()].copy_from_slice(rest);
    c
}

/// Adds 16 f32 terms into f64 lane sums.
#[inline(always)]
fn add_f64(acc: &mut [f64; 16], e: &[f32; 16]) {
    for l in 0..16 {
        acc[l] += e[l] as f64;
    }
}

/// Lane sums added in a fixed tree.
#[inline(always)]
fn hsum_f64(acc: &[f64; 16]) -> f64 {
    // An opaque copy, as in `simd::hsum16`: it keeps the accumulator loop in whole vectors.
    let mut s = std::hint::black_box(*acc);
    for w in [8, 4, 2, 1] {
        for l in 0..w {
            s[l] += s[l + w];
        }
    }
    s[0]
}

multiversion! {
    /// Σ e^(x - max): each term in f32 (the fast [`exp`]), the sum in f64, which keeps a
    /// vocabulary-long sum accurate.
    fn sum_exp(row: &[f32], max: f32) -> f64 {
        let mut acc = [0f64; 16];
        let mut chunks = row.chunks_exact(16);
        for c in &mut chunks {
            let mut x = [0f32; 16];
            for l in 0..16 {
                x[l] = c[l] - max;
            }
            add_f64(&mut acc, &exp16(&x));
        }
        let c = tail(chunks.remainder());
        let mut x = [0f32; 16];
        for l in 0..16 {
            x[l] = c[l] - max;
        }
        add_f64(&mut acc, &exp16(&x));
        hsum_f64(&acc)
    }
}

multiversion! {
    /// `row[i]` = e^(`row[i]` - max), returning their sum as [`sum_exp`] does.
    fn exp_in_place_sum(row: &mut [f32], max: f32) -> f64 {
        let mut acc = [0f64; 16];
        let mut chunks = row.chunks_exact_mut(16);
        for c in &mut chunks {
            let mut x = [0f32; 16];
            for l in 0..16 {
                x[l] = c[l] - max;
            }
            let e = exp16(&x);
            c.copy_from_slice(&e);
            add_f64(&mut acc, &e);
        }
        let rest = chunks.into_remainder();
        let c = tail(rest);
        let mut x = [0f32; 16];
        for l in 0..16 {
            x[l] = c[l] - max;
        }
        let e = exp16(&x);
        rest.copy_from_slice(&e[..rest.len()]);
        add_f64(&mut acc, &e);
        hsum_f64(&acc)
    }
}

multiversion! {
    fn scale_in_place(row: &mut [f32], s: f32) {
        for x in row.iter_mut() {
            *x *= s;
        }
    }
}

/// h: `[P, hidden]` final hidden states; targets: `[P]` (validated < vocab);
/// lm_head: `[vocab, hidden]`; logp: `[P]` receives log p(target | h).
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

/// Adds dL/dh given dL/dlogp: d logp/d logits = onehot(target) - softmax(logits),
/// recomputed chunk by chunk. h, dh: `[P, hidden]`; targets, dlogp: `[P]`.
pub fn token_logprobs_backward(h: &[f32], targets: &[u32], lm_head: &WeightRef, dlogp: &[f32], dh: &mut [f32]) {
    let (vocab, hidden) = (lm_head.rows, lm_head.cols);
    let mut logits = vec![0f32; CHUNK * vocab];
    for (c, tgt) in targets.chunks(CHUNK).enumerate() {
        let p0 = c * CHUNK;
        let m = tgt.len();
        let lg = &mut logits[..m * vocab];
        matmul_wt(&h[p0 * hidden..(p0 + m) * hidden], m, lm_head, lg);
        lg.par_chunks_exact_mut(vocab).enumerate().for_each(|(r, row)| {
            let g = dlogp[p0 + r];
            let max = row_max(row);
            // -g * softmax: e^(x - max) scaled by -g / sum.
            let sum = exp_in_place_sum(row, max);
            scale_in_place(row, (-(g as f64) / sum) as f32);
            row[tgt[r] as usize] += g;
        });
        matmul_w_acc(lg, m, lm_head, &mut dh[p0 * hidden..(p0 + m) * hidden]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul::RowOrder;
    use crate::quant::DType;

    fn values(n: usize, k: f32, amp: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * k).sin() * amp).collect()
    }

    /// f64 logits h · Wᵀ of one position.
    fn logits64(h: &[f32], w: &[f32], hidden: usize) -> Vec<f64> {
        w.chunks_exact(hidden)
            .map(|wr| wr.iter().zip(h).map(|(&a, &b)| a as f64 * b as f64).sum())
            .collect()
    }

    #[test]
    fn log_probs_and_gradient_match_f64() {
        // A vocabulary with a ragged 16-lane tail, more positions than one chunk.
        let (vocab, hidden, p) = (1003, 40, CHUNK + 5);
        let w = values(vocab * hidden, 0.731, 0.9);
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let lm = WeightRef::new(DType::F32, vocab, hidden, &bytes, RowOrder::Stored).expect("weight");
        let h = values(p * hidden, 0.377, 1.5);
        let targets: Vec<u32> = (0..p).map(|i| ((i * 389) % vocab) as u32).collect();
        let dlogp = values(p, 1.13, 1.0);
        let mut logp = vec![0f32; p];
        token_logprobs(&h, &targets, &lm, &mut logp);
        let mut dh = vec![0.125f32; p * hidden];
        token_logprobs_backward(&h, &targets, &lm, &dlogp, &mut dh);
        for i in 0..p {
            let hr = &h[i * hidden..(i + 1) * hidden];
            let z = logits64(hr, &w, hidden);
            let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + z.iter().map(|&x| (x - max).exp()).sum::<f64>().ln();
            let want = z[targets[i] as usize] - lse;
            assert!((logp[i] as f64 - want).abs() < 1e-4, "logp[{i}] {} vs {want}", logp[i]);
            // dL/dh = g (w_target - Σ softmax_j w_j)
            let g = dlogp[i] as f64;
            for c in 0..hidden {
                let expect_w: f64 = z
                    .iter()
                    .enumerate()
                    .map(|(j, &x)| (x - lse).exp() * w[j * hidden + c] as f64)
                    .sum();
                let want = 0.125 + g * (w[targets[i] as usize * hidden + c] as f64 - expect_w);
                let got = dh[i * hidden + c] as f64;
                assert!((got - want).abs() < 1e-4, "dh[{i}][{c}] {got} vs {want}");
            }
        }
    }

    #[test]
    fn row_reductions_handle_tails() {
        for n in [1, 15, 16, 17, 33] {
            let row: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).cos() * 5.0).collect();
            let max = row_max(&row);
            assert_eq!(max, row.iter().copied().fold(f32::NEG_INFINITY, f32::max), "n = {n}");
            let want: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
            let got = sum_exp(&row, max);
            assert!((got - want).abs() < 1e-6 * want, "n = {n}: {got} vs {want}");
            let mut e = row.clone();
            assert_eq!(exp_in_place_sum(&mut e, max).to_bits(), got.to_bits(), "n = {n}");
            for (x, y) in row.iter().zip(&e) {
                assert_eq!(crate::kernels::simd::exp(x - max).to_bits(), y.to_bits());
            }
        }
    }
}
