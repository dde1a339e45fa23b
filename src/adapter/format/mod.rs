//! An adapter's files: PEFT's directory ([`peft`]), llama.cpp's LoRA GGUF ([`gguf_lora`])
//! and the base with the adapter merged in ([`merge`]). Apart from the adapter type, which
//! the model's forward uses, so that the model needs nothing of the file formats.

pub mod gguf_lora;
pub mod merge;
pub mod peft;

use super::Adapter;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::config::Config;

/// Loads an adapter in either of its file formats: a PEFT directory, or a llama.cpp
/// LoRA GGUF file. Checks only that its shapes fit `model`; [`load_for`] also checks that
/// it was made for this base.
pub fn load(path: &std::path::Path, model: &Config) -> Result<Adapter> {
    if path.is_dir() {
        peft::load(path, model)
    } else {
        gguf_lora::load(path, model)
    }
}

/// Whether an adapter recorded for another base may be applied anyway.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BaseCheck {
    /// Refuse an adapter whose recorded fingerprint is not this model's.
    #[default]
    Strict,
    /// Apply it anyway (e.g. to another quantization of the same model).
    AllowOtherBase,
}

/// [`load`], then the base check: an adapter that records the fingerprint of another base
/// is refused (unless `check` allows it) with a message naming both. Adapters that record
/// no fingerprint (made by other tools) are checked for shape only.
pub fn load_for(path: &std::path::Path, model: &Model, check: BaseCheck) -> Result<Adapter> {
    let a = load(path, &model.config)?;
    if let Some(fp) = &a.base_fingerprint
        && check == BaseCheck::Strict
    {
        let ours = model.fingerprint();
        if *fp != ours {
            let short = |f: &str| f.chars().take(19).collect::<String>();
            return Err(Error::field(
                path,
                "base_fingerprint",
                format!(
                    "this adapter was trained on the base model `{}` ({}), not on `{}` ({}); apply it \
                     anyway with --allow-other-base (e.g. for another quantization of the same model)",
                    a.base_model_name,
                    short(fp),
                    model.name(),
                    short(&ours)
                ),
            ));
        }
    }
    Ok(a)
}
