//! `model.safetensors.index.json` of a sharded HF model: the tiny model without its
//! `model.safetensors`, its weights as the one shard `model-00001-of-00001.safetensors`.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nudge::Model;
use nudge_fuzz::{TINY_MODEL, forward, put, tiny_model_dir};

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = tiny_model_dir("model", &["model.safetensors"]);
        let weights = TINY_MODEL.iter().find(|(name, _)| *name == "model.safetensors");
        put(&dir, "model-00001-of-00001.safetensors", weights.expect("fixture").1);
        dir
    });
    put(dir, "model.safetensors.index.json", data);
    if let Ok(model) = Model::open(dir) {
        forward(&model, None);
    }
});
