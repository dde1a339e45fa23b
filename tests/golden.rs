//! The engine against the PyTorch + transformers reference in `NUDGE_GOLDEN_DIR`:
//! tokenizer, chat template, dequantized weights, log-probs and logits, for the GGUF model
//! and for the HF safetensors directory `nudge convert` makes from it.

mod common;

use common::*;
use nudge::convert::{FloatType, convert_to_hf};
use nudge::model::Model;
use nudge::tokenizer::ChatMessage;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::OnceLock;

// Tolerances from the golden README.
const TOKEN_LOGP_ABS: f64 = 2e-4;
const SUM_LOGP_ABS: f64 = 3e-3;
const LOGIT_ABS: f64 = 2e-3;

fn gguf() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::open(model_path()).expect("the GGUF model opens"))
}

/// The GGUF converted to an f32 HF directory once per test run.
fn converted() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("golden-converted-f32");
        convert_to_hf(gguf(), &dir, FloatType::F32).expect("convert succeeds");
        Model::open(&dir).expect("the converted model opens")
    })
}

fn both() -> [(&'static str, &'static Model); 2] {
    [("gguf", gguf()), ("safetensors", converted())]
}

#[test]
fn tokenizer_ids_match() {
    let g = golden_json();
    for (name, m) in both() {
        for case in g["tokenizer"].as_array().expect("tokenizer cases") {
            let text = case["text"].as_str().expect("text");
            let got = m.tokenizer.encode(text, false).expect("encodes");
            assert_eq!(got, ids(&case["ids"]), "{name}: {text:?}");
            assert_eq!(m.tokenizer.decode(&got, false).expect("decodes"), text, "{name}");
        }
    }
}

#[test]
fn chat_template_text_matches() {
    let g = golden_json();
    for (name, m) in both() {
        for case in g["chat_template"].as_array().expect("chat cases") {
            let msgs: Vec<ChatMessage> = case["turns"]
                .as_array()
                .expect("turns")
                .iter()
                .map(|t| ChatMessage::new(t[0].as_str().expect("role"), t[1].as_str().expect("content")))
                .collect();
            let text = m.tokenizer.apply_chat_template(&msgs, true).expect("renders");
            assert_eq!(text, case["text"].as_str().expect("text"), "{name}");
        }
    }
}

fn sha256_of_tensor(m: &Model, name: &str, shape: &[usize]) -> String {
    let w = &m.weights;
    let mut h = Sha256::new();
    let mut feed = |v: &[f32]| v.iter().for_each(|x| h.update(x.to_le_bytes()));
    let vector = |l: usize, which: &str| -> Option<&Vec<f32>> {
        let layer = w.layers.get(l)?;
        match which {
            "input_layernorm" => Some(&layer.input_layernorm),
            "post_attention_layernorm" => Some(&layer.post_attention_layernorm),
            _ => None,
        }
    };
    if name == "model.norm.weight" {
        feed(&w.norm);
    } else if let Some(t) = w.matrices().into_iter().find(|t| t.name == name) {
        assert_eq!(&[t.rows, t.cols][..], shape, "{name}");
        let view = w.view(t);
        let mut row = vec![0f32; t.cols];
        for r in 0..t.rows {
            view.row(r, &mut row);
            feed(&row);
        }
    } else {
        let parts: Vec<&str> = name.split('.').collect();
        let l: usize = parts
            .get(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("unknown tensor {name}"));
        let v = vector(l, parts[3]).unwrap_or_else(|| panic!("unknown tensor {name}"));
        assert_eq!(&[v.len()][..], shape, "{name}");
        feed(v);
    }
    format!("{:x}", h.finalize())
}

