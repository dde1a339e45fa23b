//! What the journal stores: thumbs events, explicit preference pairs, training marks, and
//! the user's requests to forget events.
//!
//! The records are written with serde + bincode, which encodes enum variants by index and
//! struct fields by position: new variants go at the end, and any other change to these
//! types is a new format version (`frame::FORMAT_VERSION`).

use crate::error::{Error, Result};
use crate::tokenizer::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What the model was answering: a plain text prompt or a conversation so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    Text(String),
    Chat(Vec<ChatMessage>),
}

impl Prompt {
    /// The prompt as a TRL dataset value: a string, or a list of `{role, content}` messages.
    pub fn to_trl(&self) -> Value {
        match self {
            Prompt::Text(t) => Value::String(t.clone()),
            Prompt::Chat(m) => json!(m),
        }
    }

    /// A completion of this prompt as a TRL value: a string for a text prompt, one
    /// assistant message for a conversation.
    pub fn completion_to_trl(&self, completion: &str) -> Value {
        match self {
            Prompt::Text(_) => Value::String(completion.to_string()),
            Prompt::Chat(_) => json!([ChatMessage::new("assistant", completion)]),
        }
    }

    /// A key equal for equal prompts: text and chat prompts never collide.
    pub(crate) fn key(&self) -> String {
        match self {
            Prompt::Text(t) => format!("t{t}"),
            Prompt::Chat(m) => format!("c{}", json!(m)),
        }
    }

    fn check(&self) -> Result<()> {
        if let Prompt::Chat(m) = self
            && m.is_empty()
        {
            return Err(Error::invalid("a chat prompt needs at least one message"));
        }
        Ok(())
    }
}

/// A thumbs-up or thumbs-down on one completion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Thumbs {
    /// Chosen by the app; a record repeating an id already in the journal is a retry and is
    /// ignored when building training data.
    pub id: String,
    pub prompt: Prompt,
    pub completion: String,
    pub up: bool,
    /// How strongly the user meant it (1 = ordinary); becomes the example's loss weight.
    pub strength: Option<f32>,
    pub timestamp_ms: u64,
}

/// An explicit preference: the user picked `chosen` over `rejected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreferencePair {
    pub id: String,
    pub prompt: Prompt,
    pub chosen: String,
    pub rejected: String,
    pub strength: Option<f32>,
    pub timestamp_ms: u64,
}

/// What a training run consumed: every event up to `up_to_sequence` except those listed in
/// `unconsumed` (left for a later run, e.g. thumbs without a partner under
/// [`UnpairedPolicy::Keep`](super::UnpairedPolicy::Keep)). The latest mark decides which
/// events are new.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingMark {
    pub up_to_sequence: u64,
    pub unconsumed: Vec<u64>,
    pub timestamp_ms: u64,
}

/// The user asked to forget the events `seqs`: from this record on they count for nothing
/// (no training row, no duplicate of a later event, not listed), and the next compaction
/// removes them, and this record, from the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Forget {
    pub seqs: Vec<u64>,
    pub timestamp_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    Thumbs(Thumbs),
    Pair(PreferencePair),
    TrainingMark(TrainingMark),
    /// Added after the first release: builds before it refuse a journal holding one (an
    /// unreadable record) rather than train on what the user asked to forget.
    Forget(Forget),
}

impl Record {
    /// The app-chosen id of an event; marks have none.
    pub fn id(&self) -> Option<&str> {
        match self {
            Record::Thumbs(t) => Some(&t.id),
            Record::Pair(p) => Some(&p.id),
            Record::TrainingMark(_) | Record::Forget(_) => None,
        }
    }

    /// The prompt an event answers; bookkeeping records have none.
    pub fn prompt(&self) -> Option<&Prompt> {
        match self {
            Record::Thumbs(t) => Some(&t.prompt),
            Record::Pair(p) => Some(&p.prompt),
            Record::TrainingMark(_) | Record::Forget(_) => None,
        }
    }

    /// Whether the record is feedback (thumbs or a pair), not bookkeeping.
    pub fn is_event(&self) -> bool {
        matches!(self, Record::Thumbs(_) | Record::Pair(_))
    }

    pub fn timestamp_ms(&self) -> u64 {
        match self {
            Record::Thumbs(t) => t.timestamp_ms,
            Record::Pair(p) => p.timestamp_ms,
            Record::TrainingMark(m) => m.timestamp_ms,
            Record::Forget(f) => f.timestamp_ms,
        }
    }

    /// Refuses what could never train: empty ids, empty chat prompts, strengths that are
    /// negative or not finite, marks whose unconsumed events lie beyond them.
    pub fn check(&self) -> Result<()> {
        let strength = |s: Option<f32>| match s {
            Some(x) if !(x.is_finite() && x >= 0.0) => {
                Err(Error::invalid(format!("strength {x} is not a finite number >= 0")))
            }
            _ => Ok(()),
        };
        let id = |id: &str| {
            if id.is_empty() {
                Err(Error::invalid("an event needs a non-empty id"))
            } else {
                Ok(())
            }
        };
        match self {
            Record::Thumbs(t) => {
                id(&t.id)?;
                t.prompt.check()?;
                strength(t.strength)
            }
            Record::Pair(p) => {
                id(&p.id)?;
                p.prompt.check()?;
                strength(p.strength)
            }
            Record::TrainingMark(m) => match m.unconsumed.iter().find(|&&s| s > m.up_to_sequence) {
                Some(s) => Err(Error::invalid(format!(
                    "training mark up to {} lists unconsumed event {s} after it",
                    m.up_to_sequence
                ))),
                None => Ok(()),
            },
            Record::Forget(f) if f.seqs.is_empty() => Err(Error::invalid("a forget record names no event")),
            Record::Forget(_) => Ok(()),
        }
    }

    /// One JSON object for listings: `kind`, then the fields, prompts in TRL form.
    pub fn to_json(&self) -> Value {
        match self {
            Record::Thumbs(t) => json!({
                "kind": "thumbs",
                "id": t.id,
                "prompt": t.prompt.to_trl(),
                "completion": t.completion,
                "label": t.up,
                "strength": t.strength,
                "timestamp_ms": t.timestamp_ms,
            }),
            Record::Pair(p) => json!({
                "kind": "pair",
                "id": p.id,
                "prompt": p.prompt.to_trl(),
                "chosen": p.chosen,
                "rejected": p.rejected,
                "strength": p.strength,
                "timestamp_ms": p.timestamp_ms,
            }),
            Record::TrainingMark(m) => json!({
                "kind": "training_mark",
                "up_to_sequence": m.up_to_sequence,
                "unconsumed": m.unconsumed,
                "timestamp_ms": m.timestamp_ms,
            }),
            Record::Forget(f) => json!({
                "kind": "forget",
                "seqs": f.seqs,
                "timestamp_ms": f.timestamp_ms,
            }),
        }
    }
}

/// A record as it sits in the journal.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Increases by one per append and survives compaction.
    pub seq: u64,
    /// Byte offset of the record's frame in the file.
    pub offset: u64,
    pub record: Record,
}
