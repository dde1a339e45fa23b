//! One reply: the prompt runs once ([`Model::prefill`]), then each new token is one
//! single-row step ([`Model::decode_step`]) against the cached keys and values.

use super::*;
use crate::adapter::Adapter;
use crate::cancel::Cancel;
use crate::model::LoraCtx;
use std::ops::ControlFlow;

/// Generation one token at a time (for apps that drive the loop themselves).
pub struct Generator<'a> {
    model: &'a Model,
    adapter: Option<&'a Adapter>,
    cancel: Option<Cancel<'a>>,
    cache: KvCache,
    sampler: Sampler,
    stop_tokens: Vec<u32>,
    max_new_tokens: usize,
    prompt_len: usize,
    /// Ids a token may take: the tokenizer's (embedding tables may have padding rows).
    vocab: usize,
    logits: Vec<f32>,     // [vocab] of the next token
    pending: Option<u32>, // the last token, not yet run through the model
    generated: Vec<u32>,
    stop_reason: Option<StopReason>,
}

impl<'a> Generator<'a> {
    /// Checks the options and runs the prompt through the model.
    pub fn new(model: &'a Model, prompt: &[u32], opts: &GenerateOptions, adapter: Option<&'a Adapter>) -> Result<Self> {
        Self::new_cancellable(model, prompt, opts, adapter, None)
    }

    /// [`Self::new`] whose prefill (between layers) and every later token first ask
    /// `cancel`, and end with [`Error::Cancelled`] once it says so.
    pub fn new_cancellable(
        model: &'a Model,
        prompt: &[u32],
        opts: &GenerateOptions,
        adapter: Option<&'a Adapter>,
        cancel: Option<Cancel<'a>>,
    ) -> Result<Self> {
        let sampler = Sampler::new(opts)?;
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt has no tokens"));
        }
        let mut cache = KvCache::new(&model.config);
        let lora = LoraCtx {
            adapter,
            dropout: None,
            cancel,
        };
        let logits = model.prefill_ctx(prompt, &mut cache, lora)?;
        Ok(Generator {
            model,
            adapter,
            cancel,
            cache,
            sampler,
            stop_tokens: opts.stop_tokens_for(model),
            max_new_tokens: opts.max_new_tokens,
            prompt_len: prompt.len(),
            vocab: model.tokenizer.vocab_size().min(model.config.vocab_size),
            logits,
            pending: None,
            generated: Vec::new(),
            stop_reason: None,
        })
    }

    /// The next token, or `None` once generation has ended (see [`Self::stop_reason`]).
    pub fn next_token(&mut self) -> Result<Option<u32>> {
        if self.stop_reason.is_some() {
            return Ok(None);
        }
        if self.generated.len() >= self.max_new_tokens {
            return Ok(self.finish(StopReason::Length));
        }
        if self.prompt_len + self.generated.len() >= self.model.config.max_position_embeddings {
            return Ok(self.finish(StopReason::ContextFull));
        }
        if let Some(t) = self.pending.take() {
            crate::cancel::check(self.cancel)?;
            self.logits = self.model.decode_step(t, &mut self.cache, self.adapter)?;
        }
        let t = self.sampler.sample(&self.logits[..self.vocab]);
        self.generated.push(t);
        if self.stop_tokens.contains(&t) {
            self.stop_reason = Some(StopReason::Eos);
        } else {
            self.pending = Some(t);
        }
        Ok(Some(t))
    }

    /// Ends generation (e.g. on a user's request); later calls return `None`.
    pub fn stop(&mut self, reason: StopReason) {
        self.finish(reason);
    }

    fn finish(&mut self, reason: StopReason) -> Option<u32> {
        self.stop_reason.get_or_insert(reason);
        None
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
    }

    /// The tokens generated so far.
    pub fn generated(&self) -> &[u32] {
        &self.generated
    }

    /// Logits of the token the next call samples (after the last generated one): `[vocab]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The reply's text so far, without stop tokens.
    pub fn text(&self) -> Result<String> {
        let end = match self.stop_reason {
            Some(StopReason::Eos) => self.generated.len() - 1,
            _ => self.generated.len(),
        };
        self.model.tokenizer.decode(&self.generated[..end], true)
    }
}

/// Generates a reply to `prompt` (token ids, e.g. a chat rendered with the model's
/// template). `on_token` sees each new token but the stop token, with the text it adds
/// (empty while a character's bytes are incomplete), and may break to stop.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    adapter: Option<&Adapter>,
    mut on_token: impl FnMut(u32, &str) -> ControlFlow<()>,
) -> Result<Generated> {
    let mut g = Generator::new(model, prompt, opts, adapter)?;
    let mut shown = 0; // bytes of the text already passed to on_token
    while let Some(t) = g.next_token()? {
        if g.stop_reason() == Some(StopReason::Eos) {
            break;
        }
        let text = g.text()?;
        let delta = text_delta(&text, &mut shown);
        if on_token(t, delta).is_break() {
            g.stop(StopReason::Callback);
        }
    }
    Ok(Generated {
        text: g.text()?,
        stop_reason: g.stop_reason().expect("the loop ends only when generation has"),
        ids: g.generated,
    })
}
