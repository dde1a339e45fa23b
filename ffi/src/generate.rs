//! Generating a reply: options, a per-token callback that can stop it, the reply's text
//! handed to C as a string it frees with `nudge_string_free`.

use crate::dataset::text_value;
use crate::handles::{self, AdapterHandle, NudgeAdapter, NudgeModel};
use crate::model::model_arg;
use crate::options::{self, versioned};
use crate::pool::with_pool;
use crate::status::{Failure, FfiResult, NudgeStatus, guard, guard_void};
use crate::text::write_opt;
use engine::generate::{GenerateOptions, Generator, StopReason};
use engine::model::Model;
use engine::tokenizer::ChatMessage;
use serde_json::Value;
use std::ffi::{CString, c_char, c_void};
use std::path::Path;

/// `stop_reason`: the model generated its end-of-sequence token.
pub const NUDGE_STOP_EOS: u32 = 0;
/// `max_new_tokens` were generated.
pub const NUDGE_STOP_LENGTH: u32 = 1;
/// Prompt and reply fill the model's context.
pub const NUDGE_STOP_CONTEXT: u32 = 2;
/// The token callback asked to stop.
pub const NUDGE_STOP_CALLBACK: u32 = 3;

/// How to generate. Fill with `nudge_generate_options_init`, then change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeGenerateOptions {
    /// sizeof(NudgeGenerateOptions) as the app was compiled.
    pub struct_size: u32,
    /// The most tokens the reply may have (default 256).
    pub max_new_tokens: u32,
    /// Divides the logits before sampling; 0 (the default) picks the most likely token
    /// every time (greedy, deterministic).
    pub temperature: f32,
    /// Sample among the top_k most likely tokens only (default 0: all).
    pub top_k: u32,
    /// Sample among the most likely tokens whose probabilities first reach top_p
    /// (default 1: all).
    pub top_p: f32,
    /// Worker threads of this call (0, default: the model's setting).
    pub threads: u32,
    /// Seed of the sampling (default 0).
    pub seed: u64,
}

impl Default for NudgeGenerateOptions {
    fn default() -> Self {
        let g = GenerateOptions::default();
        NudgeGenerateOptions {
            struct_size: size_of::<Self>() as u32,
            max_new_tokens: g.max_new_tokens as u32,
            temperature: g.temperature,
            top_k: g.top_k as u32,
            top_p: g.top_p,
            threads: 0,
            seed: g.seed,
        }
    }
}
versioned!(NudgeGenerateOptions);

/// Called for each new token but the end-of-sequence one, on the thread that called
/// `nudge_generate`. `text` (NUL-terminated, `text_len` bytes, valid during the call) is
/// the UTF-8 text the token adds to the reply; it is empty while a character's bytes are
/// incomplete. Return 0 to go on, non-zero to stop after this token.
pub type NudgeTokenFn =
    Option<unsafe extern "C" fn(token_id: u32, text: *const c_char, text_len: usize, user_data: *mut c_void) -> i32>;

/// Fills `options` with the defaults; `struct_size` is sizeof(NudgeGenerateOptions).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_generate_options_init(
    options: *mut NudgeGenerateOptions,
    struct_size: usize,
) -> NudgeStatus {
    guard(|| options::init(options, struct_size, "options"))
}

fn generate_options(o: &NudgeGenerateOptions) -> FfiResult<GenerateOptions> {
    let g = GenerateOptions {
        max_new_tokens: o.max_new_tokens as usize,
        temperature: o.temperature,
        top_k: o.top_k as usize,
        top_p: o.top_p,
        seed: o.seed,
        stop_tokens: None,
    };
    g.validate()?;
    Ok(g)
}

/// The prompt's token ids: raw text as it is, chat messages rendered with the model's
/// template and its generation prompt.
fn prompt_ids(model: &Model, prompt: Value) -> FfiResult<Vec<u32>> {
    let tok = &model.tokenizer;
    let text = match prompt {
        Value::String(s) => s,
        messages => {
            let m: Vec<ChatMessage> = serde_json::from_value(messages)
                .map_err(|e| Failure::invalid(format!("prompt is not a list of chat messages: {e}")))?;
            tok.apply_chat_template(&m, true)?
        }
    };
    Ok(tok.encode(&text, false)?)
}

fn stop_code(r: StopReason) -> u32 {
    match r {
        StopReason::Eos => NUDGE_STOP_EOS,
        StopReason::Length => NUDGE_STOP_LENGTH,
        StopReason::ContextFull => NUDGE_STOP_CONTEXT,
        StopReason::Callback => NUDGE_STOP_CALLBACK,
    }
}

