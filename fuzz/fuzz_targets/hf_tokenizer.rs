//! `tokenizer.json` beside the tiny model's `tokenizer_config.json` and chat template,
//! through `TextTokenizer::from_hf_dir` (what `Model::open` calls for an HF folder; the
//! weights are left out to keep each run short), then encode, decode and a chat. A panic
//! inside `tokenizers` that the library catches while parsing is not a finding.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nudge::tokenizer::TextTokenizer;
use nudge_fuzz::{allow_caught_panics, put, tiny_model_dir, use_tokenizer};

fuzz_target!(init: allow_caught_panics(), |data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| tiny_model_dir("model", &["tokenizer.json", "model.safetensors"]));
    put(dir, "tokenizer.json", data);
    if let Ok(tok) = TextTokenizer::from_hf_dir(dir) {
        use_tokenizer(&tok);
    }
});
