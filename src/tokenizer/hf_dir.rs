//! The tokenizer files of an HF model directory: `tokenizer.json` (required),
//! `tokenizer_config.json` (special tokens, chat template) and the chat template's own
//! files (`chat_template.jinja`, or `chat_template.json`), which win over the config's.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::Value;
use tokenizers::Tokenizer;

use super::chat::{ChatTemplate, SpecialTokens};
use crate::error::{Error, Result};

pub(crate) struct HfTokenizerFiles {
    pub tokenizer: Tokenizer,
    pub special: SpecialTokens,
    pub chat_template: Option<ChatTemplate>,
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn read_optional_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = read_text(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// A special token as `tokenizer_config.json` writes it: a string, an `AddedToken`
/// object with `content`, or null.
fn config_token(config: &Value, field: &str, file: &Path) -> Result<Option<String>> {
    match config.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(Error::field(file, field, "object without a string `content`")),
        },
        Some(other) => Err(Error::field(
            file,
            field,
            format!("expected a string or an object, found {other}"),
        )),
    }
}

/// `chat_template` is a string, or a list of `{name, template}` of which `default` is the
/// chat one.
fn config_template(config: &Value, file: &Path) -> Result<Option<String>> {
    const FIELD: &str = "chat_template";
    match config.get(FIELD) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(list)) => {
            let named = |name: Option<&str>| {
                list.iter()
                    .find(|entry| name.is_none_or(|name| entry.get("name").and_then(Value::as_str) == Some(name)))
            };
            let entry = named(Some("default")).or_else(|| named(None));
            match entry.map(|e| e.get("template")) {
                None => Ok(None),
                Some(Some(Value::String(s))) => Ok(Some(s.clone())),
                Some(_) => Err(Error::field(file, FIELD, "list entry without a string `template`")),
            }
        }
        Some(other) => Err(Error::field(
            file,
            FIELD,
            format!("expected a string or a list, found {other}"),
        )),
    }
}

fn chat_template(dir: &Path, config: Option<&(Value, PathBuf)>) -> Result<Option<ChatTemplate>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.exists() {
        return Ok(Some(ChatTemplate {
            source: read_text(&jinja)?,
            origin: jinja,
        }));
    }
    let json = dir.join("chat_template.json");
    if let Some(value) = read_optional_json(&json)?
        && let Some(source) = config_template(&value, &json)?
    {
        return Ok(Some(ChatTemplate { source, origin: json }));
    }
    if let Some((config, path)) = config
        && let Some(source) = config_template(config, path)?
    {
        return Ok(Some(ChatTemplate {
            source,
            origin: path.clone(),
        }));
    }
    Ok(None)
}

/// `tokenizer.json` through the `tokenizers` crate, whose deserializers panic on some
/// malformed input (an untagged decoder that fails to parse): the JSON is checked first, so
/// that the error names its line, and a panic that still escapes becomes a typed error.
fn parse_tokenizer_json(text: &str, file: &Path) -> Result<Tokenizer> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| Error::format(file, format!("not valid JSON: {e}")))?;
    let parsed = std::panic::catch_unwind(|| Tokenizer::from_str(text));
    match parsed {
        // Some broken files parse but panic at the first use (a post-processor naming a
        // special token it does not define): one probe with the special tokens finds them.
        Ok(Ok(tokenizer)) => match super::without_panic(|| tokenizer.encode_fast("a", true)) {
            Ok(_) => Ok(tokenizer),
            Err(why) => Err(Error::format(
                file,
                format!("not a valid tokenizer.json: the tokenizers crate fails on it ({why})"),
            )),
        },
        Ok(Err(e)) => Err(Error::format(file, format!("not a valid tokenizer.json: {e}"))),
        Err(panic) => Err(Error::format(
            file,
            format!(
                "not a valid tokenizer.json: the tokenizers crate failed on it ({})",
                super::panic_text(panic.as_ref())
            ),
        )),
    }
}

pub(crate) fn load(dir: &Path) -> Result<HfTokenizerFiles> {
    let tokenizer_json = dir.join("tokenizer.json");
    let text = read_text(&tokenizer_json)?;
    let tokenizer = parse_tokenizer_json(&text, &tokenizer_json)?;

    let config_path = dir.join("tokenizer_config.json");
    let config = read_optional_json(&config_path)?.map(|v| (v, config_path));
    let special = match &config {
        Some((config, path)) => SpecialTokens {
            bos: config_token(config, "bos_token", path)?,
            eos: config_token(config, "eos_token", path)?,
            unk: config_token(config, "unk_token", path)?,
            pad: config_token(config, "pad_token", path)?,
        },
        None => SpecialTokens::default(),
    };
    let chat_template = chat_template(dir, config.as_ref())?;
    Ok(HfTokenizerFiles {
        tokenizer,
        special,
        chat_template,
    })
}
