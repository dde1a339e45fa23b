//! Adapter export: llama.cpp LoRA GGUFs (layout, metadata, Q/K row order, rsLoRA), the
//! merged HF model, the `nudge export` command, and refusals of adapters for other bases.

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::adapter::format::{gguf_lora, merge, peft};
use nudge::adapter::{Adapter, LoraConfig, LoraInit, proj_shape};
use nudge::convert::{FloatType, convert_to_hf};
use nudge::gguf::{GgufFile, GgufValue, GgufWriter};
use nudge::model::Model;
use nudge::model::config::Config;
use nudge::model::weights::Proj;
use nudge::quant::DType;
use nudge::score::ScoreItem;
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny").join(name)
}

fn tiny_hf(name: &str, spec: &TinySpec) -> Model {
    let d = fresh_dir(name);
    write_model(&d, spec);
    Model::open(&d).expect("opens")
}

/// An adapter with every value of A and B nonzero and distinct (B = 0 would hide any
/// mistake in B's handling).
fn random_adapter(m: &Model, r: usize, targets: Vec<Proj>, rslora: bool, seed: u64) -> Adapter {
    let mut a = Adapter::new(
        &m.config,
        LoraConfig {
            r,
            lora_alpha: 8.0,
            target_modules: targets,
            use_rslora: rslora,
            lora_dropout: 0.0,
            init: LoraInit::Gaussian,
        },
        seed,
        "tiny-base",
    )
    .unwrap();
    for (i, p) in a.params_mut().into_iter().enumerate() {
        let v = random_vec(p.len(), seed * 1000 + i as u64, 0.25);
        p.copy_from_slice(&v);
    }
    a
}

/// The GGUF base-tensor names llama.cpp gives the seven projections (llama-arch.cpp).
const GGUF_PROJ: [(Proj, &str); 7] = [
    (Proj::Q, "attn_q"),
    (Proj::K, "attn_k"),
    (Proj::V, "attn_v"),
    (Proj::O, "attn_output"),
    (Proj::Gate, "ffn_gate"),
    (Proj::Up, "ffn_up"),
    (Proj::Down, "ffn_down"),
];

fn gguf_base(p: Proj) -> &'static str {
    GGUF_PROJ.iter().find(|(q, _)| *q == p).unwrap().1
}

/// The GGUF row of HF row `h` of a Q/K matrix, as convert_hf_to_gguf.py's
/// `LlamaModel.permute` lays it out: `reshape(heads, 2, hd/2, in).swapaxes(1, 2)`.
fn llama_cpp_row(h: usize, head_dim: usize) -> usize {
    let (head, i) = (h / head_dim, h % head_dim);
    let half = head_dim / 2;
    let (s, j) = (i / half, i % half);
    head * head_dim + j * 2 + s
}

fn f32_tensor(g: &GgufFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    let t = g.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
    (t.shape.clone(), g.dequantize(t).unwrap())
}

fn items<'a>(p: &'a [u32], c1: &'a [u32], c2: &'a [u32]) -> Vec<ScoreItem<'a>> {
    vec![ScoreItem {
        prompt: p,
        completions: vec![c1, c2],
    }]
}

const PROMPT: &[u32] = &[1, 17, 42, 9, 33];
const C1: &[u32] = &[5, 60, 23, 2];
const C2: &[u32] = &[40, 11, 2];

fn token_logps(m: &Model, a: Option<&Adapter>) -> Vec<f32> {
    m.score_packed_with(&items(PROMPT, C1, C2), a)
        .unwrap()
        .into_iter()
        .flatten()
        .flat_map(|s| s.token_logps)
        .collect()
}

