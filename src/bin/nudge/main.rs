//! The `nudge` command: inspect, convert and score models; generate; train, merge and
//! export adapters; keep the feedback journal.

mod args;
mod bench;
mod chat;
mod commands;
mod demo;
mod export;
mod fetch;
mod generate;
mod journal;
mod merge;
mod report;
mod train;

use args::{AdapterArg, Dtype};
use clap::{Parser, Subcommand};
use nudge::kernels::matmul::Precision;
use nudge::model::WeightsLoad;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "nudge",
    version,
    about = "On-device preference tuning (DPO family) of small language models",
    after_help = "A MODEL is a .gguf file or an HF model folder (config.json, model.safetensors, \
                  tokenizer.json). scripts/fetch-model.sh fetches SmolLM2-135M-Instruct into models/."
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, global = true, value_name = "N")]
    threads: Option<usize>,
    /// Read the model's weights into memory instead of memory-mapping the file: the run
    /// then survives the file being truncated or rewritten under it (a mapped model dies
    /// of SIGBUS), at the cost of the whole file in memory.
    #[arg(long, global = true)]
    no_mmap: bool,
    /// The arithmetic of the products through the frozen base model's weights: f32 (exact,
    /// the same bits on every machine) or bf16 (both operands rounded to bf16, 8
    /// significant bits, and summed in f32 by the CPU's bf16 dot products: x86-64
    /// AVX512-BF16 only). Whether bf16 is faster depends on the CPU: `nudge --precision bf16
    /// bench score` tells. Decoding steps and the LoRA branches stay f32.
    #[arg(long, global = true, value_name = "P", default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
    /// Decode from the model's weights as stored, without the copy of its matrices that
    /// generation otherwise regroups for the decoding kernels: saves memory the size of
    /// those matrices, at about half the decoding speed, the same tokens.
    #[arg(long, global = true)]
    no_decode_copy: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The on-device feedback loop end to end: a simulated user's thumbs train an adapter,
    /// then base and adapted model are compared on held-out prompts.
    Demo(Box<demo::DemoArgs>),
    /// Architecture, dimensions, dtypes and bytes mapped of a model.
    Info {
        /// A .gguf file or an HF model folder.
        model: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Token ids of a text (or of a chat rendered with the model's template).
    Tokenize {
        /// A .gguf file or an HF model folder.
        #[arg(short, long)]
        model: PathBuf,
        /// Render TEXT as one user message with the chat template and generation prompt.
        #[arg(long)]
        chat: bool,
        /// Add the tokenizer's special tokens (e.g. BOS).
        #[arg(long)]
        special: bool,
        /// The text to tokenize.
        text: String,
    },
    /// Write a model as an HF folder (safetensors + config + tokenizer + template).
    Convert {
        /// A .gguf file or an HF model folder.
        #[arg(short, long)]
        model: PathBuf,
        /// The output folder.
        #[arg(short, long)]
        out: PathBuf,
        /// Element type of the written weights.
        #[arg(long, value_enum, default_value = "f32")]
        dtype: Dtype,
    },
    /// Log-probs of the completions of each row of a JSONL file (one JSON line per row).
    Score {
        /// A .gguf file or an HF model folder.
        #[arg(short, long)]
        model: PathBuf,
        /// TRL-format JSONL: preference rows or unpaired rows.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        adapter: AdapterArg,
    },
    /// Generate replies (optionally through an adapter), streamed to stdout.
    Generate(Box<generate::GenerateArgs>),
    /// Talk with the model, one message per line from stdin; the conversation's KV cache
    /// is kept between turns.
    Chat(Box<chat::ChatArgs>),
    /// Train a LoRA adapter on preference pairs (or thumbs, with --loss kto).
    Train(Box<train::TrainArgs>),
    /// Combine adapters with weights into one of a chosen rank (SVD).
    #[cfg_attr(
        not(feature = "linalg"),
        command(about = "Combine adapters by SVD (not in this build: rebuild with --features linalg)")
    )]
    Merge(Box<merge::MergeArgs>),
    /// Write an adapter as PEFT, as a llama.cpp LoRA GGUF, or merged into the base model.
    Export(export::ExportArgs),
    /// The feedback journal: record thumbs and pairs, list them, export training data.
    Journal {
        #[command(subcommand)]
        what: journal::JournalCommand,
    },
    /// Measure throughput: with no subcommand, the headline figures of a model (decoding,
    /// batched decoding, forward scoring, DPO training, peak memory) as a table.
    Bench {
        #[command(subcommand)]
        what: Option<bench::BenchCommand>,
        #[command(flatten)]
        headline: bench::Headline,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` ends with the pipe closing: end quietly as other command-line
    // tools do, instead of failing a write (a panic inside print!).
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = nudge::isa::Isa::requested() {
        eprintln!("nudge: {e}");
        return ExitCode::from(2);
    }
    args::set_precision(if cli.precision == "bf16" {
        Precision::Bf16
    } else {
        Precision::F32
    });
    args::set_decode_copy(!cli.no_decode_copy);
    args::set_weights_load(if cli.no_mmap {
        WeightsLoad::Read
    } else {
        WeightsLoad::Map
    });
    // The main thread is one of the pool's workers: a parallel product it starts runs on
    // it and on n - 1 other threads, without handing the call to a sleeping pool and
    // waiting to be woken (a decoding step makes hundreds of such calls). One thread means
    // no other thread at all.
    // Without --threads: RAYON_NUM_THREADS, as rayon's own default pool would honor, else
    // every core.
    let cores = nudge::threads::cores();
    let from_env = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse().ok());
    let started = nudge::threads::check_threads(cli.threads.or(from_env).unwrap_or(cores), "--threads").and_then(|n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .use_current_thread()
            .build_global()
            .map_err(|e| nudge::Error::invalid(format!("cannot start {n} threads: {e}")))
    });
    if let Err(e) = started {
        eprintln!("nudge: {e}");
        return ExitCode::from(2);
    }
    let r = match cli.command {
        Command::Demo(a) => demo::run(*a),
        Command::Info { model, json } => commands::info(&model, json),
        Command::Tokenize {
            model,
            chat,
            special,
            text,
        } => commands::tokenize(&model, chat, special, &text),
        Command::Convert { model, out, dtype } => commands::convert(&model, &out, dtype.into()),
        Command::Score { model, data, adapter } => commands::score(&model, &data, &adapter),
        Command::Generate(a) => generate::run(*a),
        Command::Chat(a) => chat::run(*a),
        Command::Train(a) => train::train(*a),
        Command::Merge(a) => merge::merge_command(*a),
        Command::Export(a) => export::export(a),
        Command::Journal { what } => journal::run(what),
        Command::Bench { what, headline } => match what {
            Some(what) => bench::run(what),
            None => bench::headline(&headline),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nudge: {e}");
            if let nudge::Error::CorruptRecord { file, .. } = &e {
                eprintln!(
                    "nudge: `nudge journal repair --journal {}` drops the damaged record and keeps every intact one",
                    file.display()
                );
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and every flag says what it is for in `--help`.
    #[test]
    fn every_flag_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() && path != " nudge" {
                missing.push(format!("{path}: no about"));
            }
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} --{}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "flags without help:\n{}", missing.join("\n"));
    }
}
