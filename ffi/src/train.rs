//! Training an adapter on a dataset: options, per-step metrics through a callback that
//! can stop the run, and the run's result.

use crate::dataset::tokenize;
use crate::handles::{self, AdapterHandle, DatasetHandle, NudgeAdapter, NudgeDataset};
use crate::options::{self, versioned};
use crate::pool::with_pool;
use crate::status::{Failure, FfiResult, NudgeStatus, guard};
use crate::text::str_arg;
use engine::adapter::Adapter;
use engine::data::PreferenceSet;
use engine::model::{Model, Recompute};
use engine::objective::Loss;
use engine::optim::{AdamWConfig, Schedule};
use engine::train::{EvalMetrics, StepMetrics, TrainConfig, Trainer};
use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::Instant;

/// `NudgeTrainOptions.schedule`: the learning rate stays constant after the warmup.
pub const NUDGE_SCHEDULE_CONSTANT: u32 = 0;
/// Linear warmup, then linear decay to 0 at the run's last step.
pub const NUDGE_SCHEDULE_LINEAR: u32 = 1;
/// Linear warmup, then half a cosine down to 0 at the run's last step.
pub const NUDGE_SCHEDULE_COSINE: u32 = 2;

/// How to train. Fill with `nudge_train_options_init`, then change what you need.
/// A NaN loss parameter means "the loss's default". The LoRA shape (rank, alpha, targets,
/// rsLoRA, init) belongs to the adapter (`NudgeAdapterOptions`); a run trains the adapter
/// it is given, so that a later run continues an earlier one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeTrainOptions {
    /// sizeof(NudgeTrainOptions) as the app was compiled.
    pub struct_size: u32,
    /// Passes over the dataset (default 2).
    pub epochs: u32,
    /// The loss (NULL or default: "sigmoid", i.e. DPO): sigmoid, ipo, cdpo, robust, hinge,
    /// nca_pair, bco_pair, apo_zero, apo_down, sppo_hard, exo_pair, discopop, simpo, orpo,
    /// margin_dpo on pairs; kto on thumbs. Parameters may also be given as suffixes
    /// ("cdpo_eps0.2", "orpo_no_nll", "bco_pair_delta0.1"); the fields below override them.
    pub loss: *const c_char,
    /// The temperature of the implicit reward (default 0.1), unless the name gives one.
    pub beta: f64,
    /// cdpo / robust / exo_pair: the label-smoothing epsilon (NaN: 0.1, or 1e-3 for exo_pair).
    pub label_smoothing: f64,
    /// simpo: the target margin gamma (NaN: 0.5).
    pub simpo_gamma: f64,
    /// discopop: the temperature tau (NaN: 0.05).
    pub discopop_tau: f64,
    /// kto: the weight of thumbs up (NaN: 1).
    pub kto_desirable_weight: f64,
    /// kto: the weight of thumbs down (NaN: 1).
    pub kto_undesirable_weight: f64,
    /// AdamW's learning rate (default 1e-3, for a few dozen pairs with LoRA).
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay (default 0).
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (default 1; 0: no clipping).
    pub max_grad_norm: f64,
    /// Stop after this many optimizer steps (default 0: run the epochs).
    pub max_steps: u32,
    /// Examples (pairs or thumbs) per optimizer step (default 4).
    pub batch_pairs: u32,
    /// Examples per forward/backward pass, accumulated up to batch_pairs (0, default:
    /// batch_pairs).
    pub micro_batch: u32,
    /// Prompt + completion tokens kept per example (default 0: the model's context). A
    /// longer example loses its prompt's first tokens (one always stays), then its
    /// completions' ends, as TRL's keep_end truncation does.
    pub max_length: u32,
    /// NUDGE_SCHEDULE_* (default NUDGE_SCHEDULE_LINEAR: decay to 0 over the run).
    pub schedule: u32,
    /// Steps of linear learning-rate warmup (default 0).
    pub warmup_steps: u32,
    /// Worker threads of this run (0, default: the model's setting).
    pub threads: u32,
    /// Dropout on the adapter's input while training (default 0: the adapter's own).
    pub lora_dropout: f32,
    /// Fraction of the pairs held out and evaluated after the run (default 0: none).
    pub eval_fraction: f32,
    /// Non-zero (default): shuffle the examples each epoch (seeded).
    pub shuffle: u32,
    /// Bytes of activations kept for the backward pass; layers beyond are recomputed from
    /// checkpoints of their inputs (default 256 MiB; 0 keeps the fewest, the least memory).
    pub memory_budget_bytes: u64,
    /// Seed of the shuffling and dropout (default 42).
    pub seed: u64,
}

