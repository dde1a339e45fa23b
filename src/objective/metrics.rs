//! TRL's logged metrics of a batch of pairs (`DPOTrainer.get_batch_loss_metrics`).

use super::pair::PairLogps;
use serde::{Deserialize, Serialize};

/// Means over the batch; rewards are β (π - ref) of summed log-probs. Serialized under
/// TRL's names (`rewards/chosen`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardMetrics {
    #[serde(rename = "rewards/chosen")]
    pub rewards_chosen: f64,
    #[serde(rename = "rewards/rejected")]
    pub rewards_rejected: f64,
    /// Fraction of pairs whose chosen reward is strictly above the rejected one.
    #[serde(rename = "rewards/accuracies")]
    pub rewards_accuracies: f64,
    #[serde(rename = "rewards/margins")]
    pub rewards_margins: f64,
    #[serde(rename = "logps/chosen")]
    pub logps_chosen: f64,
    #[serde(rename = "logps/rejected")]
    pub logps_rejected: f64,
}

impl RewardMetrics {
    /// The metrics under TRL's names (`rewards/chosen`, ...).
    pub fn entries(&self) -> [(&'static str, f64); 6] {
        [
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
        ]
    }
}

/// TRL's reward metrics of `pairs`; all zero for an empty batch.
pub fn reward_metrics(beta: f64, pairs: &[PairLogps]) -> RewardMetrics {
    if pairs.is_empty() {
        return RewardMetrics::default();
    }
    let mut m = RewardMetrics::default();
    for p in pairs {
        let chosen = beta * (p.policy_chosen - p.ref_chosen);
        let rejected = beta * (p.policy_rejected - p.ref_rejected);
        m.rewards_chosen += chosen;
        m.rewards_rejected += rejected;
        m.rewards_accuracies += if chosen > rejected { 1.0 } else { 0.0 };
        m.rewards_margins += chosen - rejected;
        m.logps_chosen += p.policy_chosen;
        m.logps_rejected += p.policy_rejected;
    }
    let inv = 1.0 / pairs.len() as f64;
    RewardMetrics {
        rewards_chosen: m.rewards_chosen * inv,
        rewards_rejected: m.rewards_rejected * inv,
        rewards_accuracies: m.rewards_accuracies * inv,
        rewards_margins: m.rewards_margins * inv,
        logps_chosen: m.logps_chosen * inv,
        logps_rejected: m.logps_rejected * inv,
    }
}
