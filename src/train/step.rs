//! One micro-batch of preference pairs: a packed forward pass with the adapter, the
//! objective, and the backward pass into the adapter's gradient buffer.

use crate::adapter::Adapter;
use crate::data::TokenizedPair;
use crate::error::Result;
use crate::model::{Dropout, LoraCtx, Model, Recompute, TargetRows};
use crate::objective::{BatchLoss, Loss, PairLogps, batch_loss};
use crate::score::{Packed, ScoreItem, pack};

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
    fn forward(
        model: &Model,
        adapter: &Adapter,
        items: &[ScoreItem],
        recompute: Recompute,
        dropout: Option<Dropout>,
    ) -> Result<Self> {
        let Packed {
            tokens,
            layout,
            targets,
        } = pack(items)?;
        let lora = LoraCtx {
            adapter: Some(adapter),
            dropout,
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
    fn backward(self, model: &Model, adapter: &Adapter, dropout: Option<Dropout>, dlogp: &[f32], grads: &mut Adapter) {
        let mut dh = vec![0f32; self.tape.t * model.config.hidden_size];
        model.target_logprobs_backward(&self.targets, dlogp, &mut dh);
        let lora = LoraCtx {
            adapter: Some(adapter),
            dropout,
        };
        model.backward(self.tape, lora, &dh, grads);
    }
}

/// Forward and backward over `pairs` packed into one sequence set. `refs` holds each
/// pair's reference (chosen, rejected) log-probs (ignored by reference-free losses).
/// Gradients of `grad_scale` × (the micro-batch's mean loss) are added into `grads`.
#[allow(clippy::too_many_arguments)]
pub fn pair_step(
    model: &Model,
    adapter: &Adapter,
    pairs: &[&TokenizedPair],
    refs: &[(f64, f64)],
    loss: &Loss,
    recompute: Recompute,
    dropout: Option<Dropout>,
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
    let pass = PolicyPass::forward(model, adapter, &items, recompute, dropout)?;
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
    let bl = batch_loss(loss, &logps)?;

    // d loss / d token log-prob = d loss / d summed log-prob of its completion.
    let mut dlogp = Vec::with_capacity(tok_logp.len());
    for ((p, &dc), &dr) in pairs.iter().zip(&bl.d_chosen).zip(&bl.d_rejected) {
        dlogp.extend(std::iter::repeat_n((dc * grad_scale) as f32, p.chosen.len()));
        dlogp.extend(std::iter::repeat_n((dr * grad_scale) as f32, p.rejected.len()));
    }
    let packed_tokens = pass.packed_tokens;
    pass.backward(model, adapter, dropout, &dlogp, grads);
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
    pub batch: crate::objective::KtoBatch,
    pub packed_tokens: usize,
}

/// KTO forward and backward over `examples` (rated completions). `refs[i]` is example i's
/// reference log-prob; `kl_policy`/`kl_ref` are the summed log-probs of the batch's
/// mismatched prompt/completion pairs (the detached KL estimate).
#[allow(clippy::too_many_arguments)]
pub fn kto_step(
    model: &Model,
    adapter: &Adapter,
    examples: &[&crate::data::TokenizedUnpaired],
    refs: &[f64],
    kl_policy: &[f64],
    kl_ref: &[f64],
    loss: &Loss,
    recompute: Recompute,
    dropout: Option<Dropout>,
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
    let pass = PolicyPass::forward(model, adapter, &items, recompute, dropout)?;
    let tok_logp = &pass.token_logps;
    let mut kto = Vec::with_capacity(examples.len());
    let mut at = 0;
    for (e, &r) in examples.iter().zip(refs) {
        let n = e.completion.len();
        let p = tok_logp[at..at + n].iter().map(|&x| x as f64).sum::<f64>();
        at += n;
        kto.push(crate::objective::KtoExample {
            policy_logp: p,
            ref_logp: r,
            desirable: e.label,
        });
    }
    if kto.iter().any(|k| !k.policy_logp.is_finite()) || kl_policy.iter().any(|x| !x.is_finite()) {
        return Ok(KtoStep {
            batch: crate::objective::KtoBatch {
                loss: f64::NAN,
                ..Default::default()
            },
            packed_tokens: pass.packed_tokens,
        });
    }
    let mut batch = crate::objective::kto_batch(loss, &kto, kl_policy, kl_ref)?;
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
    pass.backward(model, adapter, dropout, &dlogp, grads);
    Ok(KtoStep { batch, packed_tokens })
}