impl Default for NudgeTrainOptions {
    fn default() -> Self {
        let c = TrainConfig::default();
        let budget = match c.recompute {
            Recompute::Budget(b) => b as u64,
            Recompute::Always => 0,
            Recompute::Never => u64::MAX,
        };
        NudgeTrainOptions {
            struct_size: size_of::<Self>() as u32,
            epochs: c.epochs as u32,
            loss: std::ptr::null(),
            beta: c.loss.beta(),
            label_smoothing: f64::NAN,
            simpo_gamma: f64::NAN,
            discopop_tau: f64::NAN,
            kto_desirable_weight: f64::NAN,
            kto_undesirable_weight: f64::NAN,
            learning_rate: c.optimizer.lr,
            weight_decay: c.optimizer.weight_decay,
            max_grad_norm: c.max_grad_norm.map_or(0.0, f64::from),
            max_steps: 0,
            batch_pairs: c.batch_size as u32,
            micro_batch: 0,
            max_length: 0,
            schedule: NUDGE_SCHEDULE_LINEAR,
            warmup_steps: 0,
            threads: 0,
            lora_dropout: c.lora_dropout,
            eval_fraction: c.eval_fraction,
            shuffle: c.shuffle as u32,
            memory_budget_bytes: budget,
            seed: c.seed,
        }
    }
}
versioned!(NudgeTrainOptions);

/// What one optimizer step did (TRL's metric names). The layout is frozen: new metrics
/// will come in a new struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NudgeStepMetrics {
    /// 1-based step number.
    pub step: u32,
    /// Steps the run will take if not stopped.
    pub total_steps: u32,
    /// 1 if the step's loss or gradient was not finite and the update was not applied.
    pub skipped: u32,
    /// 1 if `kl` holds KTO's KL estimate.
    pub has_kl: u32,
    /// Epochs done, fractional.
    pub epoch: f64,
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub learning_rate: f64,
    pub rewards_chosen: f64,
    pub rewards_rejected: f64,
    pub rewards_accuracies: f64,
    pub rewards_margins: f64,
    pub logps_chosen: f64,
    pub logps_rejected: f64,
    pub kl: f64,
    pub tokens_per_s: f64,
    /// Tokens of the step as TRL counts them (prompt + chosen + prompt + rejected).
    pub pair_tokens: u64,
}

/// Called after every optimizer step, on the thread that called `nudge_train`, never
/// concurrently with itself. `metrics` is valid during the call only. Return 0 to go on,
/// non-zero to stop the run after this step. It may call any function of this API except
/// those that use the adapter being trained (they return NUDGE_ERR_BUSY).
pub type NudgeProgressFn =
    Option<unsafe extern "C" fn(metrics: *const NudgeStepMetrics, user_data: *mut c_void) -> i32>;

/// What a run did. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NudgeTrainResult {
    /// sizeof(NudgeTrainResult) as the app was compiled; set by the app.
    pub struct_size: u32,
    /// Optimizer steps taken.
    pub steps: u32,
    /// Steps whose update was skipped (loss or gradient not finite).
    pub skipped_steps: u32,
    /// 1 if the progress callback stopped the run.
    pub cancelled: u32,
    /// Examples left out (an empty prompt or completion, an unpaired thumb under a pair
    /// loss); nudge_last_error_message() is not set for them.
    pub dropped_examples: u32,
    /// 1 if `eval` holds the held-out metrics (eval_fraction > 0 and not cancelled).
    pub has_eval: u32,
    /// Wall time of the run.
    pub seconds: f64,
    /// The last step's metrics (zero if no step was taken).
    pub last: NudgeStepMetrics,
    /// Loss and reward metrics of the held-out pairs after the run.
    pub eval: NudgeStepMetrics,
}
versioned!(NudgeTrainResult);

/// Prepares `result` for `nudge_train`: sets its `struct_size` to `struct_size` (pass
/// sizeof(NudgeTrainResult)) and the other fields to "unknown" (zero, -1 for an id or time that
/// may be absent, "" for a string). The app owns the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_train_result_init(result: *mut NudgeTrainResult, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(result, struct_size, "result"))
}

