//! TRL JSONL rows (`parse_jsonl`, `PreferenceSet::from_jsonl`) tokenized with the tiny
//! model's tokenizer and chat template, with no length limits and with tight ones in
//! either truncation mode, then fitted to a pair loss or KTO.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nudge::PreferenceSet;
use nudge::data::{Truncation, TruncationMode, parse_jsonl};
use nudge_fuzz::{put, scratch, tiny_model};

fuzz_target!(|data: &[u8]| {
    // A JSONL file is read as UTF-8 text; other bytes are an I/O error before any row.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (_row, value) in parse_jsonl(text) {
        let _ = value;
    }
    let model = tiny_model();
    let path = put(scratch(), "rows.jsonl", data);
    if let Ok(mut set) = PreferenceSet::from_jsonl(&model.tokenizer, &path, &Truncation::default()) {
        set.drop_longer_than(model.config.max_position_embeddings);
        set.fit_to_loss(data.len() % 2 == 0);
        let _ = set.report().count();
        let _ = set.pairs.iter().map(PreferenceSet::pair_tokens).sum::<usize>();
    }
    let tight = Truncation {
        max_length: Some(8),
        max_prompt_length: Some(4),
        max_completion_length: Some(3),
        mode: if data.len() % 2 == 0 {
            TruncationMode::KeepEnd
        } else {
            TruncationMode::KeepStart
        },
    };
    let _ = PreferenceSet::from_jsonl_text(&model.tokenizer, text, &path, &tight);
});
