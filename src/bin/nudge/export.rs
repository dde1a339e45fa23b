//! `nudge export`: an adapter as PEFT, as a llama.cpp LoRA GGUF, or merged into the base.

use crate::args::{Dtype, open_model};
use clap::{Args, ValueEnum};
use nudge::adapter::format::{gguf_lora, merge, peft};
use nudge::adapter::{self, BaseCheck};
use nudge::convert::FloatType;
use nudge::model::Model;
use nudge::{Error, Result};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    Peft,
    /// A llama.cpp LoRA adapter (`llama-cli -m BASE.gguf --lora OUT.gguf`).
    Gguf,
    /// The base with the adapter merged in, as an HF model directory.
    Merged,
}

#[derive(Args)]
pub struct ExportArgs {
    /// The base model the adapter was trained on (.gguf file or HF folder).
    #[arg(short, long)]
    model: PathBuf,
    /// The adapter: a PEFT folder or a llama.cpp LoRA .gguf file.
    #[arg(long, required_unless_present = "merge", conflicts_with = "merge")]
    adapter: Option<PathBuf>,
    /// Export an adapter that records another base model (e.g. another quantization of the
    /// same model); by default it is refused.
    #[arg(long)]
    allow_other_base: bool,
    /// Instead of one adapter: several combined with weights, `A:0.7,B:0.3`, through the SVD
    /// of their summed update (needs a build with --features linalg).
    #[arg(long)]
    merge: Option<String>,
    /// Rank of the combined adapter with --merge (default: the largest input rank).
    #[arg(long, requires = "merge")]
    rank: Option<usize>,
    /// What to write.
    #[arg(long, value_enum)]
    format: Format,
    /// Output folder (peft, merged) or file (gguf).
    #[arg(short, long)]
    out: PathBuf,
    /// Element type of the written tensors (peft: f32 only).
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
}

pub fn export(a: ExportArgs) -> Result<()> {
    let dtype: FloatType = a.dtype.into();
    let model = open_model(&a.model)?;
    let check = if a.allow_other_base {
        BaseCheck::AllowOtherBase
    } else {
        BaseCheck::Strict
    };
    let (lora, source) = match (&a.merge, &a.adapter) {
        (Some(spec), _) => (merged(&model, spec, a.rank)?, PathBuf::from(spec)),
        (None, Some(dir)) => (adapter::load_for(dir, &model, check)?, dir.clone()),
        (None, None) => return Err(Error::invalid("give --adapter DIR or --merge A:0.7,B:0.3")),
    };
    lora.check_fits(&model.config, &source)?;
    match a.format {
        Format::Peft if dtype != FloatType::F32 => {
            return Err(Error::invalid("--dtype: PEFT adapters are written in f32"));
        }
        Format::Peft => peft::save(&lora, &a.out)?,
        Format::Gguf => gguf_lora::save(&lora, &model, &a.out, dtype)?,
        Format::Merged => merge::export_merged(&model, &lora, &a.out, dtype)?,
    }
    eprintln!("nudge: wrote {}", a.out.display());
    Ok(())
}

#[cfg(feature = "linalg")]
fn merged(model: &Model, spec: &str, rank: Option<usize>) -> Result<adapter::Adapter> {
    Ok(crate::merge::merged_adapter(&model.config, spec, rank, None)?.adapter)
}

#[cfg(not(feature = "linalg"))]
fn merged(_model: &Model, _spec: &str, _rank: Option<usize>) -> Result<adapter::Adapter> {
    Err(Error::invalid(
        "--merge needs LAPACK: this binary was built without the `linalg` feature \
         (rebuild with `cargo build --release --features linalg`, which links the system's OpenBLAS)",
    ))
}
