//! A reply's text as it grows: what may be shown of it while a stop string could still be
//! completing, and where it ends once one is found (the stop string itself is left out,
//! as in transformers' `stop_strings` and llama.cpp's server).

/// The stop strings of one reply and how much of its text has been shown.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplyText {
    stop_strings: Vec<String>,
    /// Bytes of the text already shown.
    shown: usize,
    /// Where the text ends: before the first stop string found.
    end: Option<usize>,
}

impl ReplyText {
    pub fn new(stop_strings: &[String]) -> Self {
        ReplyText {
            stop_strings: stop_strings.iter().filter(|s| !s.is_empty()).cloned().collect(),
            shown: 0,
            end: None,
        }
    }

    /// After a new token, `text` being the whole reply decoded so far: the text to show
    /// now, and whether a stop string ends the reply here. Unless `finished`, a tail of
    /// `text` that could be the start of a stop string is held back (shown by a later call,
    /// or never if the stop string completes); so is a character whose bytes are incomplete.
    pub fn advance<'t>(&mut self, text: &'t str, finished: bool) -> (&'t str, bool) {
        if self.end.is_some() {
            return ("", true);
        }
        if let Some(at) = self.find(text) {
            self.end = Some(at);
            let delta = text.get(self.shown..at).unwrap_or("");
            self.shown = self.shown.max(at);
            return (delta, true);
        }
        let limit = if finished { text.len() } else { self.showable(text) };
        let delta = match text.get(self.shown..limit) {
            Some(d) if !d.ends_with('\u{FFFD}') => d,
            _ => "",
        };
        self.shown += delta.len();
        (delta, false)
    }

    /// The reply's final text: `text` cut before the stop string that ended it.
    pub fn cut<'t>(&self, text: &'t str) -> &'t str {
        self.end.and_then(|e| text.get(..e)).unwrap_or(text)
    }

    /// The text not shown yet, once the reply has ended: `text` is the whole reply.
    pub fn rest<'t>(&mut self, text: &'t str) -> &'t str {
        let text = self.cut(text);
        let rest = text.get(self.shown..).unwrap_or("");
        self.shown += rest.len();
        rest
    }

    /// The earliest start of a stop string in `text`.
    fn find(&self, text: &str) -> Option<usize> {
        self.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min()
    }

    /// Length of the longest prefix of `text` whose rest cannot grow into a stop string.
    fn showable(&self, text: &str) -> usize {
        let from = self.shown.min(text.len());
        text.char_indices()
            .map(|(i, _)| i)
            .filter(|&i| i >= from)
            .find(|&i| self.stop_strings.iter().any(|s| s.starts_with(&text[i..])))
            .unwrap_or(text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds the growing texts one after the other; returns what was shown and whether a
    /// stop string ended it.
    fn run(stops: &[&str], steps: &[&str]) -> (Vec<String>, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut r = ReplyText::new(&stops);
        let mut shown = Vec::new();
        let mut hit = false;
        for (i, t) in steps.iter().enumerate() {
            let (d, h) = r.advance(t, i + 1 == steps.len());
            shown.push(d.to_string());
            if h {
                hit = true;
                break;
            }
        }
        let last = steps.last().unwrap();
        let tail = r.rest(last).to_string();
        shown.push(tail);
        (shown, r.cut(last).to_string(), hit)
    }

    #[test]
    fn a_stop_string_across_tokens_is_held_back_and_cut() {
        let (shown, text, hit) = run(&["\nUser:"], &["Hi", "Hi\n", "Hi\nUs", "Hi\nUser:", "Hi\nUser: x"]);
        assert!(hit);
        assert_eq!(shown, ["Hi", "", "", "", ""]);
        assert_eq!(text, "Hi");
    }

    #[test]
    fn a_false_start_is_shown_once_it_cannot_match() {
        let (shown, text, hit) = run(&["\nUser:"], &["Hi", "Hi\n", "Hi\nUx", "Hi\nUx!"]);
        assert!(!hit);
        assert_eq!(shown, ["Hi", "", "\nUx", "!", ""]);
        assert_eq!(text, "Hi\nUx!");
    }

    #[test]
    fn a_tail_held_back_at_the_end_comes_out_with_the_rest() {
        let stops = vec!["END".to_string()];
        let mut r = ReplyText::new(&stops);
        assert_eq!(r.advance("ok E", false), ("ok ", false));
        assert_eq!(r.advance("ok EN", false), ("", false));
        assert_eq!(r.rest("ok EN"), "EN");
        assert_eq!(r.cut("ok EN"), "ok EN");
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins_and_no_stop_strings_hold_nothing() {
        let (_, text, hit) = run(&["b", "a"], &["xyab"]);
        assert!(hit);
        assert_eq!(text, "xy");
        let (shown, text, hit) = run(&[], &["a", "ab"]);
        assert!(!hit);
        assert_eq!(shown.concat(), "ab");
        assert_eq!(text, "ab");
    }

    #[test]
    fn an_incomplete_character_waits_for_its_bytes() {
        let mut r = ReplyText::new(&[]);
        assert_eq!(r.advance("a\u{FFFD}", false), ("", false));
        assert_eq!(r.advance("aé", false), ("aé", false));
    }
}
