//! The frozen weights: views into memory maps, never copied (norm vectors and biases,
//! a few KB per layer, are the only tensors expanded to f32 at open time).

use crate::error::{Error, Result};
use crate::kernels::matmul::{DecodeLayout, Precision, RowOrder, WeightRef};
use crate::model::config::Config;
use crate::quant::{DType, dequantize_row};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::OnceLock;

/// A 2-D weight matrix `[rows, cols]` (rows = output features) inside one of the maps.
#[derive(Clone, Debug)]
pub struct TensorSlice {
    pub name: String,
    pub map: usize,
    pub offset: usize,
    pub len: usize,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub order: RowOrder,
}

#[derive(Clone, Debug)]
pub struct Layer {
    pub input_layernorm: Vec<f32>,
    pub post_attention_layernorm: Vec<f32>,
    pub q_proj: TensorSlice,
    pub k_proj: TensorSlice,
    pub v_proj: TensorSlice,
    pub o_proj: TensorSlice,
    pub gate_proj: TensorSlice,
    pub up_proj: TensorSlice,
    pub down_proj: TensorSlice,
    pub q_bias: Option<Vec<f32>>,
    pub k_bias: Option<Vec<f32>>,
    pub v_bias: Option<Vec<f32>>,
}

/// The seven projections LoRA can target, by their HF module names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    pub fn hf_name(self) -> &'static str {
        match self {
            Proj::Q => "q_proj",
            Proj::K => "k_proj",
            Proj::V => "v_proj",
            Proj::O => "o_proj",
            Proj::Gate => "gate_proj",
            Proj::Up => "up_proj",
            Proj::Down => "down_proj",
        }
    }

    /// `self_attn` or `mlp`, the HF submodule holding the projection.
    pub fn hf_block(self) -> &'static str {
        match self {
            Proj::Q | Proj::K | Proj::V | Proj::O => "self_attn",
            Proj::Gate | Proj::Up | Proj::Down => "mlp",
        }
    }

    pub fn from_hf_name(s: &str) -> Option<Proj> {
        Proj::ALL.into_iter().find(|p| p.hf_name() == s)
    }
}

impl Layer {
    pub fn proj(&self, p: Proj) -> &TensorSlice {
        match p {
            Proj::Q => &self.q_proj,
            Proj::K => &self.k_proj,
            Proj::V => &self.v_proj,
            Proj::O => &self.o_proj,
            Proj::Gate => &self.gate_proj,
            Proj::Up => &self.up_proj,
            Proj::Down => &self.down_proj,
        }
    }
}

pub struct Weights {
    pub(crate) maps: Vec<Arc<Mmap>>,
    pub(crate) files: Vec<PathBuf>,
    pub embed_tokens: TensorSlice,
    /// The output projection: `embed_tokens` itself when the embeddings are tied.
    pub lm_head: TensorSlice,
    pub norm: Vec<f32>,
    pub layers: Vec<Layer>,
    /// The arithmetic of the products through these weights (`Model::with_precision`).
    pub(crate) precision: Precision,
    /// The matrices regrouped for decoding, by `(map, offset)`, once a generation made
    /// them (`Model::prepare_decoding`).
    pub(crate) decode: OnceLock<HashMap<(usize, usize), DecodeLayout>>,
    /// Whether `maps` map the files themselves (not anonymous copies of them).
    pub(crate) file_backed: bool,
}

impl Weights {
    pub fn view(&self, t: &TensorSlice) -> WeightRef<'_> {
        WeightRef {
            dtype: t.dtype,
            rows: t.rows,
            cols: t.cols,
            data: &self.maps[t.map][t.offset..t.offset + t.len],
            order: t.order,
            precision: self.precision,
            decode: self.decode.get().and_then(|d| d.get(&(t.map, t.offset))),
        }
    }

    /// Regroups the matrices decoding reads (every projection and the output head) for the
    /// decoding kernels, once; those without such a kernel on this CPU are left alone.
    pub(crate) fn prepare_decoding(&self) {
        self.decode.get_or_init(|| {
            use rayon::prelude::*;
            let mut todo: Vec<&TensorSlice> = self.layers.iter().flat_map(|l| Proj::ALL.map(|p| l.proj(p))).collect();
            todo.push(&self.lm_head);
            todo.par_iter()
                .filter_map(|t| {
                    let w = self.view(t);
                    if !DecodeLayout::helps(&w) {
                        return None;
                    }
                    let layout = DecodeLayout::new(&w)?;
                    if self.file_backed {
                        // Generation reads the copy from now on: the mapped pages it was
                        // made from leave this process's memory (they stay in the page
                        // cache, and come back if training reads them).
                        // SAFETY: the mapping is read-only and maps the file, which must
                        // stay unchanged while it is open; dropped pages are read from it
                        // again, with the same bytes, when next touched.
                        let dropped = unsafe {
                            self.maps[t.map].unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, t.offset, t.len)
                        };
                        // Only memory is at stake: a refusal leaves the pages mapped.
                        drop(dropped);
                    }
                    Some(((t.map, t.offset), layout))
                })
                .collect()
        });
    }

    /// Bytes of the regrouped copies made for decoding (zero before a generation).
    pub fn decode_copy_bytes(&self) -> usize {
        self.decode
            .get()
            .map_or(0, |d| d.values().map(|l| l.bytes().len()).sum())
    }

    /// Bytes of all memory maps (what `nudge info` reports as mapped).
    pub fn mapped_bytes(&self) -> usize {
        self.maps.iter().map(|m| m.len()).sum()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Every matrix with its HF name (lm_head only when untied).
    pub fn matrices(&self) -> Vec<&TensorSlice> {
        let mut v = vec![&self.embed_tokens];
        for l in &self.layers {
            for p in Proj::ALL {
                v.push(l.proj(p));
            }
        }
        if self.lm_head.name != self.embed_tokens.name {
            v.push(&self.lm_head);
        }
        v
    }
}

