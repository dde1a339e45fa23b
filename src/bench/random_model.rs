//! Models of a real model's shape with random weights, for measuring speed and memory at
//! sizes whose real weights the project cannot ship: `nudge bench random-model`.
//!
//! The GGUF is written block by block in Q4_1 (random quants, scales that keep every weight
//! within ±0.02 of zero, as initialized weights are); the HF bf16 folder is that model
//! converted (`nudge convert`), so both hold the same weights. The tokenizer (and its chat
//! template) is a donor model's: its ids are a prefix of the random model's vocabulary,
//! whose extra embedding rows are never produced by tokenizing, as with padded
//! vocabularies.

use crate::convert::convert_to_hf;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufValue, GgufWriter};
use crate::model::Model;
use crate::quant::{DType, FloatType};
use crate::rng::Rng;
use std::path::Path;

/// The dimensions of a Llama-architecture model.
#[derive(Clone, Debug, PartialEq)]
pub struct Shape {
    pub name: &'static str,
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub rope_theta: f32,
    pub context: usize,
    pub tied: bool,
}

/// Llama-3.2-1B's configuration (`meta-llama/Llama-3.2-1B`): 1.24 B parameters. Its
/// Llama 3 rope scaling is left out (it changes no cost).
pub const LLAMA_3_2_1B: Shape = Shape {
    name: "llama-3.2-1b",
    vocab: 128_256,
    hidden: 2048,
    intermediate: 8192,
    layers: 16,
    heads: 32,
    kv_heads: 8,
    rope_theta: 500_000.0,
    context: 131_072,
    tied: true,
};

/// SmolLM2-135M's configuration, for checking the tool against a known size.
pub const SMOLLM2_135M: Shape = Shape {
    name: "smollm2-135m",
    vocab: 49_152,
    hidden: 576,
    intermediate: 1536,
    layers: 30,
    heads: 9,
    kv_heads: 3,
    rope_theta: 100_000.0,
    context: 8192,
    tied: true,
};

pub const SHAPES: [&Shape; 2] = [&LLAMA_3_2_1B, &SMOLLM2_135M];

impl Shape {
    pub fn by_name(name: &str) -> Result<&'static Shape> {
        SHAPES.iter().copied().find(|s| s.name == name).ok_or_else(|| {
            let known: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
            Error::invalid(format!("unknown shape `{name}` (known: {})", known.join(", ")))
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Parameters, the embedding counted once when tied.
    pub fn n_params(&self) -> usize {
        let (h, i, kv) = (self.hidden, self.intermediate, self.kv_heads * self.head_dim());
        let layer = h * h * 2 + 2 * h * kv + 3 * h * i + 2 * h;
        let head = if self.tied { 0 } else { self.vocab * h };
        self.vocab * h + self.layers * layer + h + head
    }
}

/// Random Q4_1 blocks for `n` weights: `|d * q + m| <= 0.02`.
fn q4_1_blocks(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n / 32 * 20);
    for _ in 0..n / 32 {
        let d = half::f16::from_f32(rng.uniform(0.5, 1.0) * 0.04 / 15.0);
        let m = half::f16::from_f32(-7.5 * d.to_f32());
        out.extend_from_slice(&d.to_le_bytes());
        out.extend_from_slice(&m.to_le_bytes());
        for _ in 0..4 {
            out.extend_from_slice(&(rng.next_u64() as u32).to_le_bytes());
        }
    }
    out
}

/// Writes a GGUF Q4_1 model of `shape` with random weights (seeded), the tokenizer and chat
/// template of `donor` (a GGUF file; its vocabulary must fit in the shape's).
pub fn write_gguf(shape: &Shape, donor: &Path, seed: u64, out: &Path) -> Result<()> {
    let g = GgufFile::open(donor)?;
    let mut w = GgufWriter::new();
    w.set("general.architecture", "llama");
    w.set("general.name", format!("{} (random weights)", shape.name));
    let u32v = |v: usize| GgufValue::U32(v as u32);
    w.set("llama.block_count", u32v(shape.layers));
    w.set("llama.context_length", u32v(shape.context));
    w.set("llama.embedding_length", u32v(shape.hidden));
    w.set("llama.feed_forward_length", u32v(shape.intermediate));
    w.set("llama.attention.head_count", u32v(shape.heads));
    w.set("llama.attention.head_count_kv", u32v(shape.kv_heads));
    w.set("llama.rope.dimension_count", u32v(shape.head_dim()));
    w.set("llama.rope.freq_base", GgufValue::F32(shape.rope_theta));
    w.set("llama.attention.layer_norm_rms_epsilon", GgufValue::F32(1e-5));
    w.set("llama.vocab_size", u32v(shape.vocab));
    let mut donor_vocab = 0;
    for (k, v) in g.metadata.iter().filter(|(k, _)| k.starts_with("tokenizer.")) {
        if k == "tokenizer.ggml.tokens" {
            donor_vocab = v.as_array().map_or(0, <[GgufValue]>::len);
        }
        w.set(k.clone(), v.clone());
    }
    if donor_vocab == 0 || donor_vocab > shape.vocab {
        return Err(Error::invalid(format!(
            "{}: the donor's vocabulary ({donor_vocab} tokens) must be non-empty and fit in {}'s {}",
            donor.display(),
            shape.name,
            shape.vocab
        )));
    }
    let mut rng = Rng::new(seed);
    let (h, i, kv) = (shape.hidden, shape.intermediate, shape.kv_heads * shape.head_dim());
    let mut matrix = |w: &mut GgufWriter, name: String, rows: usize, cols: usize| -> Result<()> {
        w.add_tensor(name, DType::Q4_1, &[cols, rows], q4_1_blocks(&mut rng, rows * cols))?;
        Ok(())
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    matrix(&mut w, "token_embd.weight".into(), shape.vocab, h)?;
    if !shape.tied {
        matrix(&mut w, "output.weight".into(), shape.vocab, h)?;
    }
    w.add_tensor("output_norm.weight", DType::F32, &[h], ones(h))?;
    for l in 0..shape.layers {
        let b = |s: &str| format!("blk.{l}.{s}.weight");
        matrix(&mut w, b("attn_q"), h, h)?;
        matrix(&mut w, b("attn_k"), kv, h)?;
        matrix(&mut w, b("attn_v"), kv, h)?;
        matrix(&mut w, b("attn_output"), h, h)?;
        matrix(&mut w, b("ffn_gate"), i, h)?;
        matrix(&mut w, b("ffn_up"), i, h)?;
        matrix(&mut w, b("ffn_down"), h, i)?;
        w.add_tensor(b("attn_norm"), DType::F32, &[h], ones(h))?;
        w.add_tensor(b("ffn_norm"), DType::F32, &[h], ones(h))?;
    }
    w.write(out)
}

/// The model of [`write_gguf`] as an HF folder in bf16 (`nudge convert`).
pub fn write_hf_bf16(gguf: &Path, out: &Path) -> Result<()> {
    let m = Model::open(gguf)?;
    convert_to_hf(&m, out, FloatType::BF16)
}
