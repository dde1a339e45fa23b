//! Rules 1 and 2 of [`super::training`]: retries (a repeated id), duplicates (the same
//! content and label again) and changed minds (the other label later). Shared by the
//! training data and by compaction, which drops what these rules drop.

use super::record::{Entry, PreferencePair, Record, Thumbs};
use serde::Serialize;
use std::collections::HashMap;

/// Why an event gives no row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Dropped {
    /// Same id as the earlier event `of`.
    DuplicateId { of: u64 },
    /// Same content and label as the earlier event `of`.
    Duplicate { of: u64 },
    /// The same prompt and completion got the other label later, in event `by`.
    Superseded { by: u64 },
}

/// The events that count after rules 1 and 2.
#[derive(Default)]
pub(crate) struct Effective<'a> {
    pub thumbs: Vec<(u64, &'a Thumbs)>,
    pub pairs: Vec<(u64, &'a PreferencePair)>,
    pub dropped: Vec<(u64, Dropped)>,
}

/// The events that `Forget` records in `entries` name.
pub(crate) fn forgotten(entries: &[Entry]) -> std::collections::HashSet<u64> {
    entries
        .iter()
        .filter_map(|e| match &e.record {
            Record::Forget(f) => Some(f.seqs.iter().copied()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// Rules 1 and 2 over a journal's entries: the events that count, in sequence order, and
/// why each of the others does not. Forgotten events take no part, as if never recorded.
pub(crate) fn effective(entries: &[Entry]) -> Effective<'_> {
    let mut eff = Effective::default();
    let forgotten = forgotten(entries);
    let mut ids: HashMap<&str, u64> = HashMap::new();
    // `thumbs` holds None where a thumb was superseded.
    let mut thumbs: Vec<Option<(u64, &Thumbs)>> = Vec::new();
    let mut by_content: HashMap<(String, &str), usize> = HashMap::new();
    let mut pair_content: HashMap<(String, &str, &str), u64> = HashMap::new();
    for e in entries.iter().filter(|e| !forgotten.contains(&e.seq)) {
        if let Some(id) = e.record.id() {
            if let Some(&of) = ids.get(id) {
                eff.dropped.push((e.seq, Dropped::DuplicateId { of }));
                continue;
            }
            ids.insert(id, e.seq);
        }
        match &e.record {
            Record::Thumbs(t) => {
                let key = (t.prompt.key(), t.completion.as_str());
                if let Some(&i) = by_content.get(&key)
                    && let Some((of, earlier)) = thumbs[i]
                {
                    if earlier.up == t.up {
                        eff.dropped.push((e.seq, Dropped::Duplicate { of }));
                        continue;
                    }
                    eff.dropped.push((of, Dropped::Superseded { by: e.seq }));
                    thumbs[i] = None;
                }
                by_content.insert(key, thumbs.len());
                thumbs.push(Some((e.seq, t)));
            }
            Record::Pair(p) => {
                let key = (p.prompt.key(), p.chosen.as_str(), p.rejected.as_str());
                if let Some(&of) = pair_content.get(&key) {
                    eff.dropped.push((e.seq, Dropped::Duplicate { of }));
                    continue;
                }
                pair_content.insert(key, e.seq);
                eff.pairs.push((e.seq, p));
            }
            Record::TrainingMark(_) | Record::Forget(_) => {}
        }
    }
    eff.thumbs = thumbs.into_iter().flatten().collect();
    eff
}
