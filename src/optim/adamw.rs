//! AdamW (Loshchilov & Hutter 2019) as torch's single-tensor CPU implementation computes
//! it (`torch/optim/adam.py::_single_tensor_adam` with `decoupled_weight_decay`), in the
//! same float32 operation order, on f32 parameters with f32 moments.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// AdamW hyper-parameters; defaults are torch's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Base learning rate (a schedule scales it per step).
    pub lr: f64,
    pub betas: (f64, f64),
    pub eps: f64,
    /// Decoupled weight decay: p *= 1 - lr * weight_decay before the Adam update.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let (b1, b2) = self.betas;
        let checks = [
            ("lr", self.lr, self.lr.is_finite() && self.lr >= 0.0),
            ("beta1", b1, (0.0..1.0).contains(&b1)),
            ("beta2", b2, (0.0..1.0).contains(&b2)),
            ("eps", self.eps, self.eps.is_finite() && self.eps >= 0.0),
            (
                "weight_decay",
                self.weight_decay,
                self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            ),
        ];
        for (name, value, ok) in checks {
            if !ok {
                return Err(Error::invalid(format!("AdamW {name} out of range: {value}")));
            }
        }
        Ok(())
    }
}

/// The optimizer's state, one moment buffer per parameter tensor; serializable for
/// checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamWState {
    /// Steps taken so far (torch keeps one per tensor; here all tensors step together).
    pub step: u64,
    pub exp_avg: Vec<Vec<f32>>,
    pub exp_avg_sq: Vec<Vec<f32>>,
}

/// AdamW over a fixed list of f32 parameter tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    config: AdamWConfig,
    state: AdamWState,
}

/// The per-step scalars, rounded to f32 where torch's kernels round them.
struct StepScalars {
    decay: Option<f32>,
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
}

impl AdamW {
    /// Zero moments for tensors of the given element counts.
    pub fn new(config: AdamWConfig, sizes: &[usize]) -> Result<Self> {
        config.validate()?;
        let zeros = || {
            sizes
                .iter()
                .map(|&n| crate::buffers::zeros::<f32>(n, "AdamW's moments"))
                .collect::<Result<Vec<_>>>()
        };
        Ok(AdamW {
            config,
            state: AdamWState {
                step: 0,
                exp_avg: zeros()?,
                exp_avg_sq: zeros()?,
            },
        })
    }

    /// Resumes from a checkpointed state.
    pub fn from_state(config: AdamWConfig, state: AdamWState) -> Result<Self> {
        config.validate()?;
        if state.exp_avg.len() != state.exp_avg_sq.len()
            || state
                .exp_avg
                .iter()
                .zip(&state.exp_avg_sq)
                .any(|(m, v)| m.len() != v.len())
        {
            return Err(Error::invalid("AdamW state: exp_avg and exp_avg_sq shapes differ"));
        }
        Ok(AdamW { config, state })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    pub fn state(&self) -> &AdamWState {
        &self.state
    }

    pub fn into_state(self) -> AdamWState {
        self.state
    }

    /// One update of every tensor with this step's learning rate `lr` (torch's
    /// `param_group["lr"]`, e.g. `schedule.lr(config.lr, step)`). Gradients are used as
    /// given: clip them first. Non-finite gradients propagate, as in torch.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::invalid(format!("AdamW step: lr out of range: {lr}")));
        }
        let tensors = self.state.exp_avg.len();
        if params.len() != tensors || grads.len() != tensors {
            return Err(Error::invalid(format!(
                "AdamW step: {} parameter and {} gradient tensors for {tensors} state tensors",
                params.len(),
                grads.len()
            )));
        }
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            let n = self.state.exp_avg[i].len();
            if p.len() != n || g.len() != n {
                return Err(Error::invalid(format!(
                    "AdamW step: tensor {i} has {} parameters and {} gradients, state has {n}",
                    p.len(),
                    g.len()
                )));
            }
        }

        self.state.step += 1;
        let s = self.scalars(lr);
        params
            .par_iter_mut()
            .zip(grads.par_iter())
            .zip(self.state.exp_avg.par_iter_mut())
            .zip(self.state.exp_avg_sq.par_iter_mut())
            .for_each(|(((p, g), m), v)| update(&s, p, g, m, v));
        Ok(())
    }

    fn scalars(&self, lr: f64) -> StepScalars {
        let (beta1, beta2) = self.config.betas;
        let wd = self.config.weight_decay;
        // Python floats: `1 - beta ** step` with a float step (C pow), `bias_correction2 ** 0.5`.
        let step = self.state.step as f64;
        let bias_correction1 = 1.0 - beta1.powf(step);
        let bias_correction2 = 1.0 - beta2.powf(step);
        let step_size = lr / bias_correction1;
        StepScalars {
            // torch skips the multiply when weight_decay == 0.
            decay: (wd != 0.0).then_some((1.0 - lr * wd) as f32),
            lerp_weight: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            bias_correction2_sqrt: bias_correction2.powf(0.5) as f32,
            eps: self.config.eps as f32,
            neg_step_size: (-step_size) as f32,
        }
    }
}