fn metrics(m: &StepMetrics, total_steps: usize) -> NudgeStepMetrics {
    NudgeStepMetrics {
        step: m.step as u32,
        total_steps: total_steps as u32,
        skipped: m.skipped as u32,
        has_kl: m.kl.is_some() as u32,
        epoch: m.epoch,
        loss: m.loss,
        grad_norm: m.grad_norm,
        learning_rate: m.learning_rate,
        rewards_chosen: m.rewards.rewards_chosen,
        rewards_rejected: m.rewards.rewards_rejected,
        rewards_accuracies: m.rewards.rewards_accuracies,
        rewards_margins: m.rewards.rewards_margins,
        logps_chosen: m.rewards.logps_chosen,
        logps_rejected: m.rewards.logps_rejected,
        kl: m.kl.unwrap_or(0.0),
        tokens_per_s: m.tokens_per_s,
        pair_tokens: m.pair_tokens as u64,
    }
}

/// Held-out metrics in the step struct (no gradient, learning rate or speed: zero).
fn eval_metrics(e: &EvalMetrics, total_steps: usize) -> NudgeStepMetrics {
    NudgeStepMetrics {
        step: e.step as u32,
        total_steps: total_steps as u32,
        loss: e.eval_loss,
        rewards_chosen: e.rewards.rewards_chosen,
        rewards_rejected: e.rewards.rewards_rejected,
        rewards_accuracies: e.rewards.rewards_accuracies,
        rewards_margins: e.rewards.rewards_margins,
        logps_chosen: e.rewards.logps_chosen,
        logps_rejected: e.rewards.logps_rejected,
        pair_tokens: e.pair_tokens as u64,
        ..Default::default()
    }
}

/// The loss of the options: the name parsed with `beta`, then the parameter fields.
fn loss(o: &NudgeTrainOptions) -> FfiResult<Loss> {
    let name = if o.loss.is_null() {
        "sigmoid"
    } else {
        str_arg(o.loss, "options->loss")?
    };
    let mut loss = Loss::parse(name, o.beta)?;
    let not_for =
        |field: &str, losses: &str| Failure::invalid(format!("options->{field} applies to {losses}, not to `{name}`"));
    if !o.label_smoothing.is_nan() {
        match &mut loss {
            Loss::Cdpo { eps, .. } | Loss::Robust { eps, .. } | Loss::ExoPair { eps, .. } => *eps = o.label_smoothing,
            _ => return Err(not_for("label_smoothing", "cdpo, robust and exo_pair")),
        }
    }
    if !o.simpo_gamma.is_nan() {
        match &mut loss {
            Loss::Simpo { gamma, .. } => *gamma = o.simpo_gamma,
            _ => return Err(not_for("simpo_gamma", "simpo")),
        }
    }
    if !o.discopop_tau.is_nan() {
        match &mut loss {
            Loss::Discopop { tau, .. } => *tau = o.discopop_tau,
            _ => return Err(not_for("discopop_tau", "discopop")),
        }
    }
    for (field, value, desirable) in [
        ("kto_desirable_weight", o.kto_desirable_weight, true),
        ("kto_undesirable_weight", o.kto_undesirable_weight, false),
    ] {
        if !value.is_nan() {
            match &mut loss {
                Loss::Kto {
                    desirable_weight,
                    undesirable_weight,
                    ..
                } => {
                    *(if desirable {
                        desirable_weight
                    } else {
                        undesirable_weight
                    }) = value
                }
                _ => return Err(not_for(field, "kto")),
            }
        }
    }
    loss.validate()?;
    Ok(loss)
}

fn train_config(o: &NudgeTrainOptions) -> FfiResult<TrainConfig> {
    if o.epochs == 0 {
        return Err(Failure::invalid("options->epochs must be at least 1"));
    }
    if !(o.max_grad_norm >= 0.0 && o.max_grad_norm.is_finite()) {
        return Err(Failure::invalid(format!(
            "options->max_grad_norm {} must be >= 0 (0: no clipping)",
            o.max_grad_norm
        )));
    }
    let batch = o.batch_pairs as usize;
    let config = TrainConfig {
        loss: loss(o)?,
        optimizer: AdamWConfig {
            lr: o.learning_rate,
            weight_decay: o.weight_decay,
            ..AdamWConfig::default()
        },
        // Total steps 0: the trainer sizes the schedule to the steps the run takes.
        schedule: schedule(o.schedule, o.warmup_steps)?,
        max_grad_norm: (o.max_grad_norm > 0.0).then_some(o.max_grad_norm as f32),
        epochs: o.epochs as usize,
        max_steps: (o.max_steps > 0).then_some(o.max_steps as usize),
        batch_size: batch,
        micro_batch_size: if o.micro_batch == 0 {
            batch
        } else {
            o.micro_batch as usize
        },
        seed: o.seed,
        shuffle: o.shuffle != 0,
        eval_fraction: o.eval_fraction,
        recompute: Recompute::Budget(usize::try_from(o.memory_budget_bytes).unwrap_or(usize::MAX)),
        lora_dropout: o.lora_dropout,
    };
    config.validate()?;
    Ok(config)
}

