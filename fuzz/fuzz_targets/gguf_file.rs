//! A GGUF container: header, metadata, tensor directory (`GgufFile::open`), then every
//! tensor expanded to f32, the vocabulary rebuilt as a tokenizer and the model config read,
//! each on its own so that one refusal does not hide the others.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nudge::gguf::GgufFile;
use nudge::model::gguf_model::config_from_gguf;
use nudge::tokenizer::TextTokenizer;
use nudge_fuzz::{put, scratch, use_tokenizer};

fuzz_target!(|data: &[u8]| {
    let path = put(scratch(), "file.gguf", data);
    let Ok(g) = GgufFile::open(&path) else {
        return;
    };
    for (key, value) in &g.metadata {
        let _ = format!("{key}: {value}");
    }
    for t in &g.tensors {
        let _ = g.dequantize(t);
    }
    if let Ok(tok) = TextTokenizer::from_gguf(&g) {
        use_tokenizer(&tok);
    }
    let _ = config_from_gguf(&g);
});
