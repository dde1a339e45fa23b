//! Cheap text measures of an answer: what a simulated user looks at.
//!
//! Pure functions over the answer's text, no model. Two kinds: the measures a taste is about
//! (length, a closing question, list/markdown shape) and the signs of a broken answer that
//! any person dislikes (loops, repeated lines, runs of one word, garbage characters). The
//! second kind exists because optimizing the first alone rewards degenerate text: a short
//! answer that loops one sentence is "short".

use std::collections::{HashMap, HashSet};

/// The words of a text: whitespace-separated pieces holding at least one letter or digit,
/// so markdown markers (`-`, `**`, `|`) and lone punctuation are not words.
pub fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_whitespace().filter(|w| w.chars().any(char::is_alphanumeric))
}

/// The number of [`words`]: the length measure of the `short` taste.
pub fn word_count(text: &str) -> usize {
    words(text).count()
}

/// A word as compared for repetition: lower case, without the punctuation around it
/// ("Water," and "water" are the same word).
pub fn normalize_word(w: &str) -> String {
    w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase()
}

fn normalized_words(text: &str) -> Vec<String> {
    words(text).map(normalize_word).collect()
}

/// Whether the answer's last sentence is a question: the text ends with `?` once trailing
/// quotes, brackets, markdown emphasis and emoji are set aside ("Want more ideas? 😊").
pub fn ends_with_question(text: &str) -> bool {
    let end = text.trim_end_matches(|c: char| c.is_whitespace() || !(c.is_alphanumeric() || ".!?…:;,".contains(c)));
    end.ends_with('?')
}

/// Whether a line (already trimmed) opens with a bullet (`-`, `*`, `•`, `+`, `–`) or a
/// number (`1.`, `12)`) followed by a space.
fn list_marker_len(line: &str) -> Option<usize> {
    let mut chars = line.char_indices();
    let (_, first) = chars.next()?;
    if "-*•+–".contains(first) {
        let after = first.len_utf8();
        return line[after..].starts_with(char::is_whitespace).then_some(after);
    }
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    if (1..=3).contains(&digits) {
        let rest = &line[digits..];
        if (rest.starts_with(". ") || rest.starts_with(") ")) || rest == "." || rest == ")" {
            return Some(digits + 1);
        }
    }
    None
}

/// The share of non-empty lines that are list or markdown lines: bullets, numbered items,
/// headings (`#`), bold (`**`, `__`), table rows (`|`), code fences and the lines between
/// them. 0 for an empty text. The measure of the `no-lists` taste.
pub fn list_share(text: &str) -> f64 {
    let mut total = 0usize;
    let mut marked = 0usize;
    let mut in_code = false;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        total += 1;
        let fence = line.starts_with("```") || line.starts_with("~~~");
        let markdown = fence
            || in_code
            || list_marker_len(line).is_some()
            || line.starts_with('#')
            || line.contains("**")
            || line.contains("__")
            || line.starts_with('|')
            || line.matches('|').count() >= 2;
        if fence {
            in_code = !in_code;
        }
        marked += usize::from(markdown);
    }
    if total == 0 { 0.0 } else { marked as f64 / total as f64 }
}

/// The share of word `n`-grams that already occurred earlier in the answer (words compared
/// after [`normalize_word`]). An answer that says a sentence twice scores about half; a
/// loop approaches 1; ordinary prose of a few hundred words stays near 0 for n = 4.
/// 0 when the answer has fewer than `n` words.
pub fn repeated_ngram_share(text: &str, n: usize) -> f64 {
    let w = normalized_words(text);
    if n == 0 || w.len() < n {
        return 0.0;
    }
    let mut seen = HashSet::new();
    let mut repeated = 0usize;
    let grams = w.len() - n + 1;
    for g in w.windows(n) {
        if !seen.insert(g) {
            repeated += 1;
        }
    }
    repeated as f64 / grams as f64
}

/// A line or sentence as compared for repetition: its words normalized, a leading list
/// marker dropped (a loop often renumbers its lines: "3. Drink water", "4. Drink water").
/// `None` for pieces of fewer than [`MIN_UNIT_WORDS`] words, which repeat innocently
/// ("Ingredients:", "Good luck!").
fn unit_key(piece: &str) -> Option<String> {
    unit_key_min(piece, MIN_UNIT_WORDS)
}

fn unit_key_min(piece: &str, min_words: usize) -> Option<String> {
    let piece = piece.trim();
    let piece = match list_marker_len(piece) {
        Some(n) => &piece[n..],
        None => piece,
    };
    let w = normalized_words(piece);
    (w.len() >= min_words.max(1)).then(|| w.join(" "))
}

