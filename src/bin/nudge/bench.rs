//! `nudge bench`: throughput figures on this machine.

use clap::Subcommand;
use nudge::Result;
use nudge::bench::{ScoreBench, score_throughput, train_throughput};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// LoRA (r=8, alpha=16, all seven projections) sigmoid-DPO training throughput.
    Train {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value = "../shared/bench/prefs-64.jsonl")]
        data: PathBuf,
        #[arg(long, default_value_t = 8)]
        steps: usize,
        #[arg(long, default_value_t = 2)]
        pairs_per_step: usize,
        /// MiB of activations kept for the backward pass (the rest is recomputed).
        #[arg(long, default_value_t = 128)]
        memory_budget_mb: usize,
        #[arg(long)]
        json: bool,
    },
    /// Forward tokens per second on sequences of `--seq-len` tokens.
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 512)]
        seq_len: usize,
        /// Timed repetitions (after one warm-up).
        #[arg(long, default_value_t = 3)]
        reps: usize,
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
            steps,
            pairs_per_step,
            memory_budget_mb,
            json,
        } => {
            let r = train_throughput(&model, &data, steps, pairs_per_step, memory_budget_mb << 20)?;
            if json {
                println!("{}", serde_json::to_string(&r).expect("serializable"));
            } else {
                println!(
                    "{}: {} steps x {} pairs, {} threads: {:.1} pair-tokens/s ({:.1} with the reference pass of {:.1}s), {:.1} GFLOP/s = {:.1}% of the {:.0} GFLOP/s FMA peak estimate, peak RSS {:.0} MB, final loss {:.4}",
                    r.model,
                    r.steps,
                    r.pairs_per_step,
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
        BenchCommand::Score {
            model,
            seq_len,
            reps,
            json,
        } => {
            let r: ScoreBench = score_throughput(&model, seq_len, reps)?;
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
