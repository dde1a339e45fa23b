//! Chat templates with Hugging Face's Jinja semantics, rendered by minijinja.
//!
//! transformers renders `chat_template` in a sandboxed Jinja2 environment with
//! `trim_blocks=True`, `lstrip_blocks=True`, no trailing newline kept, a `raise_exception`
//! global, and the tokenizer's special tokens as variables. Templates call Python string
//! methods (`.strip()`, `.startswith()`), which minijinja-contrib's pycompat supplies.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One turn of a conversation, as HF templates see it: `{"role": ..., "content": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// The special tokens a template may print (`{{ bos_token }}`); absent ones stay undefined,
/// as in transformers, so that `is defined` tests behave the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub pad: Option<String>,
}

/// A chat template and the file it came from (named in every error it raises).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplate {
    pub source: String,
    pub origin: std::path::PathBuf,
}

/// Marks the error that the template itself raised, so that its message reaches the
/// caller unchanged rather than wrapped in minijinja's location text.
#[derive(Debug)]
struct RaisedException(String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message.clone()).with_source(RaisedException(message)))
}

/// Instructions one rendering may execute. A real template spends a few dozen per message;
/// the bound stops a hostile one (`{% for i in range(100000) %}...`) in well under a second.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// Bytes one rendering may print beyond four times the messages' own text: a template
/// frames messages, it does not multiply them, and a printing loop must not exhaust memory.
pub const TEMPLATE_OUTPUT_BASE: usize = 1 << 20;

/// The largest template source accepted (HF's biggest templates, with tools, are ~10 KiB).
pub const TEMPLATE_SOURCE_MAX: usize = 1 << 20;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env
}

fn template_error(origin: &Path, err: &minijinja::Error) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(raised) = e.downcast_ref::<RaisedException>() {
            return Error::ChatTemplate(format!("{}: {}", origin.display(), raised.0));
        }
        cause = e.source();
    }
    Error::ChatTemplate(format!("{}: {err}", origin.display()))
}

impl ChatTemplate {
    /// Renders the prompt for `messages`; with `add_generation_prompt` the text ends where
    /// the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        special: &SpecialTokens,
    ) -> Result<String> {
        if self.source.len() > TEMPLATE_SOURCE_MAX {
            return Err(Error::ChatTemplate(format!(
                "{}: the template is {} bytes, over the limit of {TEMPLATE_SOURCE_MAX}",
                self.origin.display(),
                self.source.len()
            )));
        }
        let env = environment();
        let template = env
            .template_from_named_str("chat_template", &self.source)
            .map_err(|e| template_error(&self.origin, &e))?;

        let mut ctx: BTreeMap<&str, Value> = BTreeMap::new();
        ctx.insert("messages", Value::from_serialize(messages));
        ctx.insert("add_generation_prompt", Value::from(add_generation_prompt));
        let tokens = [
            ("bos_token", &special.bos),
            ("eos_token", &special.eos),
            ("unk_token", &special.unk),
            ("pad_token", &special.pad),
        ];
        for (name, token) in tokens {
            if let Some(token) = token {
                ctx.insert(name, Value::from(token.as_str()));
            }
        }

        let content: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let limit = TEMPLATE_OUTPUT_BASE.saturating_add(content.saturating_mul(4));
        let mut out = CappedOutput {
            bytes: Vec::new(),
            limit,
            exceeded: false,
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.bytes)
                .map_err(|_| Error::ChatTemplate(format!("{}: the rendering is not UTF-8", self.origin.display()))),
            Err(_) if out.exceeded => Err(Error::ChatTemplate(format!(
                "{}: the template printed more than {limit} bytes for {content} bytes of messages",
                self.origin.display()
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::ChatTemplate(format!(
                "{}: the template ran more than {TEMPLATE_FUEL} instructions",
                self.origin.display()
            ))),
            Err(e) => Err(template_error(&self.origin, &e)),
        }
    }
}

/// The rendering's sink: refuses the write that would pass `limit`, which stops minijinja.
struct CappedOutput {
    bytes: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
