//! Tiny random Llama-family models written as HF directories, for tests that need a
//! whole network but not the real weights (bad input, gradient checks, packing).

use nudge::gguf::{GgufFile, GgufValue, GgufWriter};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

pub struct TinySpec {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub qwen2: bool,
    pub tied: bool,
    pub max_pos: usize,
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            vocab: 64,
            hidden: 32,
            intermediate: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            qwen2: false,
            tied: true,
            max_pos: 128,
            seed: 7,
        }
    }
}

/// Deterministic uniform values in [-scale, scale).
pub fn random_vec(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e3779b97f4a7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub fn config_json(s: &TinySpec) -> Value {
    json!({
        "architectures": [if s.qwen2 { "Qwen2ForCausalLM" } else { "LlamaForCausalLM" }],
        "model_type": if s.qwen2 { "qwen2" } else { "llama" },
        "vocab_size": s.vocab,
        "hidden_size": s.hidden,
        "intermediate_size": s.intermediate,
        "num_hidden_layers": s.layers,
        "num_attention_heads": s.heads,
        "num_key_value_heads": s.kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": s.max_pos,
        "tie_word_embeddings": s.tied,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}

/// A word-level tokenizer with tokens `t0`..`t{vocab-1}` (`t1` BOS, `t2` EOS).
pub fn tokenizer_json(vocab: usize) -> Value {
    let v: serde_json::Map<String, Value> = (0..vocab).map(|i| (format!("t{i}"), json!(i))).collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [
            {"id": 1, "content": "t1", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
            {"id": 2, "content": "t2", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
        ],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "t0"}
    })
}

/// The tensors of a tiny model: HF name → (shape, values).
pub fn tensors(s: &TinySpec) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let hd = s.hidden / s.heads;
    let (q, kv) = (s.heads * hd, s.kv_heads * hd);
    let mut out = Vec::new();
    let mut seed = s.seed;
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        seed += 1;
        let n = shape.iter().product();
        let v = random_vec(n, seed, scale).into_iter().map(|x| x + offset).collect();
        out.push((name, shape, v));
    };
    add("model.embed_tokens.weight".into(), vec![s.vocab, s.hidden], 0.5, 0.0);
    for l in 0..s.layers {
        let n = |x: &str| format!("model.layers.{l}.{x}");
        add(n("input_layernorm.weight"), vec![s.hidden], 0.2, 1.0);
        add(n("post_attention_layernorm.weight"), vec![s.hidden], 0.2, 1.0);
        add(n("self_attn.q_proj.weight"), vec![q, s.hidden], 0.3, 0.0);
        add(n("self_attn.k_proj.weight"), vec![kv, s.hidden], 0.3, 0.0);
        add(n("self_attn.v_proj.weight"), vec![kv, s.hidden], 0.3, 0.0);
        add(n("self_attn.o_proj.weight"), vec![s.hidden, q], 0.3, 0.0);
        add(n("mlp.gate_proj.weight"), vec![s.intermediate, s.hidden], 0.3, 0.0);
        add(n("mlp.up_proj.weight"), vec![s.intermediate, s.hidden], 0.3, 0.0);
        add(n("mlp.down_proj.weight"), vec![s.hidden, s.intermediate], 0.3, 0.0);
        if s.qwen2 {
            add(n("self_attn.q_proj.bias"), vec![q], 0.2, 0.0);
            add(n("self_attn.k_proj.bias"), vec![kv], 0.2, 0.0);
            add(n("self_attn.v_proj.bias"), vec![kv], 0.2, 0.0);
        }
    }
    add("model.norm.weight".into(), vec![s.hidden], 0.2, 1.0);
    if !s.tied {
        add("lm_head.weight".into(), vec![s.vocab, s.hidden], 0.5, 0.0);
    }
    out
}

pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView> = bytes
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).expect("writes safetensors");
}

/// Writes a complete tiny HF model directory.
pub fn write_model(dir: &Path, s: &TinySpec) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("config.json"), config_json(s).to_string()).expect("write config");
    std::fs::write(dir.join("tokenizer.json"), tokenizer_json(s.vocab).to_string()).expect("write tokenizer");
    let special = json!({"bos_token": "t1", "eos_token": "t2", "unk_token": "t0"});
    std::fs::write(dir.join("tokenizer_config.json"), special.to_string()).expect("write tokenizer config");
    write_safetensors(&dir.join("model.safetensors"), &tensors(s));
}

/// A fresh, empty directory under the test target's temporary folder.
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let d = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("mkdir");
    d
}

/// Rewrites the tiny reference GGUF with `edit` applied to its metadata and tensor list.
pub fn edited_gguf(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, GgufValue)>, &mut Vec<(String, nudge::quant::DType, Vec<usize>, Vec<u8>)>),
) -> std::path::PathBuf {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny/llama_q8_0.gguf");
    let g = GgufFile::open(&src).expect("reference GGUF opens");
    let mut meta: Vec<(String, GgufValue)> = g.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let mut tensors: Vec<_> = g
        .tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), g.tensor_data(t).to_vec()))
        .collect();
    edit(&mut meta, &mut tensors);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(k, v);
    }
    for (n, d, s, b) in tensors {
        w.add_tensor(n, d, &s, b).expect("consistent tensor");
    }
    let out = fresh_dir(name).join("model.gguf");
    w.write(&out).expect("writes");
    out
}

/// `n` short token-id preference pairs for the tiny models (`shift` varies the prompts and
/// rejected answers between sets).
pub fn tiny_pairs(n: u32, shift: u32) -> nudge::data::PreferenceSet {
    nudge::data::PreferenceSet {
        pairs: (0..n)
            .map(|i| nudge::data::TokenizedPair {
                row: i as usize + 1,
                prompt: vec![1, 3 + (i + shift) % 9, 20],
                chosen: vec![30 + i % 4, 2],
                rejected: vec![40 + (i + shift) % 5, 41, 2],
                margin: None,
                weight: None,
            })
            .collect(),
        ..Default::default()
    }
}
