//! Generating a reply: options, a per-token callback that can stop it, the reply's text
//! handed to C as a string it frees with `nudge_string_free`. Many replies at once
//! (`nudge_generate_batch`): several prompts, several samples each, decoded together.

use crate::dataset::text_value;
use crate::handles::{self, AdapterHandle, NudgeAdapter, NudgeModel};
use crate::model::model_arg;
use crate::options::{self, versioned};
use crate::pool::with_pool;
use crate::status::{Failure, FfiResult, NudgeStatus, guard, guard_void};
use crate::text::{slice_arg, str_arg, string_out, take_string, write_opt};
use engine::cancel::Cancel;
use engine::data::chat::{self, Content};
use engine::generate::{BatchGenerator, BatchOptions, GenerateOptions, GenerateRequest, Generator, StopReason};
use engine::model::Model;
use serde_json::Value;
use std::ffi::{c_char, c_void};
use std::path::Path;

/// `stop_reason`: the model generated its end-of-sequence token.
pub const NUDGE_STOP_EOS: u32 = 0;
/// `max_new_tokens` were generated.
pub const NUDGE_STOP_LENGTH: u32 = 1;
/// Prompt and reply fill the model's context.
pub const NUDGE_STOP_CONTEXT: u32 = 2;
/// The token callback asked to stop.
pub const NUDGE_STOP_CALLBACK: u32 = 3;
/// One of `NudgeGenerateOptions.stop_strings` appeared (the reply ends before it).
pub const NUDGE_STOP_STRING: u32 = 4;

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
    /// `n_stop_strings` UTF-8 strings (default none; NULL when 0; the app owns them, read
    /// during the call only). The reply ends where one first appears, and leaves it out;
    /// text that may be the start of one reaches the token callback only once it cannot be.
    pub stop_strings: *const *const c_char,
    pub n_stop_strings: usize,
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
            stop_strings: std::ptr::null(),
            n_stop_strings: 0,
        }
    }
}
// 32: before stop strings (0.1).
versioned!(NudgeGenerateOptions, [32]);

/// Called for each new token but the end-of-sequence one, on the thread that called
/// `nudge_generate`. `text` (NUL-terminated, `text_len` bytes, valid during the call) is
/// the UTF-8 text the token adds to the reply; it is empty while a character's bytes are
/// incomplete, or while it may be the start of a stop string. Text held back that turns
/// out not to be one comes, once the reply has ended, in one more call with the last
/// token's id (its return value is then ignored): the texts always add up to the reply.
/// Return 0 to go on, non-zero to stop after this token.
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

pub(crate) fn generate_options(o: &NudgeGenerateOptions) -> FfiResult<GenerateOptions> {
    let g = GenerateOptions {
        max_new_tokens: o.max_new_tokens as usize,
        temperature: o.temperature,
        top_k: o.top_k as usize,
        top_p: o.top_p,
        seed: o.seed,
        stop_tokens: None,
        stop_strings: slice_arg(o.stop_strings, o.n_stop_strings, "options->stop_strings")?
            .iter()
            .enumerate()
            .map(|(i, &s)| str_arg(s, &format!("options->stop_strings[{i}]")).map(str::to_string))
            .collect::<FfiResult<_>>()?,
    };
    g.validate()?;
    Ok(g)
}

/// The prompt's token ids: raw text as it is, chat messages rendered with the model's
/// template and its generation prompt.
pub(crate) fn prompt_ids(model: &Model, prompt: Value) -> FfiResult<Vec<u32>> {
    let tok = &model.tokenizer;
    let text = match chat::prompt(&prompt, "prompt").map_err(|e| Failure::invalid(e.to_string()))? {
        Content::Text(s) => s,
        Content::Messages(m) => tok.apply_chat_template(&m, true)?,
    };
    Ok(tok.encode(&text, false)?)
}

