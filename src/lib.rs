//! nudge: on-device preference tuning of small language models.
//!
//! The base model stays memory-mapped and frozen (safetensors f32/f16/bf16 or GGUF in its
//! quantized form); feedback becomes a LoRA adapter trained with the DPO family on the CPU.

pub mod error;
pub mod fsutil;
pub mod gguf;
pub mod isa;
pub mod kernels;
pub mod model;
pub mod objective;
pub mod optim;
pub mod quant;
pub mod tokenizer;

pub use error::{Error, Result};
pub mod adapter;
pub mod bench;
pub mod convert;
pub mod data;
// Two collectors in `demo` still take eight arguments; that module is reworked apart.
#[allow(clippy::too_many_arguments)]
pub mod demo;
pub mod generate;
pub mod journal;
pub mod rng;
pub mod rope_scaling;
pub mod score;
pub mod taste;
pub mod train;