/// The same adapter as far as applying it goes: rank, alpha, scale kind, targets, base
/// name and every A and B exactly (the training-only settings, A's initialization and
/// dropout, are not part of a GGUF adapter).
fn assert_same_adapter(got: &Adapter, want: &Adapter) {
    let (g, w) = (&got.config, &want.config);
    assert_eq!(
        (g.r, g.lora_alpha, g.use_rslora, &g.target_modules),
        (w.r, w.lora_alpha, w.use_rslora, &w.target_modules)
    );
    assert_eq!(got.base_model_name, want.base_model_name);
    assert_eq!(got.layers.len(), want.layers.len());
    for (l, (x, y)) in got.layers.iter().zip(&want.layers).enumerate() {
        for p in Proj::ALL {
            assert!(x[p as usize] == y[p as usize], "layer {l} {p:?} differs");
        }
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// scale · B A, [out, in], in f64.
fn delta(a: &Adapter, layer: usize, p: Proj) -> Vec<f64> {
    let pair = a.get(layer, p).unwrap();
    let (out, inp, r) = (pair.out_features, pair.in_features, a.config.r);
    let s = a.scale() as f64;
    let mut d = vec![0f64; out * inp];
    for o in 0..out {
        for k in 0..r {
            for i in 0..inp {
                d[o * inp + i] += s * pair.b[o * r + k] as f64 * pair.a[k * inp + i] as f64;
            }
        }
    }
    d
}

/// Asserts the metadata and layout llama.cpp's `llama_adapter_lora_init` requires of
/// `adapter_file` against the base GGUF `base_file` (of configuration `cfg`).
fn assert_llama_cpp_layout(adapter_file: &Path, base_file: &Path, cfg: &Config, a: &Adapter, arch: &str) {
    let g = GgufFile::open(adapter_file).unwrap();
    let base = GgufFile::open(base_file).unwrap();
    let m = &g.metadata;
    assert_eq!(g.version, 3);
    assert_eq!(m.get("general.type"), Some(&GgufValue::String("adapter".into())));
    assert_eq!(m.get("adapter.type"), Some(&GgufValue::String("lora".into())));
    assert_eq!(m.get("general.architecture"), Some(&GgufValue::String(arch.into())));
    assert_eq!(
        base.get("general.architecture"),
        m.get("general.architecture"),
        "llama.cpp refuses an adapter whose architecture differs from the model's"
    );
    assert!(
        matches!(m.get("adapter.lora.alpha"), Some(GgufValue::F32(_))),
        "alpha must be an f32 (gguf_get_val_f32 asserts the type)"
    );
    let r = a.config.r;
    let mut expected = Vec::new();
    for l in 0..a.layers.len() {
        for &p in &a.config.target_modules {
            let base_name = format!("blk.{l}.{}.weight", gguf_base(p));
            expected.push(format!("{base_name}.lora_a"));
            expected.push(format!("{base_name}.lora_b"));
            let ta = g.tensor(&format!("{base_name}.lora_a")).unwrap();
            let tb = g.tensor(&format!("{base_name}.lora_b")).unwrap();
            let w = base
                .tensor(&base_name)
                .unwrap_or_else(|| panic!("{base_name}: llama.cpp needs the adapted tensor in the base"));
            // llama-adapter.cpp's checks, verbatim.
            assert_eq!(w.shape[0], ta.shape[0], "{base_name}: base ne[0] == a ne[0]");
            assert_eq!(w.shape[1], tb.shape[1], "{base_name}: base ne[1] == b ne[1]");
            assert_eq!(ta.shape[1], tb.shape[0], "{base_name}: a ne[1] == b ne[0]");
            // And the orientation spelled out: lora_a [in, r], lora_b [r, out].
            let (out, inp) = proj_shape(cfg, p);
            assert_eq!(ta.shape, vec![inp, r], "{base_name}");
            assert_eq!(tb.shape, vec![r, out], "{base_name}");
            assert_eq!((ta.dtype, tb.dtype), (DType::F32, DType::F32));
        }
    }
    let mut names: Vec<String> = g.tensors.iter().map(|t| t.name.clone()).collect();
    names.sort();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn gguf_adapter_has_the_metadata_and_layout_llama_cpp_loads() {
    let base = data("llama_f16.gguf");
    let m = Model::open(&base).unwrap();
    let a = random_adapter(&m, 4, Proj::ALL.to_vec(), false, 1);
    let out = fresh_dir("gguf-layout").join("adapter.gguf");
    gguf_lora::save(&a, &m, &out, FloatType::F32).unwrap();
    assert_llama_cpp_layout(&out, &base, &m.config, &a, "llama");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.get("adapter.lora.alpha"), Some(&GgufValue::F32(8.0)));
    // A is written as trained: lora_a's ggml [in, r] is PEFT's [r, in] row-major.
    let (_, a0) = f32_tensor(&g, "blk.1.ffn_up.weight.lora_a");
    assert_eq!(a0, a.get(1, Proj::Up).unwrap().a);
    let (_, b0) = f32_tensor(&g, "blk.1.ffn_down.weight.lora_b");
    assert_eq!(b0, a.get(1, Proj::Down).unwrap().b);
}

#[test]
fn gguf_adapter_round_trips_over_a_llama_gguf_base_with_q_k_rows_permuted() {
    let base = data("llama_q8_0.gguf");
    let m = Model::open(&base).unwrap();
    let hd = m.config.head_dim;
    let a = random_adapter(&m, 4, Proj::ALL.to_vec(), false, 2);
    let out = fresh_dir("gguf-llama").join("adapter.gguf");
    gguf_lora::save(&a, &m, &out, FloatType::F32).unwrap();
    assert_llama_cpp_layout(&out, &base, &m.config, &a, "llama");

    let g = GgufFile::open(&out).unwrap();
    let bg = GgufFile::open(&base).unwrap();
    let s = a.scale();
    for l in 0..m.config.num_hidden_layers {
        for (p, name) in GGUF_PROJ {
            let pair = a.get(l, p).unwrap();
            let (_, bf) = f32_tensor(&g, &format!("blk.{l}.{name}.weight.lora_b"));
            let (_, af) = f32_tensor(&g, &format!("blk.{l}.{name}.weight.lora_a"));
            assert_eq!(af, pair.a, "A is never permuted");
            let r = 4;
            for h in 0..pair.out_features {
                let gr = if matches!(p, Proj::Q | Proj::K) {
                    llama_cpp_row(h, hd)
                } else {
                    h
                };
                assert_eq!(&bf[gr * r..(gr + 1) * r], &pair.b[h * r..(h + 1) * r], "{name} row {h}");
            }
            if matches!(p, Proj::Q | Proj::K) {
                // What llama.cpp computes from the two files (base row g of the stored,
                // permuted matrix plus scale * lora_b[g] . lora_a) is the engine's merged
                // HF row that convert_hf_to_gguf.py put at g.
                let (shape, wf) = f32_tensor(&bg, &format!("blk.{l}.{name}.weight"));
                let inp = shape[0];
                let view = m.weights.view(m.weights.layers[l].proj(p));
                let d = delta(&a, l, p);
                let mut hf_row = vec![0f32; inp];
                for h in 0..pair.out_features {
                    let gr = llama_cpp_row(h, hd);
                    view.row(h, &mut hf_row);
                    for i in 0..inp {
                        let lc: f64 = wf[gr * inp + i] as f64
                            + s as f64
                                * (0..r)
                                    .map(|k| bf[gr * r + k] as f64 * af[k * inp + i] as f64)
                                    .sum::<f64>();
                        let ours = hf_row[i] as f64 + d[h * inp + i];
                        assert!((lc - ours).abs() < 1e-6, "{name} HF row {h} col {i}: {lc} vs {ours}");
                    }
                }
            }
        }
    }

    let back = gguf_lora::load(&out, &m.config).unwrap();
    assert_same_adapter(&back, &a);
    assert_eq!(token_logps(&m, Some(&back)), token_logps(&m, Some(&a)));
}

#[test]
fn gguf_adapter_round_trips_over_a_qwen2_gguf_base_without_permutation() {
    let base = data("qwen2_q8_0.gguf");
    let m = Model::open(&base).unwrap();
    let a = random_adapter(&m, 3, vec![Proj::Q, Proj::K, Proj::V, Proj::Down], false, 3);
    let out = fresh_dir("gguf-qwen2").join("adapter.gguf");
    gguf_lora::save(&a, &m, &out, FloatType::F32).unwrap();
    assert_llama_cpp_layout(&out, &base, &m.config, &a, "qwen2");
    let g = GgufFile::open(&out).unwrap();
    for l in 0..2 {
        for p in [Proj::Q, Proj::K] {
            let (_, bf) = f32_tensor(&g, &format!("blk.{l}.{}.weight.lora_b", gguf_base(p)));
            assert_eq!(bf, a.get(l, p).unwrap().b, "qwen2 keeps HF row order");
        }
    }
    assert_same_adapter(&gguf_lora::load(&out, &m.config).unwrap(), &a);
}

#[test]
fn gguf_adapter_of_an_hf_base_uses_the_order_of_its_llama_cpp_conversion() {
    let llama = tiny_hf("gguf-hf-llama", &TinySpec::default());
    let mistral = Model::open(data("mistral")).unwrap();
    let qwen2 = Model::open(data("qwen2")).unwrap();
    // (model, architecture convert_hf_to_gguf.py writes, Q/K permuted)
    for (m, arch, permuted) in [
        (&llama, "llama", true),
        (&mistral, "llama", true),
        (&qwen2, "qwen2", false),
    ] {
        assert_eq!(gguf_lora::base_architecture(m).unwrap(), arch);
        let hd = m.config.head_dim;
        let a = random_adapter(m, 2, Proj::ALL.to_vec(), true, 4);
        let out = fresh_dir("gguf-hf-out").join("adapter.gguf");
        gguf_lora::save(&a, m, &out, FloatType::F32).unwrap();
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.architecture().unwrap(), arch);
        for p in [Proj::Q, Proj::K, Proj::V] {
            let pair = a.get(1, p).unwrap();
            let (shape, bf) = f32_tensor(&g, &format!("blk.1.{}.weight.lora_b", gguf_base(p)));
            assert_eq!(shape, vec![2, pair.out_features]);
            for h in 0..pair.out_features {
                let gr = if permuted && p != Proj::V {
                    llama_cpp_row(h, hd)
                } else {
                    h
                };
                assert_eq!(
                    &bf[gr * 2..gr * 2 + 2],
                    &pair.b[h * 2..h * 2 + 2],
                    "{arch} {p:?} row {h}"
                );
            }
        }
        let back = gguf_lora::load(&out, &m.config).unwrap();
        for l in 0..m.config.num_hidden_layers {
            for p in Proj::ALL {
                assert_eq!(back.get(l, p).unwrap().a, a.get(l, p).unwrap().a);
                assert_eq!(back.get(l, p).unwrap().b, a.get(l, p).unwrap().b);
            }
        }
    }
}

#[test]
fn rslora_scale_is_folded_into_alpha() {
    let base = data("llama_f16.gguf");
    let m = Model::open(&base).unwrap();
    let r = 3;
    let a = random_adapter(&m, r, vec![Proj::Q, Proj::O, Proj::Up], true, 5);
    assert!((a.scale() - 8.0 / 3f32.sqrt()).abs() < 1e-6);
    let out = fresh_dir("gguf-rslora").join("adapter.gguf");
    gguf_lora::save(&a, &m, &out, FloatType::F32).unwrap();
    let g = GgufFile::open(&out).unwrap();
    let Some(GgufValue::F32(alpha)) = g.get("adapter.lora.alpha") else {
        panic!("alpha missing");
    };
    assert!((*alpha as f64 - 8.0 * 3f64.sqrt()).abs() < 1e-5, "alpha {alpha}");
    // llama.cpp's get_scale: alpha / lora_b.ne[0].
    let ne0 = g.tensor("blk.0.attn_q.weight.lora_b").unwrap().shape[0];
    let llama_cpp_scale = *alpha as f64 / ne0 as f64;
    assert!((llama_cpp_scale - 8.0 / 3f64.sqrt()).abs() < 1e-6);
    // A and B are written exactly as trained.
    let (_, af) = f32_tensor(&g, "blk.1.attn_output.weight.lora_a");
    assert_eq!(af, a.get(1, Proj::O).unwrap().a);

    let back = gguf_lora::load(&out, &m.config).unwrap();
    assert!(!back.config.use_rslora);
    assert_eq!(back.config.lora_alpha, *alpha);
    for l in 0..2 {
        for p in [Proj::Q, Proj::O, Proj::Up] {
            let (d0, d1) = (delta(&a, l, p), delta(&back, l, p));
            let worst = d0.iter().zip(&d1).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            let size = d0.iter().map(|x| x.abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-6 * size, "{p:?}: effective scale·B·A differs by {worst}");
        }
    }
    let diff = max_diff(&token_logps(&m, Some(&a)), &token_logps(&m, Some(&back)));
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn gguf_adapter_in_f16_keeps_the_layout_and_rounds_only_the_values() {
    let base = data("llama_f16.gguf");
    let m = Model::open(&base).unwrap();
    let a = random_adapter(&m, 4, vec![Proj::K, Proj::Gate], false, 6);
    let out = fresh_dir("gguf-f16").join("adapter.gguf");
    gguf_lora::save(&a, &m, &out, FloatType::F16).unwrap();
    let g = GgufFile::open(&out).unwrap();
    assert!(g.tensors.iter().all(|t| t.dtype == DType::F16));
    let back = gguf_lora::load(&out, &m.config).unwrap();
    for l in 0..2 {
        for p in [Proj::K, Proj::Gate] {
            let (x, y) = (a.get(l, p).unwrap(), back.get(l, p).unwrap());
            for (u, v) in x.a.iter().chain(&x.b).zip(y.a.iter().chain(&y.b)) {
                assert_eq!(*v, half::f16::from_f32(*u).to_f32());
            }
        }
    }
}

#[test]
fn merged_export_scores_like_base_plus_adapter() {
    let hf = tiny_hf("merge-hf-base", &TinySpec::default());
    let q8 = Model::open(data("llama_q8_0.gguf")).unwrap();
    let qwen2 = Model::open(data("qwen2_q8_0.gguf")).unwrap();
    for (name, m) in [("hf", &hf), ("llama_q8_0", &q8), ("qwen2_q8_0", &qwen2)] {
        let a = random_adapter(m, 4, vec![Proj::Q, Proj::K, Proj::Down], false, 7);
        let dir = fresh_dir(&format!("merged-{name}"));
        merge::export_merged(m, &a, &dir, FloatType::F32).unwrap();
        let merged = Model::open(&dir).unwrap();
        let with = token_logps(m, Some(&a));
        let plain = token_logps(m, None);
        let ours = token_logps(&merged, None);
        let moved = max_diff(&with, &plain);
        assert!(moved > 1e-2, "{name}: the adapter must change the scores ({moved})");
        let diff = max_diff(&ours, &with);
        assert!(diff <= 1e-4, "{name}: merged model vs base + adapter: {diff}");

        // The adapted matrices are W + scale·B·A in HF order; everything else is the
        // plain conversion, byte for byte.
        let plain_dir = fresh_dir(&format!("merged-{name}-plain"));
        convert_to_hf(m, &plain_dir, FloatType::F32).unwrap();
        let got = common::read_f32_safetensors(&dir.join("model.safetensors"));
        let conv = common::read_f32_safetensors(&plain_dir.join("model.safetensors"));
        assert_eq!(got.keys().collect::<Vec<_>>(), conv.keys().collect::<Vec<_>>());
        for (tname, (shape, v)) in &got {
            let adapted = (0..m.config.num_hidden_layers).find_map(|l| {
                [Proj::Q, Proj::K, Proj::Down]
                    .into_iter()
                    .find(|&p| m.weights.layers[l].proj(p).name == *tname)
                    .map(|p| (l, p))
            });
            let (_, w) = &conv[tname];
            match adapted {
                None => assert_eq!(v, w, "{name}: {tname} must be unchanged"),
                Some((l, p)) => {
                    assert_eq!(shape, &conv[tname].0);
                    let d = delta(&a, l, p);
                    for (i, ((&x, &w0), &dd)) in v.iter().zip(w).zip(&d).enumerate() {
                        let want = w0 as f64 + dd;
                        assert!((x as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()), "{tname}[{i}]");
                    }
                }
            }
        }
    }
}

#[test]
fn merged_export_in_f16_and_bf16_opens_and_scores_close() {
    let m = Model::open(data("llama_q8_0.gguf")).unwrap();
    let a = random_adapter(&m, 4, Proj::ALL.to_vec(), false, 8);
    let with = token_logps(&m, Some(&a));
    for (dtype, st, torch, tol) in [
        (FloatType::F16, safetensors::Dtype::F16, "float16", 5e-3),
        (FloatType::BF16, safetensors::Dtype::BF16, "bfloat16", 5e-2),
    ] {
        let dir = fresh_dir("merged-half");
        merge::export_merged(&m, &a, &dir, dtype).unwrap();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert!(file.tensors().iter().all(|(_, t)| t.dtype() == st));
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["torch_dtype"], torch);
        let merged = Model::open(&dir).unwrap();
        let diff = max_diff(&token_logps(&merged, None), &with);
        assert!(diff < tol, "{dtype:?}: {diff}");
    }
}

fn write_bad(path: &Path, build: impl FnOnce(&mut GgufWriter)) {
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama");
    w.set("general.type", "adapter");
    w.set("adapter.type", "lora");
    w.set("adapter.lora.alpha", GgufValue::F32(8.0));
    build(&mut w);
    w.write(path).unwrap();
}

#[test]
fn an_adapter_for_another_base_is_refused_at_export() {
    let m = tiny_hf("refuse-base", &TinySpec::default());
    let a = random_adapter(&m, 2, Proj::ALL.to_vec(), false, 9);
    let wider = tiny_hf(
        "refuse-wider",
        &TinySpec {
            hidden: 48,
            ..TinySpec::default()
        },
    );
    let deeper = tiny_hf(
        "refuse-deeper",
        &TinySpec {
            layers: 3,
            ..TinySpec::default()
        },
    );
    let qwen = tiny_hf(
        "refuse-qwen",
        &TinySpec {
            qwen2: true,
            ..TinySpec::default()
        },
    );
    let out = fresh_dir("refuse-out");

    // Dimensions.
    let e = gguf_lora::save(&a, &wider, &out.join("a.gguf"), FloatType::F32).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { what, .. } if what.contains("projection")),
        "{e}"
    );
    assert!(!out.join("a.gguf").exists());
    let e = merge::export_merged(&wider, &a, &out.join("merged"), FloatType::F32).unwrap_err();
    assert!(matches!(&e, Error::Tensor { .. }), "{e}");
    assert!(!out.join("merged").exists(), "nothing is written for a refused adapter");
    // Layer count.
    let e = gguf_lora::save(&a, &deeper, &out.join("a.gguf"), FloatType::F32).unwrap_err();
    assert!(matches!(&e, Error::Field { field, .. } if field == "layers"), "{e}");
    let e = merge::export_merged(&deeper, &a, &out.join("merged"), FloatType::F32).unwrap_err();
    assert!(matches!(&e, Error::Field { field, .. } if field == "layers"), "{e}");
    // Values that do not match the rank (a hand-built adapter).
    let mut broken = a.clone();
    broken.layers[1][Proj::V as usize].as_mut().unwrap().b.pop();
    let e = gguf_lora::save(&broken, &m, &out.join("a.gguf"), FloatType::F32).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { tensor, .. } if tensor.contains("layers.1.self_attn.v_proj.lora_B")),
        "{e}"
    );
    // An architecture name that is not the base's.
    let e = gguf_lora::to_writer(&a, &m.config, "qwen2", FloatType::F32, &out.join("a.gguf"))
        .err()
        .unwrap();
    assert!(
        matches!(&e, Error::Field { field, .. } if field == "general.architecture"),
        "{e}"
    );

    // A GGUF adapter read for another base: architecture, then dimensions.
    let qa = random_adapter(&qwen, 2, Proj::ALL.to_vec(), false, 10);
    gguf_lora::save(&qa, &qwen, &out.join("qwen.gguf"), FloatType::F32).unwrap();
    let e = gguf_lora::load(&out.join("qwen.gguf"), &m.config).unwrap_err();
    assert!(
        matches!(&e, Error::Field { field, what, .. } if field == "general.architecture" && what.contains("qwen2")),
        "{e}"
    );
    gguf_lora::save(&a, &m, &out.join("llama.gguf"), FloatType::F32).unwrap();
    let e = nudge::adapter::load(&out.join("llama.gguf"), &wider.config).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor == "blk.0.attn_q.weight.lora_a" && what.contains("shape")),
        "{e}"
    );
    let e = gguf_lora::load(&out.join("llama.gguf"), &deeper.config).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor.starts_with("blk.2.") && what.contains("missing")),
        "{e}"
    );
    // A PEFT directory whose targets disagree with its tensors.
    let d = fresh_dir("refuse-peft");
    peft::save(&random_adapter(&m, 2, vec![Proj::Q, Proj::V], false, 11), &d).unwrap();
    let p = d.join("adapter_config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    cfg["target_modules"] = serde_json::json!(["q_proj", "k_proj", "v_proj"]);
    std::fs::write(&p, cfg.to_string()).unwrap();
    let e = nudge::adapter::load(&d, &m.config).unwrap_err();
    assert!(
        matches!(&e, Error::Tensor { tensor, what, .. } if tensor.contains("k_proj") && what.contains("missing")),
        "{e}"
    );
}

