//! The tastes a simulated user can have: what it likes beyond a sound answer, and the
//! metric the demo reports to show whether an adapter learned it.

use super::answer::Answer;
use super::measures;
use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;

/// A simulated user's preference. Parsed from and printed as its CLI name (`--taste`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Taste {
    /// Prefers short, direct answers: fewer words.
    Short,
    /// Likes answers that end with a follow-up question to the user.
    Question,
    /// Dislikes lists and markdown: prefers plain prose.
    NoLists,
}

impl Taste {
    pub const ALL: [Taste; 3] = [Taste::Short, Taste::Question, Taste::NoLists];

    /// The CLI name: `short`, `question`, `no-lists`.
    pub fn name(self) -> &'static str {
        match self {
            Taste::Short => "short",
            Taste::Question => "question",
            Taste::NoLists => "no-lists",
        }
    }

    /// One sentence for help texts and reports.
    pub fn description(self) -> &'static str {
        match self {
            Taste::Short => "prefers short, direct answers (fewer words)",
            Taste::Question => "likes answers that end with a follow-up question",
            Taste::NoLists => "dislikes lists and markdown, prefers plain prose",
        }
    }

    /// What [`Self::metric`] measures, for reports.
    pub fn metric_name(self) -> &'static str {
        match self {
            Taste::Short => "words",
            Taste::Question => "ends with a question (share)",
            Taste::NoLists => "list/markdown line share",
        }
    }

    /// Whether a larger metric is what this taste wants (for "better/worse" in reports).
    pub fn metric_higher_is_better(self) -> bool {
        matches!(self, Taste::Question)
    }

    /// The taste metric of one answer, what the demo averages over held-out prompts:
    /// word count (`short`), 1 or 0 for a closing question (`question`), the share of
    /// list/markdown lines (`no-lists`). It ignores soundness on purpose: the fluency
    /// guard and the simulated user's win rate report that.
    pub fn metric(self, a: &Answer) -> f64 {
        match self {
            Taste::Short => measures::word_count(&a.text) as f64,
            Taste::Question => f64::from(u8::from(measures::ends_with_question(&a.text))),
            Taste::NoLists => measures::list_share(&a.text),
        }
    }
}

impl fmt::Display for Taste {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Taste {
    type Err = Error;

    fn from_str(s: &str) -> Result<Taste> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        Taste::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Taste::ALL.iter().map(|t| t.name()).collect();
            Error::invalid(format!("unknown taste `{s}` (one of: {})", names.join(", ")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Taste::ALL {
            assert_eq!(t.to_string().parse::<Taste>().unwrap(), t);
            assert!(!t.description().is_empty() && !t.metric_name().is_empty());
        }
        assert_eq!("No_Lists".parse::<Taste>().unwrap(), Taste::NoLists);
        let e = "long".parse::<Taste>().unwrap_err().to_string();
        assert!(e.contains("short, question, no-lists"), "{e}");
    }

    #[test]
    fn metrics() {
        let a = Answer::new("- one\n- two\nWhat else?", 8, false);
        assert_eq!(Taste::Short.metric(&a), 4.0);
        assert_eq!(Taste::Question.metric(&a), 1.0);
        assert!((Taste::NoLists.metric(&a) - 2.0 / 3.0).abs() < 1e-12);
    }
}
