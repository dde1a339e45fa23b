//! A tokenized training set: preference pairs and unpaired thumbs, cut to length the way
//! TRL cuts them, with a report of every row that was cut or left out.
//!
//! Nothing is dropped in silence: a row that cannot be trained on (bad JSON, an unknown
//! format, an empty completion, a prompt that leaves no room) goes to
//! [`PreferenceSet::skipped`] with its file, row and reason, and a row cut to fit goes to
//! [`PreferenceSet::truncated`]. Only I/O errors are fatal to reading a file.

use super::jsonl::{Example, TokenizedPair, TokenizedUnpaired, parse_jsonl, tokenize_row};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Which end of an over-long sequence survives (TRL's `truncation_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TruncationMode {
    /// Keep the end: the prompt loses its first tokens (TRL's default).
    #[default]
    KeepEnd,
    /// Keep the start: the completions lose their last tokens.
    KeepStart,
}

impl TruncationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TruncationMode::KeepEnd => "keep_end",
            TruncationMode::KeepStart => "keep_start",
        }
    }
}

/// Length limits of TRL's `DPOConfig` / `KTOConfig` (`None`: no limit).
///
/// One difference from TRL follows from computing a pair's prompt once for both answers:
/// under `KeepEnd` the prompt is cut by what the longer answer needs, so both answers see
/// the same prompt. At least one prompt token always stays (the first answer token is
/// predicted from it); if that is not enough, the answers lose their ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truncation {
    /// Prompt + completion tokens of one sequence (TRL's `max_length`).
    pub max_length: Option<usize>,
    /// Prompt tokens (TRL's `max_prompt_length`).
    pub max_prompt_length: Option<usize>,
    /// Tokens of each completion (TRL's `max_completion_length`), cut at their end.
    pub max_completion_length: Option<usize>,
    pub mode: TruncationMode,
}

impl Truncation {
    /// Only a total length, cutting the prompt's start (TRL's default mode).
    pub fn max_length(max_length: usize) -> Self {
        Truncation {
            max_length: Some(max_length),
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v, min) in [
            ("max_length", self.max_length, 2),
            ("max_prompt_length", self.max_prompt_length, 1),
            ("max_completion_length", self.max_completion_length, 1),
        ] {
            if let Some(v) = v
                && v < min
            {
                return Err(Error::invalid(format!("{name} {v} must be at least {min}")));
            }
        }
        Ok(())
    }

    /// Cuts `prompt` and `completions` to the limits; returns what was cut (empty: nothing),
    /// or why the row cannot be kept.
    fn apply(&self, prompt: &mut Vec<u32>, completions: &mut [&mut Vec<u32>]) -> std::result::Result<String, String> {
        let (p0, c0): (usize, Vec<usize>) = (prompt.len(), completions.iter().map(|c| c.len()).collect());
        if let Some(m) = self.max_prompt_length
            && prompt.len() > m
        {
            match self.mode {
                TruncationMode::KeepEnd => drop(prompt.drain(..prompt.len() - m)),
                TruncationMode::KeepStart => prompt.truncate(m),
            }
        }
        if let Some(m) = self.max_completion_length {
            for c in completions.iter_mut() {
                c.truncate(m);
            }
        }
        if let Some(limit) = self.max_length {
            let longest = completions.iter().map(|c| c.len()).max().unwrap_or(0);
            let over = (prompt.len() + longest).saturating_sub(limit);
            if over > 0 && self.mode == TruncationMode::KeepEnd {
                let cut = over.min(prompt.len().saturating_sub(1));
                prompt.drain(..cut);
            }
            if prompt.len() >= limit {
                return Err(format!(
                    "prompt of {} tokens leaves no room for an answer under max_length {limit} ({})",
                    prompt.len(),
                    self.mode.as_str()
                ));
            }
            let room = limit - prompt.len();
            for c in completions.iter_mut() {
                c.truncate(room);
            }
        }
        let mut cuts = Vec::new();
        if prompt.len() != p0 {
            cuts.push(format!("prompt {p0} -> {} tokens", prompt.len()));
        }
        for (i, (c, before)) in completions.iter().zip(c0).enumerate() {
            if c.len() != before {
                let name = match (completions.len(), i) {
                    (1, _) => "completion",
                    (_, 0) => "chosen",
                    _ => "rejected",
                };
                cuts.push(format!("{name} {before} -> {} tokens", c.len()));
            }
        }
        Ok(cuts.join(", "))
    }
}

/// A row that was cut or left out, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowNote {
    /// The file (or other source, e.g. a journal) the row came from.
    pub file: PathBuf,
    /// 1-based line number in a file (or the source's own row number).
    pub row: usize,
    pub reason: String,
}

impl std::fmt::Display for RowNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: row {}: {}", self.file.display(), self.row, self.reason)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreferenceSet {
    pub pairs: Vec<TokenizedPair>,
    pub unpaired: Vec<TokenizedUnpaired>,
    /// Rows not trained on, with why.
    pub skipped: Vec<RowNote>,
    /// Rows cut to fit the length limits, with what was cut.
    pub truncated: Vec<RowNote>,
    /// Where the rows came from (a file, or e.g. a journal), for the reports.
    pub source: PathBuf,
}