/// Adds keys or tensors to a test file.
type Build = Box<dyn Fn(&mut GgufWriter)>;

fn ones(n: usize) -> Vec<f32> {
    vec![0.5; n]
}

/// `blk.{l}.{name}.weight.lora_{a,b}` of ggml shapes [inp, r] and [r, out].
fn add_pair(w: &mut GgufWriter, l: usize, name: &str, inp: usize, out: usize, r: usize) {
    w.add_f32_tensor(format!("blk.{l}.{name}.weight.lora_a"), &[inp, r], &ones(inp * r))
        .unwrap();
    w.add_f32_tensor(format!("blk.{l}.{name}.weight.lora_b"), &[r, out], &ones(out * r))
        .unwrap();
}

#[test]
fn malformed_gguf_adapters_name_the_key_or_tensor() {
    let m = tiny_hf("malformed-base", &TinySpec::default());
    let (hd, r) = (m.config.hidden_size, 2);
    let kv = m.config.kv_dim();
    let dir = fresh_dir("malformed");
    let path = dir.join("bad.gguf");
    let field_cases: Vec<(&str, Build)> = vec![
        (
            "general.type",
            Box::new(|w: &mut GgufWriter| {
                w.set("general.type", "model");
            }),
        ),
        (
            "adapter.type",
            Box::new(|w: &mut GgufWriter| {
                w.set("adapter.type", "ia3");
            }),
        ),
        (
            "adapter.lora.alpha",
            Box::new(|w: &mut GgufWriter| {
                w.set("adapter.lora.alpha", GgufValue::F64(8.0));
            }),
        ),
        (
            "adapter.lora.alpha",
            Box::new(|w: &mut GgufWriter| {
                w.set("adapter.lora.alpha", GgufValue::F32(-1.0));
            }),
        ),
    ];
    for (field, f) in field_cases {
        write_bad(&path, |w| {
            add_pair(w, 0, "attn_v", hd, kv, r);
            add_pair(w, 1, "attn_v", hd, kv, r);
            f(w);
        });
        let e = gguf_lora::load(&path, &m.config).unwrap_err();
        assert!(
            matches!(&e, Error::Field { field: f, .. } if f == field),
            "{field}: {e}"
        );
    }
    let tensor_cases: Vec<(&str, &str, Build)> = vec![
        (
            "blk.1.attn_v.weight.lora_b",
            "missing",
            Box::new(move |w: &mut GgufWriter| {
                add_pair(w, 0, "attn_v", hd, kv, r);
                w.add_f32_tensor("blk.1.attn_v.weight.lora_a", &[hd, r], &ones(hd * r))
                    .unwrap();
            }),
        ),
        (
            "blk.1.attn_v.weight.lora_a",
            "missing",
            Box::new(move |w: &mut GgufWriter| add_pair(w, 0, "attn_v", hd, kv, r)),
        ),
        (
            "blk.0.attn_norm.weight",
            "not a LoRA tensor",
            Box::new(move |w: &mut GgufWriter| {
                w.add_f32_tensor("blk.0.attn_norm.weight", &[hd], &ones(hd)).unwrap();
            }),
        ),
        (
            "token_embd.weight.lora_a",
            "seven projections",
            Box::new(move |w: &mut GgufWriter| {
                w.add_f32_tensor("token_embd.weight.lora_a", &[hd, r], &ones(hd * r))
                    .unwrap();
                w.add_f32_tensor("token_embd.weight.lora_b", &[r, 64], &ones(64 * r))
                    .unwrap();
            }),
        ),
        (
            "blk.2.attn_v.weight.lora_a",
            "layer 2",
            Box::new(move |w: &mut GgufWriter| add_pair(w, 2, "attn_v", hd, kv, r)),
        ),
        (
            "blk.1.attn_v.weight.lora_a",
            "shape",
            Box::new(move |w: &mut GgufWriter| {
                add_pair(w, 0, "attn_v", hd, kv, r);
                add_pair(w, 1, "attn_v", hd, kv, r + 1);
            }),
        ),
        (
            "blk.0.attn_q.weight.lora_b",
            "shape",
            Box::new(move |w: &mut GgufWriter| {
                for l in 0..2 {
                    // Untransposed B ([out, r] in ggml order), which llama.cpp refuses too.
                    w.add_f32_tensor(format!("blk.{l}.attn_q.weight.lora_a"), &[hd, r], &ones(hd * r))
                        .unwrap();
                    w.add_f32_tensor(format!("blk.{l}.attn_q.weight.lora_b"), &[hd, r], &ones(hd * r))
                        .unwrap();
                }
            }),
        ),
    ];
    for (tensor, what, f) in tensor_cases {
        write_bad(&path, |w| f(w));
        let e = gguf_lora::load(&path, &m.config).unwrap_err();
        assert!(
            matches!(&e, Error::Tensor { tensor: t, what: w, .. } if t == tensor && w.contains(what)),
            "{tensor}: {e}"
        );
    }
    write_bad(&path, |_| {});
    let e = gguf_lora::load(&path, &m.config).unwrap_err();
    assert!(
        matches!(&e, Error::Format { what, .. } if what.contains("no LoRA")),
        "{e}"
    );
    // No alpha: llama.cpp's scale is 1, i.e. alpha = r.
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama");
    w.set("general.type", "adapter");
    w.set("adapter.type", "lora");
    add_pair(&mut w, 0, "ffn_up", hd, m.config.intermediate_size, r);
    add_pair(&mut w, 1, "ffn_up", hd, m.config.intermediate_size, r);
    w.write(&path).unwrap();
    let back = gguf_lora::load(&path, &m.config).unwrap();
    assert_eq!(back.scale(), 1.0);
    assert_eq!(back.config.target_modules, vec![Proj::Up]);
}