#[test]
fn dequantized_tensors_are_bit_exact() {
    let p = golden_dir().join("dequant_f32_hf_layout.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).expect("reads")).expect("parses");
    let tensors = d["tensors"].as_object().expect("tensors");
    assert!(!tensors.is_empty());
    for (name, m) in both() {
        for (t, info) in tensors {
            let shape: Vec<usize> = info["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect();
            let got = sha256_of_tensor(m, t, &shape);
            assert_eq!(got, info["sha256_f32_le"].as_str().expect("sha"), "{name}: {t}");
        }
    }
}

#[test]
fn reference_logprobs_match() {
    let g = golden_json();
    for (name, m) in both() {
        for (i, ex) in g["examples"].as_array().expect("examples").iter().enumerate() {
            let prompt = ids(&ex["prompt_ids"]);
            for which in ["chosen", "rejected"] {
                let completion = ids(&ex[format!("{which}_ids").as_str()]);
                let s = m.score(&prompt, &completion).expect("scores");
                let want = floats(&ex[format!("ref_{which}_token_logps").as_str()]);
                assert_eq!(s.token_logps.len(), want.len());
                for (j, (a, b)) in s.token_logps.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - b).abs() <= TOKEN_LOGP_ABS,
                        "{name} example {i} {which} token {j}: {a} vs {b}"
                    );
                }
                let sum = ex[format!("ref_{which}_logp").as_str()].as_f64().expect("sum");
                assert!(
                    (s.logp - sum).abs() <= SUM_LOGP_ABS,
                    "{name} example {i} {which}: {} vs {sum}",
                    s.logp
                );
            }
        }
    }
}

#[test]
fn packed_pair_scores_equal_separate_scores() {
    let g = golden_json();
    let m = gguf();
    let ex = &g["examples"][0];
    let (p, c, r) = (ids(&ex["prompt_ids"]), ids(&ex["chosen_ids"]), ids(&ex["rejected_ids"]));
    let packed = m
        .score_packed(&[nudge::score::ScoreItem {
            prompt: &p,
            completions: vec![&c, &r],
        }])
        .expect("scores")
        .remove(0);
    for (s, comp) in packed.iter().zip([&c, &r]) {
        let alone = m.score(&p, comp).expect("scores");
        for (a, b) in s.token_logps.iter().zip(&alone.token_logps) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }
}

#[test]
fn base_logits_match() {
    let g = golden_json();
    let positions: Vec<usize> = ids(&g["base_logits_ex0_positions"])
        .into_iter()
        .map(|p| p as usize)
        .collect();
    let refs = read_f32_safetensors(&golden_dir().join("base_logits_ex0.safetensors"));
    assert_eq!(refs.len(), 1, "base_logits_ex0.safetensors holds one tensor");
    let (shape, want) = refs.into_values().next().expect("one tensor");
    let ex = &g["examples"][0];
    let mut seq = ids(&ex["prompt_ids"]);
    seq.extend(ids(&ex["chosen_ids"]));
    for (name, m) in both() {
        let vocab = m.config.vocab_size;
        assert_eq!(shape, vec![positions.len(), vocab]);
        // The public API's logits: every position of the sequence, as transformers gives them.
        let all = m.forward_logits(&seq, None).expect("forward");
        assert_eq!(all.dim(), (seq.len(), vocab));
        let got = all.select(Axis(0), &positions);
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .fold(0.0, f64::max);
        assert!(worst <= LOGIT_ABS, "{name}: worst logit error {worst}");
    }
}

// ---- LoRA and DPO (the policy is the base model plus `adapter_init/`) ----

use ndarray::{ArrayView2, Axis};
use nudge::adapter::Adapter;
use nudge::adapter::format::peft;
use nudge::data::TokenizedPair;
use nudge::model::Recompute;
use nudge::objective::{Loss, reward_metrics};
use nudge::train::{StepCtx, pair_step};

const LOSS_REL: f64 = 1e-4;
const GRAD_REL: f64 = 2e-3;

fn close_rel(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-2)
}

