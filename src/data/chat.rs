//! Prompts and completions as rows and events give them: plain text or chat messages in
//! JSON, read by one set of rules wherever they come in (dataset rows from JSONL files and
//! `nudge_dataset_add_*`, journal events from `nudge journal add|ingest` and
//! `nudge_journal_add_*`, prompts to generate from):
//!
//! 1. A message is a JSON object with a string `role` and a string `content`; other keys
//!    are ignored.
//! 2. A prompt is a string, or a non-empty list of messages (of any roles).
//! 3. A completion (an answer: `chosen`, `rejected`, `completion`) is a string, or a list of
//!    exactly one message, of role `assistant` (TRL's conversational format).
//! 4. The prompt and the completions of one row or event are all strings or all messages.
//!
//! A [`MessageError`] names the field and, in a list, the message (`chosen[0].role`).

use crate::tokenizer::ChatMessage;
use serde_json::Value;

/// A prompt or a completion: plain text, or chat messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Messages(Vec<ChatMessage>),
}

impl Content {
    /// The text of an answer: the string, or the content of its one message.
    pub fn into_answer(self) -> String {
        match self {
            Content::Text(t) => t,
            Content::Messages(m) => m.into_iter().map(|m| m.content).collect(),
        }
    }
}

/// A prompt or completion that breaks the rules of this module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {what}")]
pub struct MessageError {
    /// The field, with the message's index and key when one message is wrong
    /// (`prompt`, `chosen[1].content`).
    pub field: String,
    pub what: String,
}

impl MessageError {
    fn new(field: impl Into<String>, what: impl Into<String>) -> Self {
        MessageError {
            field: field.into(),
            what: what.into(),
        }
    }

    /// The same error with its field inside `outer` (`pairs[3]` + `chosen` = `pairs[3].chosen`).
    pub fn within(mut self, outer: &str) -> Self {
        self.field = format!("{outer}.{}", self.field);
        self
    }
}

/// A non-empty list of messages (rules 1 and 2).
pub fn messages(v: &Value, field: &str) -> Result<Vec<ChatMessage>, MessageError> {
    let a = match v {
        Value::Array(a) if !a.is_empty() => a,
        Value::Array(_) => return Err(MessageError::new(field, "is an empty list of messages")),
        _ => return Err(MessageError::new(field, "is neither a string nor a list of messages")),
    };
    a.iter()
        .enumerate()
        .map(|(i, m)| {
            let text = |key: &str| match m.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(MessageError::new(
                    format!("{field}[{i}].{key}"),
                    "is missing or not a string",
                )),
            };
            if !m.is_object() {
                return Err(MessageError::new(
                    format!("{field}[{i}]"),
                    "is not a message {\"role\": .., \"content\": ..}",
                ));
            }
            Ok(ChatMessage::new(text("role")?, text("content")?))
        })
        .collect()
}

/// A prompt (rule 2).
pub fn prompt(v: &Value, field: &str) -> Result<Content, MessageError> {
    match v {
        Value::String(s) => Ok(Content::Text(s.clone())),
        _ => messages(v, field).map(Content::Messages),
    }
}

/// A completion (rule 3).
pub fn completion(v: &Value, field: &str) -> Result<Content, MessageError> {
    if let Value::String(s) = v {
        return Ok(Content::Text(s.clone()));
    }
    let m = messages(v, field)?;
    if m.len() != 1 {
        return Err(MessageError::new(
            field,
            format!("holds {} messages; an answer is one message", m.len()),
        ));
    }
    if m[0].role != "assistant" {
        return Err(MessageError::new(
            format!("{field}[0].role"),
            format!("is \"{}\"; an answer's role is \"assistant\"", m[0].role),
        ));
    }
    Ok(Content::Messages(m))
}

/// A prompt and its completions (`(field, value)`: one for a thumb, two for a pair), under
/// all four rules.
pub fn parse(prompt_value: &Value, completions: &[(&str, &Value)]) -> Result<(Content, Vec<Content>), MessageError> {
    let p = prompt(prompt_value, "prompt")?;
    let cs = completions
        .iter()
        .map(|(field, v)| {
            let c = completion(v, field)?;
            if matches!(p, Content::Text(_)) != matches!(c, Content::Text(_)) {
                return Err(MessageError::new(
                    *field,
                    "and `prompt` must both be strings or both be messages",
                ));
            }
            Ok(c)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((p, cs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_message_and_key() {
        let e = parse(&json!([{"role": "user"}]), &[]).unwrap_err();
        assert_eq!(e.field, "prompt[0].content");
        let e = parse(&json!("p"), &[("chosen", &json!([{"role": "user", "content": "x"}]))]).unwrap_err();
        assert_eq!(e.field, "chosen[0].role");
        assert_eq!(e.within("pairs[3]").field, "pairs[3].chosen[0].role");
    }
}
