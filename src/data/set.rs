//! A tokenized training set: preference pairs and unpaired thumbs, with TRL's truncation.

use super::jsonl::{Example, TokenizedPair, TokenizedUnpaired, read_jsonl, tokenize_row};
use crate::error::Result;
use crate::tokenizer::TextTokenizer;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreferenceSet {
    pub pairs: Vec<TokenizedPair>,
    pub unpaired: Vec<TokenizedUnpaired>,
    /// Rows left out, with why (e.g. a prompt longer than `max_length`).
    pub dropped: Vec<(usize, String)>,
}

impl PreferenceSet {
    /// Reads and tokenizes a JSONL file; rows are truncated to `max_length` tokens of
    /// prompt + completion (the completion is cut at its end); a row whose prompt alone
    /// does not leave room for one completion token is dropped and reported.
    pub fn from_jsonl(tok: &TextTokenizer, path: &Path, max_length: Option<usize>) -> Result<Self> {
        let mut set = PreferenceSet::default();
        for (row, v) in read_jsonl(path)? {
            set.push(tokenize_row(tok, &v, path, row)?, max_length);
        }
        Ok(set)
    }

    /// Adds one example, applying the truncation rule of [`Self::from_jsonl`].
    pub fn push(&mut self, e: Example, max_length: Option<usize>) {
        let limit = max_length.unwrap_or(usize::MAX);
        let fits = |prompt: usize, row: usize, dropped: &mut Vec<(usize, String)>| {
            if prompt >= limit {
                dropped.push((
                    row,
                    format!("prompt of {prompt} tokens leaves no room under max_length {limit}"),
                ));
                false
            } else {
                true
            }
        };
        match e {
            Example::Pair(mut p) => {
                if p.chosen.is_empty() || p.rejected.is_empty() {
                    self.dropped.push((p.row, "empty completion".into()));
                } else if fits(p.prompt.len(), p.row, &mut self.dropped) {
                    let room = limit - p.prompt.len();
                    p.chosen.truncate(room);
                    p.rejected.truncate(room);
                    self.pairs.push(p);
                }
            }
            Example::Unpaired(mut u) => {
                if u.completion.is_empty() {
                    self.dropped.push((u.row, "empty completion".into()));
                } else if fits(u.prompt.len(), u.row, &mut self.dropped) {
                    u.completion.truncate(limit - u.prompt.len());
                    self.unpaired.push(u);
                }
            }
        }
    }

    /// Pair tokens as TRL counts them: prompt + chosen plus prompt + rejected.
    pub fn pair_tokens(p: &TokenizedPair) -> usize {
        2 * p.prompt.len() + p.chosen.len() + p.rejected.len()
    }
}
