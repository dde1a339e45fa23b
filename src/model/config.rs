//! The network's hyper-parameters, read from an HF `config.json` or from GGUF metadata.

use crate::error::{Error, Result};
pub use crate::rope_scaling::RopeScaling;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// Llama 2/3, SmolLM/SmolLM2, TinyLlama, and Mistral (whose math is the same within
    /// its sliding window).
    Llama,
    /// Qwen2: Llama with biases on q, k and v.
    Qwen2,
}

impl Architecture {
    /// The GGUF `general.architecture` name.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: RopeScaling,
    /// Longest sequence the engine accepts (the model's context, capped by a sliding window).
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Config {
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Structural checks shared by every source; `file` names where the values came from.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let pos = |field: &str, v: usize| {
            if v == 0 {
                Err(Error::field(file, field, "must be positive"))
            } else {
                Ok(())
            }
        };
        pos("vocab_size", self.vocab_size)?;
        pos("hidden_size", self.hidden_size)?;
        pos("intermediate_size", self.intermediate_size)?;
        pos("num_hidden_layers", self.num_hidden_layers)?;
        pos("num_attention_heads", self.num_attention_heads)?;
        pos("num_key_value_heads", self.num_key_value_heads)?;
        pos("max_position_embeddings", self.max_position_embeddings)?;
        // Guards the activation sizes computed from these numbers (`q_dim`, `kv_dim` and
        // every buffer shaped by them stay far from overflowing).
        let big = 1usize << 24;
        let small = 1usize << 16;
        for (name, v, limit) in [
            ("vocab_size", self.vocab_size, big),
            ("hidden_size", self.hidden_size, big),
            ("intermediate_size", self.intermediate_size, big),
            ("num_hidden_layers", self.num_hidden_layers, big),
            ("max_position_embeddings", self.max_position_embeddings, big),
            ("head_dim", self.head_dim, small),
            ("num_attention_heads", self.num_attention_heads, small),
            ("num_key_value_heads", self.num_key_value_heads, small),
        ] {
            if v > limit {
                return Err(Error::field(
                    file,
                    name,
                    format!("{v} is implausibly large (at most {limit})"),
                ));
            }
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return Err(Error::field(
                file,
                "head_dim",
                format!("{} is not a positive even number", self.head_dim),
            ));
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(Error::field(
                file,
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(Error::field(
                file,
                "rms_norm_eps",
                format!("{} is not a positive number", self.rms_norm_eps),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(Error::field(
                file,
                "rope_theta",
                format!("{} is not a number above 1", self.rope_theta),
            ));
        }
        if let RopeScaling::Factors(f) = &self.rope_scaling
            && f.len() != self.head_dim / 2
        {
            return Err(Error::field(
                file,
                "rope_freqs",
                format!("{} factors for head_dim {}", f.len(), self.head_dim),
            ));
        }
        self.validate_rope_scaling(file)
    }

    /// Scaling factors that divide positions or frequencies: positive and finite, or the
    /// rotary embedding turns to NaN (and every log-prob with it).
    fn validate_rope_scaling(&self, file: &Path) -> Result<()> {
        let positive = |name: &str, v: f32| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::field(file, name, format!("{v} is not a positive number")))
            }
        };
        match &self.rope_scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", *factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                positive("rope_scaling.factor", *factor)?;
                positive("rope_scaling.low_freq_factor", *low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", *high_freq_factor)?;
                // The smoothing between the two divides by their difference.
                if high_freq_factor <= low_freq_factor {
                    return Err(Error::field(
                        file,
                        "rope_scaling.high_freq_factor",
                        format!("{high_freq_factor} is not above low_freq_factor {low_freq_factor}"),
                    ));
                }
                if *original_max_position_embeddings == 0 {
                    return Err(Error::field(
                        file,
                        "rope_scaling.original_max_position_embeddings",
                        "must be positive",
                    ));
                }
                Ok(())
            }
            RopeScaling::Factors(f) => match f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                Some(v) => Err(Error::field(
                    file,
                    "rope_freqs",
                    format!("factor {v} is not a positive number"),
                )),
                None => Ok(()),
            },
        }
    }

    /// Parses an HF `config.json`.
    pub fn from_hf_json(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        Self::from_hf_value(&v, path)
    }

    pub fn from_hf_value(v: &Value, path: &Path) -> Result<Self> {
        let f = HfFields {
            v,
            path: path.to_path_buf(),
        };
        let model_type = f.opt_str("model_type")?.unwrap_or_default();
        let arch_name = match v.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str) {
            Some(a) => a.to_string(),
            None => model_type.clone(),
        };
        let architecture = match (model_type.as_str(), arch_name.as_str()) {
            ("llama" | "mistral", _) | (_, "LlamaForCausalLM" | "MistralForCausalLM") => Architecture::Llama,
            ("qwen2", _) | (_, "Qwen2ForCausalLM") => Architecture::Qwen2,
            _ => {
                return Err(Error::UnsupportedArchitecture {
                    file: path.to_path_buf(),
                    arch: if arch_name.is_empty() {
                        "<none given>".into()
                    } else {
                        arch_name
                    },
                });
            }
        };
        let hidden_size = f.usize("hidden_size")?;
        let num_attention_heads = f.usize("num_attention_heads")?;
        let num_key_value_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match f.opt_usize("head_dim")? {
            Some(h) => h,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        // transformers 5 moved rope settings into `rope_parameters`.
        let rope_params = v.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = match rope_params.and_then(|p| p.get("rope_theta")) {
            Some(t) => t
                .as_f64()
                .ok_or_else(|| Error::field(path, "rope_parameters.rope_theta", "not a number"))?
                as f32,
            None => f.opt_f64("rope_theta")?.unwrap_or(10000.0) as f32,
        };
        let scaling_v = rope_params.or_else(|| v.get("rope_scaling").filter(|s| s.is_object()));
        let rope_scaling = match scaling_v {
            None => RopeScaling::None,
            Some(s) => rope_scaling_from_hf(s, path)?,
        };
        let mut max_pos = f.opt_usize("max_position_embeddings")?.unwrap_or(2048);
        let sliding = if v.get("use_sliding_window").and_then(Value::as_bool) == Some(false) {
            None
        } else {
            f.opt_usize("sliding_window")?
        };
        if let Some(w) = sliding {
            // Full causal attention equals sliding-window attention on sequences that fit
            // in the window; longer ones are refused rather than computed wrongly.
            max_pos = max_pos.min(w);
        }
        let default_tie = false;
        let cfg = Config {
            architecture,
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            num_hidden_layers: f.usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            max_position_embeddings: max_pos,
            tie_word_embeddings: v
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(default_tie),
            attention_bias: architecture == Architecture::Qwen2
                || v.get("attention_bias").and_then(Value::as_bool).unwrap_or(false),
            bos_token_id: f.opt_token_id("bos_token_id")?,
            eos_token_id: f.opt_token_id("eos_token_id")?,
        };
        if v.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err(Error::field(path, "mlp_bias", "MLP biases are not supported"));
        }
        if let Some(act) = f.opt_str("hidden_act")?
            && act != "silu"
        {
            return Err(Error::field(
                path,
                "hidden_act",
                format!("activation `{act}` is not supported (only silu)"),
            ));
        }
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The `config.json` transformers would write for this model (used by `nudge convert`).
    pub fn to_hf_json(&self) -> Value {
        let (arch, model_type) = match self.architecture {
            Architecture::Llama => ("LlamaForCausalLM", "llama"),
            Architecture::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "torch_dtype": "float32",
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        if let Some(e) = self.eos_token_id {
            v["eos_token_id"] = e.into();
        }
        match &self.rope_scaling {
            RopeScaling::None | RopeScaling::Factors(_) => {}
            RopeScaling::Linear { factor } => {
                v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": factor})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                v["rope_scaling"] = serde_json::json!({
                    "rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                    "high_freq_factor": high_freq_factor,
                    "original_max_position_embeddings": original_max_position_embeddings,
                })
            }
        }
        v
    }
}

