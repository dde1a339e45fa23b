//! The engine against tiny random models of the architectures, rope scalings and weight
//! formats the shared golden set does not cover (Qwen2, Llama 3 and linear rope scaling,
//! Mistral, bf16 safetensors, GGUF in Q4_K, Q6_K, Q8_0, Q4_0, F16, BF16, GGUF rope
//! factors, qwen2 GGUF). Models and references are made by `scripts/make_tiny_refs.py`
//! with PyTorch + transformers in float32 and read from `tests/data/tiny/refs.json`; every
//! number and id comes from there.

mod common;

use common::{floats, ids};
use nudge::kernels::attention::AttnLayout;
use nudge::model::config::{Architecture, Config, RopeScaling};
use nudge::model::{Model, ModelFormat};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::OnceLock;

// Tiny models in f32 agree with PyTorch to ~1e-6; these leave room for summation order only.
const LOGIT_ABS: f64 = 1e-4;
const TOKEN_LOGP_ABS: f64 = 1e-4;
/// A completion's summed log-prob (up to 30 tokens).
const SUM_LOGP_ABS: f64 = 1e-3;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny")
}

fn refs() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let p = data_dir().join("refs.json");
        let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_str(&text).expect("refs.json parses")
    })
}

fn models() -> &'static [Value] {
    refs()["models"].as_array().expect("models")
}

fn entry(name: &str) -> &'static Value {
    models()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("refs.json has no model `{name}`"))
}

fn open(e: &Value) -> Model {
    let path = data_dir().join(e["path"].as_str().expect("path"));
    Model::open(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("`{k}` is not a number in {v}"))
}

fn count(v: &Value, k: &str) -> usize {
    v[k].as_u64().unwrap_or_else(|| panic!("`{k}` is not a count in {v}")) as usize
}

/// The configuration the reference model was built with, as the engine should read it.
fn expected_config(c: &Value) -> Config {
    let s = &c["rope_scaling"];
    let rope_scaling = match s["type"].as_str().expect("rope_scaling.type") {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: num(s, "factor") as f32,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: num(s, "factor") as f32,
            low_freq_factor: num(s, "low_freq_factor") as f32,
            high_freq_factor: num(s, "high_freq_factor") as f32,
            original_max_position_embeddings: count(s, "original_max_position_embeddings"),
        },
        "factors" => RopeScaling::Factors(floats(&s["factors"]).into_iter().map(|x| x as f32).collect()),
        other => panic!("unknown rope scaling `{other}`"),
    };
    Config {
        architecture: match c["architecture"].as_str().expect("architecture") {
            "Llama" => Architecture::Llama,
            "Qwen2" => Architecture::Qwen2,
            other => panic!("unknown architecture `{other}`"),
        },
        vocab_size: count(c, "vocab_size"),
        hidden_size: count(c, "hidden_size"),
        intermediate_size: count(c, "intermediate_size"),
        num_hidden_layers: count(c, "num_hidden_layers"),
        num_attention_heads: count(c, "num_attention_heads"),
        num_key_value_heads: count(c, "num_key_value_heads"),
        head_dim: count(c, "head_dim"),
        rms_norm_eps: num(c, "rms_norm_eps") as f32,
        rope_theta: num(c, "rope_theta") as f32,
        rope_scaling,
        max_position_embeddings: count(c, "max_position_embeddings"),
        tie_word_embeddings: c["tie_word_embeddings"].as_bool().expect("tie_word_embeddings"),
        attention_bias: c["attention_bias"].as_bool().expect("attention_bias"),
        bos_token_id: Some(count(c, "bos_token_id") as u32),
        eos_token_id: Some(count(c, "eos_token_id") as u32),
    }
}

