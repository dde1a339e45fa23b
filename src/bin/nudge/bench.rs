//! `nudge bench`: throughput figures on this machine.

use clap::{Args, Subcommand};
use nudge::Result;
use nudge::bench::random_model::{self, Shape};
use nudge::bench::{
    GenerateBench, PairsPerStep, ScoreBench, TrainData, generate_throughput, matmul_throughput, score_throughput,
    train_throughput,
};
use std::path::PathBuf;

/// The shared training benchmark set, built in so that `nudge bench train` runs anywhere.
const BENCH_PREFS: &str = include_str!("../../../benches/data/prefs-64.jsonl");

/// `nudge bench` with no subcommand.
#[derive(Args)]
pub struct Headline {
    /// A .gguf file or an HF model folder (default: models/SmolLM2-135M-Instruct.Q4_1.gguf,
    /// fetched when missing, as `nudge demo` does).
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// One JSON object per figure per line instead of the table.
    #[arg(long)]
    json: bool,
}

/// One line of the headline table.
#[derive(serde::Serialize)]
struct Figure {
    figure: &'static str,
    value: f64,
    unit: &'static str,
    /// Of the machine's FMA peak (compute-bound figures) or null.
    fraction_of_peak: Option<f64>,
    note: String,
}

/// The headline figures: decoding one row and 16 rows, forward scoring of 512 tokens, DPO
/// training on the built-in benchmark set with its peak memory.
pub fn headline(h: &Headline) -> Result<()> {
    let model = match &h.model {
        Some(m) => m.clone(),
        None => crate::fetch::default_model()?,
    };
    let g = generate_throughput(&model, 64, 16, 3, crate::args::decode_copy())?;
    let s = score_throughput(&model, 512, 3, crate::args::precision())?;
    let t = train_throughput(
        &model,
        TrainData::Jsonl {
            text: BENCH_PREFS,
            name: "benches/data/prefs-64.jsonl".as_ref(),
        },
        8,
        PairsPerStep { step: 2, micro: 1 },
        32 << 20,
        crate::args::precision(),
    )?;
    let figures = [
        Figure {
            figure: "decode, one row",
            value: g.tokens_per_s,
            unit: "tokens/s",
            fraction_of_peak: None,
            note: format!("weights read at {:.2} GB/s", g.weight_gb_per_s),
        },
        Figure {
            figure: "decode, 16 rows together",
            value: g.batch_tokens_per_s,
            unit: "tokens/s",
            fraction_of_peak: None,
            note: format!("{:.1}x one row", g.batch_speedup),
        },
        Figure {
            figure: "forward, 512 tokens",
            value: s.tokens_per_s,
            unit: "tokens/s",
            fraction_of_peak: Some(s.peak_fraction),
            note: format!("{:.1} GFLOP/s", s.gflops),
        },
        Figure {
            figure: "DPO training, prefs-64",
            value: t.pair_tokens_per_s,
            unit: "pair-tokens/s",
            fraction_of_peak: Some(t.peak_fraction),
            note: format!("{:.1} GFLOP/s", t.gflops),
        },
        Figure {
            figure: "peak RSS, DPO training",
            value: t.peak_rss_mb,
            unit: "MB",
            fraction_of_peak: None,
            note: "mapped model pages included".to_string(),
        },
    ];
    if h.json {
        for f in &figures {
            println!("{}", serde_json::to_string(f).expect("serializable"));
        }
        return Ok(());
    }
    println!(
        "{} on {} threads (FMA peak estimate {:.0} GFLOP/s)",
        model.display(),
        g.threads,
        s.peak_gflops
    );
    println!("{:<26} {:>10} {:<14} {:>9}  note", "figure", "value", "unit", "of peak");
    for f in &figures {
        let peak = f
            .fraction_of_peak
            .map_or("-".to_string(), |p| format!("{:.1}%", 100.0 * p));
        println!(
            "{:<26} {:>10.1} {:<14} {:>9}  {}",
            f.figure, f.value, f.unit, peak, f.note
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// LoRA (r=8, alpha=16, all seven projections) sigmoid-DPO training throughput.
    Train {
        /// A .gguf file or an HF model folder.
        #[arg(short, long)]
        model: PathBuf,
        /// Preference pairs (JSONL); default: the benchmark set built into nudge
        /// (`benches/data/prefs-64.jsonl`, 64 pairs).
        #[arg(long, conflicts_with = "seq_len")]
        data: Option<PathBuf>,
        /// Train on pairs of random token ids whose sequences have this many tokens (half
        /// prompt, half completion) instead of a data set.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
        seq_len: Option<u32>,
        /// Optimizer steps timed.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
        steps: u32,
        /// Pairs per optimizer step.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
        pairs_per_step: u32,
        /// Pairs per forward-backward pass (gradients accumulate over a step's passes; the
        /// working memory grows with a pass's tokens).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        pairs_per_pass: u32,
        /// MiB of activations kept for the backward pass (the rest is recomputed; see
        /// `nudge train --help`).
        #[arg(long, default_value_t = 32)]
        memory_budget_mb: usize,
        /// One JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Decoding tokens per second: one row, and a batch of rows decoded together (greedy,
    /// from a one-token context, as `llama-bench -n` counts).
    Generate {
        /// A .gguf file or an HF model folder.
        #[arg(short, long)]
        model: PathBuf,
        /// New tokens per row.
        #[arg(short = 'n', long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        new_tokens: u32,
        /// Rows of the batched figure.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
        batch: u32,
        /// Timed repetitions (after one warm-up).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        reps: u32,
        /// One JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write a model of a known shape with random weights (GGUF Q4_1, and with --hf-bf16 the
    /// same as an HF bf16 folder), to measure speed and memory at sizes whose weights
    /// cannot be shipped. The tokenizer and chat template are the donor model's.
    RandomModel {
        /// The shape: llama-3.2-1b (1.24 B parameters) or smollm2-135m.
        #[arg(long, default_value = "llama-3.2-1b")]
        shape: String,
        /// The GGUF file to write.
        #[arg(short, long)]
        out: PathBuf,
        /// Also write the model as an HF folder in bf16 here.
        #[arg(long, value_name = "DIR")]
        hf_bf16: Option<PathBuf>,
        /// A GGUF model whose tokenizer the random model takes (default:
        /// models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched when missing).
        #[arg(long)]
        donor: Option<PathBuf>,
        /// Seed of the weights.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The matrix products of a training step at the model's shapes (one decoder layer's
    /// seven projections over `--rows` tokens): X·Wᵀ and dY·W for every stored weight
    /// format (random weights of the model's shapes), and the LoRA products (rank 8, f32)
    /// alone and as training runs them with a Q4_1 projection (`X·Wᵀ + LoRA`, `dY·W +
    /// LoRA`), each as a fraction of the FMA peak.
    Matmul {
        /// A .gguf file or an HF model folder (only its shapes are read).
        #[arg(short, long)]
        model: PathBuf,
        /// Activation rows (tokens).
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
        rows: u32,
        /// Timed repetitions of each product (the fastest counts, after one warm-up).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        reps: u32,
        /// One JSON line per figure instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Forward tokens per second on sequences of `--seq-len` tokens.
    Score {
        /// A .gguf file or an HF model folder.
        #[arg(short, long)]
        model: PathBuf,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
        seq_len: u32,
        /// Timed repetitions (after one warm-up).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        reps: u32,
        /// One JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Train {
            model,
            data,
            seq_len,
            steps,
            pairs_per_step,
            pairs_per_pass,
            memory_budget_mb,
            json,
        } => {
            let (text, name) = match &data {
                Some(p) => (
                    std::fs::read_to_string(p).map_err(|e| nudge::Error::io(p, e))?,
                    p.clone(),
                ),
                None => (BENCH_PREFS.to_string(), PathBuf::from("benches/data/prefs-64.jsonl")),
            };
            let source = match seq_len {
                Some(n) => TrainData::Synthetic { seq_len: n as usize },
                None => TrainData::Jsonl {
                    text: &text,
                    name: &name,
                },
            };
            let budget = memory_budget_mb.saturating_mul(1 << 20);
            let pairs = PairsPerStep {
                step: pairs_per_step as usize,
                micro: pairs_per_pass as usize,
            };
            let r = train_throughput(&model, source, steps as usize, pairs, budget, crate::args::precision())?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!(
                    "{}: {} steps x {} pairs ({} a pass, {} MiB of activations kept), {} threads: {:.1} pair-tokens/s ({:.1} with the reference pass of {:.1}s), {:.1} GFLOP/s = {:.1}% of the {:.0} GFLOP/s FMA peak estimate, peak RSS {:.0} MB, final loss {:.4}",
                    r.model,
                    r.steps,
                    r.pairs_per_step,
                    r.pairs_per_pass,
                    r.memory_budget_mb,
                    r.threads,
                    r.pair_tokens_per_s,
                    r.pair_tokens_per_s_with_reference,
                    r.reference_seconds,
                    r.gflops,
                    100.0 * r.peak_fraction,
                    r.peak_gflops,
                    r.peak_rss_mb,
                    r.final_loss
                );
            }
            Ok(())
        }
        BenchCommand::RandomModel {
            shape,
            out,
            hf_bf16,
            donor,
            seed,
        } => {
            let shape = Shape::by_name(&shape)?;
            let donor = match donor {
                Some(d) => d,
                None => crate::fetch::default_model()?,
            };
            let t0 = std::time::Instant::now();
            random_model::write_gguf(shape, &donor, seed, &out)?;
            eprintln!(
                "nudge: {} ({:.2} B parameters, random) written to {} in {:.0}s",
                shape.name,
                shape.n_params() as f64 / 1e9,
                out.display(),
                t0.elapsed().as_secs_f64()
            );
            if let Some(dir) = hf_bf16 {
                random_model::write_hf_bf16(&out, &dir)?;
                eprintln!("nudge: the same weights in bf16 in {}", dir.display());
            }
            Ok(())
        }
        BenchCommand::Generate {
            model,
            new_tokens,
            batch,
            reps,
            json,
        } => {
            let r: GenerateBench = generate_throughput(
                &model,
                new_tokens as usize,
                batch as usize,
                reps as usize,
                crate::args::decode_copy(),
            )?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!(
                    "{}: {} new tokens x {} reps, {} threads: {:.1} tokens/s (best {:.1}), {:.2} GB/s of weights; {} rows together: {:.1} tokens/s ({:.1}x one row)",
                    r.model,
                    r.new_tokens,
                    r.reps,
                    r.threads,
                    r.tokens_per_s,
                    r.best_tokens_per_s,
                    r.weight_gb_per_s,
                    r.batch_rows,
                    r.batch_tokens_per_s,
                    r.batch_speedup
                );
            }
            Ok(())
        }
        BenchCommand::Matmul {
            model,
            rows,
            reps,
            json,
        } => {
            let config = nudge::model::Model::open(&model)?.config;
            let figures = matmul_throughput(&config, rows as usize, reps as usize);
            if json {
                for f in &figures {
                    println!("{}", serde_json::to_string(f).expect("serializable"));
                }
                return Ok(());
            }
            let peak = figures.first().map_or(0.0, |f| f.peak_gflops);
            println!(
                "{}: one layer's products over {rows} rows, {} threads (FMA peak estimate {peak:.0} GFLOP/s)",
                model.display(),
                rayon::current_num_threads()
            );
            println!(
                "{:<8} {:<14} {:>11} {:>10} {:>8}",
                "weights", "product", "projections", "GFLOP/s", "of peak"
            );
            for f in &figures {
                println!(
                    "{:<8} {:<14} {:>11} {:>10.1} {:>7.1}%",
                    f.dtype,
                    f.product,
                    f.projections,
                    f.gflops,
                    100.0 * f.peak_fraction
                );
            }
            Ok(())
        }
        BenchCommand::Score {
            model,
            seq_len,
            reps,
            json,
        } => {
            let r: ScoreBench = score_throughput(&model, seq_len as usize, reps as usize, crate::args::precision())?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!(
                    "{}: {} tokens x {} reps, {} threads: {:.1} tokens/s (best {:.1}), {:.1} GFLOP/s = {:.1}% of the {:.0} GFLOP/s FMA peak estimate",
                    r.model,
                    r.seq_len,
                    r.reps,
                    r.threads,
                    r.tokens_per_s,
                    r.best_tokens_per_s,
                    r.gflops,
                    100.0 * r.peak_fraction,
                    r.peak_gflops
                );
            }
            Ok(())
        }
    }
}
