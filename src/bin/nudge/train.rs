//! `nudge train`: a PEFT adapter from a preference (or thumbs) JSONL file.

use crate::commands::progress;
use clap::Args;
use nudge::adapter::{Adapter, LoraConfig, LoraInit, peft};
use nudge::data::PreferenceSet;
use nudge::model::weights::Proj;
use nudge::model::{Model, Recompute};
use nudge::objective::Loss;
use nudge::optim::{AdamWConfig, Schedule};
use nudge::train::{Checkpoint, Control, TrainConfig, Trainer};
use nudge::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long)]
    model: PathBuf,
    /// TRL-format JSONL: preference rows, or unpaired rows (prompt, completion, label) for kto.
    #[arg(long)]
    data: PathBuf,
    /// Output directory: the adapter in PEFT format and `metrics.jsonl`.
    #[arg(long)]
    out: PathBuf,
    /// sigmoid, ipo, cdpo, robust, hinge, nca_pair, bco_pair, apo_zero, apo_down, sppo_hard,
    /// exo_pair, discopop, simpo, orpo, margin_dpo, kto; parameters as suffixes
    /// (e.g. cdpo_eps0.1, simpo_beta2_gamma0.5, kto_dw1_uw1.33).
    #[arg(long, default_value = "sigmoid")]
    loss: String,
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    #[arg(long, default_value_t = 8)]
    lora_r: usize,
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f32,
    /// Comma-separated projections (q_proj,k_proj,...), or all.
    #[arg(long, default_value = "all")]
    targets: String,
    #[arg(long)]
    rslora: bool,
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// A's initialization: kaiming (PEFT's default) or gaussian.
    #[arg(long, default_value = "kaiming")]
    init: String,
    /// Continue training this PEFT adapter instead of creating one.
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// constant, linear or cosine.
    #[arg(long, default_value = "constant")]
    schedule: String,
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    #[arg(long)]
    max_steps: Option<usize>,
    /// Pairs (or thumbs) per optimizer step.
    #[arg(long, default_value_t = 2)]
    batch_pairs: usize,
    /// Pairs per forward/backward pass (gradient accumulation over batch_pairs / this).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Prompt + completion tokens kept per row (longer prompts are dropped and reported).
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of pairs held out for evaluation.
    #[arg(long, default_value_t = 0.0)]
    eval_fraction: f32,
    /// MiB of activations kept for the backward pass (the rest is recomputed); 0 keeps none.
    #[arg(long, default_value_t = 128)]
    memory_budget_mb: usize,
    /// Write OUT/checkpoint.bin every N steps (and when the run ends).
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Continue from OUT/checkpoint.bin (same model and data; the run's settings come from
    /// the checkpoint, except --max-steps, which may extend it).
    #[arg(long)]
    resume: bool,
}

fn targets(s: &str) -> Result<Vec<Proj>> {
    if s == "all" || s == "all-linear" {
        return Ok(Proj::ALL.to_vec());
    }
    s.split(',')
        .map(|t| {
            Proj::from_hf_name(t.trim()).ok_or_else(|| {
                Error::invalid(format!(
                    "--targets: `{t}` is not one of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"
                ))
            })
        })
        .collect()
}

