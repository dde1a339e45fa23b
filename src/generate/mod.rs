//! Text generation with a KV cache, so an app can see what an adapter does to the model's
//! replies: the prompt runs once ([`Model::prefill`]), then each new token is one
//! single-row step ([`Model::decode_step`]) against the cached keys and values.
//!
//! Sampling follows transformers' order (temperature, then top-k, then top-p) with a
//! seeded [`Rng`](crate::rng::Rng), so a seed reproduces a reply exactly; temperature 0 is greedy.
//!
//! [`generate_batch`] answers many requests together: every live row's new token runs
//! through one batched step ([`Model::decode_batch`]), so the weights are read once per
//! step for all rows instead of once per row. Identical prompts (samples of one prompt)
//! are prefilled once and their cache copied. The kernels are batch-invariant, so each
//! reply is bit-identical to [`generate`] of its request alone.
//!
//! The parts: `sampler` picks tokens, `single` generates one reply, `batch` many.

mod batch;
mod reply;
mod sampler;
mod session;
mod single;

pub use batch::{
    BatchGenerator, BatchOptions, BatchProgress, BatchToken, GenerateRequest, generate_batch, generate_batch_with,
};
pub use sampler::{Sampler, argmax};
pub use session::Session;
pub use single::{Generator, generate};

use crate::error::{Error, Result};
pub use crate::model::KvCache;
use crate::model::Model;

/// How to pick tokens and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Divides the logits; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens only (0 = all).
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities first reach `top_p`
    /// (1 = all).
    pub top_p: f32,
    pub seed: u64,
    /// Tokens that end the reply; `None` means the tokenizer's and the config's EOS.
    pub stop_tokens: Option<Vec<u32>>,
    /// Texts that end the reply where they first appear (left out of it); text that may be
    /// the start of one is streamed only once it cannot be.
    pub stop_strings: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: None,
            stop_strings: Vec::new(),
        }
    }
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid(format!(
                "temperature {} must be a number >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        if let Some(i) = self.stop_strings.iter().position(String::is_empty) {
            return Err(Error::invalid(format!("stop string {i} is empty")));
        }
        Ok(())
    }

    /// The stop tokens for `model`: the explicit list, or its EOS ids.
    pub fn stop_tokens_for(&self, model: &Model) -> Vec<u32> {
        match &self.stop_tokens {
            Some(s) => s.clone(),
            None => default_stop_tokens(model),
        }
    }
}

/// The tokenizer's EOS and the config's `eos_token_id`, without duplicates.
pub fn default_stop_tokens(model: &Model) -> Vec<u32> {
    let mut v: Vec<u32> = [model.tokenizer.eos_id(), model.config.eos_token_id]
        .into_iter()
        .flatten()
        .collect();
    v.dedup();
    v
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token (EOS) was generated; it is the last id.
    Eos,
    /// `max_new_tokens` were generated.
    Length,
    /// Prompt and reply fill the model's context (`max_position_embeddings`).
    ContextFull,
    /// The token callback asked to stop.
    Callback,
    /// A stop string appeared (the text ends before it).
    StopString,
}

impl StopReason {
    /// The name an app or a log shows (transformers' `finish_reason` where it has one).
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Length => "length",
            StopReason::ContextFull => "context",
            StopReason::Callback => "callback",
            StopReason::StopString => "stop_string",
        }
    }
}

/// A finished reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The new tokens, ending with the stop token when `stop_reason` is `Eos`.
    pub ids: Vec<u32>,
    /// The reply's text: the new tokens but the stop token, special tokens skipped.
    pub text: String,
    pub stop_reason: StopReason,
}

impl Generated {
    fn empty(stop_reason: StopReason) -> Self {
        Generated {
            ids: Vec::new(),
            text: String::new(),
            stop_reason,
        }
    }
}

/// What `text` adds after its first `*shown` bytes, which then cover it; empty while its
/// last character is incomplete (a byte-level token may end inside a character).
pub fn text_delta<'t>(text: &'t str, shown: &mut usize) -> &'t str {
    let delta = match text.get(*shown..) {
        Some(d) if !text.ends_with('\u{FFFD}') => d,
        _ => "",
    };
    *shown += delta.len();
    delta
}