pub(crate) fn stop_code(r: StopReason) -> u32 {
    match r {
        StopReason::Eos => NUDGE_STOP_EOS,
        StopReason::Length => NUDGE_STOP_LENGTH,
        StopReason::ContextFull => NUDGE_STOP_CONTEXT,
        StopReason::Callback => NUDGE_STOP_CALLBACK,
        StopReason::StopString => NUDGE_STOP_STRING,
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
// The argument list is the C API (include/nudge.h): it stays as C callers see it.
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
        let since = m.watch();
        let interrupted = || m.interrupted(since);
        let a = if adapter.is_null() {
            None
        } else {
            Some(handles::get::<AdapterHandle>(adapter, "adapter")?)
        };
        let prompt = text_value(prompt, format, "prompt")?;
        let o = options::read(options, "options")?;
        let settings = generate_options(&o)?;
        let held = a.as_ref().map(|a| a.snapshot()).transpose()?;
        if let Some(held) = &held {
            held.check_fits(&m.model.config, Path::new("adapter"))?;
        }
        let ids = prompt_ids(&m.model, prompt)?;
        let threads = crate::model::threads(&m, o.threads);
        let reply = with_pool(threads, |pool| -> engine::Result<(String, StopReason)> {
            let cancel = Some(Cancel::new(&interrupted));
            let mut g =
                pool.install(|| Generator::new_cancellable(&m.model, &ids, &settings, held.as_deref(), cancel))?;
            stream(pool, &mut g, on_token, user_data)?;
            let reason = g.stop_reason().unwrap_or(StopReason::Length);
            Ok((g.text()?, reason))
        })??;
        let (text, reason) = reply;
        write_opt(stop_reason_out, stop_code(reason));
        if !text_out.is_null() {
            write_opt(text_out, string_out(&text));
        }
        Ok(())
    })
}

/// Runs `g` to its end, the model on `pool`, `on_token` (may be None) on the calling thread
/// with each piece of text, as `NudgeTokenFn` documents; the pieces add up to the reply.
pub(crate) fn stream(
    pool: &rayon::ThreadPool,
    g: &mut Generator,
    on_token: NudgeTokenFn,
    user_data: *mut c_void,
) -> engine::Result<()> {
    let mut piece = Vec::new();
    let mut call = |f: unsafe extern "C" fn(u32, *const c_char, usize, *mut c_void) -> i32, t: u32, text: &str| {
        piece.clear();
        piece.extend_from_slice(text.as_bytes());
        piece.push(0);
        // SAFETY: the app's callback, given a NUL-terminated buffer that lives for the call.
        unsafe { f(t, piece.as_ptr().cast(), text.len(), user_data) }
    };
    let mut last = None;
    while let Some(t) = pool.install(|| g.next_token())? {
        if g.stop_reason() == Some(StopReason::Eos) {
            break;
        }
        last = Some(t);
        if let Some(f) = on_token
            && call(f, t, g.delta()) != 0
        {
            g.stop(StopReason::Callback);
        }
    }
    // Text held back for a stop string that never completed is part of the reply.
    let rest = g.rest();
    if let (Some(f), Some(t), false) = (on_token, last, rest.is_empty()) {
        call(f, t, &rest);
    }
    Ok(())
}

/// How `nudge_generate_batch` schedules its replies. Fill with
/// `nudge_batch_options_init`, then change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeBatchOptions {
    /// sizeof(NudgeBatchOptions) as the app was compiled.
    pub struct_size: u32,
    /// The most replies decoded together (default 16; 0: all at once). More rows share
    /// each read of the weights; each running reply holds its own KV cache (46 KB per
    /// token on SmolLM2-135M).
    pub max_rows: u32,
}

impl Default for NudgeBatchOptions {
    fn default() -> Self {
        NudgeBatchOptions {
            struct_size: size_of::<Self>() as u32,
            max_rows: BatchOptions::default().max_rows as u32,
        }
    }
}
versioned!(NudgeBatchOptions);

