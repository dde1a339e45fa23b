//! The prompts and neutral text shipped with the project (`data/`), compiled in so that the
//! demo works from any folder.
//!
//! - train: everyday chat prompts whose answers the simulated user rates for training;
//! - held-out: different prompts of the same kinds, for the before/after comparison;
//! - list prompts (train and held-out): requests for tips, steps, ideas and checklists, the
//!   questions a small model answers with a list, asked of the user who dislikes lists
//!   (on the everyday prompts most answers have none, so a change would hardly show);
//! - neutral: short encyclopedia-like paragraphs, to check that an adapter barely changes
//!   the model's likelihood of ordinary text.

const TRAIN: &str = include_str!("../../data/prompts/train.txt");
const HELDOUT: &str = include_str!("../../data/prompts/heldout.txt");
const LISTS_TRAIN: &str = include_str!("../../data/prompts/lists-train.txt");
const LISTS_HELDOUT: &str = include_str!("../../data/prompts/lists-heldout.txt");
const NEUTRAL: &str = include_str!("../../data/neutral.txt");

use super::Taste;

/// One item a non-empty line, trimmed.
fn lines(s: &'static str) -> Vec<&'static str> {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
}

/// The training prompts (about 120).
pub fn train_prompts() -> Vec<&'static str> {
    lines(TRAIN)
}

/// The held-out prompts (about 40), disjoint from the training prompts.
pub fn heldout_prompts() -> Vec<&'static str> {
    lines(HELDOUT)
}

/// The list-inviting training prompts (about 80).
pub fn list_train_prompts() -> Vec<&'static str> {
    lines(LISTS_TRAIN)
}

/// The list-inviting held-out prompts (about 40), disjoint from every training prompt.
pub fn list_heldout_prompts() -> Vec<&'static str> {
    lines(LISTS_HELDOUT)
}

/// The (training, held-out) prompts a user of `taste` is asked: the list-inviting ones for
/// `no-lists`, the everyday ones otherwise.
pub fn for_taste(taste: Taste) -> (Vec<&'static str>, Vec<&'static str>) {
    match taste {
        Taste::NoLists => (list_train_prompts(), list_heldout_prompts()),
        Taste::Short | Taste::Question => (train_prompts(), heldout_prompts()),
    }
}

/// The neutral paragraphs (about 30), one per line of `data/neutral.txt`.
pub fn neutral_texts() -> Vec<&'static str> {
    lines(NEUTRAL)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::taste::measures::{normalize_word, words};
    use std::collections::HashSet;

    /// The content words of a prompt (words of four letters or more but the words of how a
    /// request is put), to catch near-duplicates that differ in small words only.
    fn content(p: &str) -> HashSet<String> {
        const FRAMING: &[&str] = &[
            "what",
            "what's",
            "how",
            "why",
            "when",
            "where",
            "which",
            "explain",
            "give",
            "some",
            "good",
            "best",
            "ways",
            "tips",
            "should",
            "does",
            "make",
            "with",
            "that",
            "this",
            "from",
            "about",
            "more",
            "things",
            "would",
            "could",
            "tell",
            "suggest",
            "recommend",
            "help",
            "plan",
            "there",
            "your",
            "steps",
            "ideas",
            "list",
        ];
        words(p)
            .map(normalize_word)
            .filter(|w| w.chars().count() >= 4 && !FRAMING.contains(&w.as_str()))
            .collect()
    }

    #[test]
    fn sets_are_sized_unique_and_disjoint() {
        let (train, held, neutral) = (train_prompts(), heldout_prompts(), neutral_texts());
        let (ltrain, lheld) = (list_train_prompts(), list_heldout_prompts());
        assert!((100..=140).contains(&train.len()), "{}", train.len());
        assert!((30..=50).contains(&held.len()), "{}", held.len());
        assert!((60..=100).contains(&ltrain.len()), "{}", ltrain.len());
        assert!((30..=50).contains(&lheld.len()), "{}", lheld.len());
        assert!((25..=40).contains(&neutral.len()), "{}", neutral.len());
        let all: Vec<&str> = [&train, &held, &ltrain, &lheld]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        let norm: HashSet<String> = all.iter().map(|p| p.to_lowercase()).collect();
        assert_eq!(norm.len(), all.len(), "a prompt occurs twice");
        let texts: HashSet<&str> = neutral.iter().copied().collect();
        assert_eq!(texts.len(), neutral.len(), "a neutral paragraph occurs twice");
        for p in &neutral {
            assert!(p.split_whitespace().count() >= 25, "not a paragraph: {p}");
        }
    }

    #[test]
    fn held_out_prompts_are_not_near_duplicates_of_train() {
        let train: Vec<&str> = train_prompts().into_iter().chain(list_train_prompts()).collect();
        for h in heldout_prompts().into_iter().chain(list_heldout_prompts()) {
            let hc = content(h);
            for &t in &train {
                let tc = content(t);
                let shared = hc.intersection(&tc).count();
                let union = hc.union(&tc).count().max(1);
                // Same topic words in both: a held-out prompt that tests nothing new.
                assert!(
                    (shared as f64) / (union as f64) < 0.5,
                    "held-out `{h}` is close to train `{t}`"
                );
            }
        }
    }
}
