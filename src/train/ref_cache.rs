//! The reference model's log-probs (the base, adapter off) of every completion a run
//! trains on, computed once and kept, also in checkpoints.

use crate::error::Result;
use crate::model::Model;
use crate::score::ScoreItem;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Reference log-probs by token ids, computed once with the adapter off.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefCache {
    // Ordered, so that a checkpoint's bytes depend only on its contents.
    map: BTreeMap<Vec<u32>, f64>,
}

impl RefCache {
    fn key(prompt: &[u32], completion: &[u32]) -> Vec<u32> {
        let mut k = Vec::with_capacity(prompt.len() + completion.len() + 1);
        k.extend_from_slice(prompt);
        k.push(u32::MAX);
        k.extend_from_slice(completion);
        k
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, prompt: &[u32], completion: &[u32]) -> Option<f64> {
        self.map.get(&Self::key(prompt, completion)).copied()
    }

    /// Computes (with the base model, no activations kept) whatever of `items` is missing.
    /// Completions of the same prompt share one pass over it.
    pub fn fill(&mut self, model: &Model, items: &[(&[u32], &[u32])]) -> Result<()> {
        let mut groups: Vec<(&[u32], Vec<&[u32]>)> = Vec::new();
        for &(p, c) in items {
            if self.get(p, c).is_some() {
                continue;
            }
            match groups.last_mut() {
                Some((gp, cs)) if *gp == p => {
                    if !cs.contains(&c) {
                        cs.push(c)
                    }
                }
                _ => groups.push((p, vec![c])),
            }
        }
        // A few prompts per pass: enough rows for the matrix kernels, little memory.
        for chunk in groups.chunks(2) {
            let score_items: Vec<ScoreItem> = chunk
                .iter()
                .map(|(p, cs)| ScoreItem {
                    prompt: p,
                    completions: cs.clone(),
                })
                .collect();
            let scored = model.score_packed(&score_items)?;
            for ((p, cs), s) in chunk.iter().zip(scored) {
                for (c, sc) in cs.iter().zip(s) {
                    self.map.insert(Self::key(p, c), sc.logp);
                }
            }
        }
        Ok(())
    }
}
