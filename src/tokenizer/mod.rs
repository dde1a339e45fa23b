//! Tokenizers (HF `tokenizer.json` or rebuilt from GGUF) and chat templates.

mod chat;
mod gguf_vocab;
mod hf_dir;

use std::fmt;
use std::path::{Path, PathBuf};

pub use chat::{ChatMessage, ChatTemplate, SpecialTokens, TEMPLATE_FUEL, TEMPLATE_OUTPUT_BASE, TEMPLATE_SOURCE_MAX};
pub use gguf_vocab::{GgufVocab, token_type};

use crate::error::{Error, Result};
use crate::gguf::GgufFile;

/// Text ↔ token ids for one model, with its chat template.
#[derive(Clone)]
pub struct TextTokenizer {
    tokenizer: tokenizers::Tokenizer,
    /// The model file or directory it was built from; named in errors.
    origin: PathBuf,
    /// The field that would hold the chat template (`chat_template`,
    /// `tokenizer.chat_template`), named when it is missing.
    template_field: &'static str,
    vocab_size: usize,
    special: SpecialTokens,
    eos_id: Option<u32>,
    chat_template: Option<ChatTemplate>,
}

impl fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("origin", &self.origin)
            .field("vocab_size", &self.vocab_size)
            .field("special", &self.special)
            .field("eos_id", &self.eos_id)
            .field("has_chat_template", &self.chat_template.is_some())
            .finish()
    }
}

/// Ids run up to the highest one of the model or of the added tokens.
fn vocab_size(tokenizer: &tokenizers::Tokenizer) -> usize {
    let model = tokenizer.get_vocab_size(false);
    let added = tokenizer
        .get_added_tokens_decoder()
        .keys()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0);
    model.max(added)
}

/// `f`, with a panic inside the `tokenizers` crate (which some malformed files cause at
/// use, not at parse) turned into its message: a file must not crash the host.
fn without_panic<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| panic_text(p.as_ref()).to_string())
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic")
}

impl TextTokenizer {
    /// Loads `tokenizer.json` (required), `tokenizer_config.json` and the chat template
    /// (`chat_template.jinja` first) from an HF model directory.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let files = hf_dir::load(dir)?;
        let eos_id = files
            .special
            .eos
            .as_deref()
            .and_then(|t| files.tokenizer.token_to_id(t));
        Ok(TextTokenizer {
            vocab_size: vocab_size(&files.tokenizer),
            tokenizer: files.tokenizer,
            origin: dir.to_path_buf(),
            template_field: "chat_template",
            special: files.special,
            eos_id,
            chat_template: files.chat_template,
        })
    }

    /// Rebuilds the byte-level BPE tokenizer of a GGUF file (`file` is named in errors).
    pub fn from_gguf_vocab(v: &GgufVocab, file: &Path) -> Result<Self> {
        let tokenizer = v.build_tokenizer(file)?;
        let text = |id: Option<u32>| id.and_then(|id| v.token_text(id));
        Ok(TextTokenizer {
            vocab_size: v.tokens.len().max(vocab_size(&tokenizer)),
            tokenizer,
            origin: file.to_path_buf(),
            template_field: "tokenizer.chat_template",
            special: SpecialTokens {
                bos: text(v.bos_id),
                eos: text(v.eos_id),
                unk: text(v.unk_id),
                pad: text(v.pad_id),
            },
            eos_id: v.eos_id,
            chat_template: v.chat_template.as_ref().map(|source| ChatTemplate {
                source: source.clone(),
                origin: file.to_path_buf(),
            }),
        })
    }

    /// The tokenizer of an open GGUF file, from its `tokenizer.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let vocab = GgufVocab::from_metadata(&gguf.metadata, &gguf.path)?;
        Self::from_gguf_vocab(&vocab, &gguf.path)
    }

    fn tokenizer_error(&self, what: &str, e: impl fmt::Display) -> Error {
        Error::Tokenizer(format!("{}: {what}: {e}", self.origin.display()))
    }

    /// Token ids of `text`; `add_special_tokens` adds what the post-processor adds (BOS/EOS).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = without_panic(|| self.tokenizer.encode_fast(text, add_special_tokens))
            .map_err(|why| self.tokenizer_error("encode", why))?
            .map_err(|e| self.tokenizer_error("encode", e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; every id must be inside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(position) = ids.iter().position(|&id| id as usize >= self.vocab_size) {
            return Err(Error::TokenOutOfVocabulary {
                id: ids[position],
                position,
                vocab_size: self.vocab_size,
            });
        }
        without_panic(|| self.tokenizer.decode(ids, skip_special_tokens))
            .map_err(|why| self.tokenizer_error("decode", why))?
            .map_err(|e| self.tokenizer_error("decode", e))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.special.bos.as_deref()
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.special.eos.as_deref()
    }

    pub fn pad_token(&self) -> Option<&str> {
        self.special.pad.as_deref()
    }

    pub fn unk_token(&self) -> Option<&str> {
        self.special.unk.as_deref()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_token().and_then(|t| self.token_to_id(t))
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat_template.as_ref().map(|t| t.source.as_str())
    }

    /// The prompt text for `messages` as the model's chat template writes it.
    pub fn apply_chat_template(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| Error::field(&self.origin, self.template_field, "the model has no chat template"))?;
        template.render(messages, add_generation_prompt, &self.special)
    }

    /// The tokenizer as an HF `tokenizer.json`.
    pub fn to_tokenizer_json(&self) -> Result<String> {
        self.tokenizer
            .to_string(true)
            .map_err(|e| self.tokenizer_error("serialize", e))
    }

    /// The HF `tokenizer_config.json` that goes beside [`Self::to_tokenizer_json`].
    pub fn tokenizer_config_json(&self) -> serde_json::Value {
        let mut config = serde_json::Map::new();
        config.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
        config.insert("clean_up_tokenization_spaces".into(), false.into());
        let tokens = [
            ("bos_token", &self.special.bos),
            ("eos_token", &self.special.eos),
            ("unk_token", &self.special.unk),
            ("pad_token", &self.special.pad),
        ];
        for (field, token) in tokens {
            if let Some(token) = token {
                config.insert(field.into(), token.clone().into());
            }
        }
        if let Some(template) = &self.chat_template {
            config.insert("chat_template".into(), template.source.clone().into());
        }
        serde_json::Value::Object(config)
    }
}
