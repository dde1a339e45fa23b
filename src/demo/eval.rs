//! Base against adapted model on prompts the adapter never saw: the taste metric, the
//! simulated user's verdict, reward accuracy on held-out pairs, the change of
//! log-likelihood on neutral text, and a fluency guard (repetition, answers cut at the
//! limit, the base model's perplexity of the answers).

use super::collect::{Sampling, chat_prompt, sample};
use super::{DemoConfig, Progress};
use crate::adapter::Adapter;
use crate::error::Result;
use crate::generate::{GenerateOptions, Generated};
use crate::model::Model;
use crate::score::ScoreItem;
use crate::taste::{Answer, SimulatedUser, Which, answer_nll, measures, prompts};
use serde::Serialize;

/// What every evaluation compares against, computed once: the base model's answers, the
/// held-out pairs and the neutral text's log-likelihood under the base.
pub struct HeldOut {
    pub prompts: Vec<&'static str>,
    prompt_ids: Vec<Vec<u32>>,
    pub base: Vec<Answer>,
    /// Held-out pairs (prompt ids, chosen ids, rejected ids) judged by the user among two
    /// sampled base answers, with their reference log-probs.
    pairs: Vec<HeldPair>,
    neutral: Vec<Vec<u32>>,
    neutral_base: f64,
}

/// A held-out pair: prompt index, chosen ids, rejected ids, and the base model's log-prob
/// of each answer.
type HeldPair = (usize, Vec<u32>, Vec<u32>, f64, f64);

/// Mean, median and every value of a metric over the held-out answers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub mean: f64,
    pub median: f64,
    /// The 10th, 25th, 75th and 90th percentiles (nearest rank).
    pub p10: f64,
    pub p25: f64,
    pub p75: f64,
    pub p90: f64,
    pub values: Vec<f64>,
}

impl Summary {
    pub fn of(values: Vec<f64>) -> Summary {
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
        };
        let mean = if n == 0 {
            f64::NAN
        } else {
            values.iter().sum::<f64>() / n as f64
        };
        let rank = |q: f64| {
            if n == 0 {
                f64::NAN
            } else {
                sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1]
            }
        };
        Summary {
            mean,
            median,
            p10: rank(0.1),
            p25: rank(0.25),
            p75: rank(0.75),
            p90: rank(0.9),
            values,
        }
    }
}

/// Signs of broken text over a set of answers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Fluency {
    /// Mean share of repeated word 4-grams.
    pub repeated_ngram_share: f64,
    /// Answers cut at the token limit.
    pub cut_at_limit: usize,
    /// Mean per-token negative log-likelihood under the base model (exp: perplexity).
    pub base_nll: f64,
    /// Answers the simulated user finds broken (loops, gibberish, empty, cut off).
    pub broken: usize,
    pub answers: usize,
}

/// One held-out prompt's answers, base and adapted.
#[derive(Clone, Debug, Serialize)]
pub struct SideBySide {
    pub prompt: String,
    pub base: String,
    pub adapted: String,
}

/// Base against adapted on the held-out prompts.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub taste_metric: String,
    pub taste_metric_base: Summary,
    pub taste_metric_adapted: Summary,
    /// Adapted answers the user prefers to the base's, ties counted half.
    pub win_rate: f64,
    pub wins: usize,
    pub losses: usize,
    pub ties: usize,
    /// Held-out pairs whose chosen answer gains more log-prob than the rejected one
    /// under the adapter (DPO's implicit reward), and how many pairs there were.
    pub heldout_reward_accuracy: f64,
    pub heldout_pairs: usize,
    /// Summed log-likelihood of the neutral texts, base and adapted, and the relative
    /// change (adapted - base) / |base|.
    pub neutral_loglik_base: f64,
    pub neutral_loglik_adapted: f64,
    pub neutral_loglik_change: f64,
    pub fluency_base: Fluency,
    pub fluency_adapted: Fluency,
    pub examples: Vec<SideBySide>,
}

