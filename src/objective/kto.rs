//! KTO for unpaired thumbs up / down (TRL `KTOTrainer.kto_loss`, KTO paper eq. 7).

use super::loss::Loss;
use super::math::{sigmoid, sigmoid_grad};
use crate::error::{Error, Result};

/// One rated completion: summed completion log-probs under the policy and the reference.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KtoExample {
    pub policy_logp: f64,
    pub ref_logp: f64,
    /// Thumbs up (desirable) or down.
    pub desirable: bool,
}

/// TRL's logged KTO metrics; the per-label means are `None` when the batch has no
/// example of that label (TRL then logs nothing for it).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct KtoMetrics {
    pub kl: f64,
    pub rewards_chosen: Option<f64>,
    pub rewards_rejected: Option<f64>,
    /// rewards/chosen - rewards/rejected, when both exist.
    pub rewards_margins: Option<f64>,
    pub logps_chosen: Option<f64>,
    pub logps_rejected: Option<f64>,
    pub count_chosen: usize,
    pub count_rejected: usize,
}

/// The loss of a KTO batch and its derivatives.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KtoBatch {
    /// Mean of the weighted per-example losses (TRL's `losses.nanmean()`).
    pub loss: f64,
    /// Weighted loss of each example, in input order.
    pub per_example: Vec<f64>,
    /// d loss / d policy_logp of each example, the KL estimate held constant (TRL computes
    /// it under `no_grad` and detaches it).
    pub d_policy: Vec<f64>,
    /// The KL estimate used.
    pub kl: f64,
    pub metrics: KtoMetrics,
}

/// TRL's KL estimate: mean of policy - reference log-probs of mismatched prompt /
/// completion pairs, clamped at 0. Empty slices give 0 (TRL's `calculate_KL = False`).
pub fn kto_kl(policy_kl_logps: &[f64], ref_kl_logps: &[f64]) -> Result<f64> {
    if policy_kl_logps.len() != ref_kl_logps.len() {
        return Err(Error::invalid(format!(
            "kto_kl: {} policy vs {} reference KL log-probs",
            policy_kl_logps.len(),
            ref_kl_logps.len()
        )));
    }
    if policy_kl_logps.is_empty() {
        return Ok(0.0);
    }
    let sum: f64 = policy_kl_logps.iter().zip(ref_kl_logps).map(|(p, r)| p - r).sum();
    let kl = sum / policy_kl_logps.len() as f64;
    if !kl.is_finite() {
        return Err(Error::invalid(format!("kto_kl: KL estimate is not finite ({kl})")));
    }
    Ok(kl.max(0.0))
}

/// KTO loss of a batch: desirable examples cost w_d (1 - σ(β (r - KL))), undesirable ones
/// w_u (1 - σ(β (KL - r))), r = π - ref; the batch loss is their mean. `loss` must be
/// [`Loss::Kto`]; the KL estimate comes from `policy_kl_logps` / `ref_kl_logps` (see
/// [`kto_kl`]).
pub fn kto_batch(
    loss: &Loss,
    examples: &[KtoExample],
    policy_kl_logps: &[f64],
    ref_kl_logps: &[f64],
) -> Result<KtoBatch> {
    let Loss::Kto {
        beta,
        desirable_weight,
        undesirable_weight,
    } = *loss
    else {
        return Err(Error::invalid(format!(
            "kto_batch needs the `kto` loss, got `{}`",
            loss.name()
        )));
    };
    loss.validate()?;
    if examples.is_empty() {
        return Err(Error::invalid("kto_batch: empty batch"));
    }
    for (i, e) in examples.iter().enumerate() {
        if !(e.policy_logp.is_finite() && e.ref_logp.is_finite()) {
            return Err(Error::invalid(format!("example {i}: log-probs are not finite")));
        }
    }
    let kl = kto_kl(policy_kl_logps, ref_kl_logps)?;
    let inv_n = 1.0 / examples.len() as f64;

    let mut out = KtoBatch {
        per_example: Vec::with_capacity(examples.len()),
        d_policy: Vec::with_capacity(examples.len()),
        kl,
        ..KtoBatch::default()
    };
    let (mut reward_sum, mut logp_sum) = ([0.0f64; 2], [0.0f64; 2]);
    let mut count = [0usize; 2];
    for e in examples {
        let logratio = e.policy_logp - e.ref_logp;
        let (l, d) = if e.desirable {
            // 1 - σ(β (r - KL)); d/dr = -β σ'(β (r - KL)).
            let z = beta * (logratio - kl);
            (
                desirable_weight * sigmoid(-z),
                -desirable_weight * beta * sigmoid_grad(z),
            )
        } else {
            // 1 - σ(β (KL - r)); d/dr = β σ'(β (KL - r)).
            let z = beta * (kl - logratio);
            (
                undesirable_weight * sigmoid(-z),
                undesirable_weight * beta * sigmoid_grad(z),
            )
        };
        out.per_example.push(l);
        out.d_policy.push(d * inv_n);
        let k = usize::from(!e.desirable);
        reward_sum[k] += beta * logratio;
        logp_sum[k] += e.policy_logp;
        count[k] += 1;
    }
    out.loss = out.per_example.iter().sum::<f64>() * inv_n;

    let mean = |sum: f64, n: usize| (n > 0).then(|| sum / n as f64);
    let rewards_chosen = mean(reward_sum[0], count[0]);
    let rewards_rejected = mean(reward_sum[1], count[1]);
    out.metrics = KtoMetrics {
        kl,
        rewards_chosen,
        rewards_rejected,
        rewards_margins: rewards_chosen.zip(rewards_rejected).map(|(c, r)| c - r),
        logps_chosen: mean(logp_sum[0], count[0]),
        logps_rejected: mean(logp_sum[1], count[1]),
        count_chosen: count[0],
        count_rejected: count[1],
    };
    Ok(out)
}
