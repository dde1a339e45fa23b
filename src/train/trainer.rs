//! The training loop: epochs of seeded shuffled batches, gradient accumulation over
//! micro-batches, the reference cache, AdamW with clipping and a schedule, TRL's metrics,
//! a progress callback that can stop the run between steps.

use super::checkpoint::{BaseShape, Checkpoint};
use super::config::TrainConfig;
use super::ref_cache::RefCache;
use super::step::{StepCtx, kto_batch_step, pair_step};
use crate::adapter::Adapter;
use crate::data::{PreferenceSet, RowNote, TokenizedPair, TokenizedUnpaired};
use crate::error::{Error, Result};
use crate::model::{Dropout, Model};
use crate::objective::{Loss, PairLogps, RewardMetrics, reward_metrics};
use crate::optim::{AdamW, clip_grad_norm};
use crate::rng::Rng;
use crate::score::ScoreItem;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// What one optimizer step logs; serialized under TRL's names (`rewards/chosen`, ...), as
/// a line of `metrics.jsonl`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: f64,
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub learning_rate: f64,
    /// The batch's reward metrics (for KTO: of its desirable and undesirable examples).
    #[serde(flatten)]
    pub rewards: RewardMetrics,
    /// KTO's KL estimate (KTO only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub kl: Option<f64>,
    /// Tokens as TRL counts them (prompt + chosen + prompt + rejected per pair).
    pub pair_tokens: usize,
    pub tokens_per_s: f64,
    /// The step's loss or gradient was not finite: it was not applied.
    pub skipped: bool,
}

impl StepMetrics {
    pub fn entries(&self) -> Vec<(&'static str, f64)> {
        let mut v = vec![
            ("loss", self.loss),
            ("grad_norm", self.grad_norm),
            ("learning_rate", self.learning_rate),
        ];
        v.extend(self.rewards.entries());
        v.extend([("tokens_per_s", self.tokens_per_s), ("epoch", self.epoch)]);
        if let Some(kl) = self.kl {
            v.push(("kl", kl));
        }
        v
    }
}

/// Loss and reward metrics of the held-out pairs, under TRL's evaluation names
/// (`eval_loss`, `eval_rewards/chosen`, ...); no update was made, so there is no gradient
/// norm or learning rate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "EvalLine", from = "EvalLine")]
pub struct EvalMetrics {
    /// Optimizer steps taken when the pairs were evaluated.
    pub step: usize,
    pub eval_loss: f64,
    pub rewards: RewardMetrics,
    /// Held-out pairs evaluated.
    pub eval_pairs: usize,
    pub pair_tokens: usize,
}

/// [`EvalMetrics`] as a line of `metrics.jsonl`: serde's `flatten` cannot add TRL's
/// `eval_` prefix to the reward names, so the line spells them out.
#[derive(Clone, Serialize, Deserialize)]
struct EvalLine {
    step: usize,
    eval_loss: f64,
    #[serde(rename = "eval_rewards/chosen")]
    rewards_chosen: f64,
    #[serde(rename = "eval_rewards/rejected")]
    rewards_rejected: f64,
    #[serde(rename = "eval_rewards/accuracies")]
    rewards_accuracies: f64,
    #[serde(rename = "eval_rewards/margins")]
    rewards_margins: f64,
    #[serde(rename = "eval_logps/chosen")]
    logps_chosen: f64,
    #[serde(rename = "eval_logps/rejected")]
    logps_rejected: f64,
    eval_pairs: usize,
    pair_tokens: usize,
}

impl From<EvalMetrics> for EvalLine {
    fn from(e: EvalMetrics) -> Self {
        let r = e.rewards;
        Self {
            step: e.step,
            eval_loss: e.eval_loss,
            rewards_chosen: r.rewards_chosen,
            rewards_rejected: r.rewards_rejected,
            rewards_accuracies: r.rewards_accuracies,
            rewards_margins: r.rewards_margins,
            logps_chosen: r.logps_chosen,
            logps_rejected: r.logps_rejected,
            eval_pairs: e.eval_pairs,
            pair_tokens: e.pair_tokens,
        }
    }
}

