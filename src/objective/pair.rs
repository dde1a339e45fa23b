//! One preference pair: its loss and the loss's derivative with respect to the policy's
//! summed chosen and rejected completion log-probs.

use super::loss::Loss;
use super::math::{inv_one_minus_exp, log_sigmoid, log1m_exp, sigmoid, sigmoid_grad, softplus};
use crate::error::{Error, Result};

/// The log-probs of one pair. Log-probs are SUMS over the completion's tokens (the
/// losses that need per-token averages divide by `n_chosen` / `n_rejected` themselves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLogps {
    pub policy_chosen: f64,
    pub policy_rejected: f64,
    pub ref_chosen: f64,
    pub ref_rejected: f64,
    /// Completion lengths in tokens.
    pub n_chosen: usize,
    pub n_rejected: usize,
    /// Offset subtracted inside the sigmoid by [`Loss::MarginDpo`]; 0 by default.
    pub margin: f64,
    /// Multiplies this pair's loss and derivatives for every loss (e.g. the strength of
    /// the user's feedback); 1 by default.
    pub weight: f64,
}

impl PairLogps {
    /// Takes f32 or f64 log-probs; margin 0, weight 1.
    pub fn new(
        policy_chosen: impl Into<f64>,
        policy_rejected: impl Into<f64>,
        ref_chosen: impl Into<f64>,
        ref_rejected: impl Into<f64>,
        n_chosen: usize,
        n_rejected: usize,
    ) -> Self {
        PairLogps {
            policy_chosen: policy_chosen.into(),
            policy_rejected: policy_rejected.into(),
            ref_chosen: ref_chosen.into(),
            ref_rejected: ref_rejected.into(),
            n_chosen,
            n_rejected,
            margin: 0.0,
            weight: 1.0,
        }
    }

    pub fn with_margin(self, margin: f64) -> Self {
        PairLogps { margin, ..self }
    }

    pub fn with_weight(self, weight: f64) -> Self {
        PairLogps { weight, ..self }
    }

    /// Checks that `loss` can be evaluated on this pair: finite log-probs, non-zero token
    /// counts where averages are taken, log-probs < 0 for ORPO's odds, weight >= 0.
    pub fn validate(&self, loss: &Loss, index: usize) -> Result<()> {
        let bad = |what: String| Error::invalid(format!("pair {index}: {what}"));
        let values = [
            ("policy_chosen", self.policy_chosen),
            ("policy_rejected", self.policy_rejected),
            ("ref_chosen", self.ref_chosen),
            ("ref_rejected", self.ref_rejected),
            ("margin", self.margin),
            ("weight", self.weight),
        ];
        for (name, v) in values {
            if !v.is_finite() {
                return Err(bad(format!("{name} is not finite ({v})")));
            }
        }
        if self.weight < 0.0 {
            return Err(bad(format!("weight must be >= 0, got {}", self.weight)));
        }
        if loss.uses_token_average() && (self.n_chosen == 0 || self.n_rejected == 0) {
            return Err(bad(format!("`{}` averages over tokens: empty completion", loss.name())));
        }
        if matches!(loss, Loss::Orpo { .. }) && (self.policy_chosen >= 0.0 || self.policy_rejected >= 0.0) {
            return Err(bad("ORPO's odds need log-probs < 0".into()));
        }
        Ok(())
    }

    /// β-free DPO logit: (πc - πr) - (refc - refr), on summed log-probs.
    fn logit(&self) -> f64 {
        (self.policy_chosen - self.policy_rejected) - (self.ref_chosen - self.ref_rejected)
    }
}

/// A pair's loss and its derivatives with respect to `policy_chosen` / `policy_rejected`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PairLoss {
    pub loss: f64,
    pub d_chosen: f64,
    pub d_rejected: f64,
}

/// For a loss f(z) of the DPO logit z = β h: (f, df/dπc, df/dπr) with dz/dπc = β = -dz/dπr.
fn of_logit(beta: f64, f: f64, df_dz: f64) -> PairLoss {
    PairLoss {
        loss: f,
        d_chosen: beta * df_dz,
        d_rejected: -beta * df_dz,
    }
}