/// Fills `options` with the defaults; `struct_size` is sizeof(NudgeBatchOptions).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_batch_options_init(options: *mut NudgeBatchOptions, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(options, struct_size, "batch"))
}

/// `NudgeBatchTokenFn`'s return: go on.
pub const NUDGE_BATCH_CONTINUE: i32 = 0;
/// `NudgeBatchTokenFn`'s return: end this reply after this token (NUDGE_STOP_CALLBACK).
pub const NUDGE_BATCH_STOP_REPLY: i32 = 1;
/// `NudgeBatchTokenFn`'s return: end every reply now (NUDGE_STOP_CALLBACK; replies not
/// started are empty).
pub const NUDGE_BATCH_STOP_ALL: i32 = 2;

/// Called for each new token of a batch but the end-of-sequence ones, on the thread that
/// called `nudge_generate_batch`: reply `sample` of prompt `prompt_index`, with the text the
/// token adds (as `NudgeTokenFn`). The tokens of one step come one reply after the
/// other. Return NUDGE_BATCH_CONTINUE, NUDGE_BATCH_STOP_REPLY or NUDGE_BATCH_STOP_ALL
/// (any other value stops all).
pub type NudgeBatchTokenFn = Option<
    unsafe extern "C" fn(
        prompt_index: usize,
        sample: u32,
        token_id: u32,
        text: *const c_char,
        text_len: usize,
        user_data: *mut c_void,
    ) -> i32,
>;

