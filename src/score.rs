//! Sequence scoring: the log-probability of each completion token given everything before it.

use crate::adapter::Adapter;
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::kernels::attention::{AttnLayout, Span};
use crate::model::{LoraCtx, Model};

/// Log-probs of one completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Scored {
    /// log p(`completion[i]` | prompt, `completion[..i]`) for each token: `[C]`
    pub token_logps: Vec<f32>,
    /// Their sum (accumulated in f64).
    pub logp: f64,
}

/// A prompt with one or more completions that continue it (e.g. chosen and rejected).
#[derive(Clone, Debug)]
pub struct ScoreItem<'a> {
    pub prompt: &'a [u32],
    pub completions: Vec<&'a [u32]>,
}

impl Model {
    /// Scores one completion after a prompt.
    pub fn score(&self, prompt: &[u32], completion: &[u32]) -> Result<Scored> {
        let item = ScoreItem {
            prompt,
            completions: vec![completion],
        };
        Ok(self.score_packed(&[item])?.remove(0).remove(0))
    }

    /// Scores many items in one packed forward pass. Each item's prompt is computed once;
    /// its completions attend to the prompt and not to each other.
    /// Returns, per item, one [`Scored`] per completion.
    pub fn score_packed(&self, items: &[ScoreItem]) -> Result<Vec<Vec<Scored>>> {
        self.score_packed_with(items, None)
    }

    /// [`Self::score_packed`] with an adapter applied (`None`: the base model).
    pub fn score_packed_with(&self, items: &[ScoreItem], adapter: Option<&Adapter>) -> Result<Vec<Vec<Scored>>> {
        self.score_packed_cancel(items, adapter, None)
    }

    /// [`Self::score_packed_with`] that stops with [`Error::Cancelled`]
    /// between layers once `cancel` says so.
    pub fn score_packed_cancel(
        &self,
        items: &[ScoreItem],
        adapter: Option<&Adapter>,
        cancel: Option<Cancel<'_>>,
    ) -> Result<Vec<Vec<Scored>>> {
        let Packed {
            tokens,
            layout,
            targets,
        } = pack(items)?;
        let lora = LoraCtx {
            adapter,
            dropout: None,
            cancel,
        };
        let h = self.hidden_states_with(&tokens, &layout, lora)?;
        let (logp, _) = self.target_logprobs(&h, &targets);
        let mut out = Vec::with_capacity(items.len());
        let mut at = 0;
        for it in items {
            let mut per = Vec::with_capacity(it.completions.len());
            for c in &it.completions {
                let tl = logp[at..at + c.len()].to_vec();
                at += c.len();
                let logp = tl.iter().map(|&x| x as f64).sum();
                per.push(Scored { token_logps: tl, logp });
            }
            out.push(per);
        }
        Ok(out)
    }
}

/// A packed batch: tokens, their attention layout, and for every completion token the
/// packed row whose hidden state predicts it, with the token id.
pub struct Packed {
    pub tokens: Vec<u32>,
    pub layout: AttnLayout,
    pub targets: Vec<(usize, u32)>,
}

/// Packs items into one token stream with spans `prompt`, then each completion with the
/// prompt as parent.
pub fn pack(items: &[ScoreItem]) -> Result<Packed> {
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    let mut targets = Vec::new();
    for (i, it) in items.iter().enumerate() {
        if it.prompt.is_empty() {
            return Err(Error::invalid(format!(
                "item {i}: empty prompt (the first completion token needs a token before it)"
            )));
        }
        let prompt_span = spans.len();
        let p0 = tokens.len();
        spans.push(Span {
            start: p0,
            len: it.prompt.len(),
            parent: None,
        });
        tokens.extend_from_slice(it.prompt);
        let prompt_last = tokens.len() - 1;
        for c in &it.completions {
            let c0 = tokens.len();
            spans.push(Span {
                start: c0,
                len: c.len(),
                parent: Some(prompt_span),
            });
            for (j, &id) in c.iter().enumerate() {
                let pred = if j == 0 { prompt_last } else { c0 + j - 1 };
                targets.push((pred, id));
            }
            tokens.extend_from_slice(c);
        }
    }
    let layout = AttnLayout::new(spans)?;
    Ok(Packed {
        tokens,
        layout,
        targets,
    })
}
