//! PEFT's adapter directory: `adapter_config.json` + `adapter_model.safetensors`, tensor
//! names `base_model.model.model.layers.N.<block>.<proj>.lora_{A,B}.weight`, A `[r, in]`,
//! B `[out, r]`. Adapters are always in HF row order, also over a GGUF base whose Q/K rows
//! are stored permuted (the engine reads those rows through the inverse permutation).

use crate::adapter::{Adapter, LoraConfig, LoraInit, LoraPair};
use crate::error::{Error, Result};
use crate::fsutil::FileSet;
use crate::model::config::Config;
use crate::model::weights::Proj;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

pub fn tensor_name(layer: usize, p: Proj, ab: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.{}.{ab}.weight",
        p.hf_block(),
        p.hf_name()
    )
}

/// Parses `adapter_config.json`, refusing the PEFT options this engine does not implement.
pub fn read_config(path: &Path) -> Result<(LoraConfig, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    let field = |k: &str, what: &str| Error::field(path, k, what.to_string());
    match v.get("peft_type").and_then(Value::as_str) {
        Some("LORA") | None => {}
        Some(t) => return Err(field("peft_type", &format!("`{t}` is not LORA"))),
    }
    let r = v
        .get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0 && r <= 1 << 16)
        .ok_or_else(|| field("r", "missing or not a positive integer"))? as usize;
    let lora_alpha = match v.get("lora_alpha") {
        None => 8.0,
        Some(a) => a.as_f64().ok_or_else(|| field("lora_alpha", "not a number"))? as f32,
    };
    let targets: Vec<Proj> = match v.get("target_modules") {
        Some(Value::Array(a)) => {
            let mut t = Vec::new();
            for x in a {
                let s = x
                    .as_str()
                    .ok_or_else(|| field("target_modules", "not a list of module names"))?;
                let p = Proj::from_hf_name(s).ok_or_else(|| {
                    field(
                        "target_modules",
                        &format!("`{s}` is not one of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"),
                    )
                })?;
                if !t.contains(&p) {
                    t.push(p);
                }
            }
            t.sort();
            t
        }
        Some(Value::String(s)) if s == "all-linear" => Proj::ALL.to_vec(),
        Some(_) => {
            return Err(field(
                "target_modules",
                "only a list of module names or \"all-linear\" is supported",
            ));
        }
        None => return Err(field("target_modules", "missing")),
    };
    let flag = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
    for k in ["use_dora", "fan_in_fan_out", "use_qalora"] {
        if flag(k) {
            return Err(field(k, "is true; this engine supports plain LoRA only"));
        }
    }
    for k in ["rank_pattern", "alpha_pattern"] {
        if v.get(k).and_then(Value::as_object).is_some_and(|o| !o.is_empty()) {
            return Err(field(k, "per-module ranks or alphas are not supported"));
        }
    }
    for k in ["layers_to_transform", "modules_to_save"] {
        if v.get(k).is_some_and(|x| !x.is_null()) {
            return Err(field(
                k,
                "is set; this engine adapts every layer and saves no extra modules",
            ));
        }
    }
    if let Some(b) = v.get("bias").and_then(Value::as_str)
        && b != "none"
    {
        return Err(field("bias", &format!("`{b}`: only \"none\" is supported")));
    }
    let init = match v.get("init_lora_weights") {
        Some(Value::String(s)) if s == "gaussian" => LoraInit::Gaussian,
        _ => LoraInit::KaimingUniform,
    };
    let cfg = LoraConfig {
        r,
        lora_alpha,
        target_modules: targets,
        use_rslora: flag("use_rslora"),
        lora_dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
        init,
    };
    cfg.validate().map_err(|e| Error::field(path, "lora", e.to_string()))?;
    let base = v
        .get("base_model_name_or_path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Ok((cfg, base))
}

