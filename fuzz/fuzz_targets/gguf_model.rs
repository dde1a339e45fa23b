//! A GGUF model file through `Model::open`: config from metadata, weight views, the
//! tokenizer rebuilt from the vocabulary and the chat template; then one forward pass and
//! a use of the tokenizer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nudge::Model;
use nudge_fuzz::{forward, put, scratch, use_tokenizer};

fuzz_target!(|data: &[u8]| {
    let path = put(scratch(), "model.gguf", data);
    let Ok(model) = Model::open(&path) else {
        return;
    };
    let _ = model.fingerprint();
    forward(&model, None);
    use_tokenizer(&model.tokenizer);
});