fn rope_scaling_from_hf(s: &Value, path: &Path) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f32> {
        s.get(k)
            .and_then(Value::as_f64)
            .map(|x| x as f32)
            .ok_or_else(|| Error::field(path, format!("rope_scaling.{k}"), "missing or not a number"))
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        },
        other => {
            return Err(Error::field(
                path,
                "rope_scaling.rope_type",
                format!("`{other}` is not supported (default, linear, llama3)"),
            ));
        }
    })
}

struct HfFields<'a> {
    v: &'a Value,
    path: PathBuf,
}

impl HfFields<'_> {
    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?.ok_or_else(|| Error::field(&self.path, k, "missing"))
    }
    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| Error::field(&self.path, k, format!("`{x}` is not a non-negative integer"))),
        }
    }
    fn opt_f64(&self, k: &str) -> Result<Option<f64>> {
        match self.v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::field(&self.path, k, format!("`{x}` is not a number"))),
        }
    }
    fn opt_str(&self, k: &str) -> Result<Option<String>> {
        match self.v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(x) => Err(Error::field(&self.path, k, format!("`{x}` is not a string"))),
        }
    }
    /// A token id, or the first of a list of ids (Llama 3 lists several eos ids).
    fn opt_token_id(&self, k: &str) -> Result<Option<u32>> {
        let x = match self.v.get(k) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(x) => x,
            },
            Some(x) => x,
        };
        x.as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .map(Some)
            .ok_or_else(|| Error::field(&self.path, k, format!("`{x}` is not a token id")))
    }
}