/// A TRL metric against the reference, within the tolerances its README gives: 1e-4
/// relative (or 1e-6 absolute near zero); `rewards/*` (β times a difference of summed
/// log-probs) may also differ by β·1e-4 absolute; accuracies are stored as float32, so
/// they are compared within 1e-6.
fn metric_close(name: &str, got: f64, want: f64, beta: f64) -> bool {
    let d = (got - want).abs();
    if name.ends_with("accuracies") {
        return d <= 1e-6;
    }
    d <= 1e-6 || close_rel(got, want, LOSS_REL) || (name.starts_with("rewards/") && d <= beta * 1e-4)
}

fn golden_pairs(g: &serde_json::Value) -> Vec<TokenizedPair> {
    g["examples"]
        .as_array()
        .expect("examples")
        .iter()
        .enumerate()
        .map(|(i, ex)| TokenizedPair {
            row: i + 1,
            prompt: ids(&ex["prompt_ids"]),
            chosen: ids(&ex["chosen_ids"]),
            rejected: ids(&ex["rejected_ids"]),
            margin: None,
            weight: None,
        })
        .collect()
}

fn adapter_init() -> Adapter {
    peft::load(&golden_dir().join("adapter_init"), &gguf().config).expect("adapter_init loads")
}

#[test]
fn adapter_config_matches_golden_lora_settings() {
    let g = golden_json();
    let a = adapter_init();
    assert_eq!(a.config.r as u64, g["lora"]["r"].as_u64().unwrap());
    assert_eq!(a.config.lora_alpha as f64, g["lora"]["lora_alpha"].as_f64().unwrap());
    let mut want: Vec<String> = g["lora"]["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    want.sort();
    let mut got: Vec<String> = a
        .config
        .target_modules
        .iter()
        .map(|p| p.hf_name().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn policy_logprobs_with_adapter_match() {
    let g = golden_json();
    let a = adapter_init();
    let m = gguf();
    let pol = &g["policy"];
    for (i, p) in golden_pairs(&g).iter().enumerate() {
        let item = nudge::score::ScoreItem {
            prompt: &p.prompt,
            completions: vec![&p.chosen, &p.rejected],
        };
        let s = m.score_packed_with(&[item], Some(&a)).expect("scores").remove(0);
        for (k, which) in ["chosen", "rejected"].into_iter().enumerate() {
            let want = floats(&pol[format!("{which}_token_logps").as_str()][i]);
            for (j, (x, y)) in s[k].token_logps.iter().zip(&want).enumerate() {
                assert!(
                    (*x as f64 - y).abs() <= TOKEN_LOGP_ABS,
                    "pair {i} {which} token {j}: {x} vs {y}"
                );
            }
            let sum = pol[format!("{which}_logps").as_str()][i].as_f64().unwrap();
            assert!(
                (s[k].logp - sum).abs() <= SUM_LOGP_ABS,
                "pair {i} {which}: {} vs {sum}",
                s[k].logp
            );
        }
    }
}

#[test]
fn dpo_loss_metrics_and_every_lora_gradient_match() {
    let g = golden_json();
    let m = gguf();
    let a = adapter_init();
    let beta = g["beta"].as_f64().unwrap();
    let pairs = golden_pairs(&g);
    // The reference policy is the base model (adapter off), computed by the engine.
    let refs: Vec<(f64, f64)> = pairs
        .iter()
        .map(|p| {
            let s = m
                .score_packed(&[nudge::score::ScoreItem {
                    prompt: &p.prompt,
                    completions: vec![&p.chosen, &p.rejected],
                }])
                .unwrap()
                .remove(0);
            (s[0].logp, s[1].logp)
        })
        .collect();
    let mut grads = a.zeros_like();
    let refs_pairs: Vec<&TokenizedPair> = pairs.iter().collect();
    let loss = Loss::Sigmoid { beta };
    let ctx = StepCtx::new(m, &a, &loss).recompute(Recompute::Always);
    let step = pair_step(&ctx, &refs_pairs, &refs, 1.0, &mut grads).expect("step");
    let want_loss = g["policy"]["dpo_sigmoid_loss"].as_f64().unwrap();
    assert!(
        close_rel(step.loss.loss, want_loss, LOSS_REL),
        "loss {} vs {want_loss}",
        step.loss.loss
    );
    for l in &step.logps {
        eprintln!(
            "{} {}",
            l.policy_chosen - l.ref_chosen,
            l.policy_rejected - l.ref_rejected
        );
    }
    let metrics = reward_metrics(beta, &step.logps);
    for (name, value) in metrics.entries() {
        let want = g["policy"]["metrics"][name]
            .as_f64()
            .unwrap_or_else(|| panic!("metric {name} in golden"));
        eprintln!("{name}: {value} vs {want} rel {:e}", (value - want).abs() / want.abs());
        assert!(metric_close(name, value, want, beta), "{name}: {value} vs {want}");
    }
    let refg = read_f32_safetensors(&golden_dir().join("dpo_sigmoid_grads.safetensors"));
    let got: std::collections::BTreeMap<String, ArrayView2<f32>> = grads.tensors().into_iter().collect();
    assert_eq!(got.len(), refg.len(), "tensor count");
    let mut norm2 = 0f64;
    let mut worst = (0f64, String::new());
    for (name, (shape, want)) in &refg {
        let have = got.get(name).unwrap_or_else(|| panic!("no gradient for {name}"));
        assert_eq!(have.shape(), &shape[..], "{name}: shape");
        let diff: f64 = have
            .iter()
            .zip(want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let nref: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>().sqrt();
        norm2 += have.iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
        assert!(diff <= GRAD_REL * nref, "{name}: relative error {}", diff / nref);
        if diff / nref > worst.0 {
            worst = (diff / nref, name.clone());
        }
    }
    eprintln!(
        "loss {} vs {want_loss}; worst gradient relative error {:.2e} ({})",
        step.loss.loss, worst.0, worst.1
    );
    let want_norm = g["policy"]["grad_global_norm"].as_f64().unwrap();
    assert!(
        close_rel(norm2.sqrt(), want_norm, GRAD_REL),
        "grad norm {} vs {want_norm}",
        norm2.sqrt()
    );
}

/// Reads `name=value` (or `name=(a,b)`) from the golden trajectory's optimizer description.
fn optimizer_setting(desc: &str, name: &str) -> Option<String> {
    let start = desc.find(&format!("{name}="))? + name.len() + 1;
    let rest = &desc[start..];
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([' ', ',']).unwrap_or(rest.len())
    };
    Some(rest[..end].to_string())
}

#[test]
fn ten_step_trajectory_and_final_adapter_match() {
    use nudge::data::PreferenceSet;
    use nudge::optim::{AdamWConfig, Schedule};
    use nudge::train::{Control, TrainConfig, Trainer};
    let g = golden_json();
    let traj = &g["trajectory"];
    let desc = traj["optimizer"].as_str().expect("optimizer description");
    let num = |k: &str| -> f64 {
        optimizer_setting(desc, k)
            .unwrap_or_else(|| panic!("`{k}` in {desc:?}"))
            .parse()
            .unwrap()
    };
    let betas = optimizer_setting(desc, "betas").expect("betas");
    let b: Vec<f64> = betas
        .trim_matches(['(', ')'])
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    let clip: f32 = desc
        .split("clip ")
        .nth(1)
        .and_then(|s| s.split([' ', ',']).next())
        .expect("clip")
        .parse()
        .unwrap();
    assert!(
        desc.contains("constant lr") && desc.contains("full batch") && desc.contains("sigmoid DPO"),
        "{desc}"
    );
    let steps = traj["steps"].as_array().expect("steps");
    let pairs = golden_pairs(&g);
    let n = pairs.len();
    let beta = g["beta"].as_f64().unwrap();
    let config = TrainConfig {
        loss: Loss::Sigmoid { beta },
        optimizer: AdamWConfig {
            lr: num("lr"),
            betas: (b[0], b[1]),
            eps: num("eps"),
            weight_decay: num("weight_decay"),
        },
        schedule: Schedule::Constant { warmup_steps: 0 },
        max_grad_norm: Some(clip),
        epochs: steps.len(),
        max_steps: Some(steps.len()),
        batch_size: n,
        micro_batch_size: n,
        shuffle: false,
        recompute: Recompute::Always,
        ..TrainConfig::default()
    };
    let set = PreferenceSet {
        pairs,
        ..Default::default()
    };
    let mut trainer = Trainer::new(gguf(), adapter_init(), config, set).expect("trainer");
    let mut logged = Vec::new();
    trainer
        .run(&mut |m| {
            logged.push(m.clone());
            Control::Continue
        })
        .expect("runs");
    assert_eq!(logged.len(), steps.len());
    for (m, want) in logged.iter().zip(steps) {
        let l = want["loss"].as_f64().unwrap();
        assert!(close_rel(m.loss, l, 2e-3), "step {}: loss {} vs {l}", m.step, m.loss);
        let gn = want["grad_norm_before_clip"].as_f64().unwrap();
        assert!(
            close_rel(m.grad_norm, gn, 2e-3),
            "step {}: grad norm {} vs {gn}",
            m.step,
            m.grad_norm
        );
        let margin = want["margin"].as_f64().unwrap();
        assert!(
            close_rel(m.rewards.rewards_margins, margin, 2e-3),
            "step {}: margin {} vs {margin}",
            m.step,
            m.rewards.rewards_margins
        );
        let acc = want["accuracy"].as_f64().unwrap();
        assert!(
            metric_close("rewards/accuracies", m.rewards.rewards_accuracies, acc, beta),
            "step {}: accuracy {} vs {acc}",
            m.step,
            m.rewards.rewards_accuracies
        );
    }
    let after = read_f32_safetensors(&golden_dir().join("adapter_after_10_steps/adapter_model.safetensors"));
    let got: std::collections::BTreeMap<String, ArrayView2<f32>> = trainer.adapter.tensors().into_iter().collect();
    let (mut d2, mut r2) = (0f64, 0f64);
    for (name, (shape, want)) in &after {
        let have = got.get(name).unwrap_or_else(|| panic!("no tensor {name}"));
        assert_eq!(have.shape(), &shape[..], "{name}: shape");
        d2 += have
            .iter()
            .zip(want)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>();
        r2 += want.iter().map(|b| (*b as f64).powi(2)).sum::<f64>();
    }
    assert!(
        d2.sqrt() <= 2e-3 * r2.sqrt(),
        "final adapter relative L2 distance {}",
        (d2 / r2).sqrt()
    );
    let worst_loss = logged
        .iter()
        .zip(steps)
        .map(|(m, w)| ((m.loss - w["loss"].as_f64().unwrap()) / w["loss"].as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    eprintln!(
        "trajectory: worst loss relative error {worst_loss:.2e}; final adapter relative L2 distance {:.2e}",
        (d2 / r2).sqrt()
    );
}

/// Every loss of the DPO family in `loss_variants`, from the golden policy and reference
/// log-probs: per-pair loss, mean, and the derivatives of the mean.
#[test]
fn every_loss_variant_matches() {
    use nudge::objective::{PairLogps, batch_loss};
    let g = golden_json();
    let beta = g["beta"].as_f64().unwrap();
    let pc = floats(&g["policy"]["chosen_logps"]);
    let pr = floats(&g["policy"]["rejected_logps"]);
    let pairs: Vec<PairLogps> = g["examples"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let n = |k: &str| e[k].as_array().unwrap().len();
            let r = |k: &str| e[k].as_f64().unwrap();
            PairLogps::new(
                pc[i],
                pr[i],
                r("ref_chosen_logp"),
                r("ref_rejected_logp"),
                n("chosen_ids"),
                n("rejected_ids"),
            )
        })
        .collect();
    let close = |got: f64, want: f64| (got - want).abs() <= 1e-6 || (got - want).abs() <= LOSS_REL * want.abs();
    let variants = g["loss_variants"].as_object().expect("loss_variants");
    assert!(!variants.is_empty());
    let mut errors = Vec::new();
    for (key, want) in variants {
        // An unknown key fails: every variant of the reference must be implemented.
        let loss = Loss::parse(key, beta).unwrap_or_else(|e| panic!("loss variant `{key}`: {e}"));
        let got = batch_loss(&loss, &pairs).unwrap_or_else(|e| panic!("{key}: {e}"));
        let mut check = |what: String, a: f64, b: f64| {
            if !close(a, b) {
                errors.push(format!("{what}: {a:.9e} vs {b:.9e}"));
            }
        };
        check(format!("{key} loss"), got.loss, want["loss"].as_f64().unwrap());
        for (name, have, field) in [
            ("per_pair", &got.per_pair, "per_pair_loss"),
            ("d_chosen", &got.d_chosen, "dloss_dchosen_logp"),
            ("d_rejected", &got.d_rejected, "dloss_drejected_logp"),
        ] {
            let w = floats(&want[field]);
            assert_eq!(w.len(), pairs.len(), "{key}: {field} length");
            for (i, (a, b)) in have.iter().zip(&w).enumerate() {
                check(format!("{key} {name}[{i}]"), *a, *b);
            }
        }
    }
    assert!(errors.is_empty(), "{} mismatches:\n{}", errors.len(), errors.join("\n"));
}

/// `--precision bf16`: the reference log-probs through bf16 products, within a loose bound,
/// and not the f32 ones (the rounding happened). On a CPU without bf16 dot products, the
/// model refuses the precision with an error instead.
#[test]
fn bf16_logprobs_stay_near_the_reference() {
    use nudge::kernels::matmul::Precision;
    let opened = Model::open(model_path())
        .expect("the GGUF model opens")
        .with_precision(Precision::Bf16);
    let m = match (Precision::Bf16.check(), opened) {
        (Ok(()), Ok(m)) => m,
        (Err(_), Err(e)) => {
            assert!(e.to_string().contains("bf16"), "{e}");
            return;
        }
        (c, o) => panic!("the CPU check ({:?}) and the model ({:?}) disagree", c.err(), o.err()),
    };
    assert_eq!(m.precision(), Precision::Bf16);
    let g = golden_json();
    let (mut largest, mut total, mut tokens, mut largest_sum) = (0.0f64, 0.0f64, 0usize, 0.0f64);
    for ex in g["examples"].as_array().expect("examples") {
        let prompt = ids(&ex["prompt_ids"]);
        for which in ["chosen", "rejected"] {
            let completion = ids(&ex[format!("{which}_ids").as_str()]);
            let s = m.score(&prompt, &completion).expect("scores");
            let want = floats(&ex[format!("ref_{which}_token_logps").as_str()]);
            assert_eq!(s.token_logps.len(), want.len());
            for (a, b) in s.token_logps.iter().zip(&want) {
                let d = (*a as f64 - b).abs();
                largest = largest.max(d);
                total += d;
                tokens += 1;
            }
            let sum = ex[format!("ref_{which}_logp").as_str()].as_f64().expect("sum");
            largest_sum = largest_sum.max((s.logp - sum).abs());
        }
    }
    let mean = total / tokens as f64;
    eprintln!(
        "bf16 vs the reference over {tokens} tokens: mean |Δ log p| {mean:.2e}, largest {largest:.2e}, largest sequence sum {largest_sum:.2e}"
    );
    assert!(largest > TOKEN_LOGP_ABS, "bf16 gave f32's log-probs: not rounded");
    assert!(
        mean < 0.05 && largest < 0.5,
        "bf16 log-probs too far: mean {mean}, largest {largest}"
    );
}
