//! A PEFT adapter folder (`nudge::adapter::peft::load`) for the tiny model. The input is
//! `adapter_config.json`, a NUL byte, then `adapter_model.safetensors` (JSON text holds no
//! raw NUL, so the first one splits the two files). A loaded adapter runs one forward pass
//! and one training step.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nudge::adapter::peft;
use nudge_fuzz::{forward, put, scratch, tiny_model, train_step};

fuzz_target!(|data: &[u8]| {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = scratch().join("adapter");
        std::fs::create_dir_all(&dir).expect("create the adapter folder");
        dir
    });
    let (config, weights) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    put(dir, peft::CONFIG_FILE, config);
    put(dir, peft::WEIGHTS_FILE, weights);
    let model = tiny_model();
    if let Ok(adapter) = peft::load(dir, &model.config) {
        forward(model, Some(&adapter));
        train_step(adapter);
    }
});
