//! One micro-batch of preference pairs: a packed forward pass with the adapter, the
//! objective, and the backward pass into the adapter's gradient buffer.

use super::ref_cache::RefCache;
use crate::adapter::Adapter;
use crate::data::{TokenizedPair, TokenizedUnpaired};
use crate::error::Result;
use crate::model::{Dropout, LoraCtx, Model, Recompute, TargetRows};
use crate::objective::{BatchLoss, KtoBatch, KtoExample, Loss, PairLogps, RewardMetrics, batch_loss, kto_batch};
use crate::score::{Packed, ScoreItem, pack};

/// What a training step reads besides its examples: the model, the adapter being trained,
/// the objective, and how the forward pass is run.
#[derive(Clone, Copy)]
pub struct StepCtx<'a> {
    pub model: &'a Model,
    pub adapter: &'a Adapter,
    pub loss: &'a Loss,
    pub recompute: Recompute,
    pub dropout: Option<Dropout>,
}

impl<'a> StepCtx<'a> {
    /// Steps of `loss` on `adapter`, keeping every activation and without dropout.
    pub fn new(model: &'a Model, adapter: &'a Adapter, loss: &'a Loss) -> Self {
        StepCtx {
            model,
            adapter,
            loss,
            recompute: Recompute::Never,
            dropout: None,
        }
    }

    pub fn recompute(self, recompute: Recompute) -> Self {
        StepCtx { recompute, ..self }
    }

    pub fn dropout(self, dropout: Option<Dropout>) -> Self {
        StepCtx { dropout, ..self }
    }
}

/// The policy's view of one micro-batch after its forward and backward passes.
#[derive(Clone, Debug)]
pub struct PairStep {
    pub loss: BatchLoss,
    /// Per pair: summed policy log-probs of chosen and rejected.
    pub policy: Vec<(f64, f64)>,
    /// The pairs as the objective saw them (policy and reference log-probs, counts).
    pub logps: Vec<PairLogps>,
    /// Tokens actually run through the network (the prompt once per pair).
    pub packed_tokens: usize,
}

/// The policy's forward pass over packed items, kept for its backward pass: per completion
/// token (in packing order) its log-prob.
struct PolicyPass {
    tape: crate::model::Tape,
    targets: TargetRows,
    token_logps: Vec<f32>,
    packed_tokens: usize,
}

impl PolicyPass {
    fn forward(ctx: &StepCtx, items: &[ScoreItem]) -> Result<Self> {
        let StepCtx {
            model,
            adapter,
            recompute,
            dropout,
            ..
        } = *ctx;
        let Packed {
            tokens,
            layout,
            targets,
        } = pack(items)?;
        let lora = LoraCtx {
            adapter: Some(adapter),
            dropout,
            cancel: None,
        };
        let (h, tape) = model.forward_train(&tokens, &layout, lora, recompute)?;
        let (token_logps, targets) = model.target_logprobs(&h, &targets);
        Ok(PolicyPass {
            tape,
            targets,
            token_logps,
            packed_tokens: tokens.len(),
        })
    }

    /// Adds the adapter gradient of a loss whose derivative with respect to each completion
    /// token's log-prob is `dlogp`: `[P]`.
    fn backward(self, ctx: &StepCtx, dlogp: &[f32], grads: &mut Adapter) -> Result<()> {
        let StepCtx {
            model,
            adapter,
            dropout,
            ..
        } = *ctx;
        let mut dh =
            crate::buffers::zeros::<f32>(self.tape.t * model.config.hidden_size, "the hidden states' gradient")?;
        model.target_logprobs_backward(&self.targets, dlogp, &mut dh);
        drop(self.targets);
        let lora = LoraCtx {
            adapter: Some(adapter),
            dropout,
            cancel: None,
        };
        model.backward(self.tape, lora, dh, grads)
    }
}

