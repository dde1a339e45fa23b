//! Which loss of the family, with its hyper-parameters: a config value (serde) and a
//! command-line name (`FromStr`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// TRL's `DPOConfig.beta` default.
pub const DEFAULT_BETA: f64 = 0.1;
/// Label smoothing of `cdpo` / `robust` when the name does not give one.
pub const DEFAULT_EPS: f64 = 0.1;
/// TRL sets EXO's epsilon to 1e-3 when `label_smoothing` is 0.
pub const DEFAULT_EXO_EPS: f64 = 1e-3;
/// TRL's `DPOConfig.discopop_tau` default.
pub const DEFAULT_DISCOPOP_TAU: f64 = 0.05;
/// TRL's `CPOConfig.simpo_gamma` default.
pub const DEFAULT_SIMPO_GAMMA: f64 = 0.5;

/// A loss of the DPO family. `beta` is always the temperature of the implicit reward
/// `beta * (policy_logp - ref_logp)` (or of the reference-free score for SimPO and ORPO).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// DPO (Rafailov et al. 2023): -ln σ(β h).
    Sigmoid { beta: f64 },
    /// IPO (Azar et al. 2023, eq. 17) on per-token averages: (h_avg - 1/(2β))².
    Ipo { beta: f64 },
    /// Conservative DPO (Mitchell 2023): label smoothing `eps`.
    Cdpo { beta: f64, eps: f64 },
    /// Robust DPO (Chowdhury et al. 2024): unbiased under label-flip rate `eps` < 0.5.
    Robust { beta: f64, eps: f64 },
    /// SLiC-style hinge: max(0, 1 - β h).
    Hinge { beta: f64 },
    /// NCA on pairs (Chen et al. 2024).
    NcaPair { beta: f64 },
    /// BCO on pairs (Jung et al. 2024). `delta` is the reward baseline subtracted from both
    /// rewards; TRL keeps it as a running mean of batch rewards (see [`super::RunningMean`]).
    BcoPair {
        beta: f64,
        #[serde(default)]
        delta: f64,
    },
    /// APO-zero (D'Oosterlinck et al. 2024, eq. 7).
    ApoZero { beta: f64 },
    /// APO-down (D'Oosterlinck et al. 2024, eq. 8).
    ApoDown { beta: f64 },
    /// SPPO with hard win probabilities (Wu et al. 2024).
    SppoHard { beta: f64 },
    /// EXO on pairs (Ji et al. 2024, eq. 16) with smoothing `eps` in (0, 1).
    ExoPair { beta: f64, eps: f64 },
    /// DiscoPOP (Chris Lu et al. 2024, eq. 5): log-ratio-modulated blend, temperature `tau`.
    Discopop { beta: f64, tau: f64 },
    /// SimPO (Meng et al. 2024), reference-free on per-token averages, target margin `gamma`.
    Simpo { beta: f64, gamma: f64 },
    /// ORPO (Hong et al. 2024): odds-ratio term on per-token averages, plus (when `nll`)
    /// the negative log-likelihood of the chosen completions.
    Orpo {
        beta: f64,
        #[serde(default = "yes")]
        nll: bool,
    },
    /// DPO with a per-pair offset inside the sigmoid (ODPO, Amini et al. 2024):
    /// -ln σ(β h - margin), margin taken from each pair.
    MarginDpo { beta: f64 },
    /// KTO (Ethayarajh et al. 2024) for unpaired thumbs up / down; see [`super::kto_batch`].
    Kto {
        beta: f64,
        desirable_weight: f64,
        undesirable_weight: f64,
    },
}

fn yes() -> bool {
    true
}

/// Every base name, longest first so that `exo_pair_eps1e-3` is not read as `exo`.
/// The base names [`Loss::parse`] reads (`dpo` is read as `sigmoid`, its name in TRL).
pub const NAMES: [&str; 16] = [
    "margin_dpo",
    "sppo_hard",
    "nca_pair",
    "bco_pair",
    "apo_zero",
    "apo_down",
    "exo_pair",
    "discopop",
    "sigmoid",
    "robust",
    "hinge",
    "simpo",
    "cdpo",
    "orpo",
    "ipo",
    "kto",
];

