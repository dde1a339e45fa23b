//! `tokenizer_config.json` (special tokens, `chat_template` as a string or a named list)
//! beside the tiny model's `tokenizer.json`, through `TextTokenizer::from_hf_dir`, then a
//! chat rendered with the template it names and the special tokens it sets.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nudge::tokenizer::TextTokenizer;
use nudge_fuzz::{put, tiny_model_dir, use_tokenizer};

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    // No chat_template.jinja: it would win over the config's template.
    let dir = DIR.get_or_init(|| {
        tiny_model_dir(
            "model",
            &["tokenizer_config.json", "chat_template.jinja", "model.safetensors"],
        )
    });
    put(dir, "tokenizer_config.json", data);
    if let Ok(tok) = TextTokenizer::from_hf_dir(dir) {
        use_tokenizer(&tok);
    }
});
