//! Learning-rate schedules of transformers (`optimization.py`): the factor multiplying the
//! base learning rate at a step, as `LambdaLR` applies it (`base_lr * lambda(step)` in f64).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// `get_constant_schedule_with_warmup`.
    Constant {
        #[serde(default)]
        warmup_steps: u64,
    },
    /// `get_linear_schedule_with_warmup`: linear warmup, then linear decay to 0 at
    /// `total_steps` (0: at the end of the run, see [`Schedule::sized`]).
    Linear {
        #[serde(default)]
        warmup_steps: u64,
        total_steps: u64,
    },
    /// `get_cosine_schedule_with_warmup`: linear warmup, then a cosine of `num_cycles`
    /// periods (0.5 = half a cosine down to 0 at `total_steps`; like transformers, the
    /// curve is not clamped past the end; `total_steps` 0: the end of the run).
    Cosine {
        #[serde(default)]
        warmup_steps: u64,
        total_steps: u64,
        #[serde(default = "half")]
        num_cycles: f64,
    },
}

fn half() -> f64 {
    0.5
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::Constant { warmup_steps: 0 }
    }
}

impl Schedule {
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Cosine { num_cycles, .. } if !num_cycles.is_finite() => Err(Error::invalid(format!(
                "cosine schedule: num_cycles must be finite, got {num_cycles}"
            ))),
            _ => Ok(()),
        }
    }

    /// The same schedule over a run of `total` steps, where its `total_steps` is 0 ("the
    /// whole run"); a schedule with its own length is kept as it is.
    pub fn sized(self, total: u64) -> Self {
        match self {
            Schedule::Linear {
                warmup_steps,
                total_steps: 0,
            } => Schedule::Linear {
                warmup_steps,
                total_steps: total,
            },
            Schedule::Cosine {
                warmup_steps,
                total_steps: 0,
                num_cycles,
            } => Schedule::Cosine {
                warmup_steps,
                total_steps: total,
                num_cycles,
            },
            s => s,
        }
    }

    /// The learning rate at `step` (0-based count of optimizer steps already taken).
    pub fn lr(&self, base_lr: f64, step: u64) -> f64 {
        base_lr * self.factor(step)
    }

    /// The multiplier of the base learning rate at `step`.
    pub fn factor(&self, step: u64) -> f64 {
        let warmup = match *self {
            Schedule::Constant { warmup_steps } => warmup_steps,
            Schedule::Linear { warmup_steps, .. } | Schedule::Cosine { warmup_steps, .. } => warmup_steps,
        };
        if step < warmup {
            return step as f64 / warmup.max(1) as f64;
        }
        // Signed, as in Python: past the end, total - step goes negative.
        let (step, warmup) = (i128::from(step), i128::from(warmup));
        match *self {
            Schedule::Constant { .. } => 1.0,
            Schedule::Linear { total_steps, .. } => {
                let total = i128::from(total_steps);
                (((total - step) as f64) / ((total - warmup).max(1) as f64)).max(0.0)
            }
            Schedule::Cosine {
                total_steps,
                num_cycles,
                ..
            } => {
                let total = i128::from(total_steps);
                let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
}
