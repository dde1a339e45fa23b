//! Files from the internet that try to hang, exhaust or crash the engine get a typed error
//! naming the file (issue 13's reproducers, one test each).

mod common;

use common::tiny::*;
use nudge::Error;
use nudge::gguf::GgufValue;
use nudge::model::Model;
use nudge::tokenizer::ChatMessage;
use std::path::{Path, PathBuf};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tiny");

/// A copy of the tiny HF model `name` in a fresh folder, for editing.
fn copy_tiny(name: &str, to: &str) -> PathBuf {
    let dir = fresh_dir(to);
    for entry in std::fs::read_dir(Path::new(TINY).join(name)).expect("tiny model") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dir.join(entry.file_name())).expect("copy");
    }
    dir
}

fn chat() -> Vec<ChatMessage> {
    vec![ChatMessage::new("user", "hi")]
}

/// The chat error of rendering `template` through a copy of the tiny Qwen2 model.
fn hf_template_error(to: &str, template: &str) -> String {
    let dir = copy_tiny("qwen2", to);
    std::fs::write(dir.join("chat_template.jinja"), template).expect("write template");
    let model = Model::open(&dir).expect("the model itself is sound");
    match model.tokenizer.apply_chat_template(&chat(), true) {
        Ok(text) => panic!("the hostile template rendered {} bytes", text.len()),
        Err(Error::ChatTemplate(msg)) => {
            assert!(msg.contains("chat_template.jinja"), "the file is named: {msg}");
            msg
        }
        Err(e) => panic!("expected a chat-template error, got {e}"),
    }
}

const NESTED_LOOPS: &str = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x";

#[test]
fn a_template_that_loops_for_ever_runs_out_of_fuel() {
    let msg = hf_template_error("hostile-loop", NESTED_LOOPS);
    assert!(msg.contains("instructions"), "{msg}");
}

#[test]
fn a_template_that_prints_without_end_hits_the_output_limit() {
    let msg = hf_template_error(
        "hostile-print",
        "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    );
    assert!(msg.contains("printed more than"), "{msg}");
}

#[test]
fn a_template_larger_than_the_limit_is_refused_before_parsing() {
    let big = "x".repeat(nudge::tokenizer::TEMPLATE_SOURCE_MAX + 1);
    let msg = hf_template_error("hostile-big", &big);
    assert!(msg.contains("over the limit"), "{msg}");
}

#[test]
fn a_real_template_still_renders_within_the_bounds() {
    // A long conversation through the tiny model's ChatML template stays far from both bounds.
    let dir = copy_tiny("qwen2", "hostile-real");
    let template = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                    {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    std::fs::write(dir.join("chat_template.jinja"), template).expect("write template");
    let model = Model::open(&dir).expect("opens");
    let turns: Vec<_> = (0..2000)
        .map(|i| ChatMessage::new(if i % 2 == 0 { "user" } else { "assistant" }, "word ".repeat(50)))
        .collect();
    let text = model.tokenizer.apply_chat_template(&turns, true).expect("renders");
    assert!(text.ends_with("<|im_start|>assistant\n"));
    assert_eq!(text.matches("<|im_start|>").count(), 2001);
}

#[test]
fn a_gguf_template_that_loops_for_ever_runs_out_of_fuel() {
    let path = edited_gguf("hostile-gguf-loop", |meta, _| {
        meta.retain(|(k, _)| k != "tokenizer.chat_template");
        meta.push(("tokenizer.chat_template".into(), GgufValue::String(NESTED_LOOPS.into())));
    });
    let model = Model::open(&path).expect("the model itself is sound");
    match model.tokenizer.apply_chat_template(&chat(), true) {
        Err(Error::ChatTemplate(msg)) => {
            assert!(msg.contains("model.gguf") && msg.contains("instructions"), "{msg}")
        }
        other => panic!("expected a chat-template error, got {other:?}"),
    }
}

/// The error of opening a copy of the tiny Mistral model whose `tokenizer.json` got `edit`.
fn tokenizer_json_error(to: &str, edit: impl FnOnce(String) -> String) -> String {
    let dir = copy_tiny("mistral", to);
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, edit(text)).expect("write");
    match Model::open(&dir) {
        Ok(_) => panic!("the broken tokenizer.json was accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("tokenizer.json"), "the file is named: {msg}");
            msg
        }
    }
}

/// `"decoder": {` becomes `"decoder": {<insert>`.
fn with_decoder_field(text: String, insert: &str) -> String {
    let at = text.find("\"decoder\"").expect("a decoder");
    let brace = at + text[at..].find('{').expect("an object");
    format!("{}{insert}{}", &text[..=brace], &text[brace + 1..])
}

#[test]
fn a_post_processor_that_panics_at_first_use_is_refused_at_open() {
    // Found by fuzzing: `special_tokens` keyed by another name than the token's id parses,
    // then the first encoding with special tokens panics inside `tokenizers`.
    let msg = tokenizer_json_error("hostile-tok-template", |t| {
        let mut v: serde_json::Value = serde_json::from_str(&t).unwrap();
        v["post_processor"] = serde_json::json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<x>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]}}
        });
        v.to_string()
    });
    assert!(msg.contains("fails on it"), "{msg}");
}

#[test]
fn a_control_byte_in_the_decoder_is_an_error_not_a_panic() {
    let msg = tokenizer_json_error("hostile-tok-ctl", |t| with_decoder_field(t, "\"x\":\"\u{1}\","));
    assert!(msg.contains("not valid JSON") && msg.contains("line"), "{msg}");
}

#[test]
fn a_decoder_that_is_not_an_object_is_an_error_not_a_panic() {
    let msg = tokenizer_json_error("hostile-tok-scalar", |t| {
        let at = t.find("\"decoder\"").expect("a decoder");
        let end = at + t[at..].find('}').expect("end of the decoder");
        format!("{}\"decoder\": 5{}", &t[..at], &t[end + 1..])
    });
    assert!(msg.contains("not a valid tokenizer.json"), "{msg}");
}

/// Scores of a model read into memory are the same after its files are truncated under it
/// (a mapped model would take SIGBUS there) and equal to the mapped model's.
fn check_read_survives_truncation(path: &Path, weights_file: &Path) {
    use nudge::model::WeightsLoad;
    let (prompt, completion) = ([1u32, 5, 6], [7u32, 8, 2]);
    let mapped = Model::open(path).unwrap().score(&prompt, &completion).unwrap();
    let model = Model::open_with(path, WeightsLoad::Read).expect("opens");
    let before = model.score(&prompt, &completion).unwrap();
    assert_eq!(before.token_logps, mapped.token_logps);
    std::fs::OpenOptions::new()
        .write(true)
        .open(weights_file)
        .and_then(|f| f.set_len(64))
        .expect("truncate");
    let after = model.score(&prompt, &completion).unwrap();
    assert_eq!(after.token_logps, before.token_logps);
    assert!(
        Model::open_with(path, WeightsLoad::Read).is_err(),
        "the truncated file is refused"
    );
}

#[test]
fn a_model_read_into_memory_survives_its_file_being_truncated() {
    let dir = fresh_dir("hostile-read-gguf");
    let gguf = dir.join("model.gguf");
    std::fs::copy(Path::new(TINY).join("llama_q8_0.gguf"), &gguf).unwrap();
    check_read_survives_truncation(&gguf, &gguf);

    let hf = copy_tiny("qwen2", "hostile-read-hf");
    check_read_survives_truncation(&hf, &hf.join("model.safetensors"));
}