/// Forward and backward over `pairs` packed into one sequence set. `refs` holds each
/// pair's reference (chosen, rejected) log-probs (ignored by reference-free losses).
/// Gradients of `grad_scale` × (the micro-batch's mean loss) are added into `grads`.
pub fn pair_step(
    ctx: &StepCtx,
    pairs: &[&TokenizedPair],
    refs: &[(f64, f64)],
    grad_scale: f64,
    grads: &mut Adapter,
) -> Result<PairStep> {
    let items: Vec<ScoreItem> = pairs
        .iter()
        .map(|p| ScoreItem {
            prompt: &p.prompt,
            completions: vec![&p.chosen, &p.rejected],
        })
        .collect();
    let pass = PolicyPass::forward(ctx, &items)?;
    let tok_logp = &pass.token_logps;

    // Sum each completion's token log-probs (targets are laid out pair by pair,
    // chosen then rejected).
    let mut logps = Vec::with_capacity(pairs.len());
    let mut policy = Vec::with_capacity(pairs.len());
    let mut at = 0;
    for (p, &(rc, rr)) in pairs.iter().zip(refs) {
        let sum = |n: usize, at: usize| tok_logp[at..at + n].iter().map(|&x| x as f64).sum::<f64>();
        let c = sum(p.chosen.len(), at);
        let r = sum(p.rejected.len(), at + p.chosen.len());
        at += p.chosen.len() + p.rejected.len();
        policy.push((c, r));
        let mut pl = PairLogps::new(c, r, rc, rr, p.chosen.len(), p.rejected.len());
        if let Some(m) = p.margin {
            pl = pl.with_margin(m as f64);
        }
        if let Some(w) = p.weight {
            pl = pl.with_weight(w as f64);
        }
        logps.push(pl);
    }
    if policy.iter().any(|(c, r)| !(c.is_finite() && r.is_finite())) {
        // Overflow in the policy: no loss to differentiate; the caller skips the step.
        return Ok(PairStep {
            loss: BatchLoss {
                loss: f64::NAN,
                ..Default::default()
            },
            policy,
            logps,
            packed_tokens: pass.packed_tokens,
        });
    }
    let bl = batch_loss(ctx.loss, &logps)?;

    // d loss / d token log-prob = d loss / d summed log-prob of its completion.
    let mut dlogp = Vec::with_capacity(tok_logp.len());
    for ((p, &dc), &dr) in pairs.iter().zip(&bl.d_chosen).zip(&bl.d_rejected) {
        dlogp.extend(std::iter::repeat_n((dc * grad_scale) as f32, p.chosen.len()));
        dlogp.extend(std::iter::repeat_n((dr * grad_scale) as f32, p.rejected.len()));
    }
    let packed_tokens = pass.packed_tokens;
    pass.backward(ctx, &dlogp, grads)?;
    Ok(PairStep {
        loss: bl,
        policy,
        logps,
        packed_tokens,
    })
}

/// The policy's view of one micro-batch of unpaired (KTO) examples.
#[derive(Clone, Debug)]
pub struct KtoStep {
    pub batch: KtoBatch,
    pub packed_tokens: usize,
}

/// The summed log-probs of a KTO batch's mismatched prompt/completion pairs under the
/// policy and the reference: the detached KL estimate.
#[derive(Clone, Copy, Debug)]
pub struct KlLogps<'a> {
    pub policy: &'a [f64],
    pub reference: &'a [f64],
}

/// KTO forward and backward over `examples` (rated completions). `refs[i]` is example i's
/// reference log-prob. Gradients of `grad_scale` × (the micro-batch's mean loss) are added
/// into `grads`.
pub fn kto_step(
    ctx: &StepCtx,
    examples: &[&TokenizedUnpaired],
    refs: &[f64],
    kl: KlLogps,
    grad_scale: f64,
    grads: &mut Adapter,
) -> Result<KtoStep> {
    let items: Vec<ScoreItem> = examples
        .iter()
        .map(|e| ScoreItem {
            prompt: &e.prompt,
            completions: vec![&e.completion],
        })
        .collect();
    let pass = PolicyPass::forward(ctx, &items)?;
    let tok_logp = &pass.token_logps;
    let mut kto = Vec::with_capacity(examples.len());
    let mut at = 0;
    for (e, &r) in examples.iter().zip(refs) {
        let n = e.completion.len();
        let p = tok_logp[at..at + n].iter().map(|&x| x as f64).sum::<f64>();
        at += n;
        kto.push(KtoExample {
            policy_logp: p,
            ref_logp: r,
            desirable: e.label,
        });
    }
    if kto.iter().any(|k| !k.policy_logp.is_finite()) || kl.policy.iter().any(|x| !x.is_finite()) {
        return Ok(KtoStep {
            batch: KtoBatch {
                loss: f64::NAN,
                ..Default::default()
            },
            packed_tokens: pass.packed_tokens,
        });
    }
    let mut batch = kto_batch(ctx.loss, &kto, kl.policy, kl.reference)?;
    // Per-example weights (feedback strength) scale that example's loss and derivative.
    for (i, e) in examples.iter().enumerate() {
        if let Some(w) = e.weight {
            batch.per_example[i] *= w as f64;
            batch.d_policy[i] *= w as f64;
        }
    }
    batch.loss = batch.per_example.iter().sum::<f64>() / examples.len() as f64;
    let mut dlogp = Vec::with_capacity(tok_logp.len());
    for (e, &d) in examples.iter().zip(&batch.d_policy) {
        dlogp.extend(std::iter::repeat_n((d * grad_scale) as f32, e.completion.len()));
    }
    let packed_tokens = pass.packed_tokens;
    pass.backward(ctx, &dlogp, grads)?;
    Ok(KtoStep { batch, packed_tokens })
}