fn schedule(kind: u32, warmup: u32) -> FfiResult<Schedule> {
    let (warmup_steps, total_steps) = (warmup as u64, 0);
    let s = match kind {
        NUDGE_SCHEDULE_CONSTANT => Schedule::Constant { warmup_steps },
        NUDGE_SCHEDULE_LINEAR => Schedule::Linear {
            warmup_steps,
            total_steps,
        },
        NUDGE_SCHEDULE_COSINE => Schedule::Cosine {
            warmup_steps,
            total_steps,
            num_cycles: 0.5,
        },
        other => {
            return Err(Failure::invalid(format!(
                "options->schedule {other} is not a NUDGE_SCHEDULE_* value"
            )));
        }
    };
    s.validate()?;
    Ok(s)
}

/// Fills `options` with the defaults; `struct_size` is sizeof(NudgeTrainOptions).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_train_options_init(options: *mut NudgeTrainOptions, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(options, struct_size, "options"))
}

/// The C callback and its user pointer.
struct Progress {
    f: NudgeProgressFn,
    user_data: *mut c_void,
}

impl Progress {
    /// True if the app asks to stop.
    fn report(&self, m: &NudgeStepMetrics) -> bool {
        match self.f {
            // SAFETY: the app's callback, with the metrics valid for the call.
            Some(f) => unsafe { f(m, self.user_data) != 0 },
            None => false,
        }
    }
}

struct Run {
    result: NudgeTrainResult,
    trained: Adapter,
    error: Option<engine::Error>,
}