fn nudge(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(args)
        .output()
        .expect("runs nudge")
}

#[test]
fn nudge_export_writes_every_format() {
    let base_dir = fresh_dir("cli-base");
    write_model(&base_dir, &TinySpec::default());
    let m = Model::open(&base_dir).unwrap();
    let a = random_adapter(&m, 4, vec![Proj::Q, Proj::V, Proj::Gate], false, 12);
    let work = fresh_dir("cli-out");
    let peft_dir = work.join("peft-in");
    peft::save(&a, &peft_dir).unwrap();
    let run = |adapter: &Path, format: &str, out: &Path, dtype: &str| {
        nudge(&[
            "export".as_ref(),
            "--model".as_ref(),
            base_dir.as_os_str(),
            "--adapter".as_ref(),
            adapter.as_os_str(),
            "--format".as_ref(),
            format.as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
            "--dtype".as_ref(),
            dtype.as_ref(),
        ])
    };
    let ok = |o: std::process::Output| assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    ok(run(&peft_dir, "gguf", &work.join("a.gguf"), "f32"));
    assert_same_adapter(&gguf_lora::load(&work.join("a.gguf"), &m.config).unwrap(), &a);
    // GGUF back to PEFT: the same adapter.
    ok(run(&work.join("a.gguf"), "peft", &work.join("peft-out"), "f32"));
    assert_same_adapter(&peft::load(&work.join("peft-out"), &m.config).unwrap(), &a);
    ok(run(&peft_dir, "merged", &work.join("merged"), "f32"));
    let merged = Model::open(work.join("merged")).unwrap();
    let diff = max_diff(&token_logps(&merged, None), &token_logps(&m, Some(&a)));
    assert!(diff <= 1e-4, "{diff}");

    let o = run(&peft_dir, "peft", &work.join("p16"), "f16");
    assert!(!o.status.success());
    let wider = fresh_dir("cli-wider");
    write_model(
        &wider,
        &TinySpec {
            hidden: 48,
            ..TinySpec::default()
        },
    );
    let o = nudge(&[
        "export".as_ref(),
        "--model".as_ref(),
        wider.as_os_str(),
        "--adapter".as_ref(),
        peft_dir.as_os_str(),
        "--format".as_ref(),
        "gguf".as_ref(),
        "--out".as_ref(),
        work.join("w.gguf").as_os_str(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("lora_A") && err.contains("shape"), "{err}");
    assert!(!work.join("w.gguf").exists());
}

#[test]
fn real_model_gguf_adapter_fits_the_base_as_llama_cpp_checks() {
    let path = common::model_path();
    let m = Model::open(&path).unwrap();
    let a = random_adapter(&m, 8, Proj::ALL.to_vec(), false, 13);
    let out = fresh_dir("real-gguf").join("adapter.gguf");
    gguf_lora::save(&a, &m, &out, FloatType::F32).unwrap();
    assert_llama_cpp_layout(&out, &path, &m.config, &a, "llama");
    let g = GgufFile::open(&out).unwrap();
    assert_eq!(g.tensors.len(), 30 * 7 * 2);
    assert_eq!(
        g.tensor("blk.29.attn_k.weight.lora_b").unwrap().shape,
        vec![8, m.config.kv_dim()]
    );
    assert_same_adapter(&gguf_lora::load(&out, &m.config).unwrap(), &a);
    // One head of K, spelled out: HF rows 0..64 of head 0 land at 0,2,..,62,1,3,..,63.
    let (_, bf) = f32_tensor(&g, "blk.3.attn_k.weight.lora_b");
    let b = &a.get(3, Proj::K).unwrap().b;
    assert_eq!(&bf[2 * 8..3 * 8], &b[8..2 * 8], "GGUF row 2 is HF row 1");
    assert_eq!(&bf[8..2 * 8], &b[32 * 8..33 * 8], "GGUF row 1 is HF row 32");
}

/// A small, trained-looking adapter for the real model: every projection, r = 8.
fn real_adapter(m: &Model) -> Adapter {
    let mut a = random_adapter(m, 8, Proj::ALL.to_vec(), false, 14);
    for p in a.params_mut() {
        p.iter_mut().for_each(|x| *x *= 0.2);
    }
    a
}

#[test]
fn real_model_merged_export_scores_like_base_plus_adapter() {
    let m = Model::open(common::model_path()).unwrap();
    let a = real_adapter(&m);
    let prompt = m.tokenizer.encode("The capital of France is", false).unwrap();
    let c1 = m.tokenizer.encode(" Paris, a city on the Seine.", false).unwrap();
    let c2 = m.tokenizer.encode(" Berlin.", false).unwrap();
    let items = || items(&prompt, &c1, &c2);
    let flat = |s: Vec<Vec<nudge::score::Scored>>| -> Vec<f32> {
        s.into_iter().flatten().flat_map(|x| x.token_logps).collect()
    };
    let with = flat(m.score_packed_with(&items(), Some(&a)).unwrap());
    let plain = flat(m.score_packed(&items()).unwrap());
    let moved = max_diff(&with, &plain);
    assert!(moved > 1e-2, "the adapter must change the scores ({moved})");
    let dir = fresh_dir("real-merged");
    merge::export_merged(&m, &a, &dir, FloatType::F32).unwrap();
    let merged = Model::open(&dir).unwrap();
    let ours = flat(merged.score_packed(&items()).unwrap());
    let diff = max_diff(&ours, &with);
    eprintln!("real model: adapter moves log-probs by up to {moved}; merged vs base + adapter {diff}");
    assert!(diff <= 1e-4, "{diff}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The peak resident memory (VmHWM) of a child, read from /proc until it exits.
fn peak_rss_of(mut child: std::process::Child) -> (std::process::ExitStatus, usize) {
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0usize;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_file)
            && let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<usize>().ok())
        {
            peak = peak.max(kb * 1024);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn real_model_merged_export_holds_one_matrix_at_a_time() {
    let path = common::model_path();
    let m = Model::open(&path).unwrap();
    let work = fresh_dir("real-merged-cli");
    let adapter_dir = work.join("adapter");
    peft::save(&real_adapter(&m), &adapter_dir).unwrap();
    let out = work.join("merged");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_nudge"))
        .args(["export", "--format", "merged", "--dtype", "f32", "--model"])
        .arg(&path)
        .arg("--adapter")
        .arg(&adapter_dir)
        .arg("--out")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (status, peak) = peak_rss_of(child);
    assert!(status.success());
    let written = std::fs::metadata(out.join("model.safetensors")).unwrap().len() as usize;
    let base = std::fs::metadata(&path).unwrap().len() as usize;
    let embed = m.config.vocab_size * m.config.hidden_size * 4;
    eprintln!(
        "merged export: peak RSS {:.0} MB; base file {:.0} MB, f32 output {:.0} MB, largest matrix {:.0} MB",
        peak as f64 / 1e6,
        base as f64 / 1e6,
        written as f64 / 1e6,
        embed as f64 / 1e6
    );
    // The mapped base, one matrix expanded to f32 and its encoding, and 64 MB for the
    // tokenizer, the adapter and the allocator; the whole output would not fit.
    let bound = base + 2 * embed + (64 << 20);
    assert!(bound < written);
    assert!(
        peak < bound,
        "peak RSS {peak} above {bound}: more than one matrix was held"
    );
    std::fs::remove_dir_all(&work).unwrap();
}
