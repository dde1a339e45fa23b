//! The feedback loop as an app runs it, with a simulated user in place of a person: the
//! model answers everyday prompts (several sampled answers each, decoded in batches), the
//! user rates them, the ratings go through the feedback journal exactly as an app's
//! would, and a training run consumes what is new; rounds can repeat from the adapted
//! model (on-policy data, as iterative DPO does). [`evaluate`] then compares the base and
//! the adapted model on held-out prompts.
//!
//! This is what `nudge demo` runs; it is also how the project measures which loss and
//! which settings make a few dozen thumbs visibly change the model.

mod collect;
mod eval;

pub use collect::{Collected, Round, collect, rate_and_record};
pub use eval::{EvalReport, Fluency, HeldOut, SideBySide, Summary, evaluate};

use crate::adapter::{Adapter, LoraConfig};
use crate::data::PreferenceSet;
use crate::error::{Error, Result};
use crate::journal::{Durability, Journal, Record};
use crate::model::{Model, Recompute};
use crate::objective::Loss;
use crate::optim::{AdamWConfig, Schedule};
use crate::taste::{SimulatedUser, Taste, prompts};
use crate::train::{Control, StepMetrics, TrainConfig, Trainer};
use serde::Serialize;

/// Everything a demo run is set by.
#[derive(Clone, Debug, Serialize)]
pub struct DemoConfig {
    #[serde(serialize_with = "taste_name")]
    pub taste: Taste,
    /// Single-answer thumbs trained with KTO instead of pairs.
    pub unpaired: bool,
    /// Collect-and-train rounds; each round after the first samples from the adapted model.
    pub rounds: usize,
    /// Prompts of the shipped training set used per round (at most its size).
    pub train_prompts: usize,
    /// Sampled answers per prompt.
    pub samples: usize,
    /// Prompts of the shipped held-out set evaluated (at most its size).
    pub heldout_prompts: usize,
    /// Token limit of every answer; an answer cut there counts as cut off.
    pub max_new_tokens: usize,
    /// Sampling temperature of the collected answers.
    pub temperature: f32,
    /// Sampling temperature of the held-out answers (base and adapted, same seeds).
    pub eval_temperature: f32,
    pub top_p: f32,
    /// Rows decoded together.
    pub batch_rows: usize,
    pub seed: u64,
    #[serde(serialize_with = "loss_name")]
    pub loss: Loss,
    pub lr: f64,
    pub epochs: usize,
    pub batch_pairs: usize,
    pub lora: LoraConfig,
    /// Answers shown side by side in the report.
    pub examples: usize,
}

fn taste_name<S: serde::Serializer>(t: &Taste, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(t.name())
}

fn loss_name<S: serde::Serializer>(l: &Loss, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(l.name())
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            taste: Taste::Short,
            unpaired: false,
            rounds: 1,
            train_prompts: 96,
            samples: 2,
            heldout_prompts: 40,
            max_new_tokens: 192,
            temperature: 0.8,
            eval_temperature: 0.7,
            top_p: 0.95,
            batch_rows: 32,
            seed: 1,
            loss: Loss::Sigmoid { beta: 0.1 },
            lr: 1e-3,
            epochs: 2,
            batch_pairs: 4,
            lora: LoraConfig::default(),
            examples: 4,
        }
    }
}

impl DemoConfig {
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("rounds", self.rounds),
            ("train_prompts", self.train_prompts),
            ("samples", self.samples),
            ("heldout_prompts", self.heldout_prompts),
            ("max_new_tokens", self.max_new_tokens),
            ("batch_rows", self.batch_rows),
            ("epochs", self.epochs),
            ("batch_pairs", self.batch_pairs),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::invalid(format!("demo: {name} must be at least 1")));
            }
        }
        if !self.unpaired && self.samples < 2 {
            return Err(Error::invalid(
                "demo: pairs need at least 2 samples per prompt (or rate single answers with unpaired)",
            ));
        }
        if self.unpaired != matches!(self.loss, Loss::Kto { .. }) {
            return Err(Error::invalid(format!(
                "demo: {} ratings train with {}, not {}",
                if self.unpaired { "single-answer" } else { "pair" },
                if self.unpaired { "kto" } else { "a pair loss" },
                self.loss.name()
            )));
        }
        self.lora.validate()
    }
}

