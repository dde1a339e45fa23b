//! `nudge train`: a PEFT adapter from a preference (or thumbs) JSONL file.

use crate::args::{AdapterArg, LossName, open_model};
use crate::commands::progress;
use clap::{Args, ValueEnum};
use nudge::adapter::format::peft;
use nudge::adapter::{Adapter, LoraConfig, LoraInit, MAX_RANK};
use nudge::data::{PreferenceSet, RowNote, Truncation, TruncationMode};
use nudge::model::Recompute;
use nudge::model::weights::Proj;
use nudge::objective::Loss;
use nudge::optim::{AdamWConfig, Schedule};
use nudge::train::{Checkpoint, Control, TrainConfig, Trainer};
use nudge::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, ValueEnum)]
pub enum InitArg {
    /// PEFT's default: Kaiming-uniform A.
    Kaiming,
    /// PEFT's init_lora_weights="gaussian": A ~ N(0, 1/r).
    Gaussian,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    Constant,
    /// Linear decay to 0 at the last step.
    Linear,
    /// Half a cosine down to 0 at the last step.
    Cosine,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TruncationArg {
    /// Cut the prompt's start (TRL's default).
    #[value(name = "keep_end")]
    KeepEnd,
    /// Cut the completions' ends.
    #[value(name = "keep_start")]
    KeepStart,
}

#[derive(Args)]
pub struct TrainArgs {
    /// The base model: a .gguf file or an HF model folder.
    #[arg(short, long)]
    model: PathBuf,
    /// TRL-format JSONL: preference rows (prompt/chosen/rejected), or unpaired thumbs
    /// (prompt/completion/label) for --loss kto.
    #[arg(long)]
    data: PathBuf,
    /// Output folder: the adapter in PEFT format, metrics.jsonl, and skipped_rows.jsonl
    /// when rows were left out.
    #[arg(short, long)]
    out: PathBuf,
    /// The loss; parameters go in the name as suffixes (cdpo_eps0.1, simpo_beta2_gamma0.5,
    /// kto_dw1_uw1.33). `dpo` is `sigmoid`.
    #[arg(long, default_value = "sigmoid", value_parser = LossName::PLAIN)]
    loss: String,
    /// DPO's beta: how far the adapted model may move from the base.
    #[arg(long, default_value_t = 0.1)]
    beta: f64,
    /// LoRA rank.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=MAX_RANK as i64))]
    lora_r: u32,
    /// LoRA alpha (the update is scaled by alpha / r).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f32,
    /// Comma-separated projections (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj),
    /// or all.
    #[arg(long, default_value = "all")]
    targets: String,
    /// Scale the update by alpha / sqrt(r) (rsLoRA).
    #[arg(long)]
    rslora: bool,
    /// Dropout on the adapter's input while training.
    #[arg(long, default_value_t = 0.0)]
    lora_dropout: f32,
    /// How A is initialized.
    #[arg(long, value_enum, default_value = "kaiming")]
    init: InitArg,
    #[command(flatten)]
    adapter: AdapterArg,
    /// Learning rate (the defaults of lr, schedule, epochs and batch suit a few dozen pairs;
    /// see the README's loss comparison).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Learning-rate schedule over the steps the run takes.
    #[arg(long, value_enum, default_value = "linear")]
    schedule: ScheduleArg,
    /// Steps of linear learning-rate warmup.
    #[arg(long, default_value_t = 0)]
    warmup_steps: u64,
    /// Clip the global gradient norm to this.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Passes over the data (ignored when --max-steps is given).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Optimizer steps to take; overrides --epochs (as TRL's max_steps does).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_steps: Option<u32>,
    /// Pairs (or thumbs) per optimizer step.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch_pairs: u32,
    /// Pairs per forward/backward pass (gradient accumulation over batch_pairs / this).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    micro_batch: Option<u32>,
    /// Prompt + completion tokens per sequence (default: the model's context); longer rows
    /// are cut as --truncation-mode says, and reported.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..))]
    max_length: Option<u32>,
    /// Prompt tokens kept (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_prompt_length: Option<u32>,
    /// Tokens kept of each completion (default: no limit).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_completion_length: Option<u32>,
    /// Which end of an over-long row survives.
    #[arg(long, value_enum, default_value = "keep_end")]
    truncation_mode: TruncationArg,
    /// Seed of the shuffling, the adapter's initialization and dropout.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Fraction of pairs held out for evaluation after training.
    #[arg(long, default_value_t = 0.0)]
    eval_fraction: f32,
    /// MiB of activations kept for the backward pass: whole layers while they fit, then
    /// every layer's input if those fit, else about √(2·layers) of them; the rest is
    /// recomputed. 0 keeps the fewest (the least memory).
    #[arg(long, default_value_t = 128)]
    memory_budget_mb: usize,
    /// Write OUT/checkpoint.bin every N steps (and when the run ends).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    checkpoint_every: Option<u32>,
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

/// Checks the float flags clap cannot bound, naming the flag.
fn check_floats(a: &TrainArgs) -> Result<()> {
    let bad = |flag: &str, v: f64, want: &str| Err(Error::invalid(format!("--{flag} {v}: {want}")));
    if !(a.beta.is_finite() && a.beta > 0.0) {
        return bad("beta", a.beta, "must be a positive number");
    }
    if !(a.lora_alpha.is_finite() && a.lora_alpha > 0.0) {
        return bad("lora-alpha", a.lora_alpha.into(), "must be a positive number");
    }
    if !(0.0..1.0).contains(&a.lora_dropout) {
        return bad("lora-dropout", a.lora_dropout.into(), "must be in [0, 1)");
    }
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return bad("lr", a.lr, "must be a positive number");
    }
    if !(a.weight_decay.is_finite() && a.weight_decay >= 0.0) {
        return bad("weight-decay", a.weight_decay, "must be >= 0");
    }
    if !(a.max_grad_norm.is_finite() && a.max_grad_norm > 0.0) {
        return bad("max-grad-norm", a.max_grad_norm.into(), "must be a positive number");
    }
    if !(0.0..1.0).contains(&a.eval_fraction) {
        return bad("eval-fraction", a.eval_fraction.into(), "must be in [0, 1)");
    }
    if let (Some(m), b) = (a.micro_batch, a.batch_pairs)
        && m > b
    {
        return Err(Error::invalid(format!(
            "--micro-batch {m} is larger than --batch-pairs {b}"
        )));
    }
    Ok(())
}

/// Prints the first rows of a report to stderr and writes all of them to `file`.
fn report(what: &str, notes: &[RowNote], file: &Path) -> Result<()> {
    const SHOWN: usize = 10;
    if notes.is_empty() {
        return Ok(());
    }
    for n in notes.iter().take(SHOWN) {
        eprintln!("nudge: {n}");
    }
    let lines: String = notes
        .iter()
        .map(|n| {
            format!(
                "{}\n",
                serde_json::json!({"file": n.file, "row": n.row, "reason": n.reason})
            )
        })
        .collect();
    nudge::fsutil::write_atomic(file, lines.as_bytes())?;
    let more = notes.len().saturating_sub(SHOWN);
    let more = if more > 0 {
        format!(" ({more} more not shown)")
    } else {
        String::new()
    };
    eprintln!(
        "nudge: {} rows {what}{more}; all listed in {}",
        notes.len(),
        file.display()
    );
    Ok(())
}

pub fn train(a: TrainArgs) -> Result<()> {
    check_floats(&a)?;
    let model = open_model(&a.model)?;
    let loss = Loss::parse(&a.loss, a.beta)?;
    let init = match a.init {
        InitArg::Kaiming => LoraInit::KaimingUniform,
        InitArg::Gaussian => LoraInit::Gaussian,
    };
    let adapter = match a.adapter.load(&model)? {
        Some(adapter) => adapter,
        None => {
            let lora = LoraConfig {
                r: a.lora_r as usize,
                lora_alpha: a.lora_alpha,
                target_modules: targets(&a.targets)?,
                use_rslora: a.rslora,
                lora_dropout: a.lora_dropout,
                init,
            };
            Adapter::new(&model.config, lora, a.seed, model.name())?
        }
    };
    let limits = Truncation {
        max_length: Some(
            a.max_length
                .map_or(model.config.max_position_embeddings, |m| m as usize),
        ),
        max_prompt_length: a.max_prompt_length.map(|m| m as usize),
        max_completion_length: a.max_completion_length.map(|m| m as usize),
        mode: match a.truncation_mode {
            TruncationArg::KeepEnd => TruncationMode::KeepEnd,
            TruncationArg::KeepStart => TruncationMode::KeepStart,
        },
    };
    let data = PreferenceSet::from_jsonl(&model.tokenizer, &a.data, &limits)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    report("truncated", &data.truncated, &a.out.join("truncated_rows.jsonl"))?;
    let (warmup_steps, total_steps) = (a.warmup_steps, 0); // 0: sized to the run
    let schedule = match a.schedule {
        ScheduleArg::Constant => Schedule::Constant { warmup_steps },
        ScheduleArg::Linear => Schedule::Linear {
            warmup_steps,
            total_steps,
        },
        ScheduleArg::Cosine => Schedule::Cosine {
            warmup_steps,
            total_steps,
            num_cycles: 0.5,
        },
    };
    let batch = a.batch_pairs as usize;
    let config = TrainConfig {
        loss,
        optimizer: AdamWConfig {
            lr: a.lr,
            weight_decay: a.weight_decay,
            ..AdamWConfig::default()
        },
        schedule,
        max_grad_norm: Some(a.max_grad_norm),
        epochs: a.epochs as usize,
        max_steps: a.max_steps.map(|m| m as usize),
        batch_size: batch,
        micro_batch_size: a.micro_batch.map_or(batch, |m| m as usize),
        seed: a.seed,
        shuffle: true,
        eval_fraction: a.eval_fraction,
        recompute: Recompute::Budget(a.memory_budget_mb.saturating_mul(1 << 20)),
        lora_dropout: a.lora_dropout,
    };
    let ck_path = a.out.join("checkpoint.bin");
    let log_path = a.out.join("metrics.jsonl");
    let mut trainer = if a.resume {
        if !ck_path.exists() {
            return Err(Error::invalid(format!(
                "--resume: no checkpoint at {}; a run writes one when started with --checkpoint-every N",
                ck_path.display()
            )));
        }
        let mut ck = Checkpoint::load(&ck_path)?;
        if a.max_steps.is_some() {
            ck.config.max_steps = a.max_steps.map(|m| m as usize);
        }
        Trainer::resume(&model, ck, data, &ck_path)?
    } else {
        Trainer::new(&model, adapter, config, data)?
    };
    report("skipped", trainer.skipped(), &a.out.join("skipped_rows.jsonl"))?;
    let log_file = if a.resume {
        resumed_log(&log_path, trainer.steps_done())?
    } else {
        std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?
    };
    // Written after each step and flushed before each checkpoint, by two callbacks.
    let log = std::cell::RefCell::new(std::io::BufWriter::new(log_file));
    let bar = progress(trainer.total_steps() as u64);
    bar.inc(trainer.steps_done() as u64);
    let mut io_err = None;
    let every = a.checkpoint_every.unwrap_or(0) as usize;
    let summary = trainer.run_with(
        &mut |m| {
            let mut log = log.borrow_mut();
            if let Err(e) = serde_json::to_writer(&mut *log, m)
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
                m.loss, m.rewards.rewards_accuracies, m.rewards.rewards_margins, m.tokens_per_s
            ));
            bar.inc(1);
            Control::Continue
        },
        &mut |t| {
            if every > 0 && t.steps_done() % every == 0 {
                sync_log(&mut log.borrow_mut(), &log_path)?;
                t.checkpoint().save(&ck_path)?;
            }
            Ok(())
        },
    )?;
    if every > 0 {
        sync_log(&mut log.borrow_mut(), &log_path)?;
        trainer.checkpoint().save(&ck_path)?;
    }
    bar.finish_and_clear();
    if let Some(e) = io_err {
        return Err(Error::io(&log_path, e));
    }
    let mut log = log.into_inner();
    log.flush().map_err(|e| Error::io(&log_path, e))?;
    peft::save(&trainer.adapter, &a.out)?;
    let last = summary.last.as_ref();
    eprintln!(
        "nudge: {} steps ({} skipped) in {:.1}s; final loss {:.4}, rewards/accuracies {:.2}; adapter in {}",
        summary.steps,
        summary.skipped_steps,
        summary.seconds,
        last.map_or(f64::NAN, |m| m.loss),
        last.map_or(f64::NAN, |m| m.rewards.rewards_accuracies),
        a.out.display()
    );
    if let Some(e) = &summary.eval {
        eprintln!(
            "nudge: held-out loss {:.4}, rewards/accuracies {:.2}, rewards/margins {:.3}",
            e.eval_loss, e.rewards.rewards_accuracies, e.rewards.rewards_margins
        );
        serde_json::to_writer(&mut log, e)
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(log))
            .and_then(|_| log.flush())
            .map_err(|e| Error::io(&log_path, e))?;
    }
    println!("{}", serde_json::to_string(&summary).expect("serializable"));
    Ok(())
}

/// Puts the metrics log on disk before a checkpoint is: a run killed after the checkpoint
/// then has a line for every step the checkpoint holds.
fn sync_log(log: &mut std::io::BufWriter<std::fs::File>, path: &Path) -> Result<()> {
    log.flush()
        .and_then(|()| log.get_ref().sync_data())
        .map_err(|e| Error::io(path, e))
}

/// The log of the run a resume continues, cut to the steps its checkpoint holds, open for
/// appending. A killed run may have left a part of a line, or lines of steps after its last
/// checkpoint that the resumed run does again: both go, so that every step has one line.
fn resumed_log(path: &Path, steps_done: usize) -> Result<std::fs::File> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(path, e)),
    };
    let mut kept = String::new();
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(step) = v.get("step").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let eval = v.get("eval_loss").is_some();
        if (step as usize) < steps_done || (step as usize == steps_done && !eval) {
            kept.push_str(line);
        }
    }
    nudge::fsutil::write_atomic(path, kept.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}
