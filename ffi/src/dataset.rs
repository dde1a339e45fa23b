//! Training examples handed over in memory: preference pairs and thumbs, as plain text or
//! as chat messages in JSON. They are kept as TRL rows and tokenized by the model of the
//! run that uses them, so one dataset can train adapters of different models.

use crate::handles::{self, DatasetHandle, NudgeDataset};
use crate::status::{Failure, FfiResult, NudgeStatus, guard, guard_void};
use crate::text::{slice_arg, str_arg, write_opt};
use engine::data::chat::{self, Content};
use engine::data::{Example, PreferenceSet, Truncation, tokenize_row};
use engine::model::Model;
use serde_json::{Value, json};
use std::ffi::c_char;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Text arguments are plain UTF-8: a prompt and a completion, tokenized without special
/// tokens, with the model's EOS token appended to the completion (TRL's standard format).
pub const NUDGE_TEXT: u32 = 0;
/// Text arguments are JSON arrays of chat messages `[{"role": "user", "content": "..."}]`:
/// the prompt is rendered with the model's chat template and its generation prompt, a
/// completion is what the template adds for the answer message (TRL's conversational
/// format). A prompt holds at least one message; a completion exactly one, of role
/// "assistant" (the rules of the command line and of JSONL data files too).
pub const NUDGE_CHAT_JSON: u32 = 1;

/// A preference pair: for `prompt`, the answer `chosen` is preferred over `rejected`.
/// (Layout frozen.)
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgePair {
    pub prompt: *const c_char,
    pub chosen: *const c_char,
    pub rejected: *const c_char,
}

/// A thumbs-up or thumbs-down on one answer (for the "kto" loss). (Layout frozen.)
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeThumb {
    pub prompt: *const c_char,
    pub completion: *const c_char,
    /// Non-zero: thumbs up (desirable); 0: thumbs down.
    pub thumbs_up: u32,
}

/// A text argument as a TRL row value: the string (NUDGE_TEXT) or its JSON (NUDGE_CHAT_JSON).
/// The messages are checked with the rest of the row, by [`chat_row`].
pub(crate) fn text_value(p: *const c_char, format: u32, what: &str) -> FfiResult<Value> {
    let s = str_arg(p, what)?;
    match format {
        NUDGE_TEXT => Ok(Value::String(s.to_string())),
        NUDGE_CHAT_JSON => match serde_json::from_str(s) {
            Ok(v @ Value::Array(_)) => Ok(v),
            Ok(_) => Err(Failure::invalid(format!("{what} is not a JSON array of chat messages"))),
            Err(e) => Err(Failure::invalid(format!("{what} is not valid JSON: {e}"))),
        },
        other => Err(Failure::invalid(format!(
            "format {other} is neither NUDGE_TEXT nor NUDGE_CHAT_JSON"
        ))),
    }
}

/// A prompt and its completions under the engine's one set of chat rules
/// ([`engine::data::chat`], the rules of the CLI and of JSONL files); `at` (e.g.
/// `pairs[3]`, or "" for none) prefixes the field an error names.
pub(crate) fn chat_row(at: &str, prompt: &Value, completions: &[(&str, &Value)]) -> FfiResult<(Content, Vec<Content>)> {
    chat::parse(prompt, completions).map_err(|e| {
        let e = if at.is_empty() { e } else { e.within(at) };
        Failure::invalid(e.to_string())
    })
}

/// A new, empty dataset. On failure `*out` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_dataset_new(out: *mut *mut NudgeDataset) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        let h = DatasetHandle {
            rows: RwLock::new(Vec::new()),
            journal_marks: Default::default(),
        };
        handles::put(out, handles::register(Arc::new(h)));
        Ok(())
    })
}

fn append(dataset: *mut NudgeDataset, rows: Vec<Value>) -> FfiResult<()> {
    let h = handles::get::<DatasetHandle>(dataset, "dataset")?;
    handles::write(&h.rows, "dataset")?.extend(rows);
    Ok(())
}

/// Adds `n_pairs` preference pairs (`format`: NUDGE_TEXT or NUDGE_CHAT_JSON). The strings
/// are copied. All or nothing: on failure no pair is added and the message names the
/// first bad element (e.g. "`pairs[3]`.chosen is not valid UTF-8").
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_dataset_add_pairs(
    dataset: *mut NudgeDataset,
    pairs: *const NudgePair,
    n_pairs: usize,
    format: u32,
) -> NudgeStatus {
    guard(|| {
        let pairs = slice_arg(pairs, n_pairs, "pairs")?;
        let rows = pairs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let prompt = text_value(p.prompt, format, &format!("pairs[{i}].prompt"))?;
                let chosen = text_value(p.chosen, format, &format!("pairs[{i}].chosen"))?;
                let rejected = text_value(p.rejected, format, &format!("pairs[{i}].rejected"))?;
                chat_row(
                    &format!("pairs[{i}]"),
                    &prompt,
                    &[("chosen", &chosen), ("rejected", &rejected)],
                )?;
                Ok(json!({"prompt": prompt, "chosen": chosen, "rejected": rejected}))
            })
            .collect::<FfiResult<Vec<Value>>>()?;
        append(dataset, rows)
    })
}

