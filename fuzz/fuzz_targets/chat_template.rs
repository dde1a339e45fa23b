//! A chat template (`chat_template.jinja`, `tokenizer.chat_template`): parsed and rendered
//! by `ChatTemplate::render`, the code `TextTokenizer::apply_chat_template` runs, with and
//! without the generation prompt. Loading it from a folder is left out (the
//! hf_tokenizer_config target covers that) so that each run is a rendering only.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use nudge::tokenizer::ChatTemplate;
use nudge_fuzz::{conversation, tiny_special_tokens};

fuzz_target!(|data: &[u8]| {
    // A template file is read as UTF-8 text; other bytes never reach the renderer.
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let template = ChatTemplate {
        source: source.to_string(),
        origin: PathBuf::from("chat_template.jinja"),
    };
    let special = tiny_special_tokens();
    for add_generation_prompt in [false, true] {
        let _ = template.render(&conversation(), add_generation_prompt, &special);
    }
    let _ = template.render(&[], true, &Default::default());
});
