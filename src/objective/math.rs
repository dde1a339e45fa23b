//! Numerically stable scalar functions shared by the losses (all in f64).

/// softplus(x) = ln(1 + e^x), without overflow for large |x|.
pub(crate) fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// ln σ(x) = -softplus(-x).
pub(crate) fn log_sigmoid(x: f64) -> f64 {
    -softplus(-x)
}

/// σ(x) = 1 / (1 + e^-x), evaluated on the side where the exponential cannot overflow.
pub(crate) fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// σ'(x) = σ(x) σ(-x).
pub(crate) fn sigmoid_grad(x: f64) -> f64 {
    sigmoid(x) * sigmoid(-x)
}

/// ln(1 - e^x) for x < 0 (Mächler 2012): `ln(-expm1(x))` near 0, `ln1p(-e^x)` far from it.
pub(crate) fn log1m_exp(x: f64) -> f64 {
    if x > -std::f64::consts::LN_2 {
        (-x.exp_m1()).ln()
    } else {
        (-x.exp()).ln_1p()
    }
}

/// d/dx [x - ln(1 - e^x)] = 1 / (1 - e^x), for x < 0.
pub(crate) fn inv_one_minus_exp(x: f64) -> f64 {
    -1.0 / x.exp_m1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_at_extremes() {
        assert_eq!(softplus(1000.0), 1000.0);
        assert_eq!(softplus(-1000.0), 0.0);
        assert!((softplus(0.0) - std::f64::consts::LN_2).abs() < 1e-15);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert!((log_sigmoid(-1000.0) + 1000.0).abs() < 1e-12);
        assert!((log1m_exp(-1e-10) - (1e-10f64).ln()).abs() < 1e-6);
        assert!((log1m_exp(-50.0) + (-50.0f64).exp()).abs() < 1e-30);
    }
}
