//! A batch of pairs: the mean loss the optimizer minimizes and its derivative with
//! respect to every pair's policy log-probs; ORPO's NLL term; BCO's reward baseline.

use serde::{Deserialize, Serialize};

use super::loss::Loss;
use super::pair::{PairLogps, pair_loss};
use crate::error::{Error, Result};

/// The loss of a batch and its derivatives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchLoss {
    /// Mean over pairs of the (weighted) per-pair losses, plus ORPO's NLL when enabled.
    pub loss: f64,
    /// Each pair's (weighted) loss, without ORPO's batch-level NLL.
    pub per_pair: Vec<f64>,
    /// d loss / d policy_chosen of each pair.
    pub d_chosen: Vec<f64>,
    /// d loss / d policy_rejected of each pair.
    pub d_rejected: Vec<f64>,
    /// ORPO's NLL term when the loss includes it.
    pub nll: Option<f64>,
}

/// Mean loss over `pairs` with its exact derivatives (TRL's `losses.mean()`; for ORPO
/// with `nll`, `nll - mean(β logσ(log_odds))` as in `ORPOTrainer.get_batch_loss_metrics`).
pub fn batch_loss(loss: &Loss, pairs: &[PairLogps]) -> Result<BatchLoss> {
    loss.validate()?;
    if pairs.is_empty() {
        return Err(Error::invalid("batch_loss: empty batch"));
    }
    for (i, p) in pairs.iter().enumerate() {
        p.validate(loss, i)?;
    }
    let (per_pair_loss, nll) = match *loss {
        Loss::Orpo { beta, nll: true } => (Loss::Orpo { beta, nll: false }, Some(orpo_nll(pairs)?)),
        other => (other, None),
    };
    let inv_n = 1.0 / pairs.len() as f64;
    let mut out = BatchLoss {
        per_pair: Vec::with_capacity(pairs.len()),
        d_chosen: Vec::with_capacity(pairs.len()),
        d_rejected: Vec::with_capacity(pairs.len()),
        ..BatchLoss::default()
    };
    for p in pairs {
        let l = pair_loss(&per_pair_loss, p);
        out.per_pair.push(l.loss);
        out.d_chosen.push(l.d_chosen * inv_n);
        out.d_rejected.push(l.d_rejected * inv_n);
    }
    out.loss = out.per_pair.iter().sum::<f64>() * inv_n;
    if let Some((value, d)) = nll {
        out.loss += value;
        out.d_chosen.iter_mut().for_each(|g| *g += d);
        out.nll = Some(value);
    }
    Ok(out)
}

/// ORPO's SFT term (ORPO eq. 2): the mean NLL over every chosen completion token of the
/// batch, -Σπc / Σnc, as torch's `CrossEntropyLoss` (token mean) computes it. Returns the
/// value and its derivative with respect to each pair's `policy_chosen`, -1 / Σnc.
/// Counts only completion tokens (the paper; TRL's current trainer also counts the prompt).
pub fn orpo_nll(pairs: &[PairLogps]) -> Result<(f64, f64)> {
    let tokens: usize = pairs.iter().map(|p| p.n_chosen).sum();
    if tokens == 0 {
        return Err(Error::invalid("orpo_nll: no chosen completion tokens"));
    }
    let sum: f64 = pairs.iter().map(|p| p.policy_chosen).sum();
    let n = tokens as f64;
    Ok((-sum / n, -1.0 / n))
}

/// Mean of the batch's chosen and rejected implicit rewards β (π - ref), the value TRL's
/// `bco_pair` feeds to its running mean (`torch.cat((chosen, rejected)).mean()`).
pub fn bco_reward_mean(beta: f64, pairs: &[PairLogps]) -> f64 {
    let sum: f64 = pairs
        .iter()
        .map(|p| beta * (p.policy_chosen - p.ref_chosen) + beta * (p.policy_rejected - p.ref_rejected))
        .sum();
    sum / (2 * pairs.len()).max(1) as f64
}

/// TRL's `RunningMoments` mean, as `bco_pair` uses it: one scalar per step, starting from
/// mean 0 with count 1e-24. TRL updates it with the batch's reward mean BEFORE reading
/// `delta`, so on the first step delta equals that batch's mean; a trainer reproducing TRL
/// calls `update(bco_reward_mean(..))` and puts the result in [`Loss::BcoPair`]'s `delta`.
/// (The golden `bco_pair` entry was made with delta = 0, the baseline before any update.)
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunningMean {
    pub mean: f64,
    pub count: f64,
}

impl Default for RunningMean {
    fn default() -> Self {
        RunningMean {
            mean: 0.0,
            count: 1e-24,
        }
    }
}

impl RunningMean {
    /// Folds in one value and returns the new mean.
    pub fn update(&mut self, x: f64) -> f64 {
        let total = self.count + 1.0;
        self.mean += (x - self.mean) / total;
        self.count = total;
        self.mean
    }
}
