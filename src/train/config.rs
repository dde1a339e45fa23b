//! A training run's settings: the loss, the optimizer and its schedule, batches, epochs,
//! seed, evaluation split, activation memory.

use crate::error::{Error, Result};
use crate::model::Recompute;
use crate::objective::Loss;
use crate::optim::{AdamWConfig, Schedule};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub loss: Loss,
    pub optimizer: AdamWConfig,
    pub schedule: Schedule,
    /// Global-norm clipping (`None`: off).
    pub max_grad_norm: Option<f32>,
    pub epochs: usize,
    /// Stop after this many optimizer steps (`None`: run the epochs).
    pub max_steps: Option<usize>,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Examples per forward/backward pass; the step accumulates the gradients of
    /// `batch_size / micro_batch_size` passes.
    pub micro_batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Fraction of the examples held out for evaluation (0: none).
    pub eval_fraction: f32,
    pub recompute: Recompute,
    /// Dropout on the adapter's input (the adapter config's `lora_dropout` by default).
    pub lora_dropout: f32,
}

/// The defaults suit a few dozen thumb pairs, what one user gives: measured by `nudge demo`
/// (README, "Which loss for thumbs?"), where 45 to 62 pairs trained this way visibly changed
/// held-out answers, and 31 pairs for one epoch, or TRL's learning rates, did not.
impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            loss: Loss::Sigmoid { beta: 0.1 },
            optimizer: AdamWConfig {
                lr: 1e-3,
                weight_decay: 0.0,
                ..AdamWConfig::default()
            },
            // Decays to 0 over the steps the run takes (sized when the run starts).
            schedule: Schedule::Linear {
                warmup_steps: 0,
                total_steps: 0,
            },
            max_grad_norm: Some(1.0),
            epochs: 2,
            max_steps: None,
            batch_size: 4,
            micro_batch_size: 4,
            seed: 42,
            shuffle: true,
            eval_fraction: 0.0,
            recompute: Recompute::Budget(256 << 20),
            lora_dropout: 0.0,
        }
    }
}

impl TrainConfig {
    /// Optimizer steps of a run over `examples` training examples.
    pub fn total_steps(&self, examples: usize) -> usize {
        let per_epoch = examples.div_ceil(self.batch_size.max(1));
        self.max_steps.unwrap_or(per_epoch.saturating_mul(self.epochs))
    }

    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        self.optimizer.validate()?;
        self.schedule.validate()?;
        if self.batch_size == 0 || self.micro_batch_size == 0 {
            return Err(Error::invalid("batch_size and micro_batch_size must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(Error::invalid(format!(
                "eval_fraction {} must be in [0, 1)",
                self.eval_fraction
            )));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(Error::invalid(format!(
                "lora_dropout {} must be in [0, 1)",
                self.lora_dropout
            )));
        }
        if self.max_steps == Some(0) {
            return Err(Error::invalid("max_steps must be at least 1"));
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return Err(Error::invalid("epochs must be at least 1"));
        }
        if let Some(n) = self.max_grad_norm
            && !(n.is_finite() && n > 0.0)
        {
            return Err(Error::invalid(format!("max_grad_norm {n} must be a positive number")));
        }
        Ok(())
    }
}
