//! Writing a model as an HF directory (`config.json`, `model.safetensors`, tokenizer files
//! and chat template) in f32, f16 or bf16, whatever format it was opened from.

use crate::error::{Error, Result};
use crate::kernels::matmul::WeightRef;
use crate::model::Model;
use crate::model::config::RopeScaling;
use std::borrow::Cow;
use std::path::Path;

/// Element type of an exported safetensors file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    BF16,
}

impl std::str::FromStr for FloatType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(FloatType::F32),
            "f16" | "float16" => Ok(FloatType::F16),
            "bf16" | "bfloat16" => Ok(FloatType::BF16),
            _ => Err(Error::invalid(format!("dtype `{s}` is not one of f32, f16, bf16"))),
        }
    }
}

impl FloatType {
    fn safetensors(self) -> safetensors::Dtype {
        match self {
            FloatType::F32 => safetensors::Dtype::F32,
            FloatType::F16 => safetensors::Dtype::F16,
            FloatType::BF16 => safetensors::Dtype::BF16,
        }
    }
    fn torch_name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::BF16 => "bfloat16",
        }
    }
    fn size(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::BF16 => 2,
        }
    }
    /// Encodes f32 values (round to nearest even for the 16-bit types).
    pub fn encode(self, v: &[f32], out: &mut Vec<u8>) {
        match self {
            FloatType::F32 => v.iter().for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            FloatType::F16 => v
                .iter()
                .for_each(|x| out.extend_from_slice(&half::f16::from_f32(*x).to_le_bytes())),
            FloatType::BF16 => v
                .iter()
                .for_each(|x| out.extend_from_slice(&half::bf16::from_f32(*x).to_le_bytes())),
        }
    }
}

/// A tensor produced on demand while the file is written, so only one tensor is ever
/// expanded in memory.
pub struct LazyTensor<'a> {
    shape: Vec<usize>,
    dtype: FloatType,
    source: Source<'a>,
}

/// An in-place edit of a whole expanded matrix `[rows, cols]` before it is encoded.
pub type MatrixEdit<'a> = &'a (dyn Fn(&mut [f32]) + Sync);

enum Source<'a> {
    Matrix(WeightRef<'a>, Option<MatrixEdit<'a>>),
    Vector(&'a [f32]),
}

impl<'a> LazyTensor<'a> {
    /// A weight matrix, optionally modified (e.g. an adapter merged in) before encoding.
    pub fn matrix(w: WeightRef<'a>, dtype: FloatType, edit: Option<MatrixEdit<'a>>) -> Self {
        LazyTensor {
            shape: vec![w.rows, w.cols],
            dtype,
            source: Source::Matrix(w, edit),
        }
    }
    pub fn vector(v: &'a [f32], dtype: FloatType) -> Self {
        LazyTensor {
            shape: vec![v.len()],
            dtype,
            source: Source::Vector(v),
        }
    }
}

impl safetensors::View for LazyTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype.safetensors()
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let mut out = Vec::with_capacity(self.data_len());
        match &self.source {
            Source::Vector(v) => self.dtype.encode(v, &mut out),
            Source::Matrix(w, edit) => {
                let mut m = vec![0f32; w.rows * w.cols];
                for (r, row) in m.chunks_exact_mut(w.cols).enumerate() {
                    w.row(r, row);
                }
                if let Some(f) = edit {
                    f(&mut m);
                }
                self.dtype.encode(&m, &mut out);
            }
        }
        Cow::Owned(out)
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsync, rename,
/// fsync of the folder (the rename is durable once the directory entry is).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp-write");
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        // Best effort: some filesystems refuse fsync on a directory.
        let _ = d.sync_all();
    }
    Ok(())
}

/// The HF-named tensors of a model (lm_head only when untied), each with its export form.
pub fn hf_tensors<'a>(model: &'a Model, dtype: FloatType) -> Vec<(String, LazyTensor<'a>)> {
    hf_tensors_with(model, dtype, &|_| None)
}

/// [`hf_tensors`] with an optional edit per matrix, looked up by the matrix's HF name
/// (e.g. an adapter merged into `model.layers.3.self_attn.q_proj.weight`). The edit sees
/// the whole matrix in HF row order, whatever order the file stores its rows in.
pub fn hf_tensors_with<'a>(
    model: &'a Model,
    dtype: FloatType,
    edit_for: &dyn Fn(&str) -> Option<MatrixEdit<'a>>,
) -> Vec<(String, LazyTensor<'a>)> {
    let w = &model.weights;
    let mut out: Vec<(String, LazyTensor)> = Vec::new();
    for m in w.matrices() {
        out.push((m.name.clone(), LazyTensor::matrix(w.view(m), dtype, edit_for(&m.name))));
    }
    for (i, l) in w.layers.iter().enumerate() {
        let n = |s: &str| format!("model.layers.{i}.{s}");
        out.push((
            n("input_layernorm.weight"),
            LazyTensor::vector(&l.input_layernorm, dtype),
        ));
        out.push((
            n("post_attention_layernorm.weight"),
            LazyTensor::vector(&l.post_attention_layernorm, dtype),
        ));
        for (b, s) in [
            (&l.q_bias, "self_attn.q_proj.bias"),
            (&l.k_bias, "self_attn.k_proj.bias"),
            (&l.v_bias, "self_attn.v_proj.bias"),
        ] {
            if let Some(b) = b {
                out.push((n(s), LazyTensor::vector(b, dtype)));
            }
        }
    }
    out.push(("model.norm.weight".into(), LazyTensor::vector(&w.norm, dtype)));
    out
}

/// Writes safetensors tensors to `path` (temporary file + rename).
pub fn write_safetensors(tensors: Vec<(String, LazyTensor<'_>)>, path: &Path) -> Result<()> {
    let tmp = path.with_extension("tmp-write");
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), &tmp)
        .map_err(|e| Error::format(&tmp, format!("writing safetensors: {e}")))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes config, tokenizer files and chat template of `model` into `dir` (for any
/// export that produces an HF model directory).
pub fn write_hf_metadata(model: &Model, dir: &Path, dtype: FloatType) -> Result<()> {
    if let RopeScaling::Factors(_) = model.config.rope_scaling {
        return Err(Error::invalid(
            "this model's rope scaling is stored as per-frequency factors (rope_freqs.weight), which an HF config.json cannot express",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut cfg = model.config.to_hf_json();
    cfg["torch_dtype"] = dtype.torch_name().into();
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("JSON values serialize");
    write_atomic(&dir.join("config.json"), &json(&cfg))?;
    let tok = &model.tokenizer;
    write_atomic(&dir.join("tokenizer.json"), tok.to_tokenizer_json()?.as_bytes())?;
    write_atomic(&dir.join("tokenizer_config.json"), &json(&tok.tokenizer_config_json()))?;
    if let Some(t) = tok.chat_template_source() {
        write_atomic(&dir.join("chat_template.jinja"), t.as_bytes())?;
    }
    Ok(())
}

/// `nudge convert`: the model as an HF directory in `dtype`.
pub fn convert_to_hf(model: &Model, dir: &Path, dtype: FloatType) -> Result<()> {
    write_hf_metadata(model, dir, dtype)?;
    write_safetensors(hf_tensors(model, dtype), &dir.join("model.safetensors"))
}