impl From<EvalLine> for EvalMetrics {
    fn from(l: EvalLine) -> Self {
        Self {
            step: l.step,
            eval_loss: l.eval_loss,
            rewards: RewardMetrics {
                rewards_chosen: l.rewards_chosen,
                rewards_rejected: l.rewards_rejected,
                rewards_accuracies: l.rewards_accuracies,
                rewards_margins: l.rewards_margins,
                logps_chosen: l.logps_chosen,
                logps_rejected: l.logps_rejected,
            },
            eval_pairs: l.eval_pairs,
            pair_tokens: l.pair_tokens,
        }
    }
}

/// The callback's answer after each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub skipped_steps: usize,
    pub cancelled: bool,
    pub last: Option<StepMetrics>,
    pub eval: Option<EvalMetrics>,
    pub seconds: f64,
}

/// A training run over a preference set; owns the adapter being trained.
pub struct Trainer<'m> {
    model: &'m Model,
    pub adapter: Adapter,
    pub config: TrainConfig,
    optimizer: AdamW,
    pub refs: RefCache,
    rng: Rng,
    train_pairs: Vec<TokenizedPair>,
    train_unpaired: Vec<TokenizedUnpaired>,
    eval_pairs: Vec<TokenizedPair>,
    /// The current epoch's order and position in it.
    order: Vec<usize>,
    position: usize,
    epoch: usize,
    step: usize,
    data_fingerprint: [u8; 32],
    skipped: Vec<RowNote>,
}

impl<'m> Trainer<'m> {
    /// A run over `data`. Rows the loss cannot use (unpaired thumbs under a pair loss) and
    /// examples longer than the model's context are left out and listed in
    /// [`Self::skipped`]; under KTO each pair trains as two thumbs. It is an error only
    /// when nothing is left to train on. A linear or cosine schedule whose `total_steps`
    /// is 0 is sized to the steps this run takes.
    pub fn new(
        model: &'m Model,
        mut adapter: Adapter,
        mut config: TrainConfig,
        mut data: PreferenceSet,
    ) -> Result<Self> {
        config.validate()?;
        adapter.check_fits(&model.config, std::path::Path::new("<adapter>"))?;
        // What it is trained on is its base from now on.
        adapter.base_fingerprint = Some(model.fingerprint());
        if adapter.base_model_name.is_empty() {
            adapter.base_model_name = model.name().to_string();
        }
        let kto = matches!(config.loss, Loss::Kto { .. });
        let mut rng = Rng::new(config.seed);
        data.fit_to_loss(kto);
        data.drop_longer_than(model.config.max_position_embeddings);
        let data_fingerprint = super::checkpoint::data_fingerprint(&data);
        let PreferenceSet {
            mut pairs,
            unpaired,
            skipped,
            ..
        } = data;
        if kto && unpaired.is_empty() {
            return Err(Error::invalid(format!(
                "nothing to train on: the kto loss needs thumbs (prompt, completion, label) or pairs{}",
                skipped_note(&skipped)
            )));
        }
        if !kto && pairs.is_empty() {
            return Err(Error::invalid(format!(
                "nothing to train on: the {} loss needs preference pairs (prompt, chosen, rejected){}",
                config.loss.name(),
                skipped_note(&skipped)
            )));
        }
        let mut eval_pairs = Vec::new();
        if config.eval_fraction > 0.0 && !kto {
            rng.shuffle(&mut pairs);
            if pairs.len() < 2 {
                return Err(Error::invalid(format!(
                    "eval_fraction {} needs at least 2 pairs (one to train, one to evaluate); the data has {}",
                    config.eval_fraction,
                    pairs.len()
                )));
            }
            let n_eval = ((pairs.len() as f32 * config.eval_fraction).round() as usize).clamp(1, pairs.len() - 1);
            eval_pairs = pairs.split_off(pairs.len() - n_eval);
        }
        let n_train = if kto { unpaired.len() } else { pairs.len() };
        config.schedule = config.schedule.sized(config.total_steps(n_train) as u64);
        let sizes: Vec<usize> = adapter.params().iter().map(|p| p.len()).collect();
        let optimizer = AdamW::new(config.optimizer, &sizes)?;
        let mut t = Trainer {
            model,
            adapter,
            config,
            optimizer,
            refs: RefCache::default(),
            rng,
            train_pairs: pairs,
            train_unpaired: unpaired,
            eval_pairs,
            order: Vec::new(),
            position: 0,
            epoch: 0,
            step: 0,
            data_fingerprint,
            skipped,
        };
        t.new_epoch();
        Ok(t)
    }

