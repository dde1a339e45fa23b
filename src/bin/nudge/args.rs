//! Arguments several commands share: the model, an adapter in either format, float types,
//! and the loss name (a closed list that `--help` shows, with parameters as suffixes).

use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Args, ValueEnum};
use nudge::adapter::{self, Adapter, BaseCheck};
use nudge::convert::FloatType;
use nudge::generate::GenerateOptions;
use nudge::kernels::matmul::Precision;
use nudge::model::{Model, WeightsLoad};
use nudge::objective::LOSS_NAMES as NAMES;
use nudge::{Error, Result};
use std::path::{Path, PathBuf};

/// `--no-mmap`, set once by `main` before any model is opened.
static NO_MMAP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_weights_load(how: WeightsLoad) {
    NO_MMAP.store(how == WeightsLoad::Read, std::sync::atomic::Ordering::Relaxed);
}

fn weights_load() -> WeightsLoad {
    match NO_MMAP.load(std::sync::atomic::Ordering::Relaxed) {
        true => WeightsLoad::Read,
        false => WeightsLoad::Map,
    }
}

/// `--precision`, set once by `main` before any model is opened (false: f32).
static BF16: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_precision(p: Precision) {
    BF16.store(p == Precision::Bf16, std::sync::atomic::Ordering::Relaxed);
}

/// The arithmetic `--precision` asked for.
pub fn precision() -> Precision {
    match BF16.load(std::sync::atomic::Ordering::Relaxed) {
        true => Precision::Bf16,
        false => Precision::F32,
    }
}

/// `--no-decode-copy`, set once by `main` before any model is opened.
static NO_DECODE_COPY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_decode_copy(on: bool) {
    NO_DECODE_COPY.store(!on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether generation may regroup the model's matrices for decoding.
pub fn decode_copy() -> bool {
    !NO_DECODE_COPY.load(std::sync::atomic::Ordering::Relaxed)
}

/// Opens a model (mapped, or read with `--no-mmap`; its products in `--precision`; no
/// decoding copy with `--no-decode-copy`), saying what a model is when the path is not
/// one.
pub fn open_model(path: &Path) -> Result<Model> {
    if path.is_dir() && !path.join("config.json").exists() {
        return Err(Error::invalid(format!(
            "{} is a folder without config.json: a model is a .gguf file or an HF model folder \
             (config.json, model.safetensors, tokenizer.json); scripts/fetch-model.sh fetches one \
             into models/",
            path.display()
        )));
    }
    let m = Model::open_with(path, weights_load())?.with_precision(precision())?;
    Ok(if decode_copy() { m } else { m.without_decode_copy() })
}

/// Adapters to apply: PEFT folders or llama.cpp LoRA .gguf files, each with a weight.
#[derive(Args, Clone, Debug, Default)]
pub struct AdapterArg {
    /// A LoRA adapter to apply: a PEFT folder (adapter_config.json +
    /// adapter_model.safetensors) or a llama.cpp LoRA .gguf file. Repeat it to apply several
    /// together (their updates add up).
    #[arg(long, value_name = "PATH")]
    pub adapter: Vec<PathBuf>,
    /// The weight of each --adapter's update, in the same order (default 1 each): 0.5 applies
    /// an adapter at half strength, 0 turns it off, a negative weight pushes the other way.
    #[arg(long, value_name = "W", requires = "adapter", allow_negative_numbers = true)]
    pub adapter_weight: Vec<f32>,
    /// Apply an adapter that records another base model (e.g. another quantization of the
    /// same model); by default it is refused.
    #[arg(long, requires = "adapter")]
    pub allow_other_base: bool,
}

impl AdapterArg {
    /// The adapter to apply: none, the one given, or the given ones stacked with their
    /// weights into one ([`adapter::stack`]).
    pub fn load(&self, model: &Model) -> Result<Option<Adapter>> {
        let check = if self.allow_other_base {
            BaseCheck::AllowOtherBase
        } else {
            BaseCheck::Strict
        };
        let weights = self.weights()?;
        let loaded = self
            .adapter
            .iter()
            .map(|p| adapter::load_for(p, model, check))
            .collect::<Result<Vec<_>>>()?;
        match (loaded.as_slice(), weights.as_slice()) {
            ([], _) => Ok(None),
            ([_], [w]) if *w == 1.0 => Ok(loaded.into_iter().next()),
            _ => {
                let parts: Vec<_> = loaded
                    .iter()
                    .zip(&weights)
                    .map(|(adapter, &weight)| adapter::Stacked { adapter, weight })
                    .collect();
                adapter::stack(&parts).map(Some)
            }
        }
    }

    fn weights(&self) -> Result<Vec<f32>> {
        match self.adapter_weight.len() {
            0 => Ok(vec![1.0; self.adapter.len()]),
            n if n == self.adapter.len() => Ok(self.adapter_weight.clone()),
            n => Err(Error::invalid(format!(
                "{n} --adapter-weight values for {} --adapter paths: give one weight per adapter, in order",
                self.adapter.len()
            ))),
        }
    }
}

/// How replies are sampled and where they end (generate and chat).
#[derive(Args, Clone, Debug)]
pub struct SamplingArgs {
    /// The most new tokens of a reply.
    #[arg(short = 'n', long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 picks the most likely token (greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample among the K most likely tokens (0 = no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities reach P (1 = all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling (reply k of a prompt, or turn k of a chat, draws with seed + k).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// End a reply where this text first appears (left out of the reply). Repeatable.
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn options(&self) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            stop_tokens: None,
            stop_strings: self.stop.clone(),
        }
    }
}