/// Opens one reference model and checks its configuration, weight types, per-token
/// completion log-probs and full logits against the reference.
fn check_model(name: &str) {
    let e = entry(name);
    let m = open(e);
    let format = match e["format"].as_str().expect("format") {
        "gguf" => ModelFormat::Gguf,
        "safetensors" => ModelFormat::Safetensors,
        other => panic!("unknown format `{other}`"),
    };
    assert_eq!(m.format, format, "{name}");
    assert_eq!(m.config, expected_config(&e["config"]), "{name}: config");

    if let Some(t) = e.get("matrix_type") {
        let want = t.as_str().expect("matrix_type");
        for w in m.weights.matrices() {
            assert_eq!(w.dtype.name(), want, "{name}: {}", w.name);
        }
    }
    // The recorded effect of the rope scaling on these logits: far above the tolerance,
    // so a model read without its scaling cannot pass.
    if let Some(effect) = e.get("rope_scaling_effect") {
        let effect = effect.as_f64().expect("rope_scaling_effect");
        assert!(
            effect > 1000.0 * LOGIT_ABS,
            "{name}: rope scaling changes logits by {effect} only"
        );
    }

    let cases = e["cases"].as_array().expect("cases");
    let mut worst_token = 0f64;
    for (ci, case) in cases.iter().enumerate() {
        let prompt = ids(&case["prompt_ids"]);
        let completion = ids(&case["completion_ids"]);
        let s = m
            .score(&prompt, &completion)
            .unwrap_or_else(|err| panic!("{name} case {ci}: {err}"));
        let want = floats(&case["token_logps"]);
        assert_eq!(s.token_logps.len(), want.len(), "{name} case {ci}");
        for (j, (got, want)) in s.token_logps.iter().zip(&want).enumerate() {
            let err = (*got as f64 - want).abs();
            worst_token = worst_token.max(err);
            assert!(
                err <= TOKEN_LOGP_ABS,
                "{name} case {ci} completion token {j} (id {}): log-prob {got} vs reference {want} (error {err:e})",
                completion[j]
            );
        }
        let sum = num(case, "logp");
        assert!(
            (s.logp - sum).abs() <= SUM_LOGP_ABS,
            "{name} case {ci}: summed log-prob {} vs reference {sum}",
            s.logp
        );
    }

    let lg = &e["logits"];
    let case = &cases[count(lg, "case")];
    let mut seq = ids(&case["prompt_ids"]);
    seq.extend(ids(&case["completion_ids"]));
    let positions: Vec<usize> = ids(&lg["positions"]).into_iter().map(|p| p as usize).collect();
    let h = m
        .hidden_states(&seq, &AttnLayout::sequences(&[seq.len()]))
        .unwrap_or_else(|err| panic!("{name}: forward: {err}"));
    let hidden = m.config.hidden_size;
    let rows: Vec<f32> = positions
        .iter()
        .flat_map(|&p| h[p * hidden..(p + 1) * hidden].to_vec())
        .collect();
    let got = m.logits(&rows).unwrap();
    let vocab = m.config.vocab_size;
    assert_eq!(got.len(), positions.len() * vocab, "{name}");
    let mut worst_logit = 0f64;
    for (pi, (&p, want)) in positions
        .iter()
        .zip(lg["values"].as_array().expect("values"))
        .enumerate()
    {
        let want = floats(want);
        assert_eq!(want.len(), vocab, "{name}: logits row length");
        for (v, (a, b)) in got[pi * vocab..(pi + 1) * vocab].iter().zip(&want).enumerate() {
            let err = (*a as f64 - b).abs();
            worst_logit = worst_logit.max(err);
            assert!(
                err <= LOGIT_ABS,
                "{name} position {p} token {v}: logit {a} vs reference {b} (error {err:e})"
            );
        }
    }
    eprintln!("{name}: worst token log-prob error {worst_token:e}, worst logit error {worst_logit:e}");
}

macro_rules! reference_models {
    ($($test:ident => $name:literal,)*) => {
        $(
            #[test]
            fn $test() {
                check_model($name);
            }
        )*
        const NAMED: &[&str] = &[$($name),*];
    };
}

reference_models! {
    qwen2_safetensors_matches_reference => "qwen2",
    llama3_rope_scaling_matches_reference => "llama3_rope",
    linear_rope_scaling_legacy_keys_match_reference => "llama_linear",
    mistral_bf16_matches_reference => "mistral",
    gguf_q8_0_matches_reference => "llama_q8_0",
    gguf_q4_0_matches_reference => "llama_q4_0",
    gguf_f16_matches_reference => "llama_f16",
    gguf_bf16_matches_reference => "llama_bf16",
    gguf_q4_k_matches_reference => "llama_q4_k",
    gguf_q6_k_matches_reference => "llama_q6_k",
    gguf_rope_freqs_matches_reference => "llama_rope_freqs",
    gguf_linear_rope_scaling_matches_reference => "llama_rope_linear",
    gguf_qwen2_matches_reference => "qwen2_q8_0",
}

#[test]
fn every_reference_model_has_a_test() {
    let mut in_file: Vec<&str> = models().iter().map(|e| e["name"].as_str().expect("name")).collect();
    let mut named = NAMED.to_vec();
    in_file.sort_unstable();
    named.sort_unstable();
    assert_eq!(in_file, named);
}

/// Every model's tokenizer (tokenizer.json, or rebuilt from `tokenizer.ggml.*`) gives the
/// HF tokenizer's ids and decodes them back to the text.
#[test]
fn tokenizers_match_hf_ids() {
    let texts = refs()["tokenizer_texts"].as_array().expect("tokenizer_texts");
    assert!(!texts.is_empty());
    let size = count(refs(), "tokenizer_vocab_size");
    for e in models() {
        let name = e["name"].as_str().expect("name");
        let m = open(e);
        assert!(
            m.tokenizer.vocab_size() >= size && m.tokenizer.vocab_size() <= m.config.vocab_size,
            "{name}: tokenizer vocab {} (HF {size}, model {})",
            m.tokenizer.vocab_size(),
            m.config.vocab_size
        );
        for t in texts {
            let text = t["text"].as_str().expect("text");
            let got = m
                .tokenizer
                .encode(text, false)
                .unwrap_or_else(|err| panic!("{name}: {err}"));
            assert_eq!(got, ids(&t["ids"]), "{name}: {text:?}");
            let back = m.tokenizer.decode(&got, false).expect("decodes");
            assert_eq!(back, text, "{name}");
        }
    }
}