impl PreferenceSet {
    /// Reads and tokenizes a JSONL file, cutting rows to `limits`. A row that cannot be
    /// used is reported in [`Self::skipped`], never fatal; only reading the file can fail.
    pub fn from_jsonl(tok: &TextTokenizer, path: &Path, limits: &Truncation) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_jsonl_text(tok, &text, path, limits)
    }

    /// [`Self::from_jsonl`] of text already in memory; `path` names it in reports.
    pub fn from_jsonl_text(tok: &TextTokenizer, text: &str, path: &Path, limits: &Truncation) -> Result<Self> {
        limits.validate()?;
        let mut set = PreferenceSet {
            source: path.to_path_buf(),
            ..Default::default()
        };
        for (row, v) in parse_jsonl(text) {
            let example = v
                .map_err(|what| Error::row(path, row, what))
                .and_then(|v| tokenize_row(tok, &v, path, row));
            set.push_result(example, path, row, limits);
        }
        Ok(set)
    }

    /// Adds a tokenized row, or reports why it could not be tokenized.
    pub fn push_result(&mut self, example: Result<Example>, file: &Path, row: usize, limits: &Truncation) {
        match example {
            Ok(e) => self.push(e, file, limits),
            Err(e) => {
                let reason = match e {
                    Error::Row { what, .. } => what,
                    other => other.to_string(),
                };
                self.skip(file, row, reason);
            }
        }
    }

    /// Adds one example, cut to `limits`; `file` names its source in reports.
    pub fn push(&mut self, e: Example, file: &Path, limits: &Truncation) {
        match e {
            Example::Pair(mut p) => {
                if p.prompt.is_empty() {
                    return self.skip(file, p.row, "empty prompt");
                }
                if p.chosen.is_empty() || p.rejected.is_empty() {
                    return self.skip(file, p.row, "empty completion");
                }
                match limits.apply(&mut p.prompt, &mut [&mut p.chosen, &mut p.rejected]) {
                    Err(why) => self.skip(file, p.row, why),
                    Ok(cut) => {
                        self.note_cut(file, p.row, cut, limits);
                        self.pairs.push(p);
                    }
                }
            }
            Example::Unpaired(mut u) => {
                if u.prompt.is_empty() {
                    return self.skip(file, u.row, "empty prompt");
                }
                if u.completion.is_empty() {
                    return self.skip(file, u.row, "empty completion");
                }
                match limits.apply(&mut u.prompt, &mut [&mut u.completion]) {
                    Err(why) => self.skip(file, u.row, why),
                    Ok(cut) => {
                        self.note_cut(file, u.row, cut, limits);
                        self.unpaired.push(u);
                    }
                }
            }
        }
    }

    fn skip(&mut self, file: &Path, row: usize, reason: impl Into<String>) {
        self.skipped.push(RowNote {
            file: file.to_path_buf(),
            row,
            reason: reason.into(),
        });
    }

    fn note_cut(&mut self, file: &Path, row: usize, cut: String, limits: &Truncation) {
        if !cut.is_empty() {
            self.truncated.push(RowNote {
                file: file.to_path_buf(),
                row,
                reason: format!("truncated ({}): {cut}", limits.mode.as_str()),
            });
        }
    }

    /// Fits the set to a loss: a pair loss cannot use unpaired thumbs, which are moved to
    /// [`Self::skipped`] with the flag that trains them; KTO trains on single answers, so
    /// each pair becomes two thumbs (chosen up, rejected down), as TRL unpairs a
    /// preference dataset. Idempotent.
    pub fn fit_to_loss(&mut self, kto: bool) {
        if kto {
            for p in self.pairs.drain(..) {
                for (completion, label) in [(p.chosen, true), (p.rejected, false)] {
                    self.unpaired.push(TokenizedUnpaired {
                        row: p.row,
                        prompt: p.prompt.clone(),
                        completion,
                        label,
                        weight: p.weight,
                    });
                }
            }
        } else {
            let rows: Vec<usize> = self.unpaired.drain(..).map(|u| u.row).collect();
            let source = self.source.clone();
            for row in rows {
                self.skip(
                    &source,
                    row,
                    "an unpaired thumb (prompt, completion, label): a pair loss needs chosen and rejected; \
                     train thumbs with --loss kto",
                );
            }
        }
    }

    /// Leaves out examples longer than `max` tokens (e.g. the model's context), which no
    /// forward pass could hold, reporting each.
    pub fn drop_longer_than(&mut self, max: usize) {
        let mut notes = Vec::new();
        self.pairs.retain(|p| {
            let len = p.prompt.len() + p.chosen.len().max(p.rejected.len());
            let keep = len <= max;
            if !keep {
                notes.push((p.row, len));
            }
            keep
        });
        self.unpaired.retain(|u| {
            let len = u.prompt.len() + u.completion.len();
            let keep = len <= max;
            if !keep {
                notes.push((u.row, len));
            }
            keep
        });
        let source = self.source.clone();
        for (row, len) in notes {
            self.skip(
                &source,
                row,
                format!("{len} tokens do not fit the model's context of {max}; set a max_length to cut it"),
            );
        }
    }

    /// Every row reported (skipped first, then truncated), in row order within each.
    pub fn report(&self) -> impl Iterator<Item = &RowNote> {
        self.skipped.iter().chain(&self.truncated)
    }

    /// Pair tokens as TRL counts them: prompt + chosen plus prompt + rejected.
    pub fn pair_tokens(p: &TokenizedPair) -> usize {
        2 * p.prompt.len() + p.chosen.len() + p.rejected.len()
    }
}
