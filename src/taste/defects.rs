//! What any reader dislikes whatever their taste: an empty answer, an answer cut off at the
//! token limit, loops and repetition, gibberish. Each is a penalty in the simulated user's
//! utility, sized to outweigh the whole taste range (a taste term lies in `[0, 1]`), so that
//! a short but broken answer always loses to a clean long one; the worse the defect, the
//! larger the penalty, so that of two broken answers the less broken one wins.
//!
//! Clean answers get exactly 0 (every signal has a dead zone below which ordinary text
//! lies), so two clean answers are compared on taste alone.

use super::answer::Answer;
use super::measures;

/// A penalty at least this large marks an answer as broken: more than the whole taste range.
pub const BROKEN: f64 = 1.0;
/// No words at all: worse than any other defect.
pub const EMPTY_PENALTY: f64 = 4.0;
/// Cut at the token limit: the reader gets half a sentence.
pub const TRUNCATED_PENALTY: f64 = 1.5;

/// Repeated word 4-grams: ordinary answers repeat a few phrases ("make sure to"), below
/// this share. Beyond it the answer loops.
pub const NGRAM_REPEAT_LIMIT: f64 = 0.1;
/// Share of lines or sentences repeating an earlier one (not the one just before) that
/// ordinary answers may reach: a stock sentence said again ("Hold for 30 seconds.").
/// Beyond it the answer loops; below it a repeat is a flaw, not a breakage.
pub const UNIT_REPEAT_LIMIT: f64 = 0.15;
/// The penalty of a repeated line or sentence below [`UNIT_REPEAT_LIMIT`]: disliked, but
/// less than the taste range.
pub const REPEAT_FLAW: f64 = 0.25;
/// The longest tolerated run of one word ("very very very" is still prose).
pub const WORD_RUN_LIMIT: usize = 3;
/// Distinct-word ratio below which a long answer is a loop (ordinary prose of up to a few
/// hundred words stays above about 0.4), checked from this many words on.
pub const DISTINCT_RATIO_LIMIT: f64 = 0.3;
pub const DISTINCT_MIN_WORDS: usize = 50;
/// Share of odd characters (not letters, digits, usual punctuation) beyond which text is
/// garbage; emoji keep ordinary chat well below it.
pub const ODD_CHAR_LIMIT: f64 = 0.2;
/// Default mean NLL per token (nats, under the base model given the prompt) beyond which an
/// answer starts to read as gibberish; half a nat more and it is broken. SmolLM2-135M-
/// Instruct's own samples at temperature 0.8 lie near 1.2 (52 answers: 0.7 to 2.1, one
/// garbled 12-word answer 2.9), a fluent hand-written answer near 2.55, the same words
/// shuffled near 6.4.
pub const NLL_LIMIT: f64 = 2.6;
/// Penalty per nat of mean NLL beyond the limit.
pub const NLL_SLOPE: f64 = 2.0;

/// The penalties of one answer (each ≥ 0; 0 when the answer has no such defect).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Defects {
    pub empty: f64,
    pub truncated: f64,
    /// The worst of the repetition signals (they measure one thing: a loop shows in several).
    pub repetition: f64,
    /// The worse of perplexity and odd characters.
    pub gibberish: f64,
}

impl Defects {
    /// Measures the defects of `a`; `nll_limit` is the mean NLL per token beyond which the
    /// answer counts as gibberish (used only when the answer carries its NLL).
    pub fn of(a: &Answer, nll_limit: f64) -> Defects {
        let words = measures::word_count(&a.text);
        if words == 0 {
            // Nothing to read: the other signals mean nothing.
            return Defects {
                empty: EMPTY_PENALTY,
                ..Defects::default()
            };
        }
        Defects {
            empty: 0.0,
            truncated: if a.truncated { TRUNCATED_PENALTY } else { 0.0 },
            repetition: repetition(&a.text, words),
            gibberish: gibberish(&a.text, a.nll, nll_limit),
        }
    }

    /// The sum of the penalties.
    pub fn total(&self) -> f64 {
        self.empty + self.truncated + self.repetition + self.gibberish
    }

    /// No defect at all.
    pub fn is_clean(&self) -> bool {
        self.total() == 0.0
    }

    /// The names of the defects present, for reports ("truncated, repetition").
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("empty", self.empty),
            ("truncated", self.truncated),
            ("repetition", self.repetition),
            ("gibberish", self.gibberish),
        ]
        .into_iter()
        .filter(|&(_, p)| p > 0.0)
        .map(|(n, _)| n)
        .collect()
    }
}

/// A defect's penalty once its signal passes the limit: `BROKEN` plus `slope` per unit
/// beyond it, so that any loop outweighs the taste and a longer loop weighs more.
fn beyond(value: f64, limit: f64, slope: f64) -> f64 {
    if value > limit {
        BROKEN + slope * (value - limit)
    } else {
        0.0
    }
}

