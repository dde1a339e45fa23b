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
//! Tokenization follows TRL: a standard row's prompt and completion are tokenized
//! separately without special tokens and the completion gets the EOS token appended; a
//! conversational row's prompt is the chat template's rendering with the generation
//! prompt, and its completion is what rendering prompt + answer adds after that.

use crate::error::{Error, Result};
use crate::tokenizer::{ChatMessage, TextTokenizer};
use serde_json::Value;
use std::io::BufRead;
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

/// Non-empty lines of a JSONL file with their 1-based line numbers.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(&line).map_err(|e| Error::row(path, i + 1, format!("not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(Error::row(path, i + 1, "not a JSON object"));
        }
        rows.push((i + 1, v));
    }
    Ok(rows)
}

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
        let (p, c) = prompt_completion(tok, prompt, &v["completion"]).map_err(|e| err(format!("{e}")))?;
        return Ok(Example::Unpaired(TokenizedUnpaired {
            row,
            prompt: p,
            completion: c,
            label: label(v).map_err(err)?,
            weight,
        }));
    }

    let chosen = v.get("chosen").ok_or_else(|| err("missing `chosen`".into()))?;
    let rejected = v.get("rejected").ok_or_else(|| err("missing `rejected`".into()))?;
    let (prompt, chosen, rejected) = match v.get("prompt") {
        Some(p) => (p.clone(), chosen.clone(), rejected.clone()),
        None => implicit_prompt(chosen, rejected).map_err(err)?,
    };
    let (p, c) = prompt_completion(tok, &prompt, &chosen).map_err(|e| err(format!("chosen: {e}")))?;
    let (p2, r) = prompt_completion(tok, &prompt, &rejected).map_err(|e| err(format!("rejected: {e}")))?;
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

fn messages(v: &Value, what: &str) -> std::result::Result<Vec<ChatMessage>, String> {
    let a = v
        .as_array()
        .ok_or_else(|| format!("`{what}` is neither a string nor a list of messages"))?;
    a.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str);
            let content = m.get("content").and_then(Value::as_str);
            match (role, content) {
                (Some(r), Some(c)) => Ok(ChatMessage::new(r, c)),
                _ => Err(format!(
                    "`{what}[{i}]` is not a message with string `role` and `content`"
                )),
            }
        })
        .collect()
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

/// Token ids of a prompt and one completion of it.
fn prompt_completion(tok: &TextTokenizer, prompt: &Value, completion: &Value) -> Result<(Vec<u32>, Vec<u32>)> {
    match (prompt, completion) {
        (Value::String(p), Value::String(c)) => {
            let pi = tok.encode(p, false)?;
            let mut ci = tok.encode(c, false)?;
            let eos = tok
                .eos_id()
                .ok_or_else(|| Error::Tokenizer("the tokenizer has no EOS token to end a completion".into()))?;
            ci.push(eos);
            Ok((pi, ci))
        }
        (Value::Array(_), Value::Array(_)) => {
            let pm = messages(prompt, "prompt").map_err(Error::invalid)?;
            let cm = messages(completion, "completion").map_err(Error::invalid)?;
            let ptext = tok.apply_chat_template(&pm, true)?;
            let mut all = pm.clone();
            all.extend(cm);
            let full = tok.apply_chat_template(&all, false)?;
            let ctext = full.strip_prefix(ptext.as_str()).ok_or_else(|| {
                Error::ChatTemplate("the rendering of prompt + answer does not start with the rendered prompt".into())
            })?;
            Ok((tok.encode(&ptext, false)?, tok.encode(ctext, false)?))
        }
        _ => Err(Error::invalid(
            "prompt and completion must both be strings or both be message lists",
        )),
    }
}
