//! From journal events to training data.
//!
//! The rules, applied over the whole journal in sequence order:
//!
//! 1. An event repeating the id of an earlier event is a retry: dropped.
//! 2. A thumb on the same prompt and completion as an earlier one: with the same label it
//!    is a duplicate and dropped; with the other label the user changed their mind and it
//!    replaces the earlier one. A pair with the same prompt, chosen and rejected as an
//!    earlier pair is a duplicate.
//! 3. With `only_new`, only events new since the last training mark go on.
//! 4. For DPO, thumbs are grouped by identical prompt; within a group the newest thumb up
//!    is paired with the newest thumb down, the second newest with the second newest, and
//!    so on, so each event is in at most one pair. A pair's weight is the mean of the two
//!    strengths given (one if only one is). Explicit pairs are used as they are, their
//!    strength as weight.
//! 5. Thumbs left without a partner become KTO rows (label = thumb up, weight = strength)
//!    or, with [`UnpairedPolicy::Keep`], are left for a later run: the training mark made
//!    from the plan lists them as unconsumed.
//!
//! For KTO every event is an unpaired row: thumbs as they are, and an explicit pair as a
//! desirable and an undesirable row (TRL's unpairing of a preference dataset).
//!
//! Rows are TRL's JSONL rows (conversational for chat prompts, the completion being one
//! assistant message), so [`Journal::training_set`] and `PreferenceSet::from_jsonl` on an
//! export tokenize them the same way.

use super::dedup::{Dropped, effective};
use super::record::{PreferencePair, Prompt, Thumbs, TrainingMark};
use super::store::Journal;
use crate::data::{PreferenceSet, Truncation, tokenize_row};
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;

/// The loss family the rows are for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Target {
    /// Preference pairs (DPO and its variants), leftovers per [`UnpairedPolicy`].
    #[default]
    Dpo,
    /// Unpaired rows only.
    Kto,
}

/// What happens to thumbs without a partner when building pairs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnpairedPolicy {
    /// They become KTO rows beside the pairs.
    #[default]
    Kto,
    /// They wait for a partner in a later run.
    Keep,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrainingOptions {
    /// Only events new since the last training mark.
    pub only_new: bool,
    pub target: Target,
    pub unpaired: UnpairedPolicy,
    /// How rows are cut to length, as in `PreferenceSet::from_jsonl`.
    pub truncation: Truncation,
}

/// A preference pair to train on.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedPair {
    /// The events it comes from: `[pair]`, or `[thumb up, thumb down]`.
    pub sources: Vec<u64>,
    pub prompt: Prompt,
    pub chosen: String,
    pub rejected: String,
    pub weight: Option<f32>,
}

/// An unpaired (KTO) row to train on.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedThumb {
    /// The thumb, or the pair it was split from.
    pub source: u64,
    pub prompt: Prompt,
    pub completion: String,
    pub up: bool,
    pub weight: Option<f32>,
}

/// What a training run will consume, before tokenization.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub pairs: Vec<PlannedPair>,
    pub unpaired: Vec<PlannedThumb>,
    /// Thumbs left for a later run ([`UnpairedPolicy::Keep`]).
    pub kept: Vec<u64>,
    /// Events in scope that give no row, and why.
    pub dropped: Vec<(u64, Dropped)>,
    /// The newest record when the plan was made.
    pub up_to_sequence: Option<u64>,
}

impl Plan {
    /// The mark to append once a run has trained on this plan.
    pub fn mark(&self, timestamp_ms: u64) -> Option<TrainingMark> {
        self.up_to_sequence.map(|up_to_sequence| TrainingMark {
            up_to_sequence,
            unconsumed: self.kept.clone(),
            timestamp_ms,
        })
    }

    /// TRL JSONL rows with their source sequence numbers: pairs, then unpaired rows.
    pub fn rows(&self) -> Vec<(u64, Value)> {
        let pairs = self.pairs.iter().map(|p| (p.sources[0], p.trl_row()));
        pairs
            .chain(self.unpaired.iter().map(|u| (u.source, u.trl_row())))
            .collect()
    }
}

fn with_weight(mut row: Value, weight: Option<f32>) -> Value {
    if let Some(w) = weight {
        row["weight"] = json!(w);
    }
    row
}

impl PlannedPair {
    pub fn trl_row(&self) -> Value {
        let row = json!({
            "prompt": self.prompt.to_trl(),
            "chosen": self.prompt.completion_to_trl(&self.chosen),
            "rejected": self.prompt.completion_to_trl(&self.rejected),
        });
        with_weight(row, self.weight)
    }
}

impl PlannedThumb {
    pub fn trl_row(&self) -> Value {
        let row = json!({
            "prompt": self.prompt.to_trl(),
            "completion": self.prompt.completion_to_trl(&self.completion),
            "label": self.up,
        });
        with_weight(row, self.weight)
    }
}

/// The rows of a training set and the plan they came from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainingSet {
    pub data: PreferenceSet,
    pub plan: Plan,
}