/// One tensor, in torch's order: decay, lerp_ of exp_avg, mul_/addcmul_ of exp_avg_sq,
/// denom = sqrt(v) / sqrt(bc2) + eps, addcdiv_ with value -lr/bc1. Where ATen's CPU
/// kernels fuse a multiply-add (lerp_, addcmul_) this uses `mul_add` too, so the result is
/// bit-identical to torch's float32 (checked against tests/data/optim/adamw_ref.json).
fn update(s: &StepScalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if matches!(crate::isa::Isa::best(), crate::isa::Isa::Avx2 | crate::isa::Isa::Avx512) {
        // SAFETY: both units include FMA, which Isa::best() checked.
        unsafe { update_fma(s, p, g, m, v) };
        return;
    }
    update_portable(s, p, g, m, v);
}

/// The same loop compiled with hardware FMA, where `mul_add` is one instruction instead of
/// a libm call; fused multiply-add is exact either way, so results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
fn update_fma(s: &StepScalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    update_portable(s, p, g, m, v);
}

#[inline(always)]
fn update_portable(s: &StepScalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    let w = s.lerp_weight;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        if let Some(decay) = s.decay {
            *p *= decay;
        }
        // ATen's vectorized lerp: fmadd(w, end - self, self) for |w| < 0.5, else
        // fmadd(w - 1, end - self, end).
        *m = if w.abs() < 0.5 {
            w.mul_add(g - *m, *m)
        } else {
            (w - 1.0).mul_add(g - *m, g)
        };
        // mul_(beta2), then ATen's vectorized addcmul_: fmadd(value * t1, t2, self).
        *v = (s.one_minus_beta2 * g).mul_add(g, *v * s.beta2);
        let denom = v.sqrt() / s.bias_correction2_sqrt + s.eps;
        // addcdiv_: self + value * t1 / t2.
        *p += s.neg_step_size * *m / denom;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_fma_path_equals_portable_path() {
        let opt = AdamW::new(AdamWConfig::default(), &[1000]).unwrap();
        let s = opt.scalars(3e-3);
        let noise = |seed: u32| -> Vec<f32> {
            (0..1000u32)
                .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32) - 0.5)
                .collect()
        };
        let (g, p0, m0) = (noise(1), noise(2), noise(3));
        let v0: Vec<f32> = noise(4).iter().map(|x| x * x).collect();
        let (mut p1, mut m1, mut v1) = (p0.clone(), m0.clone(), v0.clone());
        let (mut p2, mut m2, mut v2) = (p0, m0, v0);
        update(&s, &mut p1, &g, &mut m1, &mut v1);
        update_portable(&s, &mut p2, &g, &mut m2, &mut v2);
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&p1), bits(&p2));
        assert_eq!(bits(&m1), bits(&m2));
        assert_eq!(bits(&v1), bits(&v2));
    }
}