pub fn train(a: TrainArgs) -> Result<()> {
    let model = Model::open(&a.model)?;
    let loss = Loss::parse(&a.loss, a.beta)?;
    let init = match a.init.as_str() {
        "kaiming" => LoraInit::KaimingUniform,
        "gaussian" => LoraInit::Gaussian,
        o => return Err(Error::invalid(format!("--init `{o}`: kaiming or gaussian"))),
    };
    let adapter = match &a.adapter {
        Some(dir) => peft::load(dir, &model.config)?,
        None => {
            let lora = LoraConfig {
                r: a.lora_r,
                lora_alpha: a.lora_alpha,
                target_modules: targets(&a.targets)?,
                use_rslora: a.rslora,
                lora_dropout: a.lora_dropout,
                init,
            };
            Adapter::new(&model.config, lora, a.seed, model.path.display().to_string())?
        }
    };
    let data = PreferenceSet::from_jsonl(&model.tokenizer, &a.data, a.max_length)?;
    for (row, why) in &data.dropped {
        eprintln!("nudge: {}: row {row} dropped: {why}", a.data.display());
    }
    let examples = if matches!(loss, Loss::Kto { .. }) {
        data.unpaired.len()
    } else {
        data.pairs.len()
    };
    let steps_per_epoch = examples.div_ceil(a.batch_pairs.max(1));
    let total = a
        .max_steps
        .unwrap_or(steps_per_epoch * a.epochs)
        .min(steps_per_epoch * a.epochs) as u64;
    let schedule = match a.schedule.as_str() {
        "constant" => Schedule::Constant {
            warmup_steps: a.warmup_steps,
        },
        "linear" => Schedule::Linear {
            warmup_steps: a.warmup_steps,
            total_steps: total,
        },
        "cosine" => Schedule::Cosine {
            warmup_steps: a.warmup_steps,
            total_steps: total,
            num_cycles: 0.5,
        },
        o => return Err(Error::invalid(format!("--schedule `{o}`: constant, linear or cosine"))),
    };
    let config = TrainConfig {
        loss,
        optimizer: AdamWConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..AdamWConfig::default()
        },
        schedule,
        max_grad_norm: Some(a.max_grad_norm),
        epochs: a.epochs,
        max_steps: a.max_steps,
        batch_size: a.batch_pairs,
        micro_batch_size: a.micro_batch.unwrap_or(a.batch_pairs),
        seed: a.seed,
        shuffle: true,
        eval_fraction: a.eval_fraction,
        recompute: Recompute::Budget(a.memory_budget_mb << 20),
        lora_dropout: a.lora_dropout,
    };
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let ck_path = a.out.join("checkpoint.bin");
    let log_path = a.out.join("metrics.jsonl");
    let mut trainer = if a.resume {
        let mut ck = Checkpoint::load(&ck_path)?;
        if a.max_steps.is_some() {
            ck.config.max_steps = a.max_steps;
        }
        Trainer::resume(&model, ck, data, &ck_path)?
    } else {
        Trainer::new(&model, adapter, config, data)?
    };
    // A resumed run appends to the log of the run it continues.
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(a.resume)
        .write(true)
        .truncate(!a.resume)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    let mut log = std::io::BufWriter::new(log_file);
    let bar = progress(trainer.total_steps() as u64);
    bar.inc(trainer.steps_done() as u64);
    let mut io_err = None;
    let every = a.checkpoint_every.unwrap_or(0);
    let summary = trainer.run_with(
        &mut |m| {
            if let Err(e) = serde_json::to_writer(&mut log, m)
                .map_err(std::io::Error::other)
                .and_then(|_| writeln!(log))
            {
                io_err = Some(e);
                return Control::Stop;
            }
            if m.skipped {
                bar.println(format!("step {}: loss or gradient not finite, step skipped", m.step));
            }
            bar.set_message(format!(
                "loss {:.4} acc {:.2} margin {:.3} {:.0} tok/s",
                m.loss, m.rewards_accuracies, m.rewards_margins, m.tokens_per_s
            ));
            bar.inc(1);
            Control::Continue
        },
        &mut |t| {
            if every > 0 && t.steps_done() % every == 0 {
                t.checkpoint().save(&ck_path)?;
            }
            Ok(())
        },
    )?;
    if every > 0 {
        trainer.checkpoint().save(&ck_path)?;
    }
    bar.finish_and_clear();
    if let Some(e) = io_err {
        return Err(Error::io(&log_path, e));
    }
    log.flush().map_err(|e| Error::io(&log_path, e))?;
    peft::save(&trainer.adapter, &a.out)?;
    let last = summary.last.as_ref();
    eprintln!(
        "nudge: {} steps ({} skipped) in {:.1}s; final loss {:.4}, rewards/accuracies {:.2}; adapter in {}",
        summary.steps,
        summary.skipped_steps,
        summary.seconds,
        last.map_or(f64::NAN, |m| m.loss),
        last.map_or(f64::NAN, |m| m.rewards_accuracies),
        a.out.display()
    );
    if let Some(e) = &summary.eval {
        eprintln!(
            "nudge: held-out loss {:.4}, rewards/accuracies {:.2}, rewards/margins {:.3}",
            e.loss, e.rewards_accuracies, e.rewards_margins
        );
    }
    println!("{}", serde_json::to_string(&summary).expect("serializable"));
    Ok(())
}
