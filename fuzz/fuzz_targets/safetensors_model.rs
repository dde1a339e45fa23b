//! `model.safetensors` beside the tiny model's config and tokenizer, through `Model::open`,
//! then one forward pass over the weights it holds.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nudge::Model;
use nudge_fuzz::{forward, put, tiny_model_dir};

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| tiny_model_dir("model", &["model.safetensors"]));
    put(dir, "model.safetensors", data);
    if let Ok(model) = Model::open(dir) {
        forward(&model, None);
    }
});
