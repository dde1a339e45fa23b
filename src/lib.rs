//! nudge: on-device preference tuning of small language models.
//!
//! An app collects thumbs-up / thumbs-down on a model's answers; nudge turns them into a
//! LoRA [`Adapter`] trained with DPO and its variants ([`Loss`]) on the CPU. The base
//! [`Model`] (HF safetensors in f32/f16/bf16, or GGUF in its quantized form) stays
//! memory-mapped and frozen, and doubles as DPO's reference policy.
//!
//! The pieces an app or a tool needs are at the crate root:
//!
//! - a model: [`Model::open`], its [`TextTokenizer`] and chat template ([`ChatMessage`]);
//! - scoring ([`Model::score`], [`Model::score_packed`] with [`ScoreItem`]) and generation
//!   ([`generate()`], [`generate_batch`], [`Generator`] with [`GenerateOptions`]);
//! - feedback: the crash-safe [`Journal`] of thumbs and pairs, and [`PreferenceSet`] read
//!   from TRL-format JSONL ([`Truncation`] as TRL cuts rows);
//! - training: [`Trainer`] with [`TrainConfig`] (loss, [`AdamWConfig`], [`Schedule`]),
//!   reporting [`StepMetrics`] under TRL's names;
//! - adapters: [`Adapter`] and [`LoraConfig`], saved and loaded as PEFT folders or
//!   llama.cpp GGUF files ([`adapter::peft`], [`adapter::gguf_lora`], [`adapter::load`]);
//!   their tensors, gradients and weight deltas read as [`ndarray`] views and arrays
//!   ([`Adapter::tensors`], [`LoraPair::delta_weight`]), as do logits
//!   ([`Model::forward_logits`]).
//!
//! Personalizing from a JSONL of preference pairs (`examples/personalize.rs` runs this):
//!
//! ```no_run
//! use nudge::{Adapter, Control, LoraConfig, Model, PreferenceSet, TrainConfig, Trainer, Truncation};
//!
//! # fn main() -> nudge::Result<()> {
//! let model = Model::open("models/SmolLM2-135M-Instruct.Q4_1.gguf")?;
//! let limits = Truncation::max_length(model.config.max_position_embeddings);
//! let pairs = PreferenceSet::from_jsonl(&model.tokenizer, "pairs.jsonl".as_ref(), &limits)?;
//! let adapter = Adapter::new(&model.config, LoraConfig::default(), 42, model.name())?;
//! let mut trainer = Trainer::new(&model, adapter, TrainConfig::default(), pairs)?;
//! trainer.run(&mut |m| {
//!     println!("step {}: loss {:.4}, reward accuracy {:.2}", m.step, m.loss, m.rewards.rewards_accuracies);
//!     Control::Continue
//! })?;
//! nudge::adapter::peft::save(&trainer.adapter, "my-adapter".as_ref())?;
//! # Ok(())
//! # }
//! ```
//!
//! Modules hidden from these docs (kernels, block formats, the GGUF container, ...) are
//! public for the project's benches and tests, not a stable interface.

pub mod adapter;
pub mod cancel;
pub mod convert;
pub mod data;
pub mod demo;
pub mod error;
pub mod generate;
pub mod journal;
pub mod model;
pub mod objective;
pub mod optim;
pub mod score;
pub mod taste;
pub mod threads;
pub mod tokenizer;
pub mod train;

#[doc(hidden)]
pub mod bench;
#[doc(hidden)]
pub mod buffers;
#[doc(hidden)]
pub mod file_bytes;
#[doc(hidden)]
pub mod fsutil;
#[doc(hidden)]
pub mod gguf;
#[doc(hidden)]
pub mod isa;
#[doc(hidden)]
pub mod kernels;
#[doc(hidden)]
pub mod quant;
#[doc(hidden)]
pub mod rng;
#[doc(hidden)]
pub mod rope_scaling;

/// The array types of the API's tensor-valued results ([`Model::forward_logits`],
/// [`Adapter::tensors`], [`LoraPair::delta_weight`]), re-exported so that callers use the
/// same version.
pub use ndarray;

pub use adapter::{Adapter, LoraConfig, LoraPair};
pub use data::{PreferenceSet, Truncation, TruncationMode};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, GenerateRequest, Generated, Generator, StopReason, generate, generate_batch};
pub use journal::{Durability, Journal, Record};
pub use model::{Model, ModelFormat};
pub use objective::{Loss, RewardMetrics};
pub use optim::{AdamWConfig, Schedule};
pub use score::{ScoreItem, Scored};
pub use tokenizer::{ChatMessage, TextTokenizer};
pub use train::{Control, EvalMetrics, StepMetrics, TrainConfig, Trainer};