/// The fewest words a line or sentence needs to count in repetition measures.
pub const MIN_UNIT_WORDS: usize = 3;

/// Of the keyed pieces, the share that repeat an earlier one (the first copy is not counted).
fn repeated_share<'a>(pieces: impl Iterator<Item = &'a str>) -> f64 {
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut total = 0usize;
    let mut repeats = 0usize;
    for key in pieces.filter_map(unit_key) {
        total += 1;
        let c = counts.entry(key).or_insert(0);
        repeats += usize::from(*c > 0);
        *c += 1;
    }
    if total == 0 { 0.0 } else { repeats as f64 / total as f64 }
}

/// How many pieces (of one word or more) equal the one just before them.
fn back_to_back<'a>(pieces: impl Iterator<Item = &'a str>) -> usize {
    let keys: Vec<String> = pieces.filter_map(|p| unit_key_min(p, 1)).collect();
    keys.windows(2).filter(|w| w[0] == w[1]).count()
}

/// The share of non-empty lines (of [`MIN_UNIT_WORDS`] words or more) that repeat an
/// earlier line, list markers and case aside. Two identical lines out of two give 0.5.
pub fn repeated_line_share(text: &str) -> f64 {
    repeated_share(text.lines())
}

/// Sentences: pieces of text ending at `.`, `!`, `?` or a line break.
pub fn sentences(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive(['.', '!', '?', '\n'])
        .map(str::trim)
        .filter(|s| s.chars().any(char::is_alphanumeric))
}

/// The share of sentences (of [`MIN_UNIT_WORDS`] words or more) that repeat an earlier one.
/// Catches a loop on one line ("A hiccup is a culinary disaster! A hiccup is a culinary
/// disaster!"). Ordinary answers may repeat a stock sentence ("Hold for 30 seconds.") once
/// or twice among many.
pub fn repeated_sentence_share(text: &str) -> f64 {
    repeated_share(sentences(text))
}

/// How many lines or sentences say again what the one just before said (even a one-word
/// line: "Thanks!\nThanks!"): the surest sign of a loop, since nobody does it on purpose.
pub fn back_to_back_repeats(text: &str) -> usize {
    back_to_back(text.lines()) + back_to_back(sentences(text))
}

/// The longest run of one word repeated back to back ("very very very": 3). 0 for no words.
pub fn longest_word_run(text: &str) -> usize {
    let w = normalized_words(text);
    let mut best = 0;
    let mut run = 0;
    for (i, word) in w.iter().enumerate() {
        run = if i > 0 && w[i - 1] == *word { run + 1 } else { 1 };
        best = best.max(run);
    }
    best
}

/// Distinct words over all words (1 for an empty text). Ordinary prose of 100–200 words
/// stays above about 0.4; a loop falls far below.
pub fn distinct_word_ratio(text: &str) -> f64 {
    let w = normalized_words(text);
    if w.is_empty() {
        return 1.0;
    }
    let distinct: HashSet<&String> = w.iter().collect();
    distinct.len() as f64 / w.len() as f64
}