/// Generates a reply to `prompt` with `model`, `adapter` applied (NULL: the base model).
/// `format` NUDGE_TEXT continues the text as it is; NUDGE_CHAT_JSON renders the messages
/// with the model's chat template and its generation prompt (the reply is the assistant's
/// answer). `options` may be NULL (defaults: greedy, 256 tokens), `on_token` may be NULL.
///
/// On success `*text_out` (if `text_out` is not NULL) is the reply's text, special tokens
/// left out, to free with `nudge_string_free`; `*stop_reason_out` (may be NULL) is a
/// NUDGE_STOP_* value. A stop asked by the callback is a success (NUDGE_STOP_CALLBACK).
/// On failure `*text_out` is NULL. NUDGE_ERR_BUSY while the adapter is being trained.
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nudge_generate(
    model: *const NudgeModel,
    adapter: *const NudgeAdapter,
    prompt: *const c_char,
    format: u32,
    options: *const NudgeGenerateOptions,
    on_token: NudgeTokenFn,
    user_data: *mut c_void,
    text_out: *mut *mut c_char,
    stop_reason_out: *mut u32,
) -> NudgeStatus {
    guard(|| {
        write_opt(text_out, std::ptr::null_mut());
        let m = model_arg(model)?;
        let a = if adapter.is_null() {
            None
        } else {
            Some(handles::get::<AdapterHandle>(adapter, "adapter")?)
        };
        let prompt = text_value(prompt, format, "prompt")?;
        let o = options::read(options, "options")?;
        let settings = generate_options(&o)?;
        let held = a.as_ref().map(|a| handles::read(&a.adapter, "adapter")).transpose()?;
        if let Some(held) = &held {
            held.check_fits(&m.model.config, Path::new("adapter"))?;
        }
        let ids = prompt_ids(&m.model, prompt)?;
        let threads = crate::model::threads(&m, o.threads);
        let reply = with_pool(threads, |pool| -> engine::Result<(String, StopReason)> {
            let mut g = pool.install(|| Generator::new(&m.model, &ids, &settings, held.as_deref()))?;
            let mut shown = 0; // bytes of the text already passed to on_token
            let mut piece = Vec::new();
            // The model runs on the pool; the callback on the calling thread, as documented.
            while let Some(t) = pool.install(|| g.next_token())? {
                if g.stop_reason() == Some(StopReason::Eos) {
                    break;
                }
                let Some(f) = on_token else { continue };
                let text = g.text()?;
                // A byte-level token may end inside a character: wait for the rest of it.
                let delta = match text.get(shown..) {
                    Some(d) if !text.ends_with('\u{FFFD}') => d,
                    _ => "",
                };
                shown += delta.len();
                piece.clear();
                piece.extend_from_slice(delta.as_bytes());
                piece.push(0);
                // SAFETY: the app's callback, given a NUL-terminated buffer that lives for the call.
                if unsafe { f(t, piece.as_ptr().cast(), delta.len(), user_data) } != 0 {
                    g.stop(StopReason::Callback);
                }
            }
            let reason = g.stop_reason().unwrap_or(StopReason::Length);
            Ok((g.text()?, reason))
        })??;
        let (text, reason) = reply;
        write_opt(stop_reason_out, stop_code(reason));
        if !text_out.is_null() {
            let c = CString::new(text.replace('\0', " "))
                .map_err(|_| Failure::new(NudgeStatus::NUDGE_ERR_PANIC, "a NUL survived in the reply"))?;
            write_opt(text_out, c.into_raw());
        }
        Ok(())
    })
}

/// Frees a string this library returned (e.g. `nudge_generate`'s text). NULL is a no-op.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_string_free(s: *mut c_char) {
    guard_void(|| {
        if !s.is_null() {
            // SAFETY: `s` came from CString::into_raw in this library and is freed once.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_end_without_padding() {
        crate::assert_packed_end!(NudgeGenerateOptions, seed, u64);
    }

    #[test]
    fn defaults_are_the_engine_defaults_and_bad_ones_are_refused() {
        let g = generate_options(&NudgeGenerateOptions::default()).unwrap();
        assert_eq!(g, GenerateOptions::default());
        for o in [
            NudgeGenerateOptions {
                temperature: -1.0,
                ..Default::default()
            },
            NudgeGenerateOptions {
                top_p: 0.0,
                ..Default::default()
            },
            NudgeGenerateOptions {
                top_p: f32::NAN,
                ..Default::default()
            },
        ] {
            assert_eq!(
                generate_options(&o).err().unwrap().status,
                NudgeStatus::NUDGE_ERR_INVALID,
                "{o:?}"
            );
        }
    }

    #[test]
    fn freeing_a_null_string_is_a_no_op() {
        unsafe { nudge_string_free(std::ptr::null_mut()) };
    }
}
