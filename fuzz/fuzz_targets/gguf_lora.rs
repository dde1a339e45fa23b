//! A llama.cpp LoRA GGUF (`nudge::adapter::gguf_lora::load`) for the tiny Llama, whose Q/K
//! rows the reader unpermutes. A loaded adapter runs one forward pass and one training step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nudge::adapter::gguf_lora;
use nudge_fuzz::{forward, put, scratch, tiny_model, train_step};

fuzz_target!(|data: &[u8]| {
    let path = put(scratch(), "lora.gguf", data);
    let model = tiny_model();
    if let Ok(adapter) = gguf_lora::load(&path, &model.config) {
        forward(model, Some(&adapter));
        train_step(adapter);
    }
});
