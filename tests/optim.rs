//! AdamW, clipping and schedules against torch / transformers references
//! (tests/data/optim/adamw_ref.json, made by scripts/make_optim_refs.py).

use std::path::PathBuf;

use nudge::optim::{AdamW, AdamWConfig, AdamWState, Schedule, clip_grad_norm, grad_norm};
use serde_json::Value;

fn reference() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/optim/adamw_ref.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// float32 values stored as the exact doubles they are.
fn tensors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_array().unwrap().iter().map(|x| num(x) as f32).collect())
        .collect()
}

fn config(run: &Value) -> AdamWConfig {
    AdamWConfig {
        lr: num(&run["lr"]),
        betas: (num(&run["betas"][0]), num(&run["betas"][1])),
        eps: num(&run["eps"]),
        weight_decay: num(&run["weight_decay"]),
    }
}

fn ulps(a: f32, b: f32) -> u32 {
    if a == b {
        return 0;
    }
    let key = |x: f32| {
        let bits = x.to_bits() as i32;
        if bits < 0 { i32::MIN - bits } else { bits }
    };
    key(a).abs_diff(key(b))
}

/// Compares within 1e-6 relative (or `abs` absolute); returns the largest ulp distance.
fn compare(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], abs: f32, errors: &mut Vec<String>) -> u32 {
    assert_eq!(got.len(), want.len(), "{what}: tensor count");
    let mut worst = 0;
    for (t, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}[{t}]: length");
        for (i, (&a, &b)) in g.iter().zip(w).enumerate() {
            worst = worst.max(ulps(a, b));
            let err = (a - b).abs();
            if !(err <= abs || err <= 1e-6 * b.abs()) {
                errors.push(format!("{what}[{t}][{i}]: got {a:e}, want {b:e}"));
            }
        }
    }
    worst
}