/// What a weight source (GGUF, safetensors) hands to `assemble`: a tensor's bytes location.
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub map: usize,
    pub offset: usize,
    pub len: usize,
    pub dtype: DType,
    /// Row-major logical shape: `[rows, cols]` for matrices, `[n]` for vectors.
    pub shape: Vec<usize>,
    pub order: RowOrder,
}

/// Looks tensors up by HF name and checks each shape against the config.
pub(crate) struct Assembler<'a> {
    pub file: &'a Path,
    pub maps: &'a [Arc<Mmap>],
    pub lookup: &'a dyn Fn(&str) -> Option<RawTensor>,
}

impl Assembler<'_> {
    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<TensorSlice> {
        let t = (self.lookup)(name).ok_or_else(|| Error::tensor(self.file, name, "missing"))?;
        if t.shape != [rows, cols] {
            return Err(Error::tensor(
                self.file,
                name,
                format!("shape {:?}, expected [{rows}, {cols}] from the config", t.shape),
            ));
        }
        self.check_bytes(name, &t, rows, cols)?;
        Ok(TensorSlice {
            name: name.to_string(),
            map: t.map,
            offset: t.offset,
            len: t.len,
            dtype: t.dtype,
            rows,
            cols,
            order: t.order,
        })
    }

    fn check_bytes(&self, name: &str, t: &RawTensor, rows: usize, cols: usize) -> Result<()> {
        let want = t.dtype.tensor_bytes(rows, cols).ok_or_else(|| {
            Error::tensor(
                self.file,
                name,
                format!("{cols} columns is not a whole number of {} blocks", t.dtype),
            )
        })?;
        if want != t.len {
            return Err(Error::tensor(
                self.file,
                name,
                format!("{} bytes, but {} x {} {} needs {want}", t.len, rows, cols, t.dtype),
            ));
        }
        let map_len = self.maps.get(t.map).map(|m| m.len()).unwrap_or(0);
        if t.offset.checked_add(t.len).is_none_or(|end| end > map_len) {
            return Err(Error::tensor(self.file, name, "data lies outside the file"));
        }
        Ok(())
    }

    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let t = (self.lookup)(name).ok_or_else(|| Error::tensor(self.file, name, "missing"))?;
        if t.shape.iter().product::<usize>() != n || t.shape.len() != 1 {
            return Err(Error::tensor(
                self.file,
                name,
                format!("shape {:?}, expected [{n}] from the config", t.shape),
            ));
        }
        self.check_bytes(name, &t, 1, n)?;
        let mut out = vec![0f32; n];
        dequantize_row(t.dtype, &self.maps[t.map][t.offset..t.offset + t.len], &mut out)?;
        Ok(out)
    }

    fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>> {
        if (self.lookup)(name).is_none() {
            return Ok(None);
        }
        self.vector(name, n).map(Some)
    }
}

/// Builds the weight set from HF-named tensors, checking every shape against `cfg`.
pub(crate) fn assemble(cfg: &Config, a: &Assembler, maps: Vec<Arc<Mmap>>, files: Vec<PathBuf>) -> Result<Weights> {
    let (h, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let embed_tokens = a.matrix("model.embed_tokens.weight", v, h)?;
    let lm_head = if cfg.tie_word_embeddings {
        embed_tokens.clone()
    } else {
        a.matrix("lm_head.weight", v, h)?
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let n = |s: &str| format!("model.layers.{l}.{s}");
        let bias = |s: &str, d: usize| -> Result<Option<Vec<f32>>> {
            if cfg.attention_bias {
                a.vector(&n(s), d).map(Some)
            } else {
                a.opt_vector(&n(s), d)
            }
        };
        layers.push(Layer {
            input_layernorm: a.vector(&n("input_layernorm.weight"), h)?,
            post_attention_layernorm: a.vector(&n("post_attention_layernorm.weight"), h)?,
            q_proj: a.matrix(&n("self_attn.q_proj.weight"), qd, h)?,
            k_proj: a.matrix(&n("self_attn.k_proj.weight"), kvd, h)?,
            v_proj: a.matrix(&n("self_attn.v_proj.weight"), kvd, h)?,
            o_proj: a.matrix(&n("self_attn.o_proj.weight"), h, qd)?,
            gate_proj: a.matrix(&n("mlp.gate_proj.weight"), i, h)?,
            up_proj: a.matrix(&n("mlp.up_proj.weight"), i, h)?,
            down_proj: a.matrix(&n("mlp.down_proj.weight"), h, i)?,
            q_bias: bias("self_attn.q_proj.bias", qd)?,
            k_bias: bias("self_attn.k_proj.bias", kvd)?,
            v_bias: bias("self_attn.v_proj.bias", kvd)?,
        });
    }
    let norm = a.vector("model.norm.weight", h)?;
    Ok(Weights {
        maps,
        files,
        embed_tokens,
        lm_head,
        norm,
        layers,
        precision: Precision::F32,
        decode: OnceLock::new(),
        file_backed: false,
    })
}
