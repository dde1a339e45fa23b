//! Training and scoring data: TRL's JSONL formats, tokenized the way TRL tokenizes them.

pub mod chat;
pub mod jsonl;
pub mod set;

pub use jsonl::{Example, ROW_FORMATS, TokenizedPair, TokenizedUnpaired, parse_jsonl, read_jsonl, tokenize_row};
pub use set::{PreferenceSet, RowNote, Truncation, TruncationMode};
