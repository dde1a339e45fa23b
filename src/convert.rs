//! Writing a model as an HF directory (`config.json`, `model.safetensors`, tokenizer files
//! and chat template) in f32, f16 or bf16, whatever format it was opened from.

use crate::error::{Error, Result};
use crate::fsutil::{AtomicFile, FileSet};
use crate::kernels::matmul::WeightRef;
use crate::model::Model;
use crate::model::config::RopeScaling;
pub use crate::quant::FloatType;
use std::borrow::Cow;
use std::path::Path;

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

/// Writes safetensors tensors to `path`, atomically.
pub fn write_safetensors(tensors: Vec<(String, LazyTensor<'_>)>, path: &Path) -> Result<()> {
    let f = AtomicFile::new(path)?;
    serialize_into(tensors, &f)?;
    f.commit().map(drop)
}

/// Streams the tensors into a staged file, one tensor expanded at a time. (The crate
/// writes to a path only: it reopens the temporary file, which the commit then fsyncs.)
fn serialize_into(tensors: Vec<(String, LazyTensor<'_>)>, f: &AtomicFile) -> Result<()> {
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(meta), f.temp_path())
        .map_err(|e| Error::format(f.path(), format!("writing safetensors: {e}")))
}

/// Writes `model` as an HF directory `dir`: config, tokenizer files, chat template and
/// `tensors` as `model.safetensors`, replaced as one set (`config.json` last, see
/// [`FileSet`]).
pub fn write_hf_dir(model: &Model, dir: &Path, dtype: FloatType, tensors: Vec<(String, LazyTensor<'_>)>) -> Result<()> {
    if let RopeScaling::Factors(_) = model.config.rope_scaling {
        return Err(Error::invalid(
            "this model's rope scaling is stored as per-frequency factors (rope_freqs.weight), which an HF config.json cannot express",
        ));
    }
    let mut set = FileSet::new(dir)?;
    let mut cfg = model.config.to_hf_json();
    cfg["torch_dtype"] = dtype.torch_name().into();
    let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("JSON values serialize");
    set.add("config.json", &json(&cfg))?;
    let tok = &model.tokenizer;
    set.add("tokenizer.json", tok.to_tokenizer_json()?.as_bytes())?;
    set.add("tokenizer_config.json", &json(&tok.tokenizer_config_json()))?;
    if let Some(t) = tok.chat_template_source() {
        set.add("chat_template.jinja", t.as_bytes())?;
    }
    set.add_with("model.safetensors", |f| serialize_into(tensors, f))?;
    set.commit("config.json")
}

/// `nudge convert`: the model as an HF directory in `dtype`.
pub fn convert_to_hf(model: &Model, dir: &Path, dtype: FloatType) -> Result<()> {
    write_hf_dir(model, dir, dtype, hf_tensors(model, dtype))
}