/// How held-out answers are decoded, for the base and the adapted model alike: sampled as
/// an app samples (greedy decoding makes a small model loop far more than any app shows),
/// with the same seed per prompt for both models.
fn answering(cfg: &DemoConfig) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: cfg.max_new_tokens,
        temperature: cfg.eval_temperature,
        top_p: cfg.top_p,
        seed: cfg.seed ^ 0x0e7a_1d00,
        ..GenerateOptions::default()
    }
}

/// The answers with the base model's perplexity of each.
fn answers(model: &Model, prompt_ids: &[Vec<u32>], gens: &[Generated]) -> Result<Vec<Answer>> {
    prompt_ids
        .iter()
        .zip(gens)
        .map(|(p, g)| {
            let a = Answer::from_generated(g);
            Ok(if g.ids.is_empty() {
                a
            } else {
                let nll = answer_nll(model, p, &g.ids)?;
                a.with_nll(nll)
            })
        })
        .collect()
}

fn fluency(user: &SimulatedUser, answers: &[Answer]) -> Fluency {
    let n = answers.len().max(1) as f64;
    let nlls: Vec<f64> = answers.iter().filter_map(|a| a.nll).collect();
    Fluency {
        repeated_ngram_share: answers
            .iter()
            .map(|a| measures::repeated_ngram_share(&a.text, 4))
            .sum::<f64>()
            / n,
        cut_at_limit: answers.iter().filter(|a| a.truncated).count(),
        base_nll: nlls.iter().sum::<f64>() / nlls.len().max(1) as f64,
        broken: answers.iter().filter(|a| !user.utility(a).defects.is_clean()).count(),
        answers: answers.len(),
    }
}

/// Summed log-likelihood of each neutral text (its first token given, the rest scored).
fn neutral_loglik(model: &Model, texts: &[Vec<u32>], adapter: Option<&Adapter>) -> Result<f64> {
    let items: Vec<ScoreItem> = texts
        .iter()
        .map(|t| ScoreItem {
            prompt: &t[..1],
            completions: vec![&t[1..]],
        })
        .collect();
    let mut total = 0.0;
    for chunk in items.chunks(4) {
        for s in model.score_packed_with(chunk, adapter)? {
            total += s[0].logp;
        }
    }
    Ok(total)
}

impl HeldOut {
    /// The base model's answers to the held-out prompts, pairs judged between them and a
    /// second sampled answer each, and the neutral text under the base.
    pub fn prepare(model: &Model, user: &SimulatedUser, cfg: &DemoConfig, progress: &mut dyn Progress) -> Result<Self> {
        let (_, all) = prompts::for_taste(cfg.taste);
        let prompts: Vec<&'static str> = all.iter().copied().take(cfg.heldout_prompts).collect();
        let prompt_ids: Vec<Vec<u32>> = prompts.iter().map(|p| chat_prompt(model, p)).collect::<Result<_>>()?;
        let how = Sampling::one(answering(cfg), cfg);
        let gens = sample(model, None, &prompts, &how, "held-out: base answers", progress)?;
        let gens: Vec<Generated> = gens.into_iter().map(|mut g| g.remove(0)).collect();
        let base = answers(model, &prompt_ids, &gens)?;

        // Held-out pairs: the user's judgement between the base answer and a second one
        // sampled at the collection temperature.
        let opts = GenerateOptions {
            max_new_tokens: cfg.max_new_tokens,
            temperature: cfg.temperature,
            top_p: cfg.top_p,
            seed: cfg.seed ^ 0x5eed_0f4e_1d00,
            ..GenerateOptions::default()
        };
        let how = Sampling::one(opts, cfg);
        let others = sample(model, None, &prompts, &how, "held-out: second answers", progress)?;
        let mut pairs = Vec::new();
        for (i, other) in others.iter().enumerate() {
            let (g0, g1) = (&gens[i], &other[0]);
            let b = Answer::from_generated(g1);
            if let Some(j) = user.judge_pair(prompts[i], &base[i], &b) {
                let (c, r) = match j.preferred {
                    Which::A => (g0, g1),
                    Which::B => (g1, g0),
                };
                if !c.ids.is_empty() && !r.ids.is_empty() {
                    let rc = model.score(&prompt_ids[i], &c.ids)?.logp;
                    let rr = model.score(&prompt_ids[i], &r.ids)?.logp;
                    pairs.push((i, c.ids.clone(), r.ids.clone(), rc, rr));
                }
            }
        }
        let neutral: Vec<Vec<u32>> = prompts::neutral_texts()
            .iter()
            .map(|t| model.tokenizer.encode(t, false))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter(|ids| ids.len() >= 2)
            .collect();
        progress.phase("held-out: neutral text (base)", 1);
        let neutral_base = neutral_loglik(model, &neutral, None)?;
        progress.advance(1);
        Ok(HeldOut {
            prompts,
            prompt_ids,
            base,
            pairs,
            neutral,
            neutral_base,
        })
    }
}

