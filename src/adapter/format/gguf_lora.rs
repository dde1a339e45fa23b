//! llama.cpp's LoRA adapter files: a GGUF that `llama-cli --lora` (and
//! `llama_adapter_lora_init`) applies on top of the same GGUF base.
//!
//! What llama.cpp expects (`src/llama-adapter.cpp`, `convert_lora_to_gguf.py`):
//! - metadata `general.type = "adapter"`, `adapter.type = "lora"`,
//!   `general.architecture` equal to the base's (checked against the loaded model), and
//!   `adapter.lora.alpha` as an f32 (read with `gguf_get_val_f32`, which accepts no other
//!   type). The scale is `alpha / r` with `r = lora_b.ne[0]`; an alpha of 0 (or none)
//!   means scale 1.
//! - per adapted matrix two tensors named after the base tensor, `blk.N.attn_q.weight.lora_a`
//!   and `.lora_b`. In ggml order (`ne[0]` contiguous) `lora_a` is `[in, r]` and `lora_b`
//!   `[r, out]`, i.e. PEFT's A `[r, in]` and B `[out, r]` row-major, unchanged; llama.cpp
//!   checks `base.ne[0] == a.ne[0]`, `base.ne[1] == b.ne[1]` and `a.ne[1] == b.ne[0]`, and
//!   computes `y += scale * B (A x)`.
//! - for the llama architecture the base's Q and K rows are stored permuted (interleaved
//!   rotary pairs, see [`rope_unpermute_row`]); `convert_lora_to_gguf.py` runs the same
//!   permutation on the adapter, which moves B's rows and leaves A alone. Adapters here
//!   are in HF row order, so B's Q/K rows are permuted on write and unpermuted on read.
//!   That holds for an HF base too: llama.cpp runs on that base's GGUF conversion, which
//!   `convert_hf_to_gguf.py` permutes for every model it converts as `llama` (Llama,
//!   Mistral). qwen2 is converted without the permutation, so its rows stay as they are.
//!
//! rsLoRA: llama.cpp only knows `alpha / r`, so an adapter trained with the rsLoRA scale
//! `alpha / sqrt(r)` is written with `adapter.lora.alpha = alpha * sqrt(r)` (then
//! `alpha' / r = alpha / sqrt(r)`); A and B are written exactly as trained. Reading such a
//! file back gives a plain-LoRA config with that alpha and the same effective scale.

use crate::adapter::{Adapter, LoraConfig, LoraPair, proj_shape};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufTensorInfo, GgufValue, GgufWriter};
use crate::model::config::{Architecture, Config};
use crate::model::gguf_names::{gguf_name_for_hf, hf_name_for_gguf, rope_permute_row, rope_unpermute_row};
use crate::model::weights::Proj;
use crate::model::{Model, ModelFormat};
use crate::quant::{DType, FloatType};
use std::collections::BTreeMap;
use std::path::Path;

pub const KEY_TYPE: &str = "general.type";
pub const KEY_ADAPTER_TYPE: &str = "adapter.type";
pub const KEY_LORA_ALPHA: &str = "adapter.lora.alpha";
pub const KEY_NAME: &str = "general.name";
pub const KEY_BASE_MODEL_COUNT: &str = "general.base_model.count";
pub const KEY_BASE_MODEL_NAME: &str = "general.base_model.0.name";
/// The base model's fingerprint (`Model::fingerprint`); llama.cpp ignores the key.
pub const KEY_BASE_FINGERPRINT: &str = "nudge.base_fingerprint";
const KEY_QUANTIZATION_VERSION: &str = "general.quantization_version";
/// ggml's `GGML_QNT_VERSION`, which gguf-py's writers record in every file.
const QUANTIZATION_VERSION: u32 = 2;

/// The base tensor's GGUF name plus `.lora_a` / `.lora_b`.
pub fn tensor_name(layer: usize, p: Proj, ab: Ab) -> String {
    let hf = format!("model.layers.{layer}.{}.{}.weight", p.hf_block(), p.hf_name());
    let base = gguf_name_for_hf(&hf).expect("every projection has a GGUF name");
    format!("{base}{}", ab.suffix())
}