/// Loads a PEFT adapter directory for a model of configuration `model`.
pub fn load(dir: &Path, model: &Config) -> Result<Adapter> {
    let (config, base_model_name) = read_config(&dir.join(CONFIG_FILE))?;
    let wpath = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::read(&wpath).map_err(|e| Error::io(&wpath, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(&wpath, format!("invalid safetensors: {e}")))?;
    let mut seen: HashMap<String, bool> = st.names().into_iter().map(|n| (n.to_string(), false)).collect();
    let mut layers = Vec::with_capacity(model.num_hidden_layers);
    for li in 0..model.num_hidden_layers {
        let mut l: [Option<LoraPair>; 7] = Default::default();
        for &p in &config.target_modules {
            let (out, inp) = crate::adapter::proj_shape(model, p);
            let a = read_matrix(&st, &wpath, &tensor_name(li, p, "lora_A"), config.r, inp, &mut seen)?;
            let b = read_matrix(&st, &wpath, &tensor_name(li, p, "lora_B"), out, config.r, &mut seen)?;
            l[p as usize] = Some(LoraPair {
                a,
                b,
                in_features: inp,
                out_features: out,
            });
        }
        layers.push(l);
    }
    if let Some((name, _)) = seen.iter().find(|(_, used)| !**used) {
        return Err(Error::tensor(
            &wpath,
            name,
            "not part of an adapter of this model (another layer count or target list?)",
        ));
    }
    let base_fingerprint = st_metadata(&bytes, &wpath)?.remove(META_BASE_FINGERPRINT);
    Ok(Adapter {
        config,
        layers,
        base_model_name,
        base_fingerprint,
    })
}

fn read_matrix(
    st: &safetensors::SafeTensors,
    file: &Path,
    name: &str,
    rows: usize,
    cols: usize,
    seen: &mut HashMap<String, bool>,
) -> Result<Vec<f32>> {
    let t = st.tensor(name).map_err(|_| Error::tensor(file, name, "missing"))?;
    if t.shape() != [rows, cols] {
        return Err(Error::tensor(
            file,
            name,
            format!(
                "shape {:?}, expected [{rows}, {cols}] for this model and rank",
                t.shape()
            ),
        ));
    }
    let dtype = match t.dtype() {
        safetensors::Dtype::F32 => crate::quant::DType::F32,
        safetensors::Dtype::F16 => crate::quant::DType::F16,
        safetensors::Dtype::BF16 => crate::quant::DType::BF16,
        d => {
            return Err(Error::tensor(
                file,
                name,
                format!("dtype {d:?} is not supported (F32, F16, BF16)"),
            ));
        }
    };
    let mut out = vec![0f32; rows * cols];
    crate::quant::dequantize_row(dtype, t.data(), &mut out)?;
    seen.insert(name.to_string(), true);
    Ok(out)
}

/// The `adapter_config.json` PEFT writes for this adapter.
pub fn config_json(a: &Adapter) -> Value {
    let c = &a.config;
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": a.base_model_name,
        "r": c.r,
        "lora_alpha": c.lora_alpha,
        "lora_dropout": c.lora_dropout,
        "target_modules": c.target_modules.iter().map(|p| p.hf_name()).collect::<Vec<_>>(),
        "use_rslora": c.use_rslora,
        "init_lora_weights": match c.init { LoraInit::KaimingUniform => json!(true), LoraInit::Gaussian => json!("gaussian") },
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    })
}

/// Saves in PEFT's format. The two files are replaced as a set, the config last (see
/// [`FileSet`]): a crash never leaves new weights beside an old config.
pub fn save(a: &Adapter, dir: &Path) -> Result<()> {
    let cfg = serde_json::to_vec_pretty(&config_json(a)).expect("JSON values serialize");
    // Bytes first: the views below borrow them. Same order as `Adapter::tensors`.
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = a
        .layers
        .iter()
        .enumerate()
        .flat_map(|(li, l)| {
            Proj::ALL
                .into_iter()
                .filter_map(move |p| l[p as usize].as_ref().map(|pair| (li, p, pair)))
        })
        .flat_map(|(li, p, pair)| {
            let r = pair.a.len() / pair.in_features;
            [
                (
                    tensor_name(li, p, "lora_A"),
                    vec![r, pair.in_features],
                    le_bytes(&pair.a),
                ),
                (
                    tensor_name(li, p, "lora_B"),
                    vec![pair.out_features, r],
                    le_bytes(&pair.b),
                ),
            ]
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| {
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).expect("consistent view");
            (n.clone(), v)
        })
        .collect();
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    if let Some(fp) = &a.base_fingerprint {
        meta.insert(META_BASE_FINGERPRINT.to_string(), fp.clone());
    }
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::invalid(format!("serializing adapter: {e}")))?;
    let bytes = sorted_metadata(bytes)?;
    let mut set = FileSet::new(dir)?;
    set.add(WEIGHTS_FILE, &bytes)?;
    set.add(CONFIG_FILE, &cfg)?;
    set.commit(CONFIG_FILE)
}

/// The base model's fingerprint (`Model::fingerprint`) in the weights file's metadata,
/// where PEFT keeps whatever it finds and `adapter_config.json` stays PEFT's own.
pub const META_BASE_FINGERPRINT: &str = "nudge.base_fingerprint";

/// The same safetensors bytes with the `__metadata__` entries in sorted order: the crate
/// writes them in a hash map's order, which differs from run to run, and the same adapter
/// must give the same file.
fn sorted_metadata(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: String| Error::invalid(format!("serializing adapter: {what}"));
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
        .ok_or_else(|| bad("no header".into()))?;
    let header_end = 8usize
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad("bad header".into()))?;
    let mut header: Value = serde_json::from_slice(&bytes[8..header_end]).map_err(|e| bad(e.to_string()))?;
    if let Some(Value::Object(meta)) = header.get("__metadata__") {
        let sorted: std::collections::BTreeMap<String, Value> = meta.clone().into_iter().collect();
        header["__metadata__"] = Value::Object(sorted.into_iter().collect());
    }
    let mut h = serde_json::to_vec(&header).map_err(|e| bad(e.to_string()))?;
    // The data that follows stays 8-byte aligned, as the format asks.
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + bytes.len() - header_end);
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[header_end..]);
    Ok(out)
}

/// The `__metadata__` of a safetensors file (empty when it has none).
fn st_metadata(bytes: &[u8], file: &Path) -> Result<HashMap<String, String>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(file, format!("invalid safetensors: {e}")))?;
    Ok(meta.metadata().clone().unwrap_or_default())
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}
