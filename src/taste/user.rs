//! The simulated user: a deterministic judge with one taste that also dislikes what any
//! person dislikes. It turns answers into the feedback an app would collect: a preference
//! between two answers (with a strength) or a thumb on one answer.
//!
//! Its utility is a taste term in `[0, 1]` minus the penalties of [`Defects`]; a broken
//! answer's penalty is at least 1, so it loses to any clean answer whatever their taste
//! terms. No randomness: the same answers always get the same judgement.

use super::answer::Answer;
use super::defects::{Defects, NLL_LIMIT};
use super::kinds::Taste;
use super::measures;

/// Utilities closer than this are a tie: the user has no preference, and the caller
/// records no pair (for `short`, about 15 words between answers of 100 words).
pub const TIE: f64 = 0.05;
/// The utility gap at which a preference's strength reaches 1 - 1/e.
pub const STRENGTH_SCALE: f64 = 0.5;

/// `short`: answers up to this many words are all short enough (a direct answer needs a
/// sentence or two; preferring ever fewer words would reward answers that say nothing).
pub const SHORT_ENOUGH: usize = 15;
/// `short`: at this many words (and beyond) the taste term is 0.
pub const TOO_LONG: usize = 300;

/// One of the two answers of a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    A,
    B,
}

/// A preference between two answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judgement {
    pub preferred: Which,
    /// How strongly, in (0, 1]: grows with the utility gap.
    pub strength: f64,
    /// The utility gap (preferred minus other), > [`TIE`].
    pub margin: f64,
}

/// A thumb on one answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thumb {
    pub up: bool,
    /// In (0, 1]: grows with how far the answer is past the taste's threshold.
    pub strength: f64,
}

/// The parts of an answer's utility.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Utility {
    /// How well the answer suits the taste, in `[0, 1]`.
    pub taste: f64,
    pub defects: Defects,
}

impl Utility {
    /// Taste term minus penalties.
    pub fn total(&self) -> f64 {
        self.taste - self.defects.total()
    }
}

/// A user with one taste (and the shared dislikes of [`Defects`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimulatedUser {
    pub taste: Taste,
    /// Mean NLL per token beyond which an answer reads as gibberish ([`NLL_LIMIT`]).
    pub nll_limit: f64,
}

impl SimulatedUser {
    pub fn new(taste: Taste) -> Self {
        SimulatedUser {
            taste,
            nll_limit: NLL_LIMIT,
        }
    }

    /// The taste term of an answer, in `[0, 1]`, before any penalty.
    pub fn taste_term(&self, a: &Answer) -> f64 {
        match self.taste {
            Taste::Short => short_term(measures::word_count(&a.text)),
            Taste::Question => question_term(&a.text),
            Taste::NoLists => 1.0 - measures::list_share(&a.text),
        }
    }

    /// The utility of an answer, in parts.
    pub fn utility(&self, a: &Answer) -> Utility {
        Utility {
            taste: self.taste_term(a),
            defects: Defects::of(a, self.nll_limit),
        }
    }

    /// The utility of an answer: higher is better. A clean answer lies in `[0, 1]`; a broken
    /// one below 0.
    pub fn score(&self, a: &Answer) -> f64 {
        self.utility(a).total()
    }

    /// Which of two answers to `prompt` the user prefers, and how strongly; `None` when
    /// their utilities are within [`TIE`] (the caller records no pair). The prompt is not
    /// read yet: the judgement is about the answers' form; it is taken so that a judge
    /// that reads it can replace this one without changing callers.
    pub fn judge_pair(&self, _prompt: &str, a: &Answer, b: &Answer) -> Option<Judgement> {
        let gap = self.score(a) - self.score(b);
        if gap.abs() < TIE || gap.is_nan() {
            return None;
        }
        Some(Judgement {
            preferred: if gap > 0.0 { Which::A } else { Which::B },
            strength: strength(gap.abs()),
            margin: gap.abs(),
        })
    }

