//! Text generation with a KV cache, so an app can see what an adapter does to the model's
//! replies: the prompt runs once ([`Model::prefill`]), then each new token is one
//! single-row step ([`Model::decode_step`]) against the cached keys and values.
//!
//! Sampling follows transformers' order (temperature, then top-k, then top-p) with a
//! seeded [`Rng`], so a seed reproduces a reply exactly; temperature 0 is greedy.

use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::model::config::Config;
use crate::rng::Rng;
use std::ops::ControlFlow;

/// Keys (after rope) and values of every past position, per layer: what a new token's
/// attention needs from the tokens before it.
#[derive(Clone, Debug)]
pub struct KvCache {
    k: Vec<Vec<f32>>, // per layer: [len, kv_dim]
    v: Vec<Vec<f32>>, // per layer: [len, kv_dim]
    kv_dim: usize,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model of this configuration.
    pub fn new(config: &Config) -> Self {
        let n = config.num_hidden_layers;
        KvCache {
            k: vec![Vec::new(); n],
            v: vec![Vec::new(); n],
            kv_dim: config.kv_dim(),
            len: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every position (keeps the memory).
    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Forgets the positions from `len` on, e.g. to reuse a shared prompt prefix.
    pub fn truncate(&mut self, len: usize) {
        let len = len.min(self.len);
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.truncate(len * self.kv_dim);
        }
        self.len = len;
    }

    /// Layer `layer`'s cached keys and values: each [len, kv_dim].
    pub fn layer(&self, layer: usize) -> Option<(&[f32], &[f32])> {
        Some((self.k.get(layer)?.as_slice(), self.v.get(layer)?.as_slice()))
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.len * self.kv_dim * size_of::<f32>()
    }

    /// A cache made for another model shape would be read out of its rows.
    pub(crate) fn check_fits(&self, config: &Config) -> Result<()> {
        if self.k.len() != config.num_hidden_layers || self.kv_dim != config.kv_dim() {
            return Err(Error::invalid(format!(
                "KV cache of {} layers x {} key width does not fit a model of {} layers x {}",
                self.k.len(),
                self.kv_dim,
                config.num_hidden_layers,
                config.kv_dim()
            )));
        }
        Ok(())
    }

    pub(crate) fn reserve(&mut self, tokens: usize) {
        for layer in self.k.iter_mut().chain(self.v.iter_mut()) {
            layer.reserve(tokens * self.kv_dim);
        }
    }

    /// Writes rows `start..` of one layer (k, v: [n, kv_dim]) and returns that layer's
    /// keys and values through them. The length counts only once every layer has them
    /// ([`Self::set_len`]).
    pub(crate) fn append(&mut self, layer: usize, start: usize, k: &[f32], v: &[f32]) -> (&[f32], &[f32]) {
        let (kc, vc) = (&mut self.k[layer], &mut self.v[layer]);
        kc.truncate(start * self.kv_dim);
        vc.truncate(start * self.kv_dim);
        kc.extend_from_slice(k);
        vc.extend_from_slice(v);
        (kc, vc)
    }

    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }
}

/// How to pick tokens and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Divides the logits; 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens only (0 = all).
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities first reach `top_p`
    /// (1 = all).
    pub top_p: f32,
    pub seed: u64,
    /// Tokens that end the reply; `None` means the tokenizer's and the config's EOS.
    pub stop_tokens: Option<Vec<u32>>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop_tokens: None,
        }
    }
}

impl GenerateOptions {
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::invalid(format!(
                "temperature {} must be a number >= 0",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::invalid(format!("top_p {} must be in (0, 1]", self.top_p)));
        }
        Ok(())
    }

    /// The stop tokens for `model`: the explicit list, or its EOS ids.
    pub fn stop_tokens_for(&self, model: &Model) -> Vec<u32> {
        match &self.stop_tokens {
            Some(s) => s.clone(),
            None => default_stop_tokens(model),
        }
    }
}

