//! TRL's dataset rows, one JSON object per line:
//!
//! - preference, standard: `{"prompt": str, "chosen": str, "rejected": str}`
//! - preference, conversational: the same keys holding chat-message lists; or only
//!   `chosen`/`rejected` full conversations whose shared leading messages are the prompt
//! - preference, pre-tokenized: `{"prompt_ids": [..], "chosen_ids": [..], "rejected_ids": [..]}`
//! - unpaired (KTO): `{"prompt": .., "completion": .., "label": bool}` (or `*_ids`)
//!
//! Optional per-row `margin` and `weight` (numbers) feed the margin-adaptive losses.
//!
//! Prompts and completions given as chat messages follow the rules of [`super::chat`].
//!
//! Tokenization follows TRL: a standard row's prompt and completion are tokenized
//! separately without special tokens and the completion gets the EOS token appended; a
//! conversational row's prompt is the chat template's rendering with the generation
//! prompt, and its completion is what rendering prompt + answer adds after that.

use super::chat::{self, Content};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedPair {
    /// 1-based line number in the source file.
    pub row: usize,
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub margin: Option<f32>,
    pub weight: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedUnpaired {
    pub row: usize,
    pub prompt: Vec<u32>,
    pub completion: Vec<u32>,
    /// Thumbs up (desirable) or down.
    pub label: bool,
    pub weight: Option<f32>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Example {
    Pair(TokenizedPair),
    Unpaired(TokenizedUnpaired),
}

/// Non-empty lines of a JSONL file with their 1-based line numbers; a line that is not a
/// JSON object is an error naming the file and row.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_jsonl(&text)
        .map(|(row, v)| v.map(|v| (row, v)).map_err(|what| Error::row(path, row, what)))
        .collect()
}

/// Each non-empty line of JSONL text with its 1-based line number: the object, or why the
/// line is not one.
pub fn parse_jsonl(text: &str) -> impl Iterator<Item = (usize, std::result::Result<Value, String>)> + '_ {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let v = match serde_json::from_str::<Value>(line) {
                Ok(v) if v.is_object() => Ok(v),
                Ok(_) => Err("not a JSON object".to_string()),
                Err(e) => Err(format!("not valid JSON: {e}")),
            };
            (i + 1, v)
        })
}

/// The row formats [`tokenize_row`] reads, for messages that list them.
pub const ROW_FORMATS: &str = "{prompt, chosen, rejected} (strings or message lists), {chosen, rejected} \
     (conversations sharing their leading messages), {prompt_ids, chosen_ids, rejected_ids}, \
     {prompt, completion, label} or {prompt_ids, completion_ids, label} (unpaired thumbs)";