    /// A thumb on one answer for unpaired (KTO) feedback: up when the utility reaches the
    /// taste's "like" threshold, down when it falls to its "dislike" threshold, none in
    /// between (an answer the user is undecided about). A broken answer always gets a
    /// thumb down.
    pub fn rate(&self, a: &Answer) -> Option<Thumb> {
        let u = self.score(a);
        let (like, dislike) = self.thresholds();
        // A thumb at the threshold itself is a mild one; it firms up with the distance.
        let firm = |d: f64| 1.0 - 0.7 * (-d / STRENGTH_SCALE).exp();
        if u >= like {
            Some(Thumb {
                up: true,
                strength: firm(u - like),
            })
        } else if u <= dislike {
            Some(Thumb {
                up: false,
                strength: firm(dislike - u),
            })
        } else {
            None
        }
    }

    /// The (like, dislike) utility thresholds of [`Self::rate`]:
    /// - `short`: like up to about 50 words, dislike from about 115;
    /// - `question`: like an answer closing with a follow-up question, dislike (mildly)
    ///   one without any; an answer that is only a question is undecided;
    /// - `no-lists`: like at most 10% list/markdown lines, dislike from 50%.
    pub fn thresholds(&self) -> (f64, f64) {
        match self.taste {
            Taste::Short => (0.55, 0.3),
            Taste::Question => (0.75, 0.0),
            Taste::NoLists => (0.9, 0.5),
        }
    }
}

/// A preference's strength for a utility gap: 1 - exp(-gap / scale), in (0, 1).
pub fn strength(gap: f64) -> f64 {
    (1.0 - (-gap / STRENGTH_SCALE).exp()).clamp(f64::MIN_POSITIVE, 1.0)
}

/// `short`: 1 up to [`SHORT_ENOUGH`] words, then falling with the log of the extra words
/// (20 extra words matter more at 30 than at 200), 0 from [`TOO_LONG`] words on.
fn short_term(words: usize) -> f64 {
    let extra = words.saturating_sub(SHORT_ENOUGH) as f64;
    let span = (TOO_LONG - SHORT_ENOUGH) as f64;
    (1.0 - (1.0 + extra / 10.0).ln() / (1.0 + span / 10.0).ln()).clamp(0.0, 1.0)
}

/// `question`: 1 for an answer that says something and then asks a follow-up question,
/// 0.5 for an answer made only of questions (it asks but does not answer), 0 without a
/// closing question.
fn question_term(text: &str) -> f64 {
    if !measures::ends_with_question(text) {
        return 0.0;
    }
    let states = measures::sentences(text).any(|s| !s.trim_end_matches(['*', '_', ' ']).ends_with('?'));
    if states { 1.0 } else { 0.5 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_term_shape() {
        assert_eq!(short_term(0), 1.0);
        assert_eq!(short_term(SHORT_ENOUGH), 1.0);
        assert_eq!(short_term(TOO_LONG), 0.0);
        assert_eq!(short_term(TOO_LONG * 2), 0.0);
        let mut last = 1.0;
        for w in SHORT_ENOUGH + 1..TOO_LONG {
            let t = short_term(w);
            assert!(t < last, "{w}");
            last = t;
        }
    }

    #[test]
    fn question_term_kinds() {
        assert_eq!(question_term("Use salt. Anything else?"), 1.0);
        assert_eq!(question_term("**Tip**: use salt.\n\n**Want more?**"), 1.0);
        assert_eq!(question_term("What kind of car? Which tire?"), 0.5);
        assert_eq!(question_term("Use salt."), 0.0);
    }

    #[test]
    fn strength_is_in_range_and_grows() {
        assert!(strength(TIE) > 0.0);
        assert!(strength(0.1) < strength(0.5) && strength(0.5) < strength(2.0));
        assert!(strength(100.0) <= 1.0);
    }
}