/// The tokenizer's EOS and the config's `eos_token_id`, without duplicates.
pub fn default_stop_tokens(model: &Model) -> Vec<u32> {
    let mut v: Vec<u32> = [model.tokenizer.eos_id(), model.config.eos_token_id]
        .into_iter()
        .flatten()
        .collect();
    v.dedup();
    v
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token (EOS) was generated; it is the last id.
    Eos,
    /// `max_new_tokens` were generated.
    Length,
    /// Prompt and reply fill the model's context (`max_position_embeddings`).
    ContextFull,
    /// The token callback asked to stop.
    Callback,
}

impl StopReason {
    /// The name an app or a log shows (transformers' `finish_reason` where it has one).
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Eos => "eos",
            StopReason::Length => "length",
            StopReason::ContextFull => "context",
            StopReason::Callback => "callback",
        }
    }
}

/// A finished reply.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The new tokens, ending with the stop token when `stop_reason` is `Eos`.
    pub ids: Vec<u32>,
    /// The reply's text: the new tokens but the stop token, special tokens skipped.
    pub text: String,
    pub stop_reason: StopReason,
}

/// Picks a token from logits: greedy, or sampled after temperature, top-k and top-p.
pub struct Sampler {
    temperature: f32,
    top_k: usize,
    top_p: f32,
    rng: Rng,
    cand: Vec<(f32, u32)>, // (scaled logit, id)
    probs: Vec<f64>,
}

/// The most likely token (the first of equal maxima; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] || logits[best].is_nan() && !x.is_nan() {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(opts: &GenerateOptions) -> Result<Self> {
        opts.validate()?;
        Ok(Sampler {
            temperature: opts.temperature,
            top_k: opts.top_k,
            top_p: opts.top_p,
            rng: Rng::new(opts.seed),
            cand: Vec::new(),
            probs: Vec::new(),
        })
    }

    /// A token id from `logits`: [vocab].
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.temperature;
        self.cand.clear();
        self.cand.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, x)| x.is_finite())
                .map(|(i, &x)| (x * inv_t, i as u32)),
        );
        if self.cand.is_empty() {
            return argmax(logits);
        }
        // Most likely first, ties by id, so the order never depends on the sort.
        let order = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if self.top_k > 0 && self.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(self.top_k - 1, order);
            self.cand.truncate(self.top_k);
        }
        if self.top_p < 1.0 || self.top_k > 0 {
            self.cand.sort_unstable_by(order);
        }
        let max = self.cand.iter().map(|c| c.0).fold(f32::NEG_INFINITY, f32::max);
        self.probs.clear();
        self.probs.extend(self.cand.iter().map(|c| ((c.0 - max) as f64).exp()));
        let mut total: f64 = self.probs.iter().sum();
        if self.top_p < 1.0 {
            // Keep the smallest head of the sorted list whose mass reaches top_p.
            let want = self.top_p as f64 * total;
            let mut acc = 0.0;
            let mut keep = self.probs.len();
            for (i, p) in self.probs.iter().enumerate() {
                acc += p;
                if acc >= want {
                    keep = i + 1;
                    break;
                }
            }
            self.probs.truncate(keep);
            total = self.probs.iter().sum();
        }
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut acc = 0.0;
        for (i, p) in self.probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return self.cand[i].1;
            }
        }
        self.cand[self.probs.len() - 1].1
    }
}

/// Generation one token at a time (for apps that drive the loop themselves).
pub struct Generator<'a> {
    model: &'a Model,
    adapter: Option<&'a Adapter>,
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
        let sampler = Sampler::new(opts)?;
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt has no tokens"));
        }
        let mut cache = KvCache::new(&model.config);
        let logits = model.prefill(prompt, &mut cache, adapter)?;
        Ok(Generator {
            model,
            adapter,
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

    /// Logits of the token the next call samples (after the last generated one): [vocab].
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
        // A byte-level token may end inside a character: wait for the rest of it.
        let delta = match text.get(shown..) {
            Some(d) if !text.ends_with('\u{FFFD}') => d,
            _ => "",
        };
        shown += delta.len();
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
