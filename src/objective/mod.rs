//! The DPO family: per-pair losses and their exact derivatives with respect to the
//! policy's summed completion log-probs.
//!
//! Every formula follows TRL (`DPOTrainer.dpo_loss`, `CPOTrainer` for SimPO,
//! `ORPOTrainer.odds_ratio_loss`, `KTOTrainer.kto_loss`) and is evaluated in f64 with
//! softplus forms, so that neither the loss nor its derivative overflows. The
//! derivatives are always taken with respect to the SUMMED log-probs of a completion,
//! also for the losses that work on per-token averages (IPO, SimPO, ORPO): the 1/n of the
//! average is part of the derivative. The model's backward pass multiplies
//! `d_chosen` into every completion token's log-prob gradient.

mod batch;
mod kto;
mod loss;
mod math;
mod metrics;
mod pair;

pub use batch::{BatchLoss, RunningMean, batch_loss, bco_reward_mean, orpo_nll};
pub use kto::{KtoBatch, KtoExample, KtoMetrics, kto_batch, kto_kl};
pub use loss::{Loss, NAMES as LOSS_NAMES};
pub use metrics::{RewardMetrics, reward_metrics};
pub use pair::{PairLogps, PairLoss, pair_loss};