/// The adapted model against the base on `held`.
pub fn evaluate(
    model: &Model,
    adapter: &Adapter,
    held: &HeldOut,
    user: &SimulatedUser,
    cfg: &DemoConfig,
    progress: &mut dyn Progress,
) -> Result<EvalReport> {
    let how = Sampling::one(answering(cfg), cfg);
    let gens = sample(
        model,
        Some(adapter),
        &held.prompts,
        &how,
        "held-out: adapted answers",
        progress,
    )?;
    let gens: Vec<Generated> = gens.into_iter().map(|mut g| g.remove(0)).collect();
    let adapted = answers(model, &held.prompt_ids, &gens)?;
    let taste = user.taste;
    let (mut wins, mut losses, mut ties) = (0, 0, 0);
    for ((p, a), b) in held.prompts.iter().zip(&adapted).zip(&held.base) {
        match user.judge_pair(p, a, b) {
            Some(j) if j.preferred == Which::A => wins += 1,
            Some(_) => losses += 1,
            None => ties += 1,
        }
    }
    let n = held.prompts.len().max(1) as f64;

    progress.phase("held-out: pairs and neutral text (adapted)", 2);
    let mut correct = 0;
    for (i, c, r, rc, rr) in &held.pairs {
        let item = ScoreItem {
            prompt: &held.prompt_ids[*i],
            completions: vec![c, r],
        };
        let s = model.score_packed_with(&[item], Some(adapter))?.remove(0);
        if s[0].logp - rc > s[1].logp - rr {
            correct += 1;
        }
    }
    progress.advance(1);
    let neutral_adapted = neutral_loglik(model, &held.neutral, Some(adapter))?;
    progress.advance(1);

    let examples = held
        .prompts
        .iter()
        .zip(&held.base)
        .zip(&adapted)
        .take(cfg.examples)
        .map(|((p, b), a)| SideBySide {
            prompt: p.to_string(),
            base: b.text.clone(),
            adapted: a.text.clone(),
        })
        .collect();
    Ok(EvalReport {
        taste_metric: taste.metric_name().to_string(),
        taste_metric_base: Summary::of(held.base.iter().map(|a| taste.metric(a)).collect()),
        taste_metric_adapted: Summary::of(adapted.iter().map(|a| taste.metric(a)).collect()),
        win_rate: (wins as f64 + 0.5 * ties as f64) / n,
        wins,
        losses,
        ties,
        heldout_reward_accuracy: correct as f64 / held.pairs.len().max(1) as f64,
        heldout_pairs: held.pairs.len(),
        neutral_loglik_base: held.neutral_base,
        neutral_loglik_adapted: neutral_adapted,
        neutral_loglik_change: (neutral_adapted - held.neutral_base) / held.neutral_base.abs(),
        fluency_base: fluency(user, &held.base),
        fluency_adapted: fluency(user, &adapted),
        examples,
    })
}
