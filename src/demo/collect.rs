//! One round of feedback as an app collects it: sample answers, let the simulated user rate
//! them, record the thumbs in the journal, and read back what is new as a training set.

use super::{DemoConfig, Progress};
use crate::adapter::Adapter;
use crate::data::PreferenceSet;
use crate::error::Result;
use crate::generate::{GenerateOptions, GenerateRequest, Generated, generate_batch_with};
use crate::journal::{Journal, Prompt, Record, Target, Thumbs, TrainingMark, TrainingOptions, UnpairedPolicy};
use crate::model::Model;
use crate::taste::{Answer, SimulatedUser, Which};
use crate::tokenizer::ChatMessage;
use std::ops::ControlFlow;

/// What one round gathered.
#[derive(Clone, Debug)]
pub struct Collected {
    /// The new events' training rows (pairs, or thumbs for KTO).
    pub data: PreferenceSet,
    /// The mark to append to the journal once these rows are trained on.
    pub mark: Option<TrainingMark>,
    /// Thumbs recorded (up, down).
    pub thumbs_up: usize,
    pub thumbs_down: usize,
    /// Prompts whose answers the user found equally good (no pair recorded).
    pub ties: usize,
    /// Answers sampled, and how many of them were cut at the token limit.
    pub answers: usize,
    pub answers_cut: usize,
    pub sampling_seconds: f64,
    pub tokens_generated: usize,
}

/// The chat prompt of a user message, rendered and tokenized as training renders it.
pub(crate) fn chat_prompt(model: &Model, text: &str) -> Result<Vec<u32>> {
    let rendered = model
        .tokenizer
        .apply_chat_template(&[ChatMessage::new("user", text)], true)?;
    model.tokenizer.encode(&rendered, false)
}

/// How answers are sampled: `samples` per prompt, each with `opts` (and a seed of its own),
/// decoded `batch_rows` at a time.
pub(crate) struct Sampling {
    pub samples: usize,
    pub opts: GenerateOptions,
    pub batch_rows: usize,
}

impl Sampling {
    /// One answer per prompt, batched as `cfg` says.
    pub fn one(opts: GenerateOptions, cfg: &DemoConfig) -> Self {
        Self {
            samples: 1,
            opts,
            batch_rows: cfg.batch_rows,
        }
    }
}

/// One round of the loop: the model that answers, the user who rates, the settings, and
/// the round's index (which seeds its sampling and names its events).
pub struct Round<'a> {
    pub model: &'a Model,
    pub user: &'a SimulatedUser,
    pub cfg: &'a DemoConfig,
    pub index: usize,
}

/// Samples `how.samples` answers to each prompt (with `adapter`, if any), batched.
pub(crate) fn sample(
    model: &Model,
    adapter: Option<&Adapter>,
    prompts: &[&str],
    how: &Sampling,
    what: &str,
    progress: &mut dyn Progress,
) -> Result<Vec<Vec<Generated>>> {
    let (samples, opts) = (how.samples, &how.opts);
    let mut requests = Vec::with_capacity(prompts.len() * samples);
    for (i, p) in prompts.iter().enumerate() {
        let ids = chat_prompt(model, p)?;
        for k in 0..samples {
            let mut o = opts.clone();
            // A seed per (prompt, sample): the same answers whatever the batching.
            o.seed = opts
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add((i * samples + k) as u64);
            requests.push(GenerateRequest {
                prompt: ids.clone(),
                opts: o,
            });
        }
    }
    progress.phase(what, requests.len() as u64);
    let batch = crate::generate::BatchOptions {
        max_rows: how.batch_rows,
        ..Default::default()
    };
    let mut done = 0;
    let out = generate_batch_with(model, &requests, adapter, &batch, |p| {
        progress.advance((p.done - done) as u64);
        done = p.done;
        ControlFlow::Continue(())
    })?;
    let mut it = out.into_iter();
    Ok((0..prompts.len())
        .map(|_| it.by_ref().take(samples).collect())
        .collect())
}