/// Element type of written tensors.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl From<Dtype> for FloatType {
    fn from(d: Dtype) -> FloatType {
        match d {
            Dtype::F32 => FloatType::F32,
            Dtype::F16 => FloatType::F16,
            Dtype::Bf16 => FloatType::BF16,
        }
    }
}

/// `--loss`: one of the known names, optionally with `_<param><value>` suffixes
/// (`cdpo_eps0.1`), and where `lr` allows it a learning rate of its own after `@`
/// (`kto@2e-4`). The names are clap's possible values, so `--help` lists them, while the
/// suffixes still parse.
#[derive(Clone)]
pub struct LossName {
    lr: bool,
}

impl LossName {
    pub const PLAIN: LossName = LossName { lr: false };
    pub const WITH_LR: LossName = LossName { lr: true };
}

/// Splits `loss@lr` into the loss and its learning rate (None when not given).
pub fn split_loss_lr(s: &str) -> Result<(&str, Option<f64>)> {
    match s.split_once('@') {
        None => Ok((s, None)),
        Some((loss, lr)) => match lr.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 => Ok((loss, Some(v))),
            _ => Err(Error::invalid(format!(
                "`{s}`: the learning rate after @ must be a positive number"
            ))),
        },
    }
}

impl TypedValueParser for LossName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> std::result::Result<String, clap::Error> {
        let s = value.to_str().unwrap_or_default();
        let name = if self.lr {
            split_loss_lr(s).map(|(n, _)| n)
        } else {
            Ok(s)
        };
        match name.and_then(|n| nudge::objective::Loss::parse(n, 0.1)) {
            Ok(_) => Ok(s.to_string()),
            Err(e) => Err(bad_loss(cmd, arg, s, e)),
        }
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(loss_names().map(PossibleValue::new)))
    }
}

fn bad_loss(cmd: &clap::Command, arg: Option<&clap::Arg>, s: &str, e: Error) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    let mut err = clap::Error::new(clap::error::ErrorKind::InvalidValue).with_cmd(cmd);
    err.insert(
        ContextKind::InvalidArg,
        ContextValue::String(arg.map_or("--loss".into(), |a| a.to_string())),
    );
    err.insert(ContextKind::InvalidValue, ContextValue::String(s.to_string()));
    err.insert(
        ContextKind::ValidValue,
        ContextValue::Strings(loss_names().map(str::to_string).collect()),
    );
    err.insert(
        ContextKind::Suggested,
        ContextValue::StyledStrs(vec![e.to_string().into()]),
    );
    err
}

fn loss_names() -> impl Iterator<Item = &'static str> {
    std::iter::once("dpo").chain(NAMES)
}