/// What a KTO batch step reports.
#[derive(Clone, Debug, Default)]
pub struct KtoBatchStep {
    /// The batch's mean loss.
    pub loss: f64,
    /// The KL estimate.
    pub kl: f64,
    /// Prompt and completion tokens of the examples.
    pub tokens: usize,
    /// Reward and log-prob means over the desirable (chosen) and undesirable (rejected)
    /// examples; no accuracy (there are no pairs).
    pub rewards: RewardMetrics,
}

/// One KTO optimizer step's gradients over `examples`, in micro-batches of
/// `micro_batch_size`: the reference log-probs (from `refs`, filled as needed), the
/// detached KL estimate over TRL's mismatched pairs, and the gradient of the batch's mean
/// loss added into `grads`.
pub fn kto_batch_step(
    ctx: &StepCtx,
    refs: &mut RefCache,
    examples: &[TokenizedUnpaired],
    micro_batch_size: usize,
    grads: &mut Adapter,
) -> Result<KtoBatchStep> {
    let ex = examples;
    // TRL's KL pairs: each prompt with the completion of the example before it.
    let kl_items: Vec<(Vec<u32>, Vec<u32>)> = (0..ex.len())
        .map(|i| {
            (
                ex[i].prompt.clone(),
                ex[(i + ex.len() - 1) % ex.len()].completion.clone(),
            )
        })
        .collect();
    let mut items: Vec<(&[u32], &[u32])> = ex.iter().map(|e| (&e.prompt[..], &e.completion[..])).collect();
    items.extend(kl_items.iter().map(|(p, c)| (&p[..], &c[..])));
    refs.fill(ctx.model, &items)?;
    let kl_ref: Vec<f64> = kl_items.iter().map(|(p, c)| refs.get(p, c).expect("filled")).collect();
    // The KL term is detached: the policy's log-probs of the mismatched pairs need no backward.
    let kl_policy: Vec<f64> = {
        let score_items: Vec<ScoreItem> = kl_items
            .iter()
            .map(|(p, c)| ScoreItem {
                prompt: p,
                completions: vec![c],
            })
            .collect();
        ctx.model
            .score_packed_with(&score_items, Some(ctx.adapter))?
            .into_iter()
            .map(|s| s[0].logp)
            .collect()
    };
    let kl = KlLogps {
        policy: &kl_policy,
        reference: &kl_ref,
    };
    let n = ex.len() as f64;
    let mut out = KtoBatchStep::default();
    // (reward sum, log-prob sum, count) of the desirable and the undesirable examples.
    let mut chosen = (0.0, 0.0, 0usize);
    let mut rejected = (0.0, 0.0, 0usize);
    for micro in (0..ex.len()).collect::<Vec<_>>().chunks(micro_batch_size) {
        let e: Vec<&TokenizedUnpaired> = micro.iter().map(|&i| &ex[i]).collect();
        let refs: Vec<f64> = e
            .iter()
            .map(|x| refs.get(&x.prompt, &x.completion).expect("filled"))
            .collect();
        let scale = micro.len() as f64 / n;
        let s = kto_step(ctx, &e, &refs, kl, scale, grads)?;
        out.loss += s.batch.loss * scale;
        out.kl = s.batch.kl;
        out.tokens += e.iter().map(|x| x.prompt.len() + x.completion.len()).sum::<usize>();
        let mm = s.batch.metrics;
        if let (Some(rc), Some(lc)) = (mm.rewards_chosen, mm.logps_chosen) {
            chosen.0 += rc * mm.count_chosen as f64;
            chosen.1 += lc * mm.count_chosen as f64;
            chosen.2 += mm.count_chosen;
        }
        if let (Some(rr), Some(lr)) = (mm.rewards_rejected, mm.logps_rejected) {
            rejected.0 += rr * mm.count_rejected as f64;
            rejected.1 += lr * mm.count_rejected as f64;
            rejected.2 += mm.count_rejected;
        }
    }
    let r = &mut out.rewards;
    if chosen.2 > 0 {
        r.rewards_chosen = chosen.0 / chosen.2 as f64;
        r.logps_chosen = chosen.1 / chosen.2 as f64;
    }
    if rejected.2 > 0 {
        r.rewards_rejected = rejected.0 / rejected.2 as f64;
        r.logps_rejected = rejected.1 / rejected.2 as f64;
    }
    r.rewards_margins = r.rewards_chosen - r.rewards_rejected;
    Ok(out)
}