/// Turns one row into token ids; `file` and `row` name it in errors.
/// Token ids are checked against the tokenizer's vocabulary.
pub fn tokenize_row(tok: &TextTokenizer, v: &Value, file: &Path, row: usize) -> Result<Example> {
    let err = |what: String| Error::row(file, row, what);
    let num = |k: &str| -> Result<Option<f32>> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x
                .as_f64()
                .filter(|f| f.is_finite())
                .map(|f| Some(f as f32))
                .ok_or_else(|| err(format!("`{k}` is not a finite number"))),
        }
    };
    let (margin, weight) = (num("margin")?, num("weight")?);
    let vocab = tok.vocab_size();
    let ids = |k: &str| -> Result<Vec<u32>> {
        let a = v
            .get(k)
            .and_then(Value::as_array)
            .ok_or_else(|| err(format!("`{k}` is not a list of token ids")))?;
        a.iter()
            .enumerate()
            .map(|(i, x)| match x.as_u64() {
                Some(id) if (id as usize) < vocab => Ok(id as u32),
                _ => Err(err(format!(
                    "`{k}[{i}]` = {x} is not a token id of this vocabulary ({vocab} tokens)"
                ))),
            })
            .collect()
    };

    if v.get("prompt_ids").is_some() {
        if v.get("completion_ids").is_some() {
            return Ok(Example::Unpaired(TokenizedUnpaired {
                row,
                prompt: ids("prompt_ids")?,
                completion: ids("completion_ids")?,
                label: label(v).map_err(err)?,
                weight,
            }));
        }
        return Ok(Example::Pair(TokenizedPair {
            row,
            prompt: ids("prompt_ids")?,
            chosen: ids("chosen_ids")?,
            rejected: ids("rejected_ids")?,
            margin,
            weight,
        }));
    }

    if v.get("completion").is_some() {
        let prompt = v
            .get("prompt")
            .ok_or_else(|| err("unpaired row has `completion` but no `prompt`".into()))?;
        let (p, c) = prompt_completion(tok, prompt, ("completion", &v["completion"]), &err)?;
        return Ok(Example::Unpaired(TokenizedUnpaired {
            row,
            prompt: p,
            completion: c,
            label: label(v).map_err(err)?,
            weight,
        }));
    }

    let (Some(chosen), Some(rejected)) = (v.get("chosen"), v.get("rejected")) else {
        let keys: Vec<&str> = v
            .as_object()
            .map_or(Vec::new(), |o| o.keys().map(String::as_str).collect());
        return Err(err(format!(
            "not a row of a known format (keys: {}); accepted: {ROW_FORMATS}",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            }
        )));
    };
    let (prompt, chosen, rejected) = match v.get("prompt") {
        Some(p) => (p.clone(), chosen.clone(), rejected.clone()),
        None => implicit_prompt(chosen, rejected).map_err(err)?,
    };
    let (p, c) = prompt_completion(tok, &prompt, ("chosen", &chosen), &err)?;
    let (p2, r) = prompt_completion(tok, &prompt, ("rejected", &rejected), &err)?;
    debug_assert_eq!(p, p2);
    Ok(Example::Pair(TokenizedPair {
        row,
        prompt: p,
        chosen: c,
        rejected: r,
        margin,
        weight,
    }))
}

fn label(v: &Value) -> std::result::Result<bool, String> {
    match v.get("label") {
        Some(Value::Bool(b)) => Ok(*b),
        Some(x) => Err(format!("`label` = {x} is not true or false")),
        None => Err("unpaired row has no `label`".into()),
    }
}

/// TRL's implicit prompt: the longest run of leading messages both conversations share.
fn implicit_prompt(chosen: &Value, rejected: &Value) -> std::result::Result<(Value, Value, Value), String> {
    let c = chosen
        .as_array()
        .ok_or("no `prompt`, and `chosen` is not a conversation")?;
    let r = rejected
        .as_array()
        .ok_or("no `prompt`, and `rejected` is not a conversation")?;
    let n = c.iter().zip(r).take_while(|(a, b)| a == b).count();
    if n == 0 {
        return Err("no `prompt`, and `chosen`/`rejected` share no leading message".into());
    }
    Ok((
        Value::Array(c[..n].to_vec()),
        Value::Array(c[n..].to_vec()),
        Value::Array(r[n..].to_vec()),
    ))
}

/// Token ids of a prompt and one completion of it, read by the rules of [`super::chat`];
/// `err` puts a broken message into the row's error.
fn prompt_completion(
    tok: &TextTokenizer,
    prompt: &Value,
    completion: (&str, &Value),
    err: &dyn Fn(String) -> Error,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let (p, mut c) = chat::parse(prompt, &[completion]).map_err(|e| err(e.to_string()))?;
    match (p, c.remove(0)) {
        (Content::Text(p), Content::Text(c)) => {
            let pi = tok.encode(&p, false)?;
            let mut ci = tok.encode(&c, false)?;
            let eos = tok
                .eos_id()
                .ok_or_else(|| Error::Tokenizer("the tokenizer has no EOS token to end a completion".into()))?;
            ci.push(eos);
            Ok((pi, ci))
        }
        (Content::Messages(pm), Content::Messages(cm)) => {
            let ptext = tok.apply_chat_template(&pm, true)?;
            let mut all = pm.clone();
            all.extend(cm);
            let full = tok.apply_chat_template(&all, false)?;
            let ctext = full.strip_prefix(ptext.as_str()).ok_or_else(|| {
                Error::ChatTemplate("the rendering of prompt + answer does not start with the rendered prompt".into())
            })?;
            Ok((tok.encode(&ptext, false)?, tok.encode(ctext, false)?))
        }
        // `chat::parse` refuses a prompt and a completion of different kinds.
        _ => Err(err("prompt and completion are of different kinds".into())),
    }
}
