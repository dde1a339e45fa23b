//! One reply: the prompt runs once ([`Model::prefill`]), then each new token is one
//! single-row step ([`Model::decode_step`]) against the cached keys and values.

use super::reply::ReplyText;
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
    /// The generated tokens decoded (the stop token left out).
    decoded: String,
    reply: ReplyText,
    /// What the last token added to the text that may be shown.
    delta: String,
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
        opts.validate()?;
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
        Self::resume(model, cache, logits, opts, adapter, cancel)
    }

    /// Generation that goes on from `cache`, which holds the prompt (or a conversation) run
    /// with `adapter`, `logits` being those of the token after it (`[vocab]`, as
    /// [`Model::prefill`] gives them).
    pub fn resume(
        model: &'a Model,
        cache: KvCache,
        logits: Vec<f32>,
        opts: &GenerateOptions,
        adapter: Option<&'a Adapter>,
        cancel: Option<Cancel<'a>>,
    ) -> Result<Self> {
        opts.validate()?;
        if cache.is_empty() || logits.len() != model.config.vocab_size {
            return Err(Error::invalid(format!(
                "generation resumes from a cache of {} tokens with {} logits: it needs at least one \
                 token and the model's {} logits",
                cache.len(),
                logits.len(),
                model.config.vocab_size
            )));
        }
        Ok(Generator {
            model,
            adapter,
            cancel,
            prompt_len: cache.len(),
            cache,
            sampler: Sampler::new(opts)?,
            stop_tokens: opts.stop_tokens_for(model),
            max_new_tokens: opts.max_new_tokens,
            vocab: model.tokenizer.vocab_size().min(model.config.vocab_size),
            logits,
            pending: None,
            generated: Vec::new(),
            decoded: String::new(),
            reply: ReplyText::new(&opts.stop_strings),
            delta: String::new(),
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
        self.delta.clear();
        if self.stop_tokens.contains(&t) {
            self.stop_reason = Some(StopReason::Eos);
            return Ok(Some(t));
        }
        self.decoded = self.model.tokenizer.decode(&self.generated, true)?;
        let (delta, hit) = self.reply.advance(&self.decoded, false);
        self.delta.push_str(delta);
        if hit {
            self.stop_reason = Some(StopReason::StopString);
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

    /// What the last token added to the reply's text (empty while the bytes of a character
    /// are incomplete, or while the text may be the start of a stop string).
    pub fn delta(&self) -> &str {
        &self.delta
    }

    /// Once generation has ended: the text not given by [`Self::delta`] yet (held back for
    /// a stop string that did not complete). Afterwards the deltas add up to [`Self::text`].
    pub fn rest(&mut self) -> String {
        if self.stop_reason.is_none() {
            return String::new();
        }
        self.reply.rest(&self.decoded).to_string()
    }

    /// Logits of the token the next call samples (after the last generated one): `[vocab]`.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The cache, holding the prompt and every generated token but the last one (which
    /// was never run through the model), for a conversation to go on from.
    pub fn into_cache(self) -> KvCache {
        self.cache
    }

    /// Runs generation to its end, giving `on_token` each new token but the stop token with
    /// the text it adds; a break stops it ([`StopReason::Callback`]). Text held back for a
    /// stop string that never completed comes last, with the last token's id, so the texts
    /// add up to [`Self::text`].
    pub fn stream(&mut self, on_token: &mut impl FnMut(u32, &str) -> ControlFlow<()>) -> Result<()> {
        let mut last = None;
        while let Some(t) = self.next_token()? {
            if self.stop_reason == Some(StopReason::Eos) {
                break;
            }
            last = Some(t);
            if on_token(t, &self.delta).is_break() {
                self.stop(StopReason::Callback);
            }
        }
        let rest = self.rest();
        if let (Some(t), false) = (last, rest.is_empty()) {
            let _ = on_token(t, &rest);
        }
        Ok(())
    }

    /// The reply's text so far, without stop tokens, cut before a stop string.
    pub fn text(&self) -> Result<String> {
        Ok(self.reply.cut(&self.decoded).to_string())
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
    g.stream(&mut on_token)?;
    Ok(Generated {
        text: g.text()?,
        stop_reason: g.stop_reason().expect("the loop ends only when generation has"),
        ids: g.generated,
    })
}