fn run(
    pool: &rayon::ThreadPool,
    model: &Model,
    adapter: Adapter,
    config: TrainConfig,
    data: PreferenceSet,
    progress: &Progress,
) -> FfiResult<Run> {
    let kto = matches!(config.loss, Loss::Kto { .. });
    let evaluate = config.eval_fraction > 0.0 && !kto;
    if evaluate && data.pairs.len() < 2 {
        return Err(Failure::invalid(format!(
            "options->eval_fraction needs at least 2 pairs to hold some out; the dataset has {}",
            data.pairs.len()
        )));
    }
    let t0 = Instant::now();
    let mut trainer = Trainer::new(model, adapter, config, data)?;
    let mut result = NudgeTrainResult {
        dropped_examples: trainer.skipped().len() as u32,
        ..Default::default()
    };
    let total = trainer.total_steps();
    let mut error = None;
    while trainer.steps_done() < total {
        let m = match pool.install(|| trainer.train_step()) {
            Ok(m) => metrics(&m, total),
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        result.steps += 1;
        result.skipped_steps += m.skipped;
        result.last = m;
        if progress.report(&m) {
            result.cancelled = 1;
            break;
        }
    }
    if evaluate && error.is_none() && result.cancelled == 0 {
        match pool.install(|| trainer.evaluate()) {
            Ok(m) => {
                result.eval = eval_metrics(&m, total);
                result.has_eval = 1;
            }
            Err(e) => error = Some(e),
        }
    }
    result.seconds = t0.elapsed().as_secs_f64();
    Ok(Run {
        result,
        trained: trainer.adapter,
        error,
    })
}

/// Trains `adapter` on `dataset` (pairs for the pair losses, thumbs for "kto"), with the
/// adapter's model. `options` may be NULL (defaults), `progress` may be NULL, `result` may
/// be NULL; if given, set its `struct_size` first.
///
/// Returns NUDGE_OK when the run completed, NUDGE_ERR_CANCELLED when the callback stopped
/// it (`result` is filled in both cases), NUDGE_ERR_BUSY if the adapter is in use by
/// another call. The adapter keeps every step completed, also when the run is stopped or
/// fails part way. The dataset is copied when the run starts.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_train(
    adapter: *mut NudgeAdapter,
    dataset: *const NudgeDataset,
    options: *const NudgeTrainOptions,
    progress: NudgeProgressFn,
    user_data: *mut c_void,
    result: *mut NudgeTrainResult,
) -> NudgeStatus {
    guard(|| {
        let a = handles::get::<AdapterHandle>(adapter, "adapter")?;
        let d = handles::get::<DatasetHandle>(dataset, "dataset")?;
        let o = options::read(options, "options")?;
        options::check_out(result, "result")?;
        let config = train_config(&o)?;
        let rows = handles::read(&d.rows, "dataset")?.clone();
        let mut held = handles::write(&a.adapter, "adapter")?;
        let model = &a.model.model;
        let max_length = (o.max_length > 0).then_some(o.max_length as usize);
        let data = tokenize(model, &rows, max_length)?;
        let progress = Progress { f: progress, user_data };
        let threads = crate::model::threads(&a.model, o.threads);
        let run = with_pool(threads, |pool| {
            run(pool, model, Adapter::clone(&**held), config, data, &progress)
        })??;
        *held = Arc::new(run.trained);
        drop(held);
        if let Some(e) = run.error {
            return Err(e.into());
        }
        if !result.is_null() {
            options::write(result, run.result, "result")?;
        }
        if run.result.cancelled != 0 {
            return Err(Failure::new(
                NudgeStatus::NUDGE_ERR_CANCELLED,
                format!(
                    "stopped by the progress callback after step {} of {}",
                    run.result.steps, run.result.last.total_steps
                ),
            ));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_end_without_padding() {
        crate::assert_packed_end!(NudgeTrainOptions, seed, u64);
        crate::assert_packed_end!(NudgeTrainResult, eval, NudgeStepMetrics);
        assert_eq!(size_of::<NudgeStepMetrics>(), 4 * 4 + 12 * 8 + 8);
    }

    #[test]
    fn defaults_are_the_engine_defaults() {
        let o = NudgeTrainOptions::default();
        let c = train_config(&o).unwrap();
        assert_eq!(c, TrainConfig::default());
    }

    #[test]
    fn loss_fields_override_the_name_and_only_apply_to_their_losses() {
        let with = |name: &std::ffi::CStr, f: &dyn Fn(&mut NudgeTrainOptions)| {
            let mut o = NudgeTrainOptions {
                loss: name.as_ptr(),
                ..Default::default()
            };
            f(&mut o);
            loss(&o)
        };
        assert_eq!(
            with(c"cdpo", &|o| o.label_smoothing = 0.25).unwrap(),
            Loss::Cdpo { beta: 0.1, eps: 0.25 }
        );
        assert_eq!(
            with(c"simpo_beta2", &|o| o.simpo_gamma = 0.7).unwrap(),
            Loss::Simpo { beta: 2.0, gamma: 0.7 }
        );
        assert_eq!(
            with(c"discopop", &|o| o.discopop_tau = 0.2).unwrap(),
            Loss::Discopop { beta: 0.1, tau: 0.2 }
        );
        assert_eq!(
            with(c"kto", &|o| {
                o.beta = 0.3;
                o.kto_undesirable_weight = 1.5
            })
            .unwrap(),
            Loss::Kto {
                beta: 0.3,
                desirable_weight: 1.0,
                undesirable_weight: 1.5
            }
        );
        let e = with(c"sigmoid", &|o| o.label_smoothing = 0.1).err().unwrap();
        assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID);
        assert!(e.message.contains("label_smoothing"), "{}", e.message);
        assert!(with(c"robust", &|o| o.label_smoothing = 0.7).is_err());
        assert!(with(c"nope", &|_| ()).is_err());
        assert!(with(c"sigmoid", &|o| o.beta = -1.0).is_err());
    }

    #[test]
    fn bad_run_settings_are_refused() {
        let bad: [&dyn Fn(&mut NudgeTrainOptions); 6] = [
            &|o| o.epochs = 0,
            &|o| o.batch_pairs = 0,
            &|o| o.max_grad_norm = f64::NAN,
            &|o| o.schedule = 3,
            &|o| o.eval_fraction = 1.0,
            &|o| o.learning_rate = -1.0,
        ];
        for f in bad {
            let mut o = NudgeTrainOptions::default();
            f(&mut o);
            assert_eq!(
                train_config(&o).err().unwrap().status,
                NudgeStatus::NUDGE_ERR_INVALID,
                "{o:?}"
            );
        }
    }
}
