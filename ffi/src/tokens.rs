//! Token ids from C: what a prompt costs before a call is made (a prompt longer than the
//! context is otherwise found only when the call fails), and text back from ids.

use crate::dataset::text_value;
use crate::generate::prompt_ids;
use crate::model::model_arg;
use crate::status::{Failure, NudgeStatus, guard};
use crate::text::{slice_arg, string_out, write_opt};
use std::ffi::c_char;

/// The token ids `nudge_generate` would run for `prompt` (`format` NUDGE_TEXT: the text as
/// it is; NUDGE_CHAT_JSON: the messages rendered with the model's chat template and its
/// generation prompt). `*n_tokens` (required) receives their number. When `ids` is not
/// NULL and `capacity` holds them all, they are written to `ids` (owned by the app);
/// otherwise nothing is written to `ids`, and a non-NULL `ids` too small gives
/// NUDGE_ERR_INVALID (with `*n_tokens` still set). Counting only: `ids` NULL, `capacity` 0.
/// Compare `*n_tokens` with `NudgeModelInfo.context_length`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_tokenize(
    model: *const crate::NudgeModel,
    prompt: *const c_char,
    format: u32,
    ids: *mut u32,
    capacity: usize,
    n_tokens: *mut usize,
) -> NudgeStatus {
    guard(|| {
        if n_tokens.is_null() {
            return Err(Failure::null("n_tokens"));
        }
        let m = model_arg(model)?;
        let prompt = text_value(prompt, format, "prompt")?;
        let got = prompt_ids(&m.model, prompt)?;
        write_opt(n_tokens, got.len());
        if ids.is_null() {
            return Ok(());
        }
        if got.len() > capacity {
            return Err(Failure::invalid(format!(
                "ids holds {capacity} tokens, the prompt has {}",
                got.len()
            )));
        }
        // Validates the app's buffer as an array of `capacity` ids before writing to it.
        slice_arg(ids.cast_const(), capacity, "ids")?;
        // SAFETY: `ids` points to `capacity` >= got.len() writable u32 (the contract).
        unsafe { std::ptr::copy_nonoverlapping(got.as_ptr(), ids, got.len()) };
        Ok(())
    })
}

/// The text of `n` token ids under `model`'s tokenizer; `skip_special` 1 leaves out special
/// tokens (as nudge_generate's replies do). On success `*text_out` is a string to free with
/// `nudge_string_free`; an id outside the vocabulary is NUDGE_ERR_INVALID naming it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_detokenize(
    model: *const crate::NudgeModel,
    ids: *const u32,
    n: usize,
    skip_special: u32,
    text_out: *mut *mut c_char,
) -> NudgeStatus {
    guard(|| {
        if text_out.is_null() {
            return Err(Failure::null("text_out"));
        }
        write_opt(text_out, std::ptr::null_mut());
        let m = model_arg(model)?;
        let ids = slice_arg(ids, n, "ids")?;
        let vocab = m.model.tokenizer.vocab_size();
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
            return Err(Failure::invalid(format!(
                "ids[{i}] = {id} is outside the vocabulary ({vocab} tokens)"
            )));
        }
        let text = m.model.tokenizer.decode(ids, skip_special != 0)?;
        write_opt(text_out, string_out(&text));
        Ok(())
    })
}
