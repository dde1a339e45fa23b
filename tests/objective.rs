//! The DPO family against the PyTorch golden reference (every `loss_variants` entry), a
//! torch replica of TRL's KTO loss, and finite differences for every derivative.

use std::path::PathBuf;

use nudge::objective::{
    KtoExample, Loss, PairLogps, RunningMean, batch_loss, bco_reward_mean, kto_batch, kto_kl, orpo_nll, pair_loss,
    reward_metrics,
};
use serde_json::Value;

fn golden_dir() -> PathBuf {
    match std::env::var_os("NUDGE_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden/smollm2"),
    }
}

fn read_json(path: PathBuf) -> Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn golden() -> Value {
    read_json(golden_dir().join("golden.json"))
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("expected an array, got {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("expected a number, got {x}")))
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// The golden pairs: policy log-probs from `policy`, reference ones and token counts
/// from `examples`.
fn golden_pairs(g: &Value) -> Vec<PairLogps> {
    let chosen = f64s(&g["policy"]["chosen_logps"]);
    let rejected = f64s(&g["policy"]["rejected_logps"]);
    let examples = g["examples"].as_array().expect("examples");
    assert_eq!(examples.len(), chosen.len());
    assert_eq!(examples.len(), rejected.len());
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let n = |k: &str| e[k].as_array().unwrap_or_else(|| panic!("examples[{i}].{k}")).len();
            PairLogps::new(
                chosen[i],
                rejected[i],
                num(&e["ref_chosen_logp"]),
                num(&e["ref_rejected_logp"]),
                n("chosen_ids"),
                n("rejected_ids"),
            )
        })
        .collect()
}

/// 1e-4 relative, or 1e-6 absolute near zero.
fn close(got: f64, want: f64, rel: f64, abs: f64) -> bool {
    let err = (got - want).abs();
    err <= abs || err <= rel * want.abs()
}

fn check(errors: &mut Vec<String>, what: &str, got: f64, want: f64) {
    if !close(got, want, 1e-4, 1e-6) {
        errors.push(format!("{what}: got {got:.9e}, want {want:.9e}"));
    }
}

#[test]
fn golden_sigmoid_loss_and_trl_metrics() {
    let g = golden();
    let beta = num(&g["beta"]);
    let pairs = golden_pairs(&g);
    let got = batch_loss(&Loss::Sigmoid { beta }, &pairs).unwrap();
    let want = num(&g["policy"]["dpo_sigmoid_loss"]);
    assert!(close(got.loss, want, 1e-4, 1e-6), "loss {} vs {want}", got.loss);

    let metrics = reward_metrics(beta, &pairs);
    let ours = metrics.entries();
    let golden_metrics = g["policy"]["metrics"].as_object().expect("policy.metrics");
    assert!(!golden_metrics.is_empty());
    let mut errors = Vec::new();
    for (name, want) in golden_metrics {
        let got = ours
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("golden metric `{name}` is not computed"))
            .1;
        check(&mut errors, name, got, num(want));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn bco_baseline_of_golden_is_zero_and_trl_running_mean_reads_after_update() {
    let g = golden();
    let beta = num(&g["beta"]);
    let pairs = golden_pairs(&g);
    let want = f64s(&g["loss_variants"]["bco_pair"]["per_pair_loss"]);
    let at = |delta: f64| batch_loss(&Loss::BcoPair { beta, delta }, &pairs).unwrap().per_pair;
    let zero = at(0.0);
    let batch_mean = bco_reward_mean(beta, &pairs);
    let trl_first_step = at(RunningMean::default().update(batch_mean));
    let worst = |got: &[f64]| got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst(&zero) < 1e-6, "delta 0: {}", worst(&zero));
    // The golden baseline is distinguishable from TRL's first-step value.
    assert!(
        worst(&trl_first_step) > 1e-4,
        "batch mean {batch_mean}: {}",
        worst(&trl_first_step)
    );

    let mut running = RunningMean::default();
    assert!((running.update(2.0) - 2.0).abs() < 1e-15);
    assert!((running.update(4.0) - 3.0).abs() < 1e-12);
    assert!((running.update(-3.0) - 1.0).abs() < 1e-12);
}

