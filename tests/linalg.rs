//! Adapter arithmetic through the SVD (feature `linalg`): a merge reproduces the weighted sum
//! of updates when the rank suffices, a lower rank loses exactly the discarded singular
//! values, and inputs that do not fit each other are refused by name.
#![cfg(feature = "linalg")]

mod common;

use common::tiny::*;
use ndarray::Array2;
use ndarray_linalg::SVD;
use nudge::Error;
use nudge::adapter::format::peft;
use nudge::adapter::linalg::{Merged, SvdOptions, Weighted, merge_svd, shrink_rank};
use nudge::adapter::{Adapter, LoraConfig, LoraInit, LoraPair};
use nudge::model::config::Config;
use nudge::model::weights::Proj;
use std::path::Path;

fn config(spec: &TinySpec) -> Config {
    Config::from_hf_value(&config_json(spec), Path::new("config.json")).expect("tiny config")
}

/// An adapter with A and B both random (a fresh one has B = 0, hence no update).
fn random_adapter(cfg: &Config, r: usize, alpha: f32, rslora: bool, targets: &[Proj], seed: u64) -> Adapter {
    let lora = LoraConfig {
        r,
        lora_alpha: alpha,
        target_modules: targets.to_vec(),
        use_rslora: rslora,
        lora_dropout: 0.0,
        init: LoraInit::Gaussian,
    };
    let mut a = Adapter::new(cfg, lora, seed, "tiny-base").expect("adapter");
    for (i, t) in a.params_mut().into_iter().enumerate() {
        let v = random_vec(t.len(), seed * 1000 + i as u64, 0.5);
        t.copy_from_slice(&v);
    }
    a
}

/// `scale · B A` `[out, in]`, in f64, by plain loops.
fn update(pair: &LoraPair, scale: f64) -> Array2<f64> {
    let (out, inp) = (pair.out_features, pair.in_features);
    let r = pair.a.len() / inp;
    Array2::from_shape_fn((out, inp), |(o, i)| {
        (0..r)
            .map(|j| f64::from(pair.b[o * r + j]) * f64::from(pair.a[j * inp + i]))
            .sum::<f64>()
            * scale
    })
}

fn fro2(x: &Array2<f64>) -> f64 {
    x.iter().map(|v| v * v).sum()
}

fn merged_update(m: &Merged, layer: usize, p: Proj) -> Array2<f64> {
    let pair = m.adapter.get(layer, p).expect("merged pair");
    update(pair, f64::from(m.adapter.scale()))
}

/// `Σ w_i scale_i B_i A_i` at one projection, by plain loops (a missing pair adds nothing).
fn expected_sum(inputs: &[(&Adapter, f64)], layer: usize, p: Proj) -> Array2<f64> {
    let mut sum: Option<Array2<f64>> = None;
    for (a, w) in inputs {
        if let Some(pair) = a.get(layer, p) {
            let d = update(pair, w * f64::from(a.scale()));
            sum = Some(match sum {
                Some(s) => s + d,
                None => d,
            });
        }
    }
    sum.expect("some input adapts this projection")
}

fn rel_err(got: &Array2<f64>, want: &Array2<f64>) -> f64 {
    (fro2(&(got - want)) / fro2(want)).sqrt()
}

fn a_matrix(pair: &LoraPair) -> Array2<f64> {
    let r = pair.a.len() / pair.in_features;
    Array2::from_shape_fn((r, pair.in_features), |(j, i)| {
        f64::from(pair.a[j * pair.in_features + i])
    })
}

fn b_matrix(pair: &LoraPair) -> Array2<f64> {
    let r = pair.b.len() / pair.out_features;
    Array2::from_shape_fn((pair.out_features, r), |(o, j)| f64::from(pair.b[o * r + j]))
}

