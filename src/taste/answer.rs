//! The answer a simulated user judges: its text plus what only generation and the model
//! know (token count, whether it was cut at the token limit, how fluent the base model
//! finds it).

use crate::error::{Error, Result};
use crate::generate::{Generated, StopReason};
use crate::model::Model;

/// One answer to a prompt, as the judge sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub text: String,
    /// Generated tokens (without the stop token).
    pub tokens: usize,
    /// Cut at the token limit (or the context's end) instead of ending by itself: the
    /// reader gets a sentence that stops in the middle.
    pub truncated: bool,
    /// The base model's mean negative log-likelihood per answer token given its prompt
    /// ([`answer_nll`]); `None` when not computed. High values mean text the base model
    /// finds implausible: gibberish that the text measures alone may miss.
    pub nll: Option<f64>,
}

impl Answer {
    /// An answer without a perplexity.
    pub fn new(text: impl Into<String>, tokens: usize, truncated: bool) -> Self {
        Answer {
            text: text.into(),
            tokens,
            truncated,
            nll: None,
        }
    }

    /// The answer of a generation: truncated unless it ended with a stop token (a length
    /// limit, a full context or a caller's stop all leave the answer unfinished).
    pub fn from_generated(g: &Generated) -> Self {
        let eos = g.stop_reason == StopReason::Eos;
        Answer::new(g.text.clone(), g.ids.len() - usize::from(eos), !eos)
    }

    /// The same answer with the base model's mean NLL per token.
    pub fn with_nll(mut self, nll: f64) -> Self {
        self.nll = Some(nll);
        self
    }
}

/// The base model's mean negative log-likelihood per token of `answer_ids` after
/// `prompt_ids` (nats per token; its exp is the answer's perplexity). Fluent answers from
/// the model itself score about 1–2; shuffled words score far higher.
pub fn answer_nll(model: &Model, prompt_ids: &[u32], answer_ids: &[u32]) -> Result<f64> {
    if answer_ids.is_empty() {
        return Err(Error::invalid("answer_nll: empty answer (no token to score)"));
    }
    let s = model.score(prompt_ids, answer_ids)?;
    Ok(-s.logp / answer_ids.len() as f64)
}