/// Adds `n_thumbs` thumbs events (`format`: NUDGE_TEXT or NUDGE_CHAT_JSON), trained with
/// the "kto" loss. All or nothing, like `nudge_dataset_add_pairs`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_dataset_add_thumbs(
    dataset: *mut NudgeDataset,
    thumbs: *const NudgeThumb,
    n_thumbs: usize,
    format: u32,
) -> NudgeStatus {
    guard(|| {
        let thumbs = slice_arg(thumbs, n_thumbs, "thumbs")?;
        let rows = thumbs
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let prompt = text_value(t.prompt, format, &format!("thumbs[{i}].prompt"))?;
                let completion = text_value(t.completion, format, &format!("thumbs[{i}].completion"))?;
                chat_row(&format!("thumbs[{i}]"), &prompt, &[("completion", &completion)])?;
                Ok(json!({"prompt": prompt, "completion": completion, "label": t.thumbs_up != 0}))
            })
            .collect::<FfiResult<Vec<Value>>>()?;
        append(dataset, rows)
    })
}

/// How many pairs and thumbs the dataset holds (either output may be NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_dataset_count(
    dataset: *const NudgeDataset,
    n_pairs: *mut usize,
    n_thumbs: *mut usize,
) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<DatasetHandle>(dataset, "dataset")?;
        let rows = handles::read(&h.rows, "dataset")?;
        let thumbs = rows.iter().filter(|r| r.get("label").is_some()).count();
        write_opt(n_pairs, rows.len() - thumbs);
        write_opt(n_thumbs, thumbs);
        Ok(())
    })
}

/// Releases the caller's handle. NULL, or a handle already freed, is a no-op. A training
/// run that started from the dataset has its own copy of the examples.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_dataset_free(dataset: *mut NudgeDataset) {
    guard_void(|| {
        handles::release::<DatasetHandle>(dataset);
    })
}

/// The dataset's rows, tokenized by `model`, truncated to `max_length` tokens per example.
/// Errors name the row by its index in the dataset.
pub(crate) fn tokenize(model: &Model, rows: &[Value], max_length: Option<usize>) -> FfiResult<PreferenceSet> {
    let source = Path::new("dataset");
    let limits = Truncation::max_length(max_length.unwrap_or(model.config.max_position_embeddings));
    let mut set = PreferenceSet {
        source: source.to_path_buf(),
        ..Default::default()
    };
    for (i, v) in rows.iter().enumerate() {
        set.push_result(tokenize_row(&model.tokenizer, v, source, i), source, i, &limits);
    }
    Ok(set)
}

/// One prompt and completion, tokenized the way training sees them.
pub(crate) fn tokenize_one(model: &Model, prompt: Value, completion: Value) -> FfiResult<(Vec<u32>, Vec<u32>)> {
    let row = json!({"prompt": prompt, "completion": completion, "label": true});
    match tokenize_row(&model.tokenizer, &row, Path::new("text"), 0)? {
        Example::Unpaired(u) => Ok((u.prompt, u.completion)),
        Example::Pair(_) => Err(Failure::new(
            NudgeStatus::NUDGE_ERR_PANIC,
            "an unpaired row tokenized as a pair",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_must_be_a_list_of_messages() {
        let ok = cr#"[{"role":"user","content":"hi"}]"#;
        let answer = json!([{"role": "assistant", "content": "a"}]);
        let prompt = text_value(ok.as_ptr(), NUDGE_CHAT_JSON, "p").unwrap();
        assert!(chat_row("", &prompt, &[("completion", &answer)]).is_ok());
        assert!(text_value(c"not json".as_ptr(), NUDGE_CHAT_JSON, "p").is_err());
        assert!(text_value(c"{}".as_ptr(), NUDGE_CHAT_JSON, "p").is_err());
        for bad in [c"[]", cr#"[{"role":"user"}]"#, cr#"[{"role":1,"content":"x"}]"#] {
            let prompt = text_value(bad.as_ptr(), NUDGE_CHAT_JSON, "p").unwrap();
            let e = chat_row("", &prompt, &[("completion", &answer)]).err().unwrap();
            assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID, "{bad:?}");
        }
        let e = text_value(ok.as_ptr(), 7, "p").err().unwrap();
        assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID);
        assert_eq!(
            text_value(c"plain".as_ptr(), NUDGE_TEXT, "p").unwrap(),
            Value::String("plain".into())
        );
    }
}