fn max_abs_diff(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    x.iter().zip(y).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

#[test]
fn one_adapter_at_its_own_rank_reproduces_its_update() {
    let cfg = config(&TinySpec::default());
    for (alpha, rslora) in [(8.0, false), (3.0, true)] {
        let a = random_adapter(&cfg, 4, alpha, rslora, &Proj::ALL, 11);
        let m = shrink_rank(&a, 4).unwrap();
        let c = &m.adapter.config;
        assert_eq!((c.r, c.lora_alpha, c.use_rslora), (4, 4.0, false));
        assert_eq!(m.adapter.scale(), 1.0);
        assert_eq!(c.target_modules, Proj::ALL.to_vec());
        assert_eq!(m.spectra.len(), cfg.num_hidden_layers * 7);
        for s in &m.spectra {
            let want = update(a.get(s.layer, s.proj).unwrap(), f64::from(a.scale()));
            let err = rel_err(&merged_update(&m, s.layer, s.proj), &want);
            assert!(err < 1e-6, "layer {} {:?}: relative error {err:e}", s.layer, s.proj);
            assert!((s.energy() - fro2(&want)).abs() <= 1e-9 * fro2(&want));
            assert!(s.discarded_energy() <= 1e-12 * s.energy(), "{s:?}");
        }
    }
}

#[test]
fn at_a_lower_rank_the_error_is_the_discarded_singular_values() {
    let cfg = config(&TinySpec::default());
    let a = random_adapter(&cfg, 8, 16.0, false, &Proj::ALL, 3);
    for k in [1, 3, 6] {
        let m = shrink_rank(&a, k).unwrap();
        assert_eq!(m.adapter.config.r, k);
        for s in &m.spectra {
            let want = update(a.get(s.layer, s.proj).unwrap(), f64::from(a.scale()));
            // The spectrum is the dense SVD's (whose remaining values are zero).
            let (_, dense, _) = want.svd(false, false).unwrap();
            assert_eq!(s.singular_values.len(), 8);
            assert_eq!(s.kept, k);
            for (j, d) in dense.iter().enumerate() {
                let got = s.singular_values.get(j).copied().unwrap_or(0.0);
                assert!((got - d).abs() <= 1e-9 * dense[0], "σ{j}: {got} vs dense {d}");
            }
            let discarded = s.discarded_energy();
            assert!(discarded > 1e-3 * s.energy(), "the test needs a real truncation");
            let err2 = fro2(&(merged_update(&m, s.layer, s.proj) - &want));
            assert!(
                (err2 - discarded).abs() <= 1e-4 * discarded,
                "layer {} {:?} rank {k}: ‖ΔW − B'A'‖² {err2:e} vs Σ discarded σ² {discarded:e}",
                s.layer,
                s.proj
            );
            // A factorization of the SVD: A' has orthonormal rows, B' orthogonal columns σ_j long.
            let pair = m.adapter.get(s.layer, s.proj).unwrap();
            let (am, bm) = (a_matrix(pair), b_matrix(pair));
            assert!(max_abs_diff(&am.dot(&am.t()), &Array2::eye(k)) < 1e-6);
            let sig2 = Array2::from_shape_fn((k, k), |(i, j)| if i == j { s.singular_values[i].powi(2) } else { 0.0 });
            assert!(max_abs_diff(&bm.t().dot(&bm), &sig2) < 1e-5 * s.singular_values[0].powi(2));
        }
    }
}

#[test]
fn a_weighted_merge_is_the_weighted_sum_of_updates_when_the_rank_suffices() {
    let cfg = config(&TinySpec::default());
    let a1 = random_adapter(&cfg, 4, 8.0, false, &[Proj::Q, Proj::V, Proj::Up], 21);
    let a2 = random_adapter(&cfg, 3, 6.0, true, &[Proj::Q, Proj::K, Proj::V, Proj::Down], 22);
    let (w1, w2) = (0.7f32, -0.3f32);
    let inputs = [
        Weighted {
            name: "a1",
            adapter: &a1,
            weight: w1,
        },
        Weighted {
            name: "a2",
            adapter: &a2,
            weight: w2,
        },
    ];
    let m = merge_svd(
        &inputs,
        &SvdOptions {
            rank: Some(7),
            clamp: None,
        },
    )
    .unwrap();
    let union = vec![Proj::Q, Proj::K, Proj::V, Proj::Up, Proj::Down];
    assert_eq!(m.adapter.config.target_modules, union);
    assert_eq!((m.adapter.config.r, m.adapter.scale()), (7, 1.0));
    let weighted = [(&a1, f64::from(w1)), (&a2, f64::from(w2))];
    for layer in 0..cfg.num_hidden_layers {
        for p in Proj::ALL {
            if !union.contains(&p) {
                assert!(m.adapter.get(layer, p).is_none());
                continue;
            }
            let want = expected_sum(&weighted, layer, p);
            let err = rel_err(&merged_update(&m, layer, p), &want);
            assert!(err < 1e-6, "layer {layer} {p:?}: relative error {err:e}");
        }
        // up_proj comes from a1 alone (rank 4): the 3 extra components are B' = 0 and rows
        // of A' completing an orthonormal set.
        let up = m.adapter.get(layer, Proj::Up).unwrap();
        let (am, bm) = (a_matrix(up), b_matrix(up));
        assert!(max_abs_diff(&am.dot(&am.t()), &Array2::eye(7)) < 1e-6);
        assert!(bm.columns().into_iter().skip(4).all(|c| c.iter().all(|&x| x == 0.0)));
        assert!(bm.columns().into_iter().take(4).all(|c| c.iter().any(|&x| x != 0.0)));
    }
    let up = m.spectra.iter().find(|s| s.proj == Proj::Up).unwrap();
    assert_eq!((up.singular_values.len(), up.kept), (4, 4));

    // Without a rank the result takes the largest input rank, as PEFT's svd_rank=None.
    let d = merge_svd(&inputs, &SvdOptions::default()).unwrap();
    assert_eq!((d.adapter.config.r, d.adapter.config.lora_alpha), (4, 4.0));
    let q = d.spectra.iter().find(|s| s.proj == Proj::Q).unwrap();
    assert_eq!((q.singular_values.len(), q.kept), (7, 4));
    assert!(d.kept_energy_fraction() < 1.0 && d.kept_energy_fraction() > 0.5);
}

#[test]
fn a_merged_adapter_round_trips_through_peft_files() {
    let spec = TinySpec::default();
    let cfg = config(&spec);
    let a1 = random_adapter(&cfg, 4, 8.0, false, &[Proj::Q, Proj::O], 31);
    let a2 = random_adapter(&cfg, 2, 2.0, false, &[Proj::O, Proj::Gate], 32);
    let m = merge_svd(
        &[
            Weighted {
                name: "a1",
                adapter: &a1,
                weight: 0.5,
            },
            Weighted {
                name: "a2",
                adapter: &a2,
                weight: 0.5,
            },
        ],
        &SvdOptions {
            rank: Some(3),
            clamp: None,
        },
    )
    .unwrap();
    let dir = fresh_dir("linalg-merged-peft");
    peft::save(&m.adapter, &dir).unwrap();
    let back = peft::load(&dir, &cfg).unwrap();
    assert_eq!(back, m.adapter);
    back.check_fits(&cfg, &dir).unwrap();
}

/// torch.quantile's default (linear interpolation between order statistics).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

#[test]
fn clamp_limits_each_projection_to_a_quantile_of_its_factors() {
    let cfg = config(&TinySpec::default());
    let a = random_adapter(&cfg, 6, 6.0, false, &[Proj::Q, Proj::Down], 41);
    let q = 0.8;
    let plain = shrink_rank(&a, 4).unwrap();
    let input = [Weighted {
        name: "a",
        adapter: &a,
        weight: 1.0,
    }];
    let clamped = merge_svd(
        &input,
        &SvdOptions {
            rank: Some(4),
            clamp: Some(q as f32),
        },
    )
    .unwrap();
    let mut n_clamped = 0;
    for s in &plain.spectra {
        let p0 = plain.adapter.get(s.layer, s.proj).unwrap();
        let p1 = clamped.adapter.get(s.layer, s.proj).unwrap();
        let all: Vec<f64> = p0.b.iter().chain(&p0.a).map(|&x| f64::from(x)).collect();
        let h = quantile(&all, q);
        assert!(h > 0.0);
        for (x0, x1) in p0.b.iter().chain(&p0.a).zip(p1.b.iter().chain(&p1.a)) {
            let want = f64::from(*x0).clamp(-h, h);
            assert!(
                (f64::from(*x1) - want).abs() < 1e-6,
                "{x0} clamped to {x1}, want {want}"
            );
            n_clamped += usize::from(f64::from(x0.abs()) > h + 1e-6);
        }
    }
    assert!(n_clamped > 0, "the quantile must cut something");
    for bad in [0.0, 1.5, f32::NAN] {
        let e = merge_svd(
            &input,
            &SvdOptions {
                rank: Some(4),
                clamp: Some(bad),
            },
        )
        .unwrap_err();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
    }
}

fn merge_err(inputs: &[Weighted], rank: Option<usize>) -> Error {
    match merge_svd(inputs, &SvdOptions { rank, clamp: None }) {
        Ok(_) => panic!("the merge was accepted"),
        Err(e) => e,
    }
}

#[test]
fn inputs_that_do_not_fit_are_refused_by_adapter_and_tensor() {
    let spec = TinySpec::default();
    let cfg = config(&spec);
    let good = random_adapter(&cfg, 4, 8.0, false, &Proj::ALL, 51);
    let w = |name, adapter| Weighted {
        name,
        adapter,
        weight: 0.5,
    };

    assert!(matches!(merge_err(&[], None), Error::Invalid(_)));

    // Another base: hidden 48 instead of 32.
    let wide = config(&TinySpec {
        hidden: 48,
        ..TinySpec::default()
    });
    let other = random_adapter(&wide, 4, 8.0, false, &[Proj::K], 52);
    match merge_err(&[w("good", &good), w("other", &other)], None) {
        Error::Tensor { file, tensor, what } => {
            assert_eq!(file, Path::new("other"));
            assert_eq!(tensor, peft::tensor_name(0, Proj::K, "lora_B"));
            assert!(what.contains("good"), "{what}");
        }
        e => panic!("{e}"),
    }

    let deeper = config(&TinySpec {
        layers: 3,
        ..TinySpec::default()
    });
    let deep = random_adapter(&deeper, 4, 8.0, false, &[Proj::Q], 53);
    match merge_err(&[w("good", &good), w("deep", &deep)], None) {
        Error::Field { file, field, .. } => assert_eq!((file.as_path(), field.as_str()), (Path::new("deep"), "layers")),
        e => panic!("{e}"),
    }

    let mut nan = random_adapter(&cfg, 4, 8.0, false, &[Proj::V], 54);
    nan.layers[1][Proj::V as usize].as_mut().unwrap().b[5] = f32::NAN;
    match merge_err(&[w("good", &good), w("nan", &nan)], None) {
        Error::Tensor { file, tensor, .. } => {
            assert_eq!(file, Path::new("nan"));
            assert_eq!(tensor, peft::tensor_name(1, Proj::V, "lora_B"));
        }
        e => panic!("{e}"),
    }

    let mut torn = random_adapter(&cfg, 4, 8.0, false, &[Proj::O], 55);
    torn.layers[0][Proj::O as usize].as_mut().unwrap().a.pop();
    match merge_err(&[w("torn", &torn)], None) {
        Error::Tensor { file, tensor, .. } => {
            assert_eq!(file, Path::new("torn"));
            assert_eq!(tensor, peft::tensor_name(0, Proj::O, "lora_A"));
        }
        e => panic!("{e}"),
    }

    let inf = Weighted {
        name: "good",
        adapter: &good,
        weight: f32::INFINITY,
    };
    assert!(matches!(merge_err(&[inf], None), Error::Invalid(m) if m.contains("good")));

    assert!(matches!(merge_err(&[w("good", &good)], Some(0)), Error::Invalid(_)));
    // k_proj and v_proj are [16, 32] here: rank 17 cannot be.
    match merge_err(&[w("good", &good)], Some(17)) {
        Error::Invalid(m) => assert!(m.contains("k_proj") && m.contains("17"), "{m}"),
        e => panic!("{e}"),
    }
    assert!(shrink_rank(&good, 16).is_ok());
}

#[test]
fn nudge_merge_writes_the_merged_adapter() {
    let spec = TinySpec::default();
    let dir = fresh_dir("linalg-cli");
    let model_dir = dir.join("model");
    write_model(&model_dir, &spec);
    let cfg = config(&spec);
    let a1 = random_adapter(&cfg, 4, 8.0, false, &[Proj::Q, Proj::V], 61);
    let a2 = random_adapter(&cfg, 4, 4.0, false, &[Proj::V, Proj::Up], 62);
    peft::save(&a1, &dir.join("a1")).unwrap();
    peft::save(&a2, &dir.join("a2")).unwrap();
    let out = dir.join("merged");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .arg("merge")
        .arg("--model")
        .arg(&model_dir)
        .arg("--adapters")
        .arg(format!(
            "{}:0.7,{}:0.3",
            dir.join("a1").display(),
            dir.join("a2").display()
        ))
        .args(["--rank", "8", "--out"])
        .arg(&out)
        .status()
        .expect("nudge merge runs");
    assert!(status.success());
    let m = peft::load(&out, &cfg).unwrap();
    assert_eq!(m.config.r, 8);
    assert_eq!(m.config.target_modules, vec![Proj::Q, Proj::V, Proj::Up]);
    for layer in 0..cfg.num_hidden_layers {
        for p in [Proj::Q, Proj::V, Proj::Up] {
            let want = expected_sum(&[(&a1, 0.7), (&a2, 0.3)], layer, p);
            let got = update(m.get(layer, p).unwrap(), f64::from(m.scale()));
            assert!(rel_err(&got, &want) < 1e-6, "layer {layer} {p:?}");
        }
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .arg("merge")
        .arg("--model")
        .arg(&model_dir)
        .arg("--adapters")
        .arg(format!("{}", dir.join("a1").display()))
        .arg("--out")
        .arg(dir.join("never"))
        .output()
        .expect("nudge merge runs");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("DIR:WEIGHT"));
    assert!(!dir.join("never").exists());
}

#[test]
fn nudge_export_merge_writes_the_combined_adapter_in_any_format() {
    let spec = TinySpec::default();
    let dir = fresh_dir("linalg-export");
    let model_dir = dir.join("model");
    write_model(&model_dir, &spec);
    let cfg = config(&spec);
    let a1 = random_adapter(&cfg, 4, 8.0, false, &[Proj::Q, Proj::V], 71);
    let a2 = random_adapter(&cfg, 4, 4.0, false, &[Proj::V, Proj::Up], 72);
    peft::save(&a1, &dir.join("a1")).unwrap();
    peft::save(&a2, &dir.join("a2")).unwrap();
    let merge = format!("{}:0.7,{}:0.3", dir.join("a1").display(), dir.join("a2").display());
    let export = |format: &str, out: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
            .args(["export", "--model"])
            .arg(&model_dir)
            .args(["--merge", &merge, "--rank", "8", "--format", format, "--out"])
            .arg(out)
            .status()
            .expect("nudge export runs")
    };
    let peft_out = dir.join("peft");
    assert!(export("peft", &peft_out).success());
    let m = peft::load(&peft_out, &cfg).unwrap();
    assert_eq!(m.config.r, 8);
    for layer in 0..cfg.num_hidden_layers {
        for p in [Proj::Q, Proj::V, Proj::Up] {
            let want = expected_sum(&[(&a1, 0.7), (&a2, 0.3)], layer, p);
            let got = update(m.get(layer, p).unwrap(), f64::from(m.scale()));
            assert!(rel_err(&got, &want) < 1e-6, "layer {layer} {p:?}");
        }
    }
    // The same combination as a llama.cpp adapter reads back to the same update.
    let gguf_out = dir.join("merged.gguf");
    assert!(export("gguf", &gguf_out).success());
    let g = nudge::adapter::load(&gguf_out, &cfg).unwrap();
    for layer in 0..cfg.num_hidden_layers {
        let want = expected_sum(&[(&a1, 0.7), (&a2, 0.3)], layer, Proj::Up);
        let got = update(g.get(layer, Proj::Up).unwrap(), f64::from(g.scale()));
        assert!(rel_err(&got, &want) < 1e-5, "gguf layer {layer}");
    }
}