/// Generates `samples` replies to each of `prompts[0..n_prompts]` (all in `format`, as
/// `nudge_generate` takes a prompt), decoding up to `batch->max_rows` replies together:
/// every running reply's next token goes through one forward pass, and a prompt is
/// prefilled once for all its samples. Reply k of a prompt samples with `options->seed +
/// k` (so samples differ when `temperature` > 0); every reply is the one `nudge_generate`
/// gives with those options (the same tokens: batching changes the speed, not the
/// result). `options` (NULL: defaults) applies to every reply, `batch` may be NULL
/// (defaults), `on_token` may be NULL.
///
/// `texts_out` is an array of `n_prompts * samples` pointers, reply k of prompt i at
/// `i * samples + k`: on success each is the reply's text, special tokens left out, which
/// the app frees with `nudge_string_free`; on failure all are NULL. `stop_reasons_out`
/// (may be NULL) is an array of as many NUDGE_STOP_* values. A stop asked by the callback
/// is a success. A bad prompt (not a string, bad chat JSON, no tokens, longer than the
/// context) fails the call before any generation, and the message names its index
/// (`prompts[i]`). NUDGE_ERR_BUSY while the adapter is being trained.
#[unsafe(no_mangle)]
// The argument list is the C API (include/nudge.h): it stays as C callers see it.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nudge_generate_batch(
    model: *const NudgeModel,
    adapter: *const NudgeAdapter,
    prompts: *const *const c_char,
    n_prompts: usize,
    format: u32,
    samples: u32,
    options: *const NudgeGenerateOptions,
    batch: *const NudgeBatchOptions,
    on_token: NudgeBatchTokenFn,
    user_data: *mut c_void,
    texts_out: *mut *mut c_char,
    stop_reasons_out: *mut u32,
) -> NudgeStatus {
    guard(|| {
        let samples = samples as usize;
        let n = n_prompts
            .checked_mul(samples)
            .ok_or_else(|| Failure::invalid("n_prompts * samples overflows"))?;
        if n > 0 && texts_out.is_null() {
            return Err(Failure::null("texts_out"));
        }
        for i in 0..n {
            // SAFETY: texts_out points to the caller's array of n pointers.
            unsafe { texts_out.add(i).write(std::ptr::null_mut()) };
        }
        let m = model_arg(model)?;
        let since = m.watch();
        let interrupted = || m.interrupted(since);
        let a = if adapter.is_null() {
            None
        } else {
            Some(handles::get::<AdapterHandle>(adapter, "adapter")?)
        };
        if samples == 0 {
            return Err(Failure::invalid("samples must be at least 1"));
        }
        let prompts = slice_arg(prompts, n_prompts, "prompts")?;
        let o = options::read(options, "options")?;
        let settings = generate_options(&o)?;
        let b = options::read(batch, "batch")?;
        let mut requests = Vec::with_capacity(n);
        for (i, &p) in prompts.iter().enumerate() {
            let what = format!("prompts[{i}]");
            let ids = text_value(p, format, &what)
                .and_then(|v| prompt_ids(&m.model, v))
                .map_err(|f| match f.message.starts_with(&what) {
                    true => f,
                    false => Failure::new(f.status, format!("{what}: {}", f.message)),
                })?;
            requests.extend((0..samples).map(|k| GenerateRequest {
                prompt: ids.clone(),
                opts: GenerateOptions {
                    seed: settings.seed.wrapping_add(k as u64),
                    ..settings.clone()
                },
            }));
        }
        let held = a.as_ref().map(|a| a.snapshot()).transpose()?;
        if let Some(held) = &held {
            held.check_fits(&m.model.config, Path::new("adapter"))?;
        }
        let scheduling = BatchOptions {
            max_rows: b.max_rows as usize,
            ..BatchOptions::default()
        };
        let threads = crate::model::threads(&m, o.threads);
        let replies = with_pool(threads, |pool| -> engine::Result<Vec<engine::generate::Generated>> {
            let mut g = pool.install(|| BatchGenerator::new(&m.model, &requests, held.as_deref(), &scheduling))?;
            g.set_cancel(Cancel::new(&interrupted));
            let mut piece = Vec::new();
            let mut stops = Vec::new();
            // The model runs on the pool; the callback on the calling thread, as documented.
            while pool.install(|| g.step())? {
                let Some(f) = on_token else { continue };
                let mut all = false;
                for t in g.tokens() {
                    piece.clear();
                    piece.extend_from_slice(t.text.as_bytes());
                    piece.push(0);
                    let (prompt, sample) = (t.request / samples, (t.request % samples) as u32);
                    // SAFETY: the app's callback, given a NUL-terminated buffer that lives for the call.
                    match unsafe { f(prompt, sample, t.token, piece.as_ptr().cast(), t.text.len(), user_data) } {
                        NUDGE_BATCH_CONTINUE => {}
                        NUDGE_BATCH_STOP_REPLY => stops.push(t.request),
                        _ => {
                            all = true;
                            break;
                        }
                    }
                }
                for r in stops.drain(..) {
                    g.stop(r);
                }
                if all {
                    g.stop_all();
                }
            }
            g.into_results()
        })?
        .map_err(|e| match e {
            engine::Error::Request { index, source } => {
                let f = Failure::from(*source);
                Failure::new(f.status, format!("prompts[{}]: {}", index / samples, f.message))
            }
            e => Failure::from(e),
        })?;
        for (i, reply) in replies.iter().enumerate() {
            // SAFETY: both arrays have n entries (stop_reasons_out when not NULL).
            unsafe {
                texts_out.add(i).write(string_out(&reply.text));
                if !stop_reasons_out.is_null() {
                    stop_reasons_out.add(i).write(stop_code(reply.stop_reason));
                }
            }
        }
        Ok(())
    })
}

/// Frees a string this library returned (e.g. `nudge_generate`'s text). NULL, a string
/// already freed, and a pointer this library did not return are no-ops.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_string_free(s: *mut c_char) {
    guard_void(|| drop(take_string(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_end_without_padding() {
        crate::assert_packed_end!(NudgeGenerateOptions, n_stop_strings, usize);
        crate::assert_packed_end!(NudgeBatchOptions, max_rows, u32);
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