#[test]
fn adamw_matches_torch_step_by_step() {
    let doc = reference();
    let runs = doc["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    let mut errors = Vec::new();
    let mut worst_param_ulps = 0;
    let mut worst_moment_ulps = 0;
    for (r, run) in runs.iter().enumerate() {
        let schedule: Schedule = serde_json::from_value(run["schedule"].clone()).unwrap();
        let cfg = config(run);
        let mut params = tensors(&run["init_params"]);
        let sizes: Vec<usize> = params.iter().map(Vec::len).collect();
        let mut opt = AdamW::new(cfg, &sizes).unwrap();
        let steps = run["steps"].as_array().unwrap();
        assert!(!steps.is_empty());
        for (k, step) in steps.iter().enumerate() {
            let tag = |what: &str| format!("run {r} step {k} {what}");
            let lr = schedule.lr(cfg.lr, k as u64);
            let want_lr = num(&step["lr"]);
            assert!(
                (lr - want_lr).abs() <= 1e-12 * want_lr.abs(),
                "{}: {lr} vs {want_lr}",
                tag("lr")
            );
            // The optimizer alone: fed torch's clipped gradients.
            let grads = tensors(&step["clipped_grads"]);
            let grad_views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            let mut param_views: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
            opt.step(&mut param_views, &grad_views, lr).unwrap();
            assert_eq!(opt.state().step, k as u64 + 1);
            worst_param_ulps = worst_param_ulps.max(compare(
                &tag("params"),
                &params,
                &tensors(&step["params"]),
                0.0,
                &mut errors,
            ));
            worst_moment_ulps = worst_moment_ulps.max(compare(
                &tag("exp_avg"),
                &opt.state().exp_avg,
                &tensors(&step["exp_avg"]),
                1e-12,
                &mut errors,
            ));
            worst_moment_ulps = worst_moment_ulps.max(compare(
                &tag("exp_avg_sq"),
                &opt.state().exp_avg_sq,
                &tensors(&step["exp_avg_sq"]),
                1e-15,
                &mut errors,
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "{} mismatches, first:\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
    // Same float32 operations in the same order (fused where ATen fuses): bit-identical.
    assert_eq!(
        worst_param_ulps, 0,
        "parameters differ from torch by up to {worst_param_ulps} ulps"
    );
    assert_eq!(
        worst_moment_ulps, 0,
        "moments differ from torch by up to {worst_moment_ulps} ulps"
    );
}

#[test]
fn clipping_matches_torch() {
    let doc = reference();
    let mut errors = Vec::new();
    let mut clipped_some = false;
    let mut unclipped_some = false;
    for (r, run) in doc["runs"].as_array().unwrap().iter().enumerate() {
        let max_norm = num(&run["max_norm"]) as f32;
        for (k, step) in run["steps"].as_array().unwrap().iter().enumerate() {
            let mut grads = tensors(&step["grads"]);
            let want_norm = num(&step["grad_norm"]) as f32;
            let views: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
            assert_eq!(grad_norm(&views).to_bits(), {
                let mut copy = grads.clone();
                let mut v: Vec<&mut [f32]> = copy.iter_mut().map(Vec::as_mut_slice).collect();
                clip_grad_norm(&mut v, f32::INFINITY).to_bits()
            });
            let mut mut_views: Vec<&mut [f32]> = grads.iter_mut().map(Vec::as_mut_slice).collect();
            let norm = clip_grad_norm(&mut mut_views, max_norm);
            assert!(
                (norm - want_norm).abs() <= 1e-6 * want_norm,
                "run {r} step {k}: norm {norm} vs torch {want_norm}"
            );
            if want_norm > max_norm {
                clipped_some = true;
            } else {
                unclipped_some = true;
            }
            compare(
                &format!("run {r} step {k} clipped"),
                &grads,
                &tensors(&step["clipped_grads"]),
                0.0,
                &mut errors,
            );
        }
    }
    assert!(
        clipped_some && unclipped_some,
        "the reference covers both sides of the limit"
    );
    assert!(errors.is_empty(), "{}", errors[..errors.len().min(10)].join("\n"));
}

#[test]
fn schedules_match_transformers() {
    let doc = reference();
    let cases = doc["schedules"].as_array().unwrap();
    assert!(cases.len() >= 3);
    let mut kinds = std::collections::BTreeSet::new();
    for case in cases {
        let schedule: Schedule =
            serde_json::from_value(case["schedule"].clone()).unwrap_or_else(|e| panic!("{}: {e}", case["schedule"]));
        kinds.insert(case["schedule"]["type"].as_str().unwrap().to_string());
        let base = num(&case["base_lr"]);
        for (step, want) in case["lrs"].as_array().unwrap().iter().enumerate() {
            let (got, want) = (schedule.lr(base, step as u64), num(want));
            assert!(
                (got - want).abs() <= 1e-12 * want.abs() + 1e-18,
                "{schedule:?} step {step}: {got} vs transformers {want}"
            );
        }
    }
    assert_eq!(kinds.len(), 3, "{kinds:?}");
}

#[test]
fn checkpointed_state_resumes_bit_for_bit() {
    let doc = reference();
    let run = &doc["runs"][0];
    let cfg = config(run);
    let init = tensors(&run["init_params"]);
    let sizes: Vec<usize> = init.iter().map(Vec::len).collect();
    let steps = run["steps"].as_array().unwrap();
    let grads: Vec<Vec<Vec<f32>>> = steps.iter().map(|s| tensors(&s["clipped_grads"])).collect();
    let run_steps = |opt: &mut AdamW, params: &mut Vec<Vec<f32>>, range: std::ops::Range<usize>| {
        for k in range {
            let g: Vec<&[f32]> = grads[k].iter().map(Vec::as_slice).collect();
            let mut p: Vec<&mut [f32]> = params.iter_mut().map(Vec::as_mut_slice).collect();
            opt.step(&mut p, &g, 1e-2).unwrap();
        }
    };

    let mut straight = init.clone();
    let mut opt = AdamW::new(cfg, &sizes).unwrap();
    run_steps(&mut opt, &mut straight, 0..steps.len());

    let mut resumed = init.clone();
    let mut first = AdamW::new(cfg, &sizes).unwrap();
    run_steps(&mut first, &mut resumed, 0..2);
    let json = serde_json::to_string(first.state()).unwrap();
    let from_json: AdamWState = serde_json::from_str(&json).unwrap();
    let bytes = bincode::serde::encode_to_vec(first.state(), bincode::config::standard()).unwrap();
    let (from_bincode, _): (AdamWState, usize) =
        bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
    assert_eq!(&from_json, first.state());
    assert_eq!(&from_bincode, first.state());
    let cfg_json = serde_json::to_string(first.config()).unwrap();
    let mut second = AdamW::from_state(serde_json::from_str(&cfg_json).unwrap(), from_bincode).unwrap();
    run_steps(&mut second, &mut resumed, 2..steps.len());
    assert_eq!(second.state(), opt.state());
    for (a, b) in resumed.iter().zip(&straight) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn config_defaults_and_bad_input() {
    let d: AdamWConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(d, AdamWConfig::default());
    assert_eq!(d.betas, (0.9, 0.999));
    assert_eq!(d.eps, 1e-8);
    assert_eq!(d.weight_decay, 0.01);
    assert!(serde_json::from_str::<AdamWConfig>(r#"{"lr":0.1,"momentum":0.9}"#).is_err());
    for bad in [
        AdamWConfig { lr: -1.0, ..d },
        AdamWConfig {
            betas: (1.0, 0.999),
            ..d
        },
        AdamWConfig {
            betas: (0.9, f64::NAN),
            ..d
        },
        AdamWConfig { eps: -1e-8, ..d },
        AdamWConfig {
            weight_decay: f64::INFINITY,
            ..d
        },
    ] {
        assert!(AdamW::new(bad, &[3]).is_err(), "{bad:?}");
    }
    let mut opt = AdamW::new(d, &[3, 2]).unwrap();
    let mut a = [1.0f32; 3];
    let mut b = [1.0f32; 2];
    let mut short = [1.0f32; 1];
    assert!(
        opt.step(&mut [&mut a[..], &mut short[..]], &[&[0.1; 3], &[0.1; 1]], 1e-3)
            .is_err()
    );
    assert!(opt.step(&mut [&mut a[..]], &[&[0.1; 3]], 1e-3).is_err());
    assert!(
        opt.step(&mut [&mut a[..], &mut b[..]], &[&[0.1; 3], &[0.1; 2]], f64::NAN)
            .is_err()
    );
    assert_eq!(opt.state().step, 0, "a refused step changes nothing");
    assert_eq!(a, [1.0; 3]);
    opt.step(&mut [&mut a[..], &mut b[..]], &[&[0.1; 3], &[-0.1; 2]], 1e-3)
        .unwrap();
    // First Adam step moves each parameter by about lr against its gradient's sign.
    assert!(a.iter().all(|&x| (x - (1.0 - 1e-5 - 1e-3)).abs() < 1e-6), "{a:?}");
    assert!(b.iter().all(|&x| (x - (1.0 - 1e-5 + 1e-3)).abs() < 1e-6), "{b:?}");
    let mismatched = AdamWState {
        step: 1,
        exp_avg: vec![vec![0.0; 2]],
        exp_avg_sq: vec![vec![0.0; 3]],
    };
    assert!(AdamW::from_state(d, mismatched).is_err());
}

#[test]
fn clipping_edge_cases() {
    // Under the limit: unchanged (multiplied by exactly 1).
    let mut g = vec![vec![0.3f32, -0.4], vec![0.0]];
    let mut v: Vec<&mut [f32]> = g.iter_mut().map(Vec::as_mut_slice).collect();
    assert_eq!(clip_grad_norm(&mut v, 1.0), 0.5);
    assert_eq!(g, vec![vec![0.3f32, -0.4], vec![0.0]]);
    // Over the limit: scaled to max_norm / (norm + 1e-6).
    let mut g = vec![vec![3.0f32], vec![4.0]];
    let mut v: Vec<&mut [f32]> = g.iter_mut().map(Vec::as_mut_slice).collect();
    assert_eq!(clip_grad_norm(&mut v, 1.0), 5.0);
    let coef = 1.0f32 / (5.0 + 1e-6);
    assert_eq!(g, vec![vec![3.0 * coef], vec![4.0 * coef]]);
    // Non-finite: reported, gradients left for the caller to discard.
    let mut g = [vec![f32::INFINITY, 1.0]];
    let mut v: Vec<&mut [f32]> = g.iter_mut().map(Vec::as_mut_slice).collect();
    assert!(clip_grad_norm(&mut v, 1.0).is_infinite());
    assert_eq!(g[0][1], 1.0);
    assert_eq!(grad_norm(&[]), 0.0);
}

#[test]
fn schedule_serde_and_shapes() {
    let s: Schedule = serde_json::from_str(r#"{"type":"cosine","total_steps":100}"#).unwrap();
    assert_eq!(
        s,
        Schedule::Cosine {
            warmup_steps: 0,
            total_steps: 100,
            num_cycles: 0.5
        }
    );
    assert!(serde_json::from_str::<Schedule>(r#"{"type":"linear","warmup_steps":3}"#).is_err());
    assert!(serde_json::from_str::<Schedule>(r#"{"type":"linear","total_steps":3,"x":1}"#).is_err());
    let linear = Schedule::Linear {
        warmup_steps: 10,
        total_steps: 110,
    };
    assert_eq!(linear.factor(0), 0.0);
    assert_eq!(linear.factor(5), 0.5);
    assert_eq!(linear.factor(10), 1.0);
    assert_eq!(linear.factor(60), 0.5);
    assert_eq!(linear.factor(110), 0.0);
    assert_eq!(linear.factor(1000), 0.0);
    assert_eq!(Schedule::default().factor(12345), 1.0);
}
