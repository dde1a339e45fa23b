//! The DPO family: per-pair losses and their derivatives with respect to log-probs.