/// Which half of a pair a tensor holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ab {
    A,
    B,
}

impl Ab {
    pub fn suffix(self) -> &'static str {
        match self {
            Ab::A => ".lora_a",
            Ab::B => ".lora_b",
        }
    }
}

/// Whether llama.cpp holds this projection's rows permuted for models of `cfg`'s
/// architecture (Q and K of llama).
pub fn rows_permuted(cfg: &Config, p: Proj) -> bool {
    cfg.architecture == Architecture::Llama && matches!(p, Proj::Q | Proj::K)
}

/// The `general.architecture` llama.cpp gives the base: a GGUF base's own value; for an
/// HF base the one `convert_hf_to_gguf.py` writes for it (`llama` for Llama and Mistral).
pub fn base_architecture(model: &Model) -> Result<String> {
    match model.format {
        ModelFormat::Gguf => Ok(GgufFile::open(&model.path)?.architecture()?.to_string()),
        ModelFormat::Safetensors => Ok(model.config.architecture.gguf_name().to_string()),
    }
}

/// The engine's architecture for a GGUF `general.architecture` (as the model reader maps it).
fn architecture_of(name: &str) -> Option<Architecture> {
    match name {
        "llama" | "mistral" => Some(Architecture::Llama),
        "qwen2" => Some(Architecture::Qwen2),
        _ => None,
    }
}

/// The `adapter.lora.alpha` that gives llama.cpp's `alpha / r` the adapter's scale.
pub fn llama_cpp_alpha(c: &LoraConfig) -> f32 {
    if c.use_rslora {
        (c.lora_alpha as f64 * (c.r as f64).sqrt()) as f32
    } else {
        c.lora_alpha
    }
}

/// Writes `adapter` as a llama.cpp LoRA GGUF for `model` (tensors in `dtype`).
pub fn save(adapter: &Adapter, model: &Model, path: &Path, dtype: FloatType) -> Result<()> {
    let arch = base_architecture(model)?;
    to_writer(adapter, &model.config, &arch, dtype, path)?.write(path)
}

/// The adapter's GGUF for a base of configuration `cfg` whose `general.architecture` is
/// `arch`; `file` names the adapter in errors.
pub fn to_writer(adapter: &Adapter, cfg: &Config, arch: &str, dtype: FloatType, file: &Path) -> Result<GgufWriter> {
    if architecture_of(arch) != Some(cfg.architecture) {
        return Err(Error::field(
            file,
            crate::gguf::KEY_ARCHITECTURE,
            format!(
                "`{arch}` does not name the base's architecture ({})",
                cfg.architecture.gguf_name()
            ),
        ));
    }
    adapter.config.validate()?;
    adapter.check_fits(cfg, file)?;
    let mut w = GgufWriter::new();
    w.set(crate::gguf::KEY_ARCHITECTURE, arch);
    w.set(KEY_TYPE, "adapter");
    w.set(KEY_ADAPTER_TYPE, "lora");
    w.set(KEY_LORA_ALPHA, GgufValue::F32(llama_cpp_alpha(&adapter.config)));
    w.set(KEY_QUANTIZATION_VERSION, QUANTIZATION_VERSION);
    if !adapter.base_model_name.is_empty() {
        w.set(KEY_NAME, format!("{} LoRA", adapter.base_model_name));
        w.set(KEY_BASE_MODEL_COUNT, 1u32);
        w.set(KEY_BASE_MODEL_NAME, adapter.base_model_name.as_str());
    }
    if let Some(fp) = &adapter.base_fingerprint {
        w.set(KEY_BASE_FINGERPRINT, fp.as_str());
    }
    let ty = ggml_dtype(dtype);
    let encode = |v: &[f32]| {
        let mut out = Vec::new();
        dtype.encode(v, &mut out);
        out
    };
    let r = adapter.config.r;
    for (li, layer) in adapter.layers.iter().enumerate() {
        for p in Proj::ALL {
            let Some(pair) = &layer[p as usize] else {
                continue;
            };
            let (out, inp) = (pair.out_features, pair.in_features);
            w.add_tensor(tensor_name(li, p, Ab::A), ty, &[inp, r], encode(&pair.a))?;
            let b = if rows_permuted(cfg, p) {
                // GGUF row g holds HF row rope_permute_row(g).
                let mut b = vec![0f32; pair.b.len()];
                for (g, row) in b.chunks_exact_mut(r).enumerate() {
                    let h = rope_permute_row(g, cfg.head_dim);
                    row.copy_from_slice(&pair.b[h * r..(h + 1) * r]);
                }
                b
            } else {
                pair.b.clone()
            };
            w.add_tensor(tensor_name(li, p, Ab::B), ty, &[r, out], encode(&b))?;
        }
    }
    Ok(w)
}