#[test]
fn kto_matches_torch_replica_of_trl() {
    let doc = read_json(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/objective/kto_ref.json"));
    let cases = doc["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let mut errors = Vec::new();
    for (c_i, c) in cases.iter().enumerate() {
        let loss = Loss::Kto {
            beta: num(&c["beta"]),
            desirable_weight: num(&c["desirable_weight"]),
            undesirable_weight: num(&c["undesirable_weight"]),
        };
        let policy = f64s(&c["policy_logps"]);
        let reference = f64s(&c["ref_logps"]);
        let labels: Vec<bool> = c["desirable"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_bool().unwrap())
            .collect();
        let examples: Vec<KtoExample> = (0..policy.len())
            .map(|i| KtoExample {
                policy_logp: policy[i],
                ref_logp: reference[i],
                desirable: labels[i],
            })
            .collect();
        let got = kto_batch(
            &loss,
            &examples,
            &f64s(&c["policy_kl_logps"]),
            &f64s(&c["ref_kl_logps"]),
        )
        .unwrap();
        let tag = |what: &str| format!("case {c_i} {what}");
        check(&mut errors, &tag("loss"), got.loss, num(&c["loss"]));
        for (i, (l, d)) in f64s(&c["per_example"])
            .iter()
            .zip(f64s(&c["d_policy_logps"]))
            .enumerate()
        {
            check(&mut errors, &tag(&format!("per_example[{i}]")), got.per_example[i], *l);
            check(&mut errors, &tag(&format!("d_policy[{i}]")), got.d_policy[i], d);
        }
        let m = &c["metrics"];
        check(&mut errors, &tag("kl"), got.kl, num(&m["kl"]));
        assert_eq!(got.metrics.count_chosen as u64, m["count/chosen"].as_u64().unwrap());
        assert_eq!(got.metrics.count_rejected as u64, m["count/rejected"].as_u64().unwrap());
        let optional = [
            ("rewards/chosen", got.metrics.rewards_chosen),
            ("rewards/rejected", got.metrics.rewards_rejected),
            ("rewards/margins", got.metrics.rewards_margins),
            ("logps/chosen", got.metrics.logps_chosen),
            ("logps/rejected", got.metrics.logps_rejected),
        ];
        for (name, ours) in optional {
            match (ours, m.get(name)) {
                (Some(v), Some(w)) => check(&mut errors, &tag(name), v, num(w)),
                (None, None) => {}
                (o, w) => errors.push(format!("case {c_i} {name}: ours {o:?}, reference {w:?}")),
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn kto_kl_is_clamped_mean_and_checks_lengths() {
    assert_eq!(kto_kl(&[-10.0, -20.0], &[-12.0, -24.0]).unwrap(), 3.0);
    assert_eq!(kto_kl(&[-10.0, -20.0], &[-8.0, -20.0]).unwrap(), 0.0);
    assert_eq!(kto_kl(&[], &[]).unwrap(), 0.0);
    assert!(kto_kl(&[-1.0], &[]).is_err());
    let sigmoid = Loss::Sigmoid { beta: 0.1 };
    let ex = [KtoExample {
        policy_logp: -1.0,
        ref_logp: -1.0,
        desirable: true,
    }];
    assert!(kto_batch(&sigmoid, &ex, &[], &[]).is_err());
}

// ---------------------------------------------------------------------------------------
// Finite differences.

/// SplitMix64: a small deterministic generator so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Every loss of the family, with non-default parameters where it has any.
fn every_loss() -> Vec<Loss> {
    let names = [
        "sigmoid_beta0.3",
        "ipo_beta0.2",
        "cdpo_beta0.25_eps0.2",
        "robust_beta0.25_eps0.2",
        "hinge_beta0.05",
        "nca_pair_beta0.2",
        "bco_pair_beta0.2_delta0.3",
        "apo_zero_beta0.2",
        "apo_down_beta0.2",
        "sppo_hard_beta0.4",
        "exo_pair_beta0.2_eps0.01",
        "discopop_beta0.2_tau0.5",
        "simpo_beta2_gamma0.5",
        "orpo_beta0.2",
        "orpo_beta0.2_no_nll",
        "margin_dpo_beta0.2",
        "kto_beta0.2_dw1.5_uw0.7",
    ];
    let losses: Vec<Loss> = names.iter().map(|n| n.parse().unwrap()).collect();
    // Every variant appears (the match fails to compile when one is added and not listed).
    for loss in &losses {
        match loss {
            Loss::Sigmoid { .. }
            | Loss::Ipo { .. }
            | Loss::Cdpo { .. }
            | Loss::Robust { .. }
            | Loss::Hinge { .. }
            | Loss::NcaPair { .. }
            | Loss::BcoPair { .. }
            | Loss::ApoZero { .. }
            | Loss::ApoDown { .. }
            | Loss::SppoHard { .. }
            | Loss::ExoPair { .. }
            | Loss::Discopop { .. }
            | Loss::Simpo { .. }
            | Loss::Orpo { .. }
            | Loss::MarginDpo { .. }
            | Loss::Kto { .. } => {}
        }
    }
    let mut kinds: Vec<&str> = losses.iter().map(|l| l.name()).collect();
    kinds.dedup();
    assert_eq!(kinds.len(), 16, "{kinds:?}");
    losses
}

/// A random pair whose summed log-probs are plausible for n-token completions; the DPO
/// logit stays within a few units of 1/β so that every loss is away from saturation.
fn random_pair(rng: &mut Rng) -> PairLogps {
    let nc = 1 + rng.below(60);
    let nr = 1 + rng.below(60);
    let pc = -(nc as f64) * rng.uniform(0.2, 4.0);
    let pr = -(nr as f64) * rng.uniform(0.2, 4.0);
    PairLogps::new(pc, pr, pc + rng.uniform(-6.0, 6.0), pr + rng.uniform(-6.0, 6.0), nc, nr)
        .with_margin(rng.uniform(-1.0, 1.0))
        .with_weight(rng.uniform(0.2, 2.0))
}

/// Central difference of `f` at `x` with step `h`.
fn central(f: impl Fn(f64) -> f64, x: f64, h: f64) -> f64 {
    (f(x + h) - f(x - h)) / (2.0 * h)
}

fn fd_ok(analytic: f64, numeric: f64) -> bool {
    (analytic - numeric).abs() <= 1e-7 + 1e-5 * analytic.abs().max(numeric.abs())
}

/// True when the hinge's kink lies within the difference step.
fn near_kink(loss: &Loss, p: &PairLogps, h: f64) -> bool {
    let Loss::Hinge { beta } = *loss else { return false };
    let z = beta * ((p.policy_chosen - p.policy_rejected) - (p.ref_chosen - p.ref_rejected));
    (1.0 - z).abs() < 4.0 * beta * h
}

#[test]
fn every_pair_derivative_matches_finite_differences() {
    let mut rng = Rng(0x5eed_0b1e);
    let h = 1e-4;
    let mut errors = Vec::new();
    let mut checked = 0;
    for loss in every_loss() {
        let mut hinge_sides = [false, false];
        for trial in 0..200 {
            let mut p = random_pair(&mut rng);
            if let Loss::Hinge { beta } = loss {
                // Half the points on each side of the hinge.
                let shift = if trial % 2 == 0 { 0.5 } else { 1.5 } / beta;
                p.policy_chosen =
                    p.policy_rejected + (p.ref_chosen - p.ref_rejected) + shift + rng.uniform(-0.4, 0.4) / beta;
                let z = beta * ((p.policy_chosen - p.policy_rejected) - (p.ref_chosen - p.ref_rejected));
                hinge_sides[usize::from(z > 1.0)] = true;
                if p.policy_chosen >= 0.0 {
                    continue;
                }
            }
            if near_kink(&loss, &p, h) {
                continue;
            }
            let got = pair_loss(&loss, &p);
            let at_c = |x: f64| pair_loss(&loss, &PairLogps { policy_chosen: x, ..p }).loss;
            let at_r = |x: f64| {
                pair_loss(
                    &loss,
                    &PairLogps {
                        policy_rejected: x,
                        ..p
                    },
                )
                .loss
            };
            let (fd_c, fd_r) = (central(at_c, p.policy_chosen, h), central(at_r, p.policy_rejected, h));
            if !got.loss.is_finite() || !fd_ok(got.d_chosen, fd_c) || !fd_ok(got.d_rejected, fd_r) {
                errors.push(format!(
                    "{loss}: {p:?}: d_chosen {} vs fd {fd_c}, d_rejected {} vs fd {fd_r}",
                    got.d_chosen, got.d_rejected
                ));
            }
            checked += 1;
        }
        if let Loss::Hinge { .. } = loss {
            assert_eq!(hinge_sides, [true, true], "hinge points cover both sides of the kink");
        }
    }
    assert!(checked > 3000, "only {checked} points checked");
    assert!(
        errors.is_empty(),
        "{} mismatches, first:\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
}

#[test]
fn every_batch_derivative_matches_finite_differences() {
    // The batch mean, including ORPO's batch-level NLL, against differences of the mean.
    let mut rng = Rng(0xba7c_4e55);
    let h = 1e-4;
    let mut errors = Vec::new();
    for loss in every_loss() {
        if let Loss::Hinge { .. } = loss {
            continue; // covered pair by pair, where points are kept off the kink
        }
        for _ in 0..20 {
            let pairs: Vec<PairLogps> = (0..1 + rng.below(6)).map(|_| random_pair(&mut rng)).collect();
            let got = batch_loss(&loss, &pairs).unwrap();
            assert_eq!(got.per_pair.len(), pairs.len());
            for i in 0..pairs.len() {
                let moved = |x: f64, chosen: bool| {
                    let mut q = pairs.clone();
                    if chosen {
                        q[i].policy_chosen = x;
                    } else {
                        q[i].policy_rejected = x;
                    }
                    batch_loss(&loss, &q).unwrap().loss
                };
                let fd_c = central(|x| moved(x, true), pairs[i].policy_chosen, h);
                let fd_r = central(|x| moved(x, false), pairs[i].policy_rejected, h);
                if !fd_ok(got.d_chosen[i], fd_c) || !fd_ok(got.d_rejected[i], fd_r) {
                    errors.push(format!(
                        "{loss} pair {i}: d_chosen {} vs {fd_c}, d_rejected {} vs {fd_r}",
                        got.d_chosen[i], got.d_rejected[i]
                    ));
                }
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors[..errors.len().min(10)].join("\n"));
}

#[test]
fn orpo_nll_is_token_mean_over_batch_with_its_derivative() {
    let pairs = [
        PairLogps::new(-30.0f32, -50.0f32, 0.0f32, 0.0f32, 10, 20),
        PairLogps::new(-12.0f32, -9.0f32, 0.0f32, 0.0f32, 5, 3),
    ];
    let (nll, d) = orpo_nll(&pairs).unwrap();
    assert!((nll - 42.0 / 15.0).abs() < 1e-12);
    assert!((d + 1.0 / 15.0).abs() < 1e-15);
    let with = batch_loss(&"orpo_beta0.1".parse().unwrap(), &pairs).unwrap();
    let without = batch_loss(&"orpo_beta0.1_no_nll".parse().unwrap(), &pairs).unwrap();
    assert!((with.loss - without.loss - nll).abs() < 1e-12);
    assert_eq!(with.nll, Some(nll));
    assert_eq!(without.nll, None);
    assert_eq!(with.per_pair, without.per_pair);
    for i in 0..2 {
        assert!((with.d_chosen[i] - without.d_chosen[i] - d).abs() < 1e-15);
        assert_eq!(with.d_rejected[i], without.d_rejected[i]);
    }
}

#[test]
fn kto_derivative_matches_finite_differences() {
    let mut rng = Rng(0x6b70);
    let h = 1e-4;
    for _ in 0..50 {
        let n = 1 + rng.below(8);
        let loss = Loss::Kto {
            beta: rng.uniform(0.05, 0.5),
            desirable_weight: rng.uniform(0.5, 2.0),
            undesirable_weight: rng.uniform(0.5, 2.0),
        };
        let examples: Vec<KtoExample> = (0..n)
            .map(|_| {
                let r = rng.uniform(-150.0, -5.0);
                KtoExample {
                    policy_logp: r + rng.uniform(-15.0, 15.0),
                    ref_logp: r,
                    desirable: rng.below(2) == 0,
                }
            })
            .collect();
        let ref_kl: Vec<f64> = (0..n).map(|_| rng.uniform(-200.0, -50.0)).collect();
        let pol_kl: Vec<f64> = ref_kl.iter().map(|r| r + rng.uniform(-3.0, 8.0)).collect();
        let got = kto_batch(&loss, &examples, &pol_kl, &ref_kl).unwrap();
        for i in 0..n {
            let at = |x: f64| {
                let mut e = examples.clone();
                e[i].policy_logp = x;
                kto_batch(&loss, &e, &pol_kl, &ref_kl).unwrap().loss
            };
            let fd = central(at, examples[i].policy_logp, h);
            assert!(
                fd_ok(got.d_policy[i], fd),
                "{loss} example {i}: {} vs {fd}",
                got.d_policy[i]
            );
        }
    }
}

#[test]
fn kto_on_pairs_is_the_unpaired_batch_without_kl() {
    let mut rng = Rng(77);
    let loss: Loss = "kto_beta0.3_dw1.2_uw0.8".parse().unwrap();
    let pairs: Vec<PairLogps> = (0..5).map(|_| random_pair(&mut rng)).collect();
    let paired = batch_loss(&loss, &pairs).unwrap();
    let unpaired: Vec<KtoExample> = pairs
        .iter()
        .flat_map(|p| {
            [
                KtoExample {
                    policy_logp: p.policy_chosen,
                    ref_logp: p.ref_chosen,
                    desirable: true,
                },
                KtoExample {
                    policy_logp: p.policy_rejected,
                    ref_logp: p.ref_rejected,
                    desirable: false,
                },
            ]
        })
        .collect();
    // Pair weights are 1 in the unpaired form.
    let unweighted: Vec<PairLogps> = pairs.iter().map(|p| p.with_weight(1.0)).collect();
    let paired_unweighted = batch_loss(&loss, &unweighted).unwrap();
    let kto = kto_batch(&loss, &unpaired, &[], &[]).unwrap();
    assert!((paired_unweighted.loss - kto.loss).abs() < 1e-12);
    for (i, pair) in pairs.iter().enumerate() {
        assert!((paired_unweighted.d_chosen[i] - kto.d_policy[2 * i]).abs() < 1e-15);
        assert!((paired_unweighted.d_rejected[i] - kto.d_policy[2 * i + 1]).abs() < 1e-15);
        assert!((paired.per_pair[i] - pair.weight * paired_unweighted.per_pair[i]).abs() < 1e-12);
    }
}

#[test]
fn margin_and_weight_act_as_documented() {
    let p = PairLogps::new(-20.0, -30.0, -21.0, -29.0, 4, 6);
    let beta = 0.5;
    let base = pair_loss(&Loss::Sigmoid { beta }, &p);
    let no_margin = pair_loss(&Loss::MarginDpo { beta }, &p);
    assert_eq!(base, no_margin);
    // margin m shifts the logit: loss = -ln σ(β h - m) with β h = 1.
    let m = pair_loss(&Loss::MarginDpo { beta }, &p.with_margin(0.75));
    assert!((m.loss - (1.0 + (0.75f64 - 1.0).exp()).ln()).abs() < 1e-12);
    let w = pair_loss(&Loss::MarginDpo { beta }, &p.with_margin(0.75).with_weight(3.0));
    assert!((w.loss - 3.0 * m.loss).abs() < 1e-12);
    assert!((w.d_chosen - 3.0 * m.d_chosen).abs() < 1e-15);
    assert!((w.d_rejected - 3.0 * m.d_rejected).abs() < 1e-15);
}

#[test]
fn saturated_inputs_stay_finite() {
    for loss in every_loss() {
        for gap in [-5e4f64, -800.0, 800.0, 5e4] {
            let p = PairLogps::new(-100.0 + gap.min(0.0), -100.0 - gap.max(0.0), -100.0, -100.0, 7, 9);
            let l = pair_loss(&loss, &p);
            assert!(
                l.loss.is_finite() && l.d_chosen.is_finite() && l.d_rejected.is_finite(),
                "{loss} at gap {gap}: {l:?}"
            );
        }
    }
}

#[test]
fn names_parse_print_and_serialize() {
    for loss in every_loss() {
        let text = loss.to_string();
        assert_eq!(text.parse::<Loss>().unwrap(), loss, "{text}");
        let json = serde_json::to_string(&loss).unwrap();
        assert_eq!(serde_json::from_str::<Loss>(&json).unwrap(), loss, "{json}");
    }
    for (name, want) in [
        ("sigmoid", Loss::Sigmoid { beta: 0.1 }),
        ("cdpo_eps0.1", Loss::Cdpo { beta: 0.1, eps: 0.1 }),
        ("exo_pair_eps1e-3", Loss::ExoPair { beta: 0.1, eps: 1e-3 }),
        ("discopop_tau0.05", Loss::Discopop { beta: 0.1, tau: 0.05 }),
        ("simpo_beta2_gamma0.5", Loss::Simpo { beta: 2.0, gamma: 0.5 }),
        ("orpo_beta0.1_no_nll", Loss::Orpo { beta: 0.1, nll: false }),
        ("orpo", Loss::Orpo { beta: 0.1, nll: true }),
        ("bco_pair", Loss::BcoPair { beta: 0.1, delta: 0.0 }),
        (
            "kto",
            Loss::Kto {
                beta: 0.1,
                desirable_weight: 1.0,
                undesirable_weight: 1.0,
            },
        ),
    ] {
        assert_eq!(name.parse::<Loss>().unwrap(), want, "{name}");
    }
    assert_eq!(Loss::parse("ipo", 0.3).unwrap(), Loss::Ipo { beta: 0.3 });
    for bad in [
        "dpox",
        "sigmoid_",
        "sigmoidx",
        "sigmoid_eps0.1",
        "hinge_no_nll",
        "cdpo_eps",
        "cdpo_epsx",
        "robust_eps0.5",
        "exo_pair_eps0",
        "discopop_tau0",
        "ipo_beta0",
        "ipo_beta-1",
        "simpo_foo1",
        "kto_dw-1",
        "",
    ] {
        assert!(bad.parse::<Loss>().is_err(), "`{bad}` should not parse");
    }
    // `dpo` is TRL's name of the sigmoid loss.
    assert_eq!(Loss::parse("dpo", 0.1).unwrap(), Loss::Sigmoid { beta: 0.1 });
    assert_eq!(Loss::parse("dpo_beta0.5", 0.1).unwrap(), Loss::Sigmoid { beta: 0.5 });
    let cfg: Loss = serde_json::from_str(r#"{"type":"orpo","beta":0.2}"#).unwrap();
    assert_eq!(cfg, Loss::Orpo { beta: 0.2, nll: true });
    assert!(serde_json::from_str::<Loss>(r#"{"type":"sigmoid","beta":0.2,"eps":0.1}"#).is_err());
}

#[test]
fn batch_rejects_bad_input() {
    let ok = PairLogps::new(-10.0, -12.0, -11.0, -11.0, 3, 4);
    let sigmoid = Loss::Sigmoid { beta: 0.1 };
    assert!(batch_loss(&sigmoid, &[]).is_err());
    assert!(
        batch_loss(
            &sigmoid,
            &[PairLogps {
                policy_chosen: f64::NAN,
                ..ok
            }]
        )
        .is_err()
    );
    assert!(batch_loss(&sigmoid, &[ok.with_weight(-1.0)]).is_err());
    assert!(batch_loss(&Loss::Ipo { beta: 0.1 }, &[PairLogps { n_chosen: 0, ..ok }]).is_err());
    assert!(batch_loss(&sigmoid, &[PairLogps { n_chosen: 0, ..ok }]).is_ok());
    let orpo = Loss::Orpo { beta: 0.1, nll: false };
    assert!(
        batch_loss(
            &orpo,
            &[PairLogps {
                policy_chosen: 0.0,
                ..ok
            }]
        )
        .is_err()
    );
    assert!(batch_loss(&Loss::Robust { beta: 0.1, eps: 0.5 }, &[ok]).is_err());
}
