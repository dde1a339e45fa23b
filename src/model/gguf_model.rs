//! Opening a GGUF model: its metadata becomes a [`Config`], its tensors become weight views
//! (quantized blocks stay in the map; Q/K rows are read in HF order through a row mapping).

use super::config::{Architecture, Config, RopeScaling};
use super::gguf_names::hf_name_for_gguf;
use super::weights::{Assembler, RawTensor, Weights, assemble};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::kernels::matmul::RowOrder;
use std::collections::HashMap;

pub fn config_from_gguf(g: &GgufFile) -> Result<Config> {
    let arch_name = g.architecture()?.to_string();
    let architecture = match arch_name.as_str() {
        "llama" | "mistral" => Architecture::Llama,
        "qwen2" => Architecture::Qwen2,
        _ => {
            return Err(Error::UnsupportedArchitecture {
                file: g.path.clone(),
                arch: arch_name,
            });
        }
    };
    let a = &arch_name;
    let key = |k: &str| format!("{a}.{k}");
    let opt_usize = |k: &str| -> Result<Option<usize>> {
        match g.get(&key(k)) {
            None => Ok(None),
            Some(_) => g.get_usize(&key(k)).map(Some),
        }
    };
    let hidden_size = g.get_usize(&key("embedding_length"))?;
    let heads = g.get_usize(&key("attention.head_count"))?;
    let kv_heads = opt_usize("attention.head_count_kv")?.unwrap_or(heads);
    let head_dim = match opt_usize("attention.key_length")? {
        Some(h) => h,
        None if heads > 0 => hidden_size / heads,
        None => 0,
    };
    let vocab_size = match opt_usize("vocab_size")? {
        Some(v) => v,
        None => match g.tensor("token_embd.weight") {
            Some(t) => t.rows(),
            None => return Err(Error::tensor(&g.path, "token_embd.weight", "missing")),
        },
    };
    let rope_theta = match g.get(&key("rope.freq_base")) {
        Some(_) => g.get_f32(&key("rope.freq_base"))?,
        None => 10000.0,
    };
    let rms_norm_eps = g.get_f32(&key("attention.layer_norm_rms_epsilon"))?;
    let rope_scaling = if let Some(t) = g.tensor("rope_freqs.weight") {
        // llama.cpp stores Llama 3 scaling as per-frequency divisors.
        RopeScaling::Factors(g.dequantize(t)?)
    } else {
        match g.get(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: g.get_f32(&key("rope.scaling.factor"))?,
            },
            Some(other) => {
                return Err(Error::field(
                    &g.path,
                    key("rope.scaling.type"),
                    format!("`{other}` is not supported (none, linear, or llama3 through rope_freqs.weight)"),
                ));
            }
        }
    };
    let token_id = |k: &str| -> Result<Option<u32>> {
        match g.get(k) {
            None => Ok(None),
            Some(_) => g.get_u32(k).map(Some),
        }
    };
    let cfg = Config {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: g.get_usize(&key("feed_forward_length"))?,
        num_hidden_layers: g.get_usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_scaling,
        max_position_embeddings: opt_usize("context_length")?.unwrap_or(2048),
        tie_word_embeddings: g.tensor("output.weight").is_none(),
        attention_bias: architecture == Architecture::Qwen2,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
    };
    cfg.validate(&g.path)?;
    Ok(cfg)
}

pub fn open(g: &GgufFile) -> Result<(Config, Weights)> {
    let cfg = config_from_gguf(g)?;
    // llama.cpp permutes Q/K rows only for the llama architecture.
    let permuted = cfg.architecture == Architecture::Llama;
    let mut by_hf: HashMap<String, RawTensor> = HashMap::new();
    for t in &g.tensors {
        let Some(hf) = hf_name_for_gguf(&t.name) else {
            continue;
        };
        let shape: Vec<usize> = if t.shape.len() == 1 {
            vec![t.shape[0]]
        } else {
            vec![t.rows(), t.cols()]
        };
        let order = if permuted && (hf.ends_with("q_proj.weight") || hf.ends_with("k_proj.weight")) {
            RowOrder::RopeUnpermute { head_dim: cfg.head_dim }
        } else {
            RowOrder::Stored
        };
        by_hf.insert(
            hf,
            RawTensor {
                map: 0,
                offset: t.offset,
                len: t.n_bytes,
                dtype: t.dtype,
                shape,
                order,
            },
        );
    }
    let lookup = |n: &str| by_hf.get(n).cloned();
    let maps = vec![g.mmap().clone()];
    let a = Assembler {
        file: &g.path,
        maps: &maps,
        lookup: &lookup,
    };
    let w = assemble(&cfg, &a, maps.clone(), vec![g.path.clone()]).map_err(|e| gguf_tensor_names(e, g))?;
    Ok((cfg, w))
}

/// Errors from the assembler name HF tensors; a GGUF user looks for the GGUF name.
fn gguf_tensor_names(e: Error, _g: &GgufFile) -> Error {
    match e {
        Error::Tensor { file, tensor, what } => {
            let gg = super::gguf_names::gguf_name_for_hf(&tensor).unwrap_or_else(|| tensor.clone());
            Error::Tensor {
                file,
                tensor: if gg == tensor {
                    tensor
                } else {
                    format!("{gg} ({tensor})")
                },
                what,
            }
        }
        e => e,
    }
}