fn ggml_dtype(t: FloatType) -> DType {
    match t {
        FloatType::F32 => DType::F32,
        FloatType::F16 => DType::F16,
        FloatType::BF16 => DType::BF16,
    }
}

/// Reads a llama.cpp LoRA GGUF for a base of configuration `cfg`, B's Q/K rows back in HF
/// order. Refuses what the engine cannot apply exactly as llama.cpp would: adapters of
/// other architectures or shapes, norm or embedding tensors, pairs missing a half, mixed
/// ranks, and projections adapted in some layers but not in others.
pub fn load(path: &Path, cfg: &Config) -> Result<Adapter> {
    let g = GgufFile::open(path)?;
    let field = |k: &str, what: String| Error::field(path, k, what);
    for (key, want) in [(KEY_TYPE, "adapter"), (KEY_ADAPTER_TYPE, "lora")] {
        let v = g.get_str(key)?;
        if v != want {
            return Err(field(key, format!("`{v}`, expected `{want}`")));
        }
    }
    let arch = g.architecture()?;
    let Some(file_arch) = architecture_of(arch) else {
        return Err(Error::UnsupportedArchitecture {
            file: path.to_path_buf(),
            arch: arch.to_string(),
        });
    };
    if file_arch != cfg.architecture {
        return Err(field(
            crate::gguf::KEY_ARCHITECTURE,
            format!(
                "the adapter is for a `{arch}` model, the base is {}",
                cfg.architecture.gguf_name()
            ),
        ));
    }
    let alpha = match g.get(KEY_LORA_ALPHA) {
        None => None,
        Some(GgufValue::F32(a)) if a.is_finite() && *a >= 0.0 => Some(*a).filter(|&a| a > 0.0),
        Some(v) => {
            return Err(field(
                KEY_LORA_ALPHA,
                format!(
                    "{} {v}: llama.cpp reads a non-negative f32 (0 meaning scale 1)",
                    v.type_name()
                ),
            ));
        }
    };

    // (layer, projection) → (lora_a, lora_b)
    type Halves<'a> = (Option<&'a GgufTensorInfo>, Option<&'a GgufTensorInfo>);
    let mut found: BTreeMap<(usize, Proj), Halves> = BTreeMap::new();
    for t in &g.tensors {
        let bad = |what: String| Error::tensor(path, &t.name, what);
        let (base, ab) = if let Some(b) = t.name.strip_suffix(Ab::A.suffix()) {
            (b, Ab::A)
        } else if let Some(b) = t.name.strip_suffix(Ab::B.suffix()) {
            (b, Ab::B)
        } else {
            return Err(bad(
                "not a LoRA tensor (`.lora_a` / `.lora_b`); norm or other extra tensors are not supported".into(),
            ));
        };
        let (layer, p) = hf_name_for_gguf(base)
            .as_deref()
            .and_then(layer_projection)
            .ok_or_else(|| {
                bad(format!(
                    "adapts `{base}`; only the seven projections of each layer can be adapted"
                ))
            })?;
        if layer >= cfg.num_hidden_layers {
            return Err(bad(format!(
                "layer {layer}, but the base has {} layers",
                cfg.num_hidden_layers
            )));
        }
        let slot = found.entry((layer, p)).or_default();
        match ab {
            Ab::A => slot.0 = Some(t),
            Ab::B => slot.1 = Some(t),
        }
    }
    let Some(first) = found.values().find_map(|h| h.0.or(h.1)) else {
        return Err(Error::format(path, "no LoRA tensors"));
    };
    // lora_a is [in, r], lora_b [r, out] in ggml order.
    let r = if first.name.ends_with(Ab::A.suffix()) {
        first.shape.get(1).copied()
    } else {
        first.shape.first().copied()
    }
    .filter(|&r| r > 0)
    .ok_or_else(|| Error::tensor(path, &first.name, format!("shape {:?} has no rank", first.shape)))?;

    let targets: Vec<Proj> = Proj::ALL
        .into_iter()
        .filter(|p| found.keys().any(|(_, q)| q == p))
        .collect();
    let mut layers: Vec<[Option<LoraPair>; 7]> = (0..cfg.num_hidden_layers).map(|_| Default::default()).collect();
    for (li, layer) in layers.iter_mut().enumerate() {
        for &p in &targets {
            let (out, inp) = proj_shape(cfg, p);
            let halves = found.get(&(li, p)).copied().unwrap_or_default();
            let a = read_half(&g, halves.0, tensor_name(li, p, Ab::A), [inp, r])?;
            let b_file = read_half(&g, halves.1, tensor_name(li, p, Ab::B), [r, out])?;
            let b = if rows_permuted(cfg, p) {
                // HF row h is GGUF row rope_unpermute_row(h).
                let mut b = vec![0f32; b_file.len()];
                for (h, row) in b.chunks_exact_mut(r).enumerate() {
                    let gr = rope_unpermute_row(h, cfg.head_dim);
                    row.copy_from_slice(&b_file[gr * r..(gr + 1) * r]);
                }
                b
            } else {
                b_file
            };
            layer[p as usize] = Some(LoraPair {
                a,
                b,
                in_features: inp,
                out_features: out,
            });
        }
    }
    let config = LoraConfig {
        r,
        // llama.cpp: no alpha (or 0) means scale 1, i.e. alpha = r.
        lora_alpha: alpha.unwrap_or(r as f32),
        target_modules: targets,
        use_rslora: false,
        lora_dropout: 0.0,
        init: Default::default(),
    };
    config.validate().map_err(|e| field(KEY_LORA_ALPHA, e.to_string()))?;
    let base_model_name = g
        .get(KEY_BASE_MODEL_NAME)
        .and_then(GgufValue::as_str)
        .unwrap_or_default()
        .to_string();
    let base_fingerprint = g
        .get(KEY_BASE_FINGERPRINT)
        .and_then(GgufValue::as_str)
        .map(str::to_string);
    Ok(Adapter {
        config,
        layers,
        base_model_name,
        base_fingerprint,
    })
}

/// (layer, projection) of an HF name `model.layers.N.<block>.<proj>.weight`.
fn layer_projection(hf: &str) -> Option<(usize, Proj)> {
    let rest = hf.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
    let (layer, module) = rest.split_once('.')?;
    let (block, proj) = module.split_once('.')?;
    let p = Proj::from_hf_name(proj).filter(|p| p.hf_block() == block)?;
    Some((layer.parse().ok()?, p))
}

/// One half of a pair as f32 `[ne1, ne0]` row-major, its ggml shape checked.
fn read_half(g: &GgufFile, t: Option<&GgufTensorInfo>, name: String, shape: [usize; 2]) -> Result<Vec<f32>> {
    let t = t.ok_or_else(|| {
        Error::tensor(
            &g.path,
            &name,
            "missing (every adapted projection needs both halves, in every layer)",
        )
    })?;
    if t.shape != shape {
        return Err(Error::tensor(
            &g.path,
            &name,
            format!(
                "ggml shape {:?}, expected {shape:?} for this base and rank (a LoRA of another model?)",
                t.shape
            ),
        ));
    }
    g.dequantize(t)
}