impl Loss {
    /// The CLI / config name of the loss (without parameters).
    pub fn name(&self) -> &'static str {
        match self {
            Loss::Sigmoid { .. } => "sigmoid",
            Loss::Ipo { .. } => "ipo",
            Loss::Cdpo { .. } => "cdpo",
            Loss::Robust { .. } => "robust",
            Loss::Hinge { .. } => "hinge",
            Loss::NcaPair { .. } => "nca_pair",
            Loss::BcoPair { .. } => "bco_pair",
            Loss::ApoZero { .. } => "apo_zero",
            Loss::ApoDown { .. } => "apo_down",
            Loss::SppoHard { .. } => "sppo_hard",
            Loss::ExoPair { .. } => "exo_pair",
            Loss::Discopop { .. } => "discopop",
            Loss::Simpo { .. } => "simpo",
            Loss::Orpo { .. } => "orpo",
            Loss::MarginDpo { .. } => "margin_dpo",
            Loss::Kto { .. } => "kto",
        }
    }

    pub fn beta(&self) -> f64 {
        match *self {
            Loss::Sigmoid { beta }
            | Loss::Ipo { beta }
            | Loss::Cdpo { beta, .. }
            | Loss::Robust { beta, .. }
            | Loss::Hinge { beta }
            | Loss::NcaPair { beta }
            | Loss::BcoPair { beta, .. }
            | Loss::ApoZero { beta }
            | Loss::ApoDown { beta }
            | Loss::SppoHard { beta }
            | Loss::ExoPair { beta, .. }
            | Loss::Discopop { beta, .. }
            | Loss::Simpo { beta, .. }
            | Loss::Orpo { beta, .. }
            | Loss::MarginDpo { beta }
            | Loss::Kto { beta, .. } => beta,
        }
    }

    /// True for the losses that never read the reference log-probs.
    pub fn reference_free(&self) -> bool {
        matches!(self, Loss::Simpo { .. } | Loss::Orpo { .. })
    }

    /// True for the losses that divide log-probs by the completion's token count.
    pub fn uses_token_average(&self) -> bool {
        matches!(self, Loss::Ipo { .. } | Loss::Simpo { .. } | Loss::Orpo { .. })
    }

    /// Checks every hyper-parameter's domain.
    pub fn validate(&self) -> Result<()> {
        let beta = self.beta();
        if !(beta.is_finite() && beta > 0.0) {
            return Err(Error::invalid(format!("{}: beta must be > 0, got {beta}", self.name())));
        }
        let bad = |what: &str, v: f64| Err(Error::invalid(format!("{}: {what}, got {v}", self.name())));
        match *self {
            Loss::Cdpo { eps, .. } if !(0.0..=1.0).contains(&eps) => bad("eps must be in [0, 1]", eps),
            Loss::Robust { eps, .. } if !(0.0..0.5).contains(&eps) => bad("eps must be in [0, 0.5)", eps),
            Loss::ExoPair { eps, .. } if !(eps > 0.0 && eps < 1.0) => bad("eps must be in (0, 1)", eps),
            Loss::Discopop { tau, .. } if !(tau.is_finite() && tau > 0.0) => bad("tau must be > 0", tau),
            Loss::Simpo { gamma, .. } if !gamma.is_finite() => bad("gamma must be finite", gamma),
            Loss::BcoPair { delta, .. } if !delta.is_finite() => bad("delta must be finite", delta),
            Loss::Kto {
                desirable_weight: d,
                undesirable_weight: u,
                ..
            } if !(d.is_finite() && d >= 0.0 && u.is_finite() && u >= 0.0) => bad(
                "desirable / undesirable weights must be >= 0",
                if d >= 0.0 { u } else { d },
            ),
            _ => Ok(()),
        }
    }

    /// Parses a name such as `sigmoid`, `cdpo_eps0.1`, `exo_pair_eps1e-3`,
    /// `simpo_beta2_gamma0.5` or `orpo_beta0.1_no_nll`: a base name, then `_<param><value>`
    /// segments (`beta`, `eps`, `tau`, `gamma`, `delta`, `dw` / `uw` for KTO's desirable /
    /// undesirable weights) and the flag `_no_nll`. `default_beta` applies when the name
    /// gives none; other parameters default to TRL's defaults.
    pub fn parse(s: &str, default_beta: f64) -> Result<Loss> {
        if let Some(rest) = s.strip_prefix("dpo")
            && (rest.is_empty() || rest.starts_with('_'))
        {
            return Self::parse(&format!("sigmoid{rest}"), default_beta);
        }
        let bad = |what: String| Error::invalid(format!("loss `{s}`: {what}"));
        let name = NAMES
            .iter()
            .copied()
            .find(|n| {
                s.strip_prefix(n)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('_'))
            })
            .ok_or_else(|| bad(format!("unknown loss (known: {})", NAMES.join(", "))))?;
        let rest = &s[name.len()..];

        let mut beta = default_beta;
        let mut eps = None;
        let mut tau = None;
        let mut gamma = None;
        let mut delta = None;
        let mut dw = None;
        let mut uw = None;
        let mut nll = true;
        let mut segments = rest.split('_').skip(1).peekable();
        while let Some(seg) = segments.next() {
            if seg == "no" && segments.peek() == Some(&"nll") {
                segments.next();
                nll = false;
                continue;
            }
            let split = seg.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(seg.len());
            let (key, value) = seg.split_at(split);
            let value: f64 = value
                .parse()
                .map_err(|_| bad(format!("segment `{seg}` is not <param><number>")))?;
            let slot = match key {
                "beta" => {
                    beta = value;
                    continue;
                }
                "eps" => &mut eps,
                "tau" => &mut tau,
                "gamma" => &mut gamma,
                "delta" => &mut delta,
                "dw" => &mut dw,
                "uw" => &mut uw,
                _ => return Err(bad(format!("unknown parameter `{key}`"))),
            };
            *slot = Some(value);
        }

        let accepts = |key: &str, given: Option<f64>, allowed: bool| {
            if given.is_some() && !allowed {
                Err(bad(format!("`{name}` takes no `{key}`")))
            } else {
                Ok(())
            }
        };
        accepts("eps", eps, matches!(name, "cdpo" | "robust" | "exo_pair"))?;
        accepts("tau", tau, name == "discopop")?;
        accepts("gamma", gamma, name == "simpo")?;
        accepts("delta", delta, name == "bco_pair")?;
        accepts("dw", dw, name == "kto")?;
        accepts("uw", uw, name == "kto")?;
        if !nll && name != "orpo" {
            return Err(bad(format!("`{name}` takes no `no_nll`")));
        }

        let loss = match name {
            "sigmoid" => Loss::Sigmoid { beta },
            "ipo" => Loss::Ipo { beta },
            "cdpo" => Loss::Cdpo {
                beta,
                eps: eps.unwrap_or(DEFAULT_EPS),
            },
            "robust" => Loss::Robust {
                beta,
                eps: eps.unwrap_or(DEFAULT_EPS),
            },
            "hinge" => Loss::Hinge { beta },
            "nca_pair" => Loss::NcaPair { beta },
            "bco_pair" => Loss::BcoPair {
                beta,
                delta: delta.unwrap_or(0.0),
            },
            "apo_zero" => Loss::ApoZero { beta },
            "apo_down" => Loss::ApoDown { beta },
            "sppo_hard" => Loss::SppoHard { beta },
            "exo_pair" => Loss::ExoPair {
                beta,
                eps: eps.unwrap_or(DEFAULT_EXO_EPS),
            },
            "discopop" => Loss::Discopop {
                beta,
                tau: tau.unwrap_or(DEFAULT_DISCOPOP_TAU),
            },
            "simpo" => Loss::Simpo {
                beta,
                gamma: gamma.unwrap_or(DEFAULT_SIMPO_GAMMA),
            },
            "orpo" => Loss::Orpo { beta, nll },
            "margin_dpo" => Loss::MarginDpo { beta },
            "kto" => Loss::Kto {
                beta,
                desirable_weight: dw.unwrap_or(1.0),
                undesirable_weight: uw.unwrap_or(1.0),
            },
            _ => return Err(bad("unknown loss".into())),
        };
        loss.validate()?;
        Ok(loss)
    }
}

impl FromStr for Loss {
    type Err = Error;
    fn from_str(s: &str) -> Result<Loss> {
        Loss::parse(s, DEFAULT_BETA)
    }
}

/// The canonical name with every parameter, which parses back to the same value.
impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_beta{}", self.name(), self.beta())?;
        match *self {
            Loss::Cdpo { eps, .. } | Loss::Robust { eps, .. } | Loss::ExoPair { eps, .. } => {
                write!(f, "_eps{eps}")
            }
            Loss::Discopop { tau, .. } => write!(f, "_tau{tau}"),
            Loss::Simpo { gamma, .. } => write!(f, "_gamma{gamma}"),
            Loss::BcoPair { delta, .. } => write!(f, "_delta{delta}"),
            Loss::Orpo { nll: false, .. } => write!(f, "_no_nll"),
            Loss::Kto {
                desirable_weight,
                undesirable_weight,
                ..
            } => write!(f, "_dw{desirable_weight}_uw{undesirable_weight}"),
            _ => Ok(()),
        }
    }
}