/// What a long phase reports, so a front end can draw progress bars.
pub trait Progress {
    /// A phase starts: `what` to show, `total` units (answers, steps, texts).
    fn phase(&mut self, what: &str, total: u64);
    /// `n` more units of the current phase are done.
    fn advance(&mut self, n: u64);
    /// A training step finished.
    fn step(&mut self, _m: &StepMetrics) {}
}

/// Progress nobody watches.
pub struct Quiet;

impl Progress for Quiet {
    fn phase(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

/// Trains `adapter` on `data` with the demo's settings; returns the steps' metrics.
pub fn train(
    model: &Model,
    adapter: Adapter,
    data: PreferenceSet,
    cfg: &DemoConfig,
    loss: &Loss,
    progress: &mut dyn Progress,
) -> Result<(Adapter, Vec<StepMetrics>)> {
    let config = TrainConfig {
        loss: *loss,
        optimizer: AdamWConfig {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
        schedule: Schedule::Linear {
            warmup_steps: 0,
            total_steps: 0,
        },
        max_grad_norm: Some(1.0),
        epochs: cfg.epochs,
        max_steps: None,
        batch_size: cfg.batch_pairs,
        micro_batch_size: cfg.batch_pairs,
        seed: cfg.seed,
        shuffle: true,
        eval_fraction: 0.0,
        recompute: Recompute::Budget(128 << 20),
        lora_dropout: 0.0,
    };
    let mut trainer = Trainer::new(model, adapter, config, data)?;
    progress.phase(&format!("training ({})", loss.name()), trainer.total_steps() as u64);
    let mut steps = Vec::new();
    trainer.run(&mut |m| {
        progress.step(m);
        progress.advance(1);
        steps.push(m.clone());
        Control::Continue
    })?;
    Ok((trainer.adapter, steps))
}

/// What one collect-and-train round did.
#[derive(Clone, Debug, Serialize)]
pub struct RoundReport {
    pub round: usize,
    pub thumbs_up: usize,
    pub thumbs_down: usize,
    pub ties: usize,
    /// Training rows (pairs, or thumbs for KTO) the round trained on.
    pub rows: usize,
    pub answers: usize,
    pub answers_cut: usize,
    pub sampling_seconds: f64,
    pub sampling_tokens_per_s: f64,
    pub steps: Vec<StepMetrics>,
}

/// A whole demo: the rounds, the adapter they produced, and the held-out comparison.
pub struct DemoRun {
    pub rounds: Vec<RoundReport>,
    pub adapter: Adapter,
    pub eval: EvalReport,
}

/// The loop as an app runs it: `cfg.rounds` rounds of collecting thumbs through the
/// journal at `journal_path` and training on what is new, then the held-out comparison.
pub fn run(
    model: &Model,
    cfg: &DemoConfig,
    journal_path: &std::path::Path,
    progress: &mut dyn Progress,
) -> Result<DemoRun> {
    cfg.validate()?;
    let user = SimulatedUser::new(cfg.taste);
    let (mut journal, _) = Journal::open(journal_path, Durability::Batch)?;
    let (all, _) = prompts::for_taste(cfg.taste);
    let mut adapter = Adapter::new(&model.config, cfg.lora.clone(), cfg.seed, model.name())?;
    let mut rounds = Vec::new();
    for round in 0..cfg.rounds {
        // Each round asks about other prompts where the set allows, as an app's user would.
        let start = (round * cfg.train_prompts) % all.len();
        let prompts: Vec<&str> = (0..cfg.train_prompts.min(all.len()))
            .map(|i| all[(start + i) % all.len()])
            .collect();
        let current = (round > 0).then_some(&adapter);
        let this = Round {
            model,
            user: &user,
            cfg,
            index: round,
        };
        let c = collect(&this, current, &prompts, &mut journal, progress)?;
        let rows = c.data.pairs.len() + c.data.unpaired.len();
        let (trained, steps) = train(model, adapter, c.data, cfg, &cfg.loss, progress)?;
        adapter = trained;
        if let Some(mark) = c.mark {
            journal.append(Record::TrainingMark(mark))?;
            journal.sync()?;
        }
        rounds.push(RoundReport {
            round: round + 1,
            thumbs_up: c.thumbs_up,
            thumbs_down: c.thumbs_down,
            ties: c.ties,
            rows,
            answers: c.answers,
            answers_cut: c.answers_cut,
            sampling_seconds: c.sampling_seconds,
            sampling_tokens_per_s: c.tokens_generated as f64 / c.sampling_seconds.max(1e-9),
            steps,
        });
    }
    journal.close()?;
    let held = HeldOut::prepare(model, &user, cfg, progress)?;
    let eval = evaluate(model, &adapter, &held, &user, cfg, progress)?;
    Ok(DemoRun { rounds, adapter, eval })
}

/// One entry of [`compare_losses`]: a loss and the learning rate it trains with (losses
/// differ in the scale of their gradients, so one rate does not suit them all).
#[derive(Clone, Copy, Debug)]
pub struct LossRun {
    pub loss: Loss,
    pub lr: f64,
}

/// One loss's result in [`compare_losses`].
#[derive(Clone, Debug, Serialize)]
pub struct LossResult {
    /// The loss's name, with `@lr` when its learning rate is not the demo's.
    pub loss: String,
    pub lr: f64,
    pub steps: Vec<StepMetrics>,
    pub eval: EvalReport,
}

/// The same collected feedback through each loss: one round of thumbs from the base
/// model (pairs, and each answer's thumb for KTO), then a fresh adapter per loss, each
/// evaluated on the same held-out set. `finished` sees each loss's result as soon as it
/// is known (a comparison runs for an hour on a small device; nothing done is lost).
pub fn compare_losses(
    model: &Model,
    cfg: &DemoConfig,
    runs: &[LossRun],
    journal_dir: &std::path::Path,
    progress: &mut dyn Progress,
    finished: &mut dyn FnMut(&LossResult) -> Result<()>,
) -> Result<Vec<LossResult>> {
    let user = SimulatedUser::new(cfg.taste);
    let (all, _) = prompts::for_taste(cfg.taste);
    let prompts: Vec<&str> = all.iter().copied().take(cfg.train_prompts).collect();
    // One set of answers from the base model, rated twice: as pairs for the pair losses,
    // and one thumb per answer for KTO, each through a journal of its own.
    let opts = crate::generate::GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        seed: cfg.seed ^ 0xd1b5_4a32_d192_ed03,
        ..Default::default()
    };
    let what = format!("sampling {} answers", prompts.len() * cfg.samples);
    let how = collect::Sampling {
        samples: cfg.samples,
        opts,
        batch_rows: cfg.batch_rows,
    };
    let answers = collect::sample(model, None, &prompts, &how, &what, progress)?;
    let mut data = Vec::new();
    for unpaired in [false, true] {
        let c = DemoConfig {
            unpaired,
            loss: if unpaired {
                Loss::parse("kto", 0.1)?
            } else {
                Loss::Sigmoid { beta: 0.1 }
            },
            ..cfg.clone()
        };
        let path = journal_dir.join(if unpaired { "thumbs.journal" } else { "pairs.journal" });
        let _ = std::fs::remove_file(&path);
        let (mut journal, _) = Journal::open(&path, Durability::Batch)?;
        let round = Round {
            model,
            user: &user,
            cfg: &c,
            index: 0,
        };
        data.push(rate_and_record(&round, &prompts, &answers, &mut journal)?.data);
        journal.close()?;
    }
    let held = HeldOut::prepare(model, &user, cfg, progress)?;
    let mut out = Vec::new();
    for run in runs {
        let loss = &run.loss;
        let kto = matches!(loss, Loss::Kto { .. });
        let mut set = data[kto as usize].clone();
        if matches!(loss, Loss::MarginDpo { .. }) {
            for p in &mut set.pairs {
                p.margin = p.weight;
            }
        }
        let fresh = Adapter::new(&model.config, cfg.lora.clone(), cfg.seed, model.name())?;
        let c = DemoConfig {
            lr: run.lr,
            ..cfg.clone()
        };
        let (adapter, steps) = train(model, fresh, set, &c, loss, progress)?;
        let eval = evaluate(model, &adapter, &held, &user, cfg, progress)?;
        let result = LossResult {
            loss: if run.lr == cfg.lr {
                loss.name().to_string()
            } else {
                format!("{}@{}", loss.name(), run.lr)
            },
            lr: run.lr,
            steps,
            eval,
        };
        finished(&result)?;
        out.push(result);
    }
    Ok(out)
}