/// One round: answers to `prompts` from the current model (the base with `adapter`, if
/// any), rated by the round's user, recorded in `journal` as an app records thumbs, then
/// the journal's new events as training rows.
pub fn collect(
    round: &Round,
    adapter: Option<&Adapter>,
    prompts: &[&str],
    journal: &mut Journal,
    progress: &mut dyn Progress,
) -> Result<Collected> {
    let (cfg, index) = (round.cfg, round.index);
    let opts = GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.temperature,
        top_k: 0,
        top_p: cfg.top_p,
        seed: cfg.seed ^ (index as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03),
        stop_tokens: None,
        stop_strings: Vec::new(),
    };
    let t0 = std::time::Instant::now();
    let what = format!("round {}: sampling {} answers", index + 1, prompts.len() * cfg.samples);
    let how = Sampling {
        samples: cfg.samples,
        opts,
        batch_rows: cfg.batch_rows,
    };
    let answers = sample(round.model, adapter, prompts, &how, &what, progress)?;
    let mut c = rate_and_record(round, prompts, &answers, journal)?;
    c.sampling_seconds = t0.elapsed().as_secs_f64();
    Ok(c)
}

/// The user's ratings of `answers` (per prompt, its samples) recorded in `journal`, then
/// the journal's new events as training rows: pairs, or thumbs with `cfg.unpaired`.
pub fn rate_and_record(
    round: &Round,
    prompts: &[&str],
    answers: &[Vec<Generated>],
    journal: &mut Journal,
) -> Result<Collected> {
    let Round {
        model,
        user,
        cfg,
        index: round,
    } = *round;
    let mut c = Collected {
        data: PreferenceSet::default(),
        mark: None,
        thumbs_up: 0,
        thumbs_down: 0,
        ties: 0,
        answers: 0,
        answers_cut: 0,
        sampling_seconds: 0.0,
        tokens_generated: 0,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let record = |journal: &mut Journal, prompt: &str, text: &str, up: bool, strength: f64, id: String| {
        journal.append(Record::Thumbs(Thumbs {
            id,
            prompt: Prompt::Chat(vec![ChatMessage::new("user", prompt)]),
            completion: text.to_string(),
            up,
            strength: Some(strength as f32),
            timestamp_ms: now,
        }))
    };
    for (i, (prompt, gens)) in prompts.iter().zip(answers).enumerate() {
        let rated: Vec<Answer> = gens.iter().map(Answer::from_generated).collect();
        c.answers += rated.len();
        c.answers_cut += rated.iter().filter(|a| a.truncated).count();
        c.tokens_generated += gens.iter().map(|g| g.ids.len()).sum::<usize>();
        let id = |k: usize| format!("r{round}-p{i}-s{k}");
        if cfg.unpaired {
            for (k, a) in rated.iter().enumerate() {
                if let Some(t) = user.rate(a) {
                    record(journal, prompt, &a.text, t.up, t.strength, id(k))?;
                    if t.up {
                        c.thumbs_up += 1;
                    } else {
                        c.thumbs_down += 1;
                    }
                }
            }
            continue;
        }
        // The app shows the best and the worst answer; the user prefers one of them.
        let score = |k: usize| user.score(&rated[k]);
        let by_score = |a: &usize, b: &usize| score(*a).total_cmp(&score(*b));
        let (Some(best), Some(worst)) = ((0..rated.len()).max_by(by_score), (0..rated.len()).min_by(by_score)) else {
            continue;
        };
        match user.judge_pair(prompt, &rated[best], &rated[worst]) {
            Some(j) if j.preferred == Which::A => {
                // Down first, so that the journal pairs the newest up with the newest down.
                record(journal, prompt, &rated[worst].text, false, j.strength, id(worst))?;
                record(journal, prompt, &rated[best].text, true, j.strength, id(best))?;
                c.thumbs_up += 1;
                c.thumbs_down += 1;
            }
            _ => c.ties += 1,
        }
    }
    journal.sync()?;
    let opts = TrainingOptions {
        only_new: true,
        target: if cfg.unpaired { Target::Kto } else { Target::Dpo },
        unpaired: UnpairedPolicy::Keep,
        truncation: crate::data::Truncation::max_length(model.config.max_position_embeddings),
    };
    let set = journal.training_set(&model.tokenizer, &opts)?;
    c.mark = set.plan.mark(now);
    c.data = set.data;
    if matches!(cfg.loss, crate::objective::Loss::MarginDpo { .. }) {
        // The strength of a preference is its margin (in nats of reward).
        for p in &mut c.data.pairs {
            p.margin = p.weight;
        }
    }
    Ok(c)
}
