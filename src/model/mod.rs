//! Model files (GGUF, HF safetensors directories), their configuration, and the network.

pub mod config;
pub mod gguf_model;
pub mod gguf_names;
mod head;
mod identity;
mod kv_cache;
mod llama;
pub use crate::file_bytes::WeightsLoad;
pub use head::TargetRows;
pub use kv_cache::KvCache;
pub use llama::{CachedSeq, Dropout, LoraCtx, Recompute, RecomputePlan, Tape};

/// Bytes of activations one layer keeps for the backward pass over `tokens` tokens with
/// LoRA rank `r` (what a [`Recompute::Budget`] is measured in).
pub fn activation_bytes(model: &Model, tokens: usize, r: usize) -> usize {
    llama::LayerActs::bytes_for(model, tokens, r)
}
pub mod safetensors_dir;
pub mod weights;

use crate::error::{Error, Result};
use crate::kernels::matmul::Precision;
use crate::kernels::rope::inv_freq;
use crate::tokenizer::{GgufVocab, TextTokenizer};
use config::Config;
use std::path::{Path, PathBuf};
use weights::Weights;

/// Where a model's weights come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// An HF directory with safetensors weights.
    Safetensors,
    /// A single GGUF file.
    Gguf,
}

/// A frozen base model: configuration, memory-mapped weights and tokenizer.
pub struct Model {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: TextTokenizer,
    pub(crate) inv_freq: Vec<f32>,
    name: String,
    /// Rows of the MLP's working buffers in passes that do not keep its intermediates
    /// (`None`: as many as fit in 16 MiB).
    mlp_chunk_rows: Option<usize>,
    /// Whether generation regroups the matrices for the decoding kernels.
    decode_copy: bool,
}

impl Model {
    /// Opens an HF model directory or a `.gguf` file. No weight matrix is copied: the
    /// files are memory-mapped, so they must not be truncated or rewritten while the model
    /// is open (replace a model by renaming a new file over it). [`Self::open_with`] with
    /// [`WeightsLoad::Read`] reads them into memory instead.
    pub fn open(path: impl AsRef<Path>) -> Result<Model> {
        Self::open_with(path, WeightsLoad::Map)
    }

    /// The model with its MLP run `rows` tokens at a time in every pass that does not keep
    /// the MLP's intermediates (the forward passes of scoring, generation and recomputed
    /// training layers, and every backward pass). Fewer rows use less memory; the default
    /// takes as many as fit in 16 MiB of working buffers. Forward results do not depend on
    /// it; gradients only through the order in which their rows are summed.
    pub fn with_mlp_chunk_rows(mut self, rows: usize) -> Self {
        self.mlp_chunk_rows = Some(rows.max(1));
        self
    }

    /// The model with the products through its frozen weights run in `precision`
    /// (the LoRA branches stay f32). An error when this CPU cannot run it.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self> {
        precision.check()?;
        self.weights.precision = precision;
        Ok(self)
    }

    /// The arithmetic of the products through the frozen weights.
    pub fn precision(&self) -> Precision {
        self.weights.precision
    }

    /// The model decoding from its weights as stored (mapped), without the copy regrouped
    /// for decoding that generation makes otherwise: less memory (the size of the
    /// quantized matrices), slower decoding, the same results.
    pub fn without_decode_copy(mut self) -> Self {
        self.decode_copy = false;
        self
    }

    /// Regroups the matrices decoding reads for this CPU's decoding kernels, once (the
    /// first generation does it; a no-op after [`Self::without_decode_copy`] or where the
    /// kernels read the stored layout). Results do not change; decoding gets faster.
    pub fn prepare_decoding(&self) {
        if self.decode_copy {
            self.weights.prepare_decoding();
        }
    }

    /// [`Self::open`] with the weights files mapped or read into memory.
    pub fn open_with(path: impl AsRef<Path>, how: WeightsLoad) -> Result<Model> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        // A file or folder name, not the path: names are written into shared adapters.
        let stem = |p: &Path| {
            let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
            let name = if p.is_dir() { p.file_name() } else { p.file_stem() };
            name.map_or_else(String::new, |s| s.to_string_lossy().into_owned())
        };
        let (format, config, weights, tokenizer, name) = if meta.is_dir() {
            let (c, w) = safetensors_dir::open(path, how)?;
            let tok = TextTokenizer::from_hf_dir(path)?;
            (ModelFormat::Safetensors, c, w, tok, stem(path))
        } else {
            let g = crate::gguf::GgufFile::open_with(path, how)?;
            let (c, w) = gguf_model::open(&g)?;
            let vocab = GgufVocab::from_metadata(&g.metadata, path)?;
            let tok = TextTokenizer::from_gguf_vocab(&vocab, path)?;
            let name = match g.get("general.name").and_then(|v| v.as_str()) {
                Some(n) if !n.trim().is_empty() => n.trim().to_string(),
                _ => stem(path),
            };
            (ModelFormat::Gguf, c, w, tok, name)
        };
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::field(
                path,
                "vocab_size",
                format!(
                    "the tokenizer has {} tokens but the embeddings only {} rows",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            ));
        }
        let inv_freq = inv_freq(config.head_dim, config.rope_theta, &config.rope_scaling);
        let mut weights = weights;
        weights.file_backed = how == WeightsLoad::Map;
        Ok(Model {
            path: path.to_path_buf(),
            format,
            config,
            weights,
            tokenizer,
            inv_freq,
            name,
            mlp_chunk_rows: None,
            decode_copy: true,
        })
    }
}
