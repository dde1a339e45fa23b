//! The `nudge` command: inspect, convert and score models; generate; train, merge and
//! export adapters; keep the feedback journal.

mod bench;
mod commands;
mod export;
mod generate;
mod journal;
mod merge;
mod train;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nudge",
    version,
    about = "On-device preference tuning (DPO family) of small language models"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Architecture, dimensions, dtypes and bytes mapped of a model.
    Info {
        /// A .gguf file or an HF model directory.
        model: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a text (or of a chat rendered with the model's template).
    Tokenize {
        #[arg(long)]
        model: PathBuf,
        /// Render TEXT as one user message with the chat template and generation prompt.
        #[arg(long)]
        chat: bool,
        /// Add the tokenizer's special tokens (e.g. BOS).
        #[arg(long)]
        special: bool,
        text: String,
    },
    /// Write a model as an HF directory (safetensors + config + tokenizer + template).
    Convert {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// f32, f16 or bf16.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// Log-probs of the completions of each row of a JSONL file (one JSON line per row).
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        data: PathBuf,
        /// A PEFT adapter directory to apply.
        #[arg(long)]
        adapter: Option<PathBuf>,
    },
    /// Generate a reply (optionally through an adapter), streamed to stdout.
    Generate(Box<generate::GenerateArgs>),
    /// Train a LoRA adapter on preference pairs (or thumbs, with --loss kto).
    Train(Box<train::TrainArgs>),
    /// Combine adapters with weights into one of a chosen rank (SVD; needs the `linalg` feature).
    Merge(Box<merge::MergeArgs>),
    /// Write an adapter as PEFT, as a llama.cpp LoRA GGUF, or merged into the base model.
    Export(export::ExportArgs),
    /// The feedback journal: record thumbs and pairs, list them, export training data.
    Journal {
        #[command(subcommand)]
        what: journal::JournalCommand,
    },
    /// Measure throughput.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads
        && let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(n).build_global()
    {
        eprintln!("nudge: cannot start {n} threads: {e}");
        return ExitCode::from(2);
    }
    let r = match cli.command {
        Command::Info { model, json } => commands::info(&model, json),
        Command::Tokenize {
            model,
            chat,
            special,
            text,
        } => commands::tokenize(&model, chat, special, &text),
        Command::Convert { model, out, dtype } => commands::convert(&model, &out, &dtype),
        Command::Score { model, data, adapter } => commands::score(&model, &data, adapter.as_deref()),
        Command::Generate(a) => generate::run(*a),
        Command::Train(a) => train::train(*a),
        Command::Merge(a) => merge::merge_command(*a),
        Command::Export(a) => export::export(a),
        Command::Journal { what } => journal::run(what),
        Command::Bench { what } => bench::run(what),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nudge: {e}");
            ExitCode::FAILURE
        }
    }
}