/// The pair's loss (times `p.weight`) and its exact derivatives. ORPO with `nll` adds the
/// chosen completion's mean token NLL (a batch of one); KTO treats the pair as one
/// desirable and one undesirable example with a KL estimate of 0 (the mean of the two).
/// Inputs outside [`PairLogps::validate`] give non-finite values, never a panic.
pub fn pair_loss(loss: &Loss, p: &PairLogps) -> PairLoss {
    let unweighted = match *loss {
        // TRL dpo_loss "sigmoid": -logσ(z) (1-ε) - logσ(-z) ε with ε = 0.
        Loss::Sigmoid { beta } => {
            let z = beta * p.logit();
            of_logit(beta, softplus(-z), -sigmoid(-z))
        }
        // TRL "sigmoid" with label_smoothing ε (cDPO): (1-ε) softplus(-z) + ε softplus(z).
        Loss::Cdpo { beta, eps } => {
            let z = beta * p.logit();
            let f = (1.0 - eps) * softplus(-z) + eps * softplus(z);
            of_logit(beta, f, -(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z))
        }
        // TRL "robust": (-(1-ε) logσ(z) + ε logσ(-z)) / (1 - 2ε).
        Loss::Robust { beta, eps } => {
            let z = beta * p.logit();
            let f = ((1.0 - eps) * softplus(-z) - eps * softplus(z)) / (1.0 - 2.0 * eps);
            let df = (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1.0 - 2.0 * eps);
            of_logit(beta, f, df)
        }
        // TRL "hinge": relu(1 - z); relu'(0) = 0 as in torch.
        Loss::Hinge { beta } => {
            let z = beta * p.logit();
            let active = 1.0 - z > 0.0;
            of_logit(beta, (1.0 - z).max(0.0), if active { -1.0 } else { 0.0 })
        }
        // TRL "ipo" (IPO eq. 17) on per-token averages of policy and reference: (h - 1/(2β))².
        Loss::Ipo { beta } => {
            let (nc, nr) = (p.n_chosen as f64, p.n_rejected as f64);
            let h = (p.policy_chosen / nc - p.policy_rejected / nr) - (p.ref_chosen / nc - p.ref_rejected / nr);
            let r = h - 1.0 / (2.0 * beta);
            PairLoss {
                loss: r * r,
                d_chosen: 2.0 * r / nc,
                d_rejected: -2.0 * r / nr,
            }
        }
        // TRL "sppo_hard": (a - 1/(2β))² + (b + 1/(2β))², a, b the chosen / rejected log-ratios.
        Loss::SppoHard { beta } => {
            let a = p.policy_chosen - p.ref_chosen - 0.5 / beta;
            let b = p.policy_rejected - p.ref_rejected + 0.5 / beta;
            PairLoss {
                loss: a * a + b * b,
                d_chosen: 2.0 * a,
                d_rejected: 2.0 * b,
            }
        }
        // TRL "nca_pair": -logσ(rc) - ½ logσ(-rc) - ½ logσ(-rr), r = β (π - ref).
        Loss::NcaPair { beta } => {
            let (rc, rr) = rewards(beta, p);
            PairLoss {
                loss: softplus(-rc) + 0.5 * softplus(rc) + 0.5 * softplus(rr),
                d_chosen: beta * (-sigmoid(-rc) + 0.5 * sigmoid(rc)),
                d_rejected: beta * 0.5 * sigmoid(rr),
            }
        }
        // TRL "bco_pair": -logσ(rc - δ) - logσ(-(rr - δ)), δ a detached baseline.
        Loss::BcoPair { beta, delta } => {
            let (rc, rr) = rewards(beta, p);
            PairLoss {
                loss: softplus(-(rc - delta)) + softplus(rr - delta),
                d_chosen: -beta * sigmoid(-(rc - delta)),
                d_rejected: beta * sigmoid(rr - delta),
            }
        }
        // TRL "apo_zero" (APO eq. 7): (1 - σ(rc)) + σ(rr).
        Loss::ApoZero { beta } => {
            let (rc, rr) = rewards(beta, p);
            PairLoss {
                loss: sigmoid(-rc) + sigmoid(rr),
                d_chosen: -beta * sigmoid_grad(rc),
                d_rejected: beta * sigmoid_grad(rr),
            }
        }
        // TRL "apo_down" (APO eq. 8): σ(rc) + (1 - σ(rc - rr)).
        Loss::ApoDown { beta } => {
            let (rc, rr) = rewards(beta, p);
            let z = rc - rr;
            PairLoss {
                loss: sigmoid(rc) + sigmoid(-z),
                d_chosen: beta * (sigmoid_grad(rc) - sigmoid_grad(z)),
                d_rejected: beta * sigmoid_grad(z),
            }
        }
        // TRL "exo_pair" (EXO eq. 16): σ(z)(logσ(z) - ln(1-ε)) + σ(-z)(logσ(-z) - ln ε);
        // d/dz = σ(z)σ(-z) (z - ln((1-ε)/ε)).
        Loss::ExoPair { beta, eps } => {
            let z = beta * p.logit();
            let f = sigmoid(z) * (log_sigmoid(z) - (-eps).ln_1p()) + sigmoid(-z) * (log_sigmoid(-z) - eps.ln());
            let df = sigmoid_grad(z) * (z - ((-eps).ln_1p() - eps.ln()));
            of_logit(beta, f, df)
        }
        // TRL "discopop" (DiscoPOP eq. 5): m = σ(z/τ); (1-m) softplus(-z) + m e^{-z}, with
        // e^{-z} m and e^{-z} m' evaluated in log space so that neither overflows.
        Loss::Discopop { beta, tau } => {
            let z = beta * p.logit();
            let m = sigmoid(z / tau);
            let dm = sigmoid_grad(z / tau) / tau;
            let exp_m = (-z + log_sigmoid(z / tau)).exp();
            let exp_dm = (-z + log_sigmoid(z / tau) + log_sigmoid(-z / tau)).exp() / tau;
            let f = (1.0 - m) * softplus(-z) + exp_m;
            let df = -(1.0 - m) * sigmoid(-z) - dm * softplus(-z) - exp_m + exp_dm;
            of_logit(beta, f, df)
        }
        // CPOTrainer "simpo" (SimPO eq. 6): -logσ(β (π̄c - π̄r) - γ), π̄ per-token averages.
        Loss::Simpo { beta, gamma } => {
            let (nc, nr) = (p.n_chosen as f64, p.n_rejected as f64);
            let z = beta * (p.policy_chosen / nc - p.policy_rejected / nr) - gamma;
            let s = sigmoid(-z);
            PairLoss {
                loss: softplus(-z),
                d_chosen: -beta * s / nc,
                d_rejected: beta * s / nr,
            }
        }
        // ORPOTrainer.odds_ratio_loss (ORPO eqs. 4, 7): -β logσ(log_odds), log_odds =
        // (π̄c - π̄r) - (ln(1 - e^π̄c) - ln(1 - e^π̄r)); d log_odds / dπ̄ = 1 / (1 - e^π̄).
        Loss::Orpo { beta, nll } => {
            let (nc, nr) = (p.n_chosen as f64, p.n_rejected as f64);
            let (ac, ar) = (p.policy_chosen / nc, p.policy_rejected / nr);
            let log_odds = (ac - ar) - (log1m_exp(ac) - log1m_exp(ar));
            let s = sigmoid(-log_odds);
            let mut out = PairLoss {
                loss: beta * softplus(-log_odds),
                d_chosen: -beta * s * inv_one_minus_exp(ac) / nc,
                d_rejected: beta * s * inv_one_minus_exp(ar) / nr,
            };
            if nll {
                // ORPO eq. 2 on one pair: the chosen completion's mean token NLL.
                out.loss -= p.policy_chosen / nc;
                out.d_chosen -= 1.0 / nc;
            }
            out
        }
        // ODPO (Amini et al. 2024, eq. 6): -logσ(z - margin).
        Loss::MarginDpo { beta } => {
            let z = beta * p.logit() - p.margin;
            of_logit(beta, softplus(-z), -sigmoid(-z))
        }
        // KTOTrainer.kto_loss with KL = 0 on the unpaired pair, averaged over its 2 examples:
        // (w_d (1 - σ(rc)) + w_u (1 - σ(-rr))) / 2.
        Loss::Kto {
            beta,
            desirable_weight,
            undesirable_weight,
        } => {
            let (rc, rr) = rewards(beta, p);
            PairLoss {
                loss: 0.5 * (desirable_weight * sigmoid(-rc) + undesirable_weight * sigmoid(rr)),
                d_chosen: -0.5 * desirable_weight * beta * sigmoid_grad(rc),
                d_rejected: 0.5 * undesirable_weight * beta * sigmoid_grad(rr),
            }
        }
    };
    PairLoss {
        loss: p.weight * unweighted.loss,
        d_chosen: p.weight * unweighted.d_chosen,
        d_rejected: p.weight * unweighted.d_rejected,
    }
}

/// TRL's implicit rewards β (π - ref) of the chosen and rejected completions.
fn rewards(beta: f64, p: &PairLogps) -> (f64, f64) {
    (
        beta * (p.policy_chosen - p.ref_chosen),
        beta * (p.policy_rejected - p.ref_rejected),
    )
}