fn mean_strength(a: Option<f32>, b: Option<f32>) -> Option<f32> {
    match (a, b) {
        (Some(a), Some(b)) => Some((a + b) / 2.0),
        (x, None) | (None, x) => x,
    }
}

impl Journal {
    /// Applies the rules of this module's documentation.
    pub fn plan(&self, opts: &TrainingOptions) -> Plan {
        let is_new = self.new_filter();
        let in_scope = |seq: u64| !opts.only_new || is_new(seq);
        let eff = effective(self.entries());
        let mut plan = Plan {
            up_to_sequence: self.entries().last().map(|e| e.seq),
            dropped: eff.dropped.into_iter().filter(|(seq, _)| in_scope(*seq)).collect(),
            ..Plan::default()
        };
        let thumbs: Vec<(u64, &Thumbs)> = eff.thumbs.into_iter().filter(|(s, _)| in_scope(*s)).collect();
        let pairs: Vec<(u64, &PreferencePair)> = eff.pairs.into_iter().filter(|(s, _)| in_scope(*s)).collect();
        let unpaired = |(seq, t): (u64, &Thumbs)| PlannedThumb {
            source: seq,
            prompt: t.prompt.clone(),
            completion: t.completion.clone(),
            up: t.up,
            weight: t.strength,
        };

        if opts.target == Target::Kto {
            let mut rows: Vec<PlannedThumb> = thumbs.into_iter().map(unpaired).collect();
            for (seq, p) in pairs {
                for (completion, up) in [(&p.chosen, true), (&p.rejected, false)] {
                    rows.push(PlannedThumb {
                        source: seq,
                        prompt: p.prompt.clone(),
                        completion: completion.clone(),
                        up,
                        weight: p.strength,
                    });
                }
            }
            rows.sort_by_key(|r| r.source);
            plan.unpaired = rows;
            return plan;
        }

        // Rule 4: (thumbs up, thumbs down) per prompt, groups in order of first appearance,
        // newest first within a group.
        type Side<'a> = Vec<(u64, &'a Thumbs)>;
        let mut groups: Vec<(Side, Side)> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        for (seq, t) in thumbs {
            let g = *group_of.entry(t.prompt.key()).or_insert_with(|| {
                groups.push((Vec::new(), Vec::new()));
                groups.len() - 1
            });
            let side = if t.up { &mut groups[g].0 } else { &mut groups[g].1 };
            side.push((seq, t));
        }
        let mut leftovers = Vec::new();
        for (mut ups, mut downs) in groups {
            ups.reverse();
            downs.reverse();
            let n = ups.len().min(downs.len());
            for (&(us, u), &(ds, d)) in ups.iter().zip(&downs) {
                plan.pairs.push(PlannedPair {
                    sources: vec![us, ds],
                    prompt: u.prompt.clone(),
                    chosen: u.completion.clone(),
                    rejected: d.completion.clone(),
                    weight: mean_strength(u.strength, d.strength),
                });
            }
            leftovers.extend(ups.drain(n..).chain(downs.drain(n..)));
        }
        plan.pairs.extend(pairs.into_iter().map(|(seq, p)| PlannedPair {
            sources: vec![seq],
            prompt: p.prompt.clone(),
            chosen: p.chosen.clone(),
            rejected: p.rejected.clone(),
            weight: p.strength,
        }));
        plan.pairs.sort_by_key(|p| p.sources.iter().copied().max());
        leftovers.sort_by_key(|(seq, _)| *seq);
        match opts.unpaired {
            UnpairedPolicy::Kto => plan.unpaired = leftovers.into_iter().map(unpaired).collect(),
            UnpairedPolicy::Keep => plan.kept = leftovers.into_iter().map(|(seq, _)| seq).collect(),
        }
        plan
    }

    /// Tokenized training data. A row's number (in `data.skipped` and `data.truncated`) is the
    /// sequence number of its first source event.
    pub fn training_set(&self, tok: &TextTokenizer, opts: &TrainingOptions) -> Result<TrainingSet> {
        let plan = self.plan(opts);
        opts.truncation.validate()?;
        let mut data = PreferenceSet {
            source: self.path().to_path_buf(),
            ..Default::default()
        };
        for (seq, row) in plan.rows() {
            let row_no = usize::try_from(seq).map_err(|_| Error::invalid(format!("sequence {seq} too large")))?;
            data.push_result(
                tokenize_row(tok, &row, self.path(), row_no),
                self.path(),
                row_no,
                &opts.truncation,
            );
        }
        Ok(TrainingSet { data, plan })
    }

    /// Writes the plan's rows as TRL JSONL (for `nudge train --data`), atomically
    /// ([`crate::fsutil`]); returns the plan.
    pub fn export_jsonl(&self, out: &Path, opts: &TrainingOptions) -> Result<Plan> {
        let plan = self.plan(opts);
        crate::fsutil::write_atomic_with(out, |w| {
            for (_, row) in plan.rows() {
                writeln!(w, "{row}")?;
            }
            Ok(())
        })?;
        Ok(plan)
    }
}
