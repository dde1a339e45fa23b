//! A conversation that keeps its KV cache between turns: each turn renders the whole chat
//! with the model's template, as a fresh call would, but runs through the model only the
//! tokens after the longest prefix the cache already holds. So a new user message costs
//! its own tokens, not the whole history, and the logits are those of a fresh prefill of
//! the whole chat (the cached forward is the full forward's arithmetic, row for row).
//!
//! Rendering again, instead of appending tokens, keeps the template the only authority on
//! what the chat looks like: a template that changes earlier text when a turn is added
//! (some drop old reasoning, for instance) costs a longer prefill, never a wrong cache.

use super::{GenerateOptions, Generated, Generator, KvCache};
use crate::adapter::Adapter;
use crate::cancel::Cancel;
use crate::error::{Error, Result};
use crate::model::{LoraCtx, Model};
use crate::tokenizer::ChatMessage;

/// A conversation (an optional system prompt, then turns) and the cache of its tokens.
/// The model and adapter are given to each call: they must stay the same for one
/// session, or [`Session::clear_cache`] must be called when they change.
pub struct Session {
    messages: Vec<ChatMessage>,
    cache: KvCache,
    /// The tokens whose keys and values `cache` holds.
    tokens: Vec<u32>,
    /// Tokens the last call found in the cache (for an app's statistics and the tests).
    reused: usize,
}

impl Session {
    /// An empty conversation, with `system` as its first message if given.
    pub fn new(model: &Model, system: Option<&str>) -> Self {
        Session {
            messages: system.map(|s| ChatMessage::new("system", s)).into_iter().collect(),
            cache: KvCache::new(&model.config),
            tokens: Vec::new(),
            reused: 0,
        }
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Appends a message without generating (a turn the app already has, say).
    pub fn push(&mut self, role: &str, content: &str) -> Result<()> {
        if role.trim().is_empty() {
            return Err(Error::invalid(
                "a chat message needs a role (\"user\", \"assistant\", ...)",
            ));
        }
        self.messages.push(ChatMessage::new(role, content));
        Ok(())
    }

    /// Keeps the first `len` messages (the cache keeps what still matches).
    pub fn truncate(&mut self, len: usize) {
        self.messages.truncate(len);
    }

    /// Removes the last `turns` turns: each from its user message on, with the reply.
    /// Returns the number of messages removed; fails, changing nothing, when the session
    /// has fewer user messages.
    pub fn rollback(&mut self, turns: usize) -> Result<usize> {
        let users: Vec<usize> = (0..self.messages.len())
            .filter(|&i| self.messages[i].role == "user")
            .collect();
        if turns > users.len() {
            return Err(Error::invalid(format!(
                "cannot roll back {turns} turns: the session has {}",
                users.len()
            )));
        }
        let keep = match turns {
            0 => self.messages.len(),
            n => users[users.len() - n],
        };
        let removed = self.messages.len() - keep;
        self.messages.truncate(keep);
        Ok(removed)
    }

    /// Tokens held in the cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Bytes of the cache's keys and values.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
    }

    /// Tokens the last call found already in the cache (not run through the model again).
    pub fn reused_tokens(&self) -> usize {
        self.reused
    }

    /// Forgets the cache (e.g. because the adapter changed); the next call prefills all.
    pub fn clear_cache(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// The conversation rendered with the model's template, as token ids.
    pub fn render(&self, model: &Model, add_generation_prompt: bool) -> Result<Vec<u32>> {
        if self.messages.is_empty() {
            return Err(Error::invalid("the session has no messages"));
        }
        let text = model
            .tokenizer
            .apply_chat_template(&self.messages, add_generation_prompt)?;
        model.tokenizer.encode(&text, false)
    }

    /// Makes the cache hold `ids`, running only those after the prefix it already holds
    /// (at least the last one, whose logits are returned: `[vocab]`). On error the cache
    /// holds that prefix.
    fn sync(
        &mut self,
        model: &Model,
        ids: &[u32],
        adapter: Option<&Adapter>,
        cancel: Option<Cancel>,
    ) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::invalid("the conversation renders to no tokens"));
        }
        // After a reply that was dropped the cache is empty while `tokens` still holds its prompt.
        let common = self
            .tokens
            .iter()
            .zip(ids)
            .take_while(|(a, b)| a == b)
            .count()
            .min(self.cache.len());
        let keep = common.min(ids.len() - 1);
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        self.reused = keep;
        let lora = LoraCtx {
            adapter,
            dropout: None,
            cancel,
        };
        let logits = model.prefill_ctx(&ids[keep..], &mut self.cache, lora)?;
        self.tokens.extend_from_slice(&ids[keep..]);
        Ok(logits)
    }

    /// The logits of the token after the whole conversation (rendered without a generation
    /// prompt): `[vocab]`.
    pub fn logits(&mut self, model: &Model, adapter: Option<&Adapter>, cancel: Option<Cancel>) -> Result<Vec<f32>> {
        let ids = self.render(model, false)?;
        self.sync(model, &ids, adapter, cancel)
    }

    /// Starts the assistant's reply to the conversation as it is: renders it with the
    /// generation prompt, brings the cache up to date, and hands the cache to a
    /// [`Generator`]. Give the generator back to [`Self::end_reply`]; if it is dropped
    /// instead (an error, a cancellation), the session is as before but with an empty cache.
    pub fn begin_reply<'a>(
        &mut self,
        model: &'a Model,
        adapter: Option<&'a Adapter>,
        opts: &GenerateOptions,
        cancel: Option<Cancel<'a>>,
    ) -> Result<Generator<'a>> {
        opts.validate()?;
        let ids = self.render(model, true)?;
        let logits = self.sync(model, &ids, adapter, cancel)?;
        let cache = std::mem::replace(&mut self.cache, KvCache::new(&model.config));
        let g = Generator::resume(model, cache, logits, opts, adapter, cancel);
        if g.is_err() {
            self.tokens.clear();
        }
        g
    }

    /// Ends a reply [`Self::begin_reply`] started: takes the cache back and appends the
    /// reply (its text as [`Generated::text`]) as the assistant's message.
    pub fn end_reply(&mut self, g: Generator) -> Result<Generated> {
        let text = g.text()?;
        let stop_reason = g.stop_reason().unwrap_or(super::StopReason::Length);
        let ids = g.generated().to_vec();
        let cache = g.into_cache();
        // The cache holds the prompt and every generated token but the last.
        let in_cache = cache.len().saturating_sub(self.tokens.len()).min(ids.len());
        self.tokens.extend_from_slice(&ids[..in_cache]);
        self.cache = cache;
        self.messages.push(ChatMessage::new("assistant", text.clone()));
        Ok(Generated { ids, text, stop_reason })
    }

    /// Adds `user`'s message and generates the reply (appended to the conversation).
    /// `on_token` is as [`super::generate`]'s. On error the message is removed again.
    pub fn reply(
        &mut self,
        model: &Model,
        adapter: Option<&Adapter>,
        user: &str,
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32, &str) -> std::ops::ControlFlow<()>,
    ) -> Result<Generated> {
        self.push("user", user)?;
        let mut run = |s: &mut Self| -> Result<Generated> {
            let mut g = s.begin_reply(model, adapter, opts, None)?;
            g.stream(&mut on_token)?;
            s.end_reply(g)
        };
        let out = run(self);
        if out.is_err() {
            self.messages.pop();
        }
        out
    }
}
