//! Simulated users for the demo: they rate the model's answers to everyday prompts the way
//! a person with one taste would (shorter answers, a closing follow-up question, no lists),
//! so that DPO on their ratings has something to learn and the result can be measured.
//!
//! Optimizing a taste measure alone rewards broken text (a short answer that loops one
//! sentence is "short"), so every simulated user also dislikes what anyone dislikes: loops
//! and repeated lines, answers cut off at the token limit, gibberish, empty answers; those
//! penalties outweigh any taste gain.
//!
//! - [`measures`]: pure text measures (words, closing question, list share, repetition).
//! - [`Answer`] and [`answer_nll`]: what the judge sees, with the base model's perplexity.
//! - [`Taste`]: the tastes, their CLI names and the metric the demo reports.
//! - [`Defects`]: the shared dislikes as penalties.
//! - [`SimulatedUser`]: utility, pair judgements and thumbs.
//! - [`prompts`]: the shipped train/held-out prompts and neutral text.

mod answer;
mod defects;
mod kinds;
pub mod measures;
pub mod prompts;
mod user;

pub use answer::{Answer, answer_nll};
pub use defects::Defects;
pub use kinds::Taste;
pub use user::{Judgement, SimulatedUser, Thumb, Utility, Which, strength};

/// The thresholds and constants, for reports and tuning.
pub mod limits {
    pub use super::defects::{
        BROKEN, DISTINCT_MIN_WORDS, DISTINCT_RATIO_LIMIT, EMPTY_PENALTY, NGRAM_REPEAT_LIMIT, NLL_LIMIT, NLL_SLOPE,
        ODD_CHAR_LIMIT, REPEAT_FLAW, TRUNCATED_PENALTY, UNIT_REPEAT_LIMIT, WORD_RUN_LIMIT,
    };
    pub use super::user::{SHORT_ENOUGH, STRENGTH_SCALE, TIE, TOO_LONG};
}