    /// The whole state of the run, to continue it later bit-identically.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            base: BaseShape::of(&self.model.config),
            base_model_name: self.adapter.base_model_name.clone(),
            config: self.config.clone(),
            lora: self.adapter.config.clone(),
            adapter: self.adapter.params().into_iter().map(<[f32]>::to_vec).collect(),
            optimizer: self.optimizer.state().clone(),
            rng: self.rng.clone(),
            step: self.step,
            epoch: self.epoch,
            order: self.order.clone(),
            position: self.position,
            data_fingerprint: self.data_fingerprint,
            refs: self.refs.clone(),
        }
    }

    /// Continues the run a checkpoint was taken from, on the same base model and data.
    /// `file` names the checkpoint in errors.
    pub fn resume(model: &'m Model, ck: Checkpoint, mut data: PreferenceSet, file: &std::path::Path) -> Result<Self> {
        if ck.base != BaseShape::of(&model.config) {
            return Err(Error::field(
                file,
                "base",
                format!(
                    "checkpoint of a {:?} model; this model is {:?}",
                    ck.base,
                    BaseShape::of(&model.config)
                ),
            ));
        }
        // The fingerprint is of the data as `new` prepared it for the run's loss.
        data.fit_to_loss(matches!(ck.config.loss, Loss::Kto { .. }));
        data.drop_longer_than(model.config.max_position_embeddings);
        if super::checkpoint::data_fingerprint(&data) != ck.data_fingerprint {
            return Err(Error::field(
                file,
                "data_fingerprint",
                "the training data differs from the checkpointed run's",
            ));
        }
        let mut adapter = Adapter::new(&model.config, ck.lora.clone(), 0, ck.base_model_name.clone())?;
        {
            let mut params = adapter.params_mut();
            if params.len() != ck.adapter.len() || params.iter().zip(&ck.adapter).any(|(p, c)| p.len() != c.len()) {
                return Err(Error::field(
                    file,
                    "adapter",
                    "tensor shapes do not match the LoRA configuration",
                ));
            }
            for (p, c) in params.iter_mut().zip(&ck.adapter) {
                p.copy_from_slice(c);
            }
        }
        let mut t = Trainer::new(model, adapter, ck.config.clone(), data)?;
        if ck.order.len() != t.n_train() || ck.order.iter().any(|&i| i >= t.n_train()) || ck.position > ck.order.len() {
            return Err(Error::field(
                file,
                "order",
                "the position in the data does not fit the training set",
            ));
        }
        t.optimizer = AdamW::from_state(ck.config.optimizer, ck.optimizer)
            .map_err(|e| Error::field(file, "optimizer", e.to_string()))?;
        t.rng = ck.rng;
        t.step = ck.step;
        t.epoch = ck.epoch;
        t.order = ck.order;
        t.position = ck.position;
        t.refs = ck.refs;
        Ok(t)
    }

    fn n_train(&self) -> usize {
        if self.is_kto() {
            self.train_unpaired.len()
        } else {
            self.train_pairs.len()
        }
    }

    fn is_kto(&self) -> bool {
        matches!(self.config.loss, Loss::Kto { .. })
    }

    fn new_epoch(&mut self) {
        self.order = (0..self.n_train()).collect();
        if self.config.shuffle {
            self.rng.shuffle(&mut self.order);
        }
        self.position = 0;
    }

    /// Optimizer steps in one epoch (the last batch may be short).
    pub fn steps_per_epoch(&self) -> usize {
        self.n_train().div_ceil(self.config.batch_size)
    }

    /// The steps this run takes: `max_steps` when set (over as many epochs as that needs,
    /// as TRL's `max_steps` overrides `num_train_epochs`), else every epoch's.
    pub fn total_steps(&self) -> usize {
        self.config.total_steps(self.n_train())
    }

    /// Rows of the data that this run does not train on, with why.
    pub fn skipped(&self) -> &[RowNote] {
        &self.skipped
    }

    pub fn steps_done(&self) -> usize {
        self.step
    }

    /// Runs until the epochs or `max_steps` are done, or the callback says stop.
    pub fn run(&mut self, callback: &mut dyn FnMut(&StepMetrics) -> Control) -> Result<TrainSummary> {
        self.run_with(callback, &mut |_| Ok(()))
    }

    /// [`Self::run`], calling `after_step` with the trainer between steps (e.g. to write a
    /// checkpoint); an error from it ends the run.
    pub fn run_with(
        &mut self,
        callback: &mut dyn FnMut(&StepMetrics) -> Control,
        after_step: &mut dyn FnMut(&Self) -> Result<()>,
    ) -> Result<TrainSummary> {
        let t0 = Instant::now();
        let mut summary = TrainSummary::default();
        while self.step < self.total_steps() {
            let m = self.train_step()?;
            summary.steps += 1;
            summary.skipped_steps += m.skipped as usize;
            let c = callback(&m);
            after_step(self)?;
            summary.last = Some(m);
            if c == Control::Stop {
                summary.cancelled = true;
                break;
            }
        }
        if !self.eval_pairs.is_empty() {
            summary.eval = Some(self.evaluate()?);
        }
        summary.seconds = t0.elapsed().as_secs_f64();
        Ok(summary)
    }

    /// The next batch's example indices, moving to a new epoch when this one is done.
    fn next_batch(&mut self) -> Vec<usize> {
        if self.position >= self.order.len() {
            self.epoch += 1;
            self.new_epoch();
        }
        let end = (self.position + self.config.batch_size).min(self.order.len());
        let b = self.order[self.position..end].to_vec();
        self.position = end;
        b
    }

    fn dropout(&self) -> Option<Dropout> {
        let p = self.config.lora_dropout.max(self.adapter.config.lora_dropout);
        (p > 0.0).then(|| Dropout {
            p,
            seed: self.config.seed ^ (self.step as u64).wrapping_mul(0x9e3779b97f4a7c15),
        })
    }

    /// One optimizer step.
    pub fn train_step(&mut self) -> Result<StepMetrics> {
        let t0 = Instant::now();
        let batch = self.next_batch();
        let mut grads = self.adapter.zeros_like();
        let mut m = StepMetrics {
            step: self.step + 1,
            ..Default::default()
        };
        let n = batch.len() as f64;
        let ctx = StepCtx::new(self.model, &self.adapter, &self.config.loss)
            .recompute(self.config.recompute)
            .dropout(self.dropout());
        if self.is_kto() {
            let ex: Vec<TokenizedUnpaired> = batch.iter().map(|&i| self.train_unpaired[i].clone()).collect();
            let s = kto_batch_step(&ctx, &mut self.refs, &ex, self.config.micro_batch_size, &mut grads)?;
            m.loss += s.loss;
            m.pair_tokens += s.tokens;
            m.kl = Some(s.kl);
            m.rewards = s.rewards;
        } else {
            let mut all = Vec::with_capacity(batch.len());
            for micro in batch.chunks(self.config.micro_batch_size) {
                let pairs: Vec<&TokenizedPair> = micro.iter().map(|&i| &self.train_pairs[i]).collect();
                let refs = pair_refs(&mut self.refs, self.model, &self.config.loss, &pairs)?;
                let scale = micro.len() as f64 / n;
                let s = pair_step(&ctx, &pairs, &refs, scale, &mut grads)?;
                m.loss += s.loss.loss * scale;
                m.pair_tokens += pairs.iter().map(|p| PreferenceSet::pair_tokens(p)).sum::<usize>();
                all.extend(s.logps);
            }
            m.rewards = reward_metrics(self.config.loss.beta(), &all);
        }
        self.apply(grads, &mut m)?;
        m.epoch = self.epoch as f64 + self.position as f64 / self.order.len().max(1) as f64;
        m.tokens_per_s = m.pair_tokens as f64 / t0.elapsed().as_secs_f64();
        Ok(m)
    }

    /// Clips, checks and applies the accumulated gradients.
    fn apply(&mut self, mut grads: Adapter, m: &mut StepMetrics) -> Result<()> {
        let mut g = grads.params_mut();
        let norm = match self.config.max_grad_norm {
            Some(max) => clip_grad_norm(&mut g, max),
            None => crate::optim::grad_norm(&g.iter().map(|x| &**x).collect::<Vec<_>>()),
        };
        m.grad_norm = norm as f64;
        m.learning_rate = self.config.schedule.lr(self.config.optimizer.lr, self.step as u64);
        self.step += 1;
        if !(m.loss.is_finite() && norm.is_finite()) {
            m.skipped = true;
            return Ok(());
        }
        let gv: Vec<&[f32]> = g.iter().map(|x| &**x).collect();
        let mut p = self.adapter.params_mut();
        self.optimizer.step(&mut p, &gv, m.learning_rate)
    }

    /// Loss and metrics of the held-out pairs under the current adapter (no update).
    pub fn evaluate(&mut self) -> Result<EvalMetrics> {
        let pairs: Vec<TokenizedPair> = self.eval_pairs.clone();
        let mut all = Vec::new();
        let mut m = EvalMetrics {
            step: self.step,
            eval_pairs: pairs.len(),
            ..Default::default()
        };
        for chunk in pairs.chunks(self.config.micro_batch_size) {
            let refs_in: Vec<&TokenizedPair> = chunk.iter().collect();
            let refs = pair_refs(&mut self.refs, self.model, &self.config.loss, &refs_in)?;
            let items: Vec<ScoreItem> = chunk
                .iter()
                .map(|p| ScoreItem {
                    prompt: &p.prompt,
                    completions: vec![&p.chosen, &p.rejected],
                })
                .collect();
            let s = self.model.score_packed_with(&items, Some(&self.adapter))?;
            for ((p, sc), (rc, rr)) in chunk.iter().zip(s).zip(refs) {
                all.push(PairLogps::new(
                    sc[0].logp,
                    sc[1].logp,
                    rc,
                    rr,
                    p.chosen.len(),
                    p.rejected.len(),
                ));
                m.pair_tokens += PreferenceSet::pair_tokens(p);
            }
        }
        Ok(EvalMetrics {
            eval_loss: crate::objective::batch_loss(&self.config.loss, &all)?.loss,
            rewards: reward_metrics(self.config.loss.beta(), &all),
            ..m
        })
    }
}

/// Each pair's reference (chosen, rejected) log-probs, from the cache or computed now.
fn pair_refs(cache: &mut RefCache, model: &Model, loss: &Loss, pairs: &[&TokenizedPair]) -> Result<Vec<(f64, f64)>> {
    if loss.reference_free() {
        return Ok(vec![(0.0, 0.0); pairs.len()]);
    }
    let items: Vec<(&[u32], &[u32])> = pairs
        .iter()
        .flat_map(|p| [(&p.prompt[..], &p.chosen[..]), (&p.prompt[..], &p.rejected[..])])
        .collect();
    cache.fill(model, &items)?;
    Ok(pairs
        .iter()
        .map(|p| {
            let c = cache.get(&p.prompt, &p.chosen).expect("filled");
            let r = cache.get(&p.prompt, &p.rejected).expect("filled");
            (c, r)
        })
        .collect())
}

/// ", and N rows were left out (first: ...)" for an error about an empty training set.
fn skipped_note(skipped: &[RowNote]) -> String {
    match skipped.first() {
        None => String::new(),
        Some(first) => format!("; {} rows were left out, the first: {first}", skipped.len()),
    }
}