/// Loops and repetition: repeated 4-grams, lines or sentences repeated back to back or
/// often, a run of one word, too few distinct words in a long answer. The largest of their
/// penalties.
fn repetition(text: &str, words: usize) -> f64 {
    let mut p = beyond(measures::repeated_ngram_share(text, 4), NGRAM_REPEAT_LIMIT, 4.0);
    // A line or sentence said again right after itself: nobody does that on purpose.
    let again = measures::back_to_back_repeats(text);
    if again > 0 {
        p = p.max(BROKEN + 0.25 * (again - 1) as f64);
    }
    let units = measures::repeated_line_share(text).max(measures::repeated_sentence_share(text));
    p = p.max(beyond(units, UNIT_REPEAT_LIMIT, 3.0));
    if units > 0.0 {
        p = p.max(REPEAT_FLAW);
    }
    p = p.max(beyond(
        measures::longest_word_run(text) as f64,
        WORD_RUN_LIMIT as f64,
        0.25,
    ));
    if words >= DISTINCT_MIN_WORDS {
        // Below the limit, not above it: the signal is the missing distinct share.
        let ratio = measures::distinct_word_ratio(text);
        p = p.max(beyond(DISTINCT_RATIO_LIMIT - ratio, 0.0, 5.0));
    }
    p
}

/// Gibberish: the base model's perplexity of the answer when known (a ramp, not a step:
/// the NLL of fluent text varies, and only far beyond the limit is the answer surely
/// nonsense), and garbage characters.
fn gibberish(text: &str, nll: Option<f64>, nll_limit: f64) -> f64 {
    let by_nll = match nll {
        Some(n) if n > nll_limit => NLL_SLOPE * (n - nll_limit),
        Some(n) if n.is_nan() => BROKEN, // a NaN score is no evidence of fluency
        _ => 0.0,
    };
    by_nll.max(beyond(measures::odd_char_share(text), ODD_CHAR_LIMIT, 5.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(text: &str) -> Answer {
        Answer::new(text, measures::word_count(text) * 4 / 3, false)
    }

    #[test]
    fn clean_answers_have_no_defect() {
        let a = clean(
            "Boil the egg for about six minutes, then cool it in cold water for a minute. \
             The white sets while the yolk stays runny. Very, very fresh eggs are harder to peel.",
        );
        assert_eq!(Defects::of(&a, NLL_LIMIT), Defects::default());
        assert!(Defects::of(&a.clone().with_nll(1.2), NLL_LIMIT).is_clean());
    }

    #[test]
    fn each_defect_is_broken() {
        let d = Defects::of(&clean("  \n"), NLL_LIMIT);
        assert_eq!(d.empty, EMPTY_PENALTY);
        assert_eq!(d.names(), ["empty"]);
        let mut a = clean("Boil it for six minutes.");
        a.truncated = true;
        assert_eq!(Defects::of(&a, NLL_LIMIT).names(), ["truncated"]);
        let lp = Defects::of(
            &clean("A hiccup is a culinary disaster! A hiccup is a culinary disaster!"),
            NLL_LIMIT,
        );
        assert!(lp.repetition >= BROKEN && lp.names() == ["repetition"], "{lp:?}");
        let lines = Defects::of(
            &clean("- Drink water often\n- Sleep eight hours\n- Drink water often"),
            NLL_LIMIT,
        );
        assert!(lines.repetition >= BROKEN);
        assert!(Defects::of(&clean("This is so so so so good."), NLL_LIMIT).repetition >= BROKEN);
        // A stock sentence said twice among many is a flaw, not a breakage.
        let stock = "Lift your left arm. Hold for thirty seconds. Bend your right knee slowly. Roll your \
                     shoulders back. Turn your head to the side. Hold for thirty seconds. Breathe out slowly now.";
        let flaw = Defects::of(&clean(stock), NLL_LIMIT).repetition;
        assert!(flaw > 0.0 && flaw < BROKEN, "{flaw}");
        let g = Defects::of(&clean("Boil it for six minutes.").with_nll(NLL_LIMIT + 1.0), NLL_LIMIT);
        assert!(g.gibberish >= BROKEN && g.names() == ["gibberish"], "{g:?}");
        assert!(Defects::of(&clean("\u{FFFD}\u{FFFD}\u{FFFD} ok"), NLL_LIMIT).gibberish >= BROKEN);
    }

    #[test]
    fn worse_loops_weigh_more() {
        let s = "A hiccup is a culinary disaster!";
        let p = |n: usize| Defects::of(&clean(&vec![s; n].join(" ")), NLL_LIMIT).repetition;
        assert!(p(2) < p(3) && p(3) < p(12), "{} {} {}", p(2), p(3), p(12));
    }
}
