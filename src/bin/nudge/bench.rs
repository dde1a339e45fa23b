//! `nudge bench`: throughput figures on this machine.

use clap::Subcommand;
use nudge::Result;
use nudge::bench::{ScoreBench, score_throughput};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum BenchCommand {
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
