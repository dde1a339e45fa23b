//! Picking the next token from logits: greedy, or sampled in transformers' order
//! (temperature, then top-k, then top-p) with a seeded [`Rng`].

use super::GenerateOptions;
use crate::error::Result;
use crate::kernels::simd::exp_in_place;
use crate::rng::Rng;

/// Picks a token from logits: greedy, or sampled after temperature, top-k and top-p.
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: Rng,
    weights: Vec<f32>,     // [vocab] e^((logit - max) / T), 0 for a non-finite logit
    cand: Vec<(f32, u32)>, // (weight, id) of the tokens still in the draw
}

/// The most likely token (the first of equal maxima; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best as u32
}

/// Most likely first, ties by id, so the order never depends on the sort.
fn by_weight(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Sampler {
    pub fn new(opts: &GenerateOptions) -> Result<Self> {
        opts.validate()?;
        Ok(Sampler {
            temperature: opts.temperature,
            top_k: opts.top_k,
            top_p: opts.top_p,
            rng: Rng::new(opts.seed),
            weights: Vec::new(),
            cand: Vec::new(),
        })
    }

    /// A token id from `logits`: `[vocab]`.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let max = logits
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return argmax(logits);
        }
        // One vectorized pass of exp over the whole vocabulary (the most likely token
        // weighs exactly 1); everything after works on these weights.
        let inv_t = 1.0 / self.temperature;
        self.weights.clear();
        self.weights.extend(logits.iter().map(|&x| {
            if x.is_finite() {
                (x - max) * inv_t
            } else {
                f32::NEG_INFINITY
            }
        }));
        exp_in_place(&mut self.weights);
        let w = &self.weights;
        self.cand.clear();
        // Top-p's target mass: of the whole vocabulary, or of the top-k when both are set.
        let mut want = None;
        if self.top_k > 0 || self.top_p < 1.0 {
            let mut floor = 0.0;
            if self.top_k == 0 {
                let target = self.top_p as f64 * w.iter().map(|&x| x as f64).sum::<f64>();
                floor = nucleus_floor(w, target);
                want = Some(target);
            }
            self.cand.extend(
                w.iter()
                    .enumerate()
                    .filter(|&(_, &x)| x > 0.0 && x >= floor)
                    .map(|(i, &x)| (x, i as u32)),
            );
        }
        if self.top_k > 0 && self.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(self.top_k - 1, by_weight);
            self.cand.truncate(self.top_k);
        }
        if self.top_p < 1.0 {
            // The nucleus is the smallest most-likely head whose mass reaches top_p: find it
            // by sorting a growing head (64, 256, ... candidates) instead of them all.
            let want = want.unwrap_or_else(|| self.top_p as f64 * self.cand.iter().map(|c| c.0 as f64).sum::<f64>());
            let mut head = 64usize;
            let keep = loop {
                let n = head.min(self.cand.len());
                if n < self.cand.len() {
                    self.cand.select_nth_unstable_by(n - 1, by_weight);
                }
                self.cand[..n].sort_unstable_by(by_weight);
                let mut acc = 0.0;
                let found = self.cand[..n].iter().position(|c| {
                    acc += c.0 as f64;
                    acc >= want
                });
                match found {
                    Some(i) => break i + 1,
                    None if n == self.cand.len() => break n,
                    None => head *= 4,
                }
            };
            self.cand.truncate(keep);
        } else if self.top_k > 0 {
            self.cand.sort_unstable_by(by_weight);
        }
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        if self.cand.is_empty() {
            // Plain temperature sampling: the whole vocabulary, in id order.
            let total: f64 = w.iter().map(|&x| x as f64).sum();
            let target = u * total;
            let mut acc = 0.0;
            let mut last = 0;
            for (i, &x) in w.iter().enumerate() {
                if x > 0.0 {
                    acc += x as f64;
                    last = i;
                    if target < acc {
                        return i as u32;
                    }
                }
            }
            return last as u32;
        }
        let total: f64 = self.cand.iter().map(|c| c.0 as f64).sum();
        let target = u * total;
        let mut acc = 0.0;
        for c in &self.cand {
            acc += c.0 as f64;
            if target < acc {
                return c.1;
            }
        }
        self.cand[self.cand.len() - 1].1
    }
}

/// A weight below which no token can be in the nucleus of `w` that reaches the mass
/// `want`: when the tokens at or above a floor already hold `want`, they hold the whole
/// nucleus (the most likely tokens come first in its order). Lowered 16-fold from the
/// largest weight (1) until it does, so that a peaked distribution sorts few candidates.
fn nucleus_floor(w: &[f32], want: f64) -> f32 {
    let mut floor = 1.0f32;
    while floor > f32::MIN_POSITIVE * 16.0 {
        floor /= 16.0;
        let mass: f64 = w.iter().filter(|&&x| x >= floor).map(|&x| x as f64).sum();
        if mass >= want {
            return floor;
        }
    }
    0.0
}
