//! An HF `config.json` beside the tiny model's weights and tokenizer, through `Model::open`,
//! then one forward pass with whatever the config let through.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nudge::Model;
use nudge_fuzz::{forward, put, tiny_model_dir};

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| tiny_model_dir("model", &["config.json"]));
    put(dir, "config.json", data);
    if let Ok(model) = Model::open(dir) {
        forward(&model, None);
    }
});