/// The share of non-space characters that are neither letters, digits nor usual
/// punctuation: replacement characters from broken bytes, stray symbols, control codes.
/// Emoji count too, so only a large share means garbage.
pub fn odd_char_share(text: &str) -> f64 {
    const USUAL: &str = ".,;:!?'\"()[]{}-–—_*#/\\&%$€£@+=<>|~`^…’‘“”•°";
    let mut total = 0usize;
    let mut odd = 0usize;
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        total += 1;
        odd += usize::from(!(c.is_alphanumeric() || USUAL.contains(c)));
    }
    if total == 0 { 0.0 } else { odd as f64 / total as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_words_not_markers() {
        assert_eq!(word_count(""), 0);
        assert_eq!(word_count("  \n "), 0);
        assert_eq!(word_count("Hello there, friend!"), 3);
        assert_eq!(word_count("- **Tip**: drink water\n| a | b |\n---"), 5);
        assert_eq!(word_count("It's 5 o'clock."), 3);
    }

    #[test]
    fn closing_question() {
        assert!(ends_with_question("Boil it for six minutes. Do you like it runny?"));
        assert!(ends_with_question("Try this. Want more ideas? 😊\n"));
        assert!(ends_with_question("Does that help?\")"));
        assert!(ends_with_question("**Would you like a recipe?**"));
        assert!(!ends_with_question("Why? Because the light scatters."));
        assert!(!ends_with_question("Is it blue? Yes."));
        assert!(!ends_with_question(""));
        assert!(!ends_with_question("What do you think?."));
    }

    #[test]
    fn list_and_markdown_lines() {
        assert_eq!(list_share(""), 0.0);
        assert_eq!(list_share("Plain prose.\nAnother line of prose."), 0.0);
        let t = "Here are tips:\n\n- Sleep\n* Eat\n• Walk\n1. One\n2) Two\n# Heading\nSome **bold** text\n| a | b |";
        // 8 of 9 non-empty lines are list or markdown lines.
        assert!((list_share(t) - 8.0 / 9.0).abs() < 1e-12, "{}", list_share(t));
        let code = "Run this:\n```\nls -l\ncd /tmp\n```\nDone.";
        assert!((list_share(code) - 4.0 / 6.0).abs() < 1e-12);
        // A hyphen inside prose, a number inside a sentence and italics are not lists.
        assert_eq!(
            list_share("A well-known fact.\nIn 2020 things changed.\n*Really* fine."),
            0.0
        );
        assert_eq!(list_share("-5 degrees is cold.\n3.5 cups of flour."), 0.0);
    }

    #[test]
    fn repeated_ngrams() {
        assert_eq!(repeated_ngram_share("short", 3), 0.0);
        assert_eq!(repeated_ngram_share("the cat sat on the mat", 3), 0.0);
        let once = "A hiccup is a culinary disaster!";
        let loop3 = [once; 3].join(" ");
        // 18 words, 16 trigrams; all 10 from the second copy on repeat earlier ones.
        assert!((repeated_ngram_share(&loop3, 3) - 10.0 / 16.0).abs() < 1e-12);
        let twice = [once; 2].join(" ");
        // 12 words, 9 4-grams, 3 of them repeats.
        assert!((repeated_ngram_share(&twice, 4) - 1.0 / 3.0).abs() < 1e-12);
        assert!(repeated_ngram_share(&loop3, 4) > repeated_ngram_share(&twice, 4));
        // Case and punctuation do not hide a repeat.
        assert!(repeated_ngram_share("Drink more water. drink more WATER", 3) > 0.0);
    }

    #[test]
    fn repeated_lines_and_sentences() {
        assert_eq!(repeated_line_share("one line here\nanother line here"), 0.0);
        assert_eq!(repeated_line_share("the same line\nthe same line"), 0.5);
        // Renumbered list lines are the same line; short lines never count.
        let t = "1. Drink more water\n2. Drink more water\n3. Sleep well tonight\nGood luck!\nGood luck!";
        assert!((repeated_line_share(t) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(
            repeated_sentence_share("It rains today. It pours today. It stops today."),
            0.0
        );
        let s = "A hiccup is funny! A hiccup is funny! A hiccup is funny!";
        assert!((repeated_sentence_share(s) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(repeated_line_share(s), 0.0);
        assert_eq!(back_to_back_repeats(s), 2);
        assert_eq!(back_to_back_repeats(t), 4, "two lines, each also a sentence");
        assert_eq!(
            back_to_back_repeats("Sufficeit out.\n\ntorerawfulness\n\ntorerawfulness"),
            2
        );
        assert_eq!(back_to_back_repeats("1.\n2.\n---\n---"), 0, "no words, no repeat");
        // The same sentence again later, not right after, is no back-to-back repeat.
        let stock = "Lift your arm. Hold for thirty seconds. Bend your knee. Hold for thirty seconds.";
        assert_eq!(back_to_back_repeats(stock), 0);
        assert!((repeated_sentence_share(stock) - 0.25).abs() < 1e-12);
    }

    #[test]
    fn word_runs_and_distinct_words() {
        assert_eq!(longest_word_run(""), 0);
        assert_eq!(longest_word_run("a b c"), 1);
        assert_eq!(longest_word_run("it is very, Very VERY good"), 3);
        assert_eq!(distinct_word_ratio(""), 1.0);
        assert_eq!(distinct_word_ratio("one two three"), 1.0);
        assert!((distinct_word_ratio("go go go go") - 0.25).abs() < 1e-12);
    }

    #[test]
    fn odd_characters() {
        assert_eq!(odd_char_share(""), 0.0);
        assert_eq!(odd_char_share("Plain text, with (usual) punctuation: 100% fine!"), 0.0);
        assert!(odd_char_share("\u{FFFD}\u{FFFD}ab") > 0.4);
        assert!(odd_char_share("a\u{1}b\u{2}") > 0.4);
    }
}
