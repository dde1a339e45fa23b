//! Chat sessions: a conversation and its KV cache, so each new turn runs through the model
//! only what is new. The session follows its adapter handle: after a swap or a training
//! run its next call starts from an empty cache (the old keys and values were computed
//! with the old weights).

use crate::generate::{NudgeGenerateOptions, NudgeTokenFn, generate_options, stop_code, stream};
use crate::handles::{self, AdapterHandle, ModelHandle, NudgeAdapter, NudgeModel, NudgeSession, SessionHandle};
use crate::model::model_arg;
use crate::options::{self, versioned};
use crate::pool::with_pool;
use crate::status::{Failure, FfiResult, NudgeStatus, guard, guard_void};
use crate::text::{str_arg, string_out, write_opt};
use engine::adapter::Adapter;
use engine::cancel::Cancel;
use engine::generate::{Session, StopReason};
use std::ffi::{c_char, c_void};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

pub(crate) struct SessionState {
    pub session: Session,
    /// The adapter the cache was computed with (None: the base model).
    pub cached_with: Option<Arc<Adapter>>,
}

/// What `nudge_session_info` reports. Set `struct_size` before the call (or use
/// `nudge_session_info_init`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeSessionInfo {
    /// sizeof(NudgeSessionInfo) as the app was compiled; set by the app.
    pub struct_size: u32,
    /// Messages in the conversation (the system prompt included).
    pub n_messages: u32,
    /// Tokens whose keys and values the session holds.
    pub cached_tokens: u64,
    /// Tokens the last call found in the cache instead of running them again.
    pub reused_tokens: u64,
    /// Bytes of the KV cache.
    pub cache_bytes: u64,
}

impl Default for NudgeSessionInfo {
    fn default() -> Self {
        NudgeSessionInfo {
            struct_size: size_of::<Self>() as u32,
            n_messages: 0,
            cached_tokens: 0,
            reused_tokens: 0,
            cache_bytes: 0,
        }
    }
}
versioned!(NudgeSessionInfo);

/// Prepares `info` for `nudge_session_info`: sets its `struct_size` to `struct_size` (pass
/// sizeof(NudgeSessionInfo)) and the other fields to zero. The app owns the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_info_init(info: *mut NudgeSessionInfo, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(info, struct_size, "info"))
}

fn session_arg(session: *const NudgeSession) -> FfiResult<Arc<SessionHandle>> {
    handles::get::<SessionHandle>(session, "session")
}

/// The session's state; a session serves one call at a time (NUDGE_ERR_BUSY otherwise).
fn lock(h: &SessionHandle) -> FfiResult<MutexGuard<'_, SessionState>> {
    match h.state.try_lock() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(Failure::new(
            NudgeStatus::NUDGE_ERR_BUSY,
            "session is in use by another call; a session serves one call at a time",
        )),
    }
}

/// The adapter to apply now, with the cache emptied if it was computed with another.
fn current_adapter(h: &SessionHandle, state: &mut SessionState) -> FfiResult<Option<Arc<Adapter>>> {
    let now = h.adapter.as_ref().map(|a| a.snapshot()).transpose()?;
    if let Some(a) = &now {
        a.check_fits(&h.model.model.config, Path::new("adapter"))?;
    }
    let same = match (&now, &state.cached_with) {
        (None, None) => true,
        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
        _ => false,
    };
    if !same {
        state.session.clear_cache();
        state.cached_with = now.clone();
    }
    Ok(now)
}

/// A new chat session on `model`, replies made with `adapter` (NULL: the base model; the
/// session keeps the adapter handle, so a swap applies from the next call on), opening
/// with `system_prompt` (NULL: none). The session keeps the model open. On failure `*out`
/// is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_new(
    model: *const NudgeModel,
    adapter: *const NudgeAdapter,
    system_prompt: *const c_char,
    out: *mut *mut NudgeSession,
) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        let m = model_arg(model)?;
        let a = match adapter.is_null() {
            true => None,
            false => Some(handles::get::<AdapterHandle>(adapter, "adapter")?),
        };
        if let Some(a) = &a
            && !Arc::ptr_eq(&a.model, &m)
            && a.model.model.config != m.model.config
        {
            return Err(Failure::invalid("adapter is for another model than `model`"));
        }
        let system = match system_prompt.is_null() {
            true => None,
            false => Some(str_arg(system_prompt, "system_prompt")?),
        };
        // A model without a chat template cannot hold a conversation: say so now.
        if !m.model.tokenizer.has_chat_template() {
            return Err(Failure::new(
                NudgeStatus::NUDGE_ERR_UNSUPPORTED,
                format!("model `{}` has no chat template: sessions need one", m.model.name()),
            ));
        }
        let session = Session::new(&m.model, system);
        let h = SessionHandle {
            model: m,
            adapter: a,
            state: Mutex::new(SessionState {
                session,
                cached_with: None,
            }),
        };
        handles::put(out, handles::register(Arc::new(h)));
        Ok(())
    })
}

/// Appends a message (`role` such as "user" or "assistant", `content`) without generating:
/// a conversation the app restores, say. Nothing runs through the model until the next
/// `nudge_session_send` or `nudge_session_logits`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_add(
    session: *mut NudgeSession,
    role: *const c_char,
    content: *const c_char,
) -> NudgeStatus {
    guard(|| {
        let h = session_arg(session)?;
        let role = str_arg(role, "role")?;
        let content = str_arg(content, "content")?;
        lock(&h)?.session.push(role, content)?;
        Ok(())
    })
}

/// Adds `user_text` as the user's message (NULL: none, the reply answers the conversation
/// as it is, e.g. after `nudge_session_truncate` dropped a reply to regenerate it) and
/// generates the assistant's reply, which joins the conversation. Only the tokens after
/// what the session already holds run through the model. Options, callback, outputs and
/// statuses are those of `nudge_generate` (`*text_out` is freed with `nudge_string_free`).
/// A stop asked by the callback keeps the partial reply; a failure (a prompt past the
/// context, NUDGE_ERR_CANCELLED from `nudge_model_interrupt`) leaves the conversation as it
/// was.
#[unsafe(no_mangle)]
// The argument list is the C API (include/nudge.h): it stays as C callers see it.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nudge_session_send(
    session: *mut NudgeSession,
    user_text: *const c_char,
    options: *const NudgeGenerateOptions,
    on_token: NudgeTokenFn,
    user_data: *mut c_void,
    text_out: *mut *mut c_char,
    stop_reason_out: *mut u32,
) -> NudgeStatus {
    guard(|| {
        write_opt(text_out, std::ptr::null_mut());
        let h = session_arg(session)?;
        let user = match user_text.is_null() {
            true => None,
            false => Some(str_arg(user_text, "user_text")?),
        };
        let o = options::read(options, "options")?;
        let settings = generate_options(&o)?;
        let m: &ModelHandle = &h.model;
        let since = m.watch();
        let interrupted = || m.interrupted(since);
        let mut state = lock(&h)?;
        let adapter = current_adapter(&h, &mut state)?;
        let before = state.session.messages().len();
        if let Some(u) = user {
            state.session.push("user", u)?;
        }
        let threads = crate::model::threads(m, o.threads);
        let session = &mut state.session;
        let run = with_pool(threads, |pool| -> engine::Result<(String, StopReason)> {
            let cancel = Some(Cancel::new(&interrupted));
            let mut g = pool.install(|| session.begin_reply(&m.model, adapter.as_deref(), &settings, cancel))?;
            stream(pool, &mut g, on_token, user_data)?;
            let reply = session.end_reply(g)?;
            Ok((reply.text, reply.stop_reason))
        })
        .and_then(|r| r.map_err(Failure::from));
        let (text, reason) = match run {
            Ok(r) => r,
            Err(e) => {
                state.session.truncate(before);
                return Err(e);
            }
        };
        write_opt(stop_reason_out, stop_code(reason));
        if !text_out.is_null() {
            write_opt(text_out, string_out(&text));
        }
        Ok(())
    })
}

/// The logits of the token after the whole conversation, rendered with the model's chat
/// template without a generation prompt (what a fresh prefill of that text gives): runs
/// what the session does not hold yet. `logits` has room for `n` floats; with `logits`
/// NULL only `*n_vocab_out` is set. `*n_vocab_out` (may be NULL) is the vocabulary size;
/// `n` below it is NUDGE_ERR_INVALID.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_logits(
    session: *mut NudgeSession,
    logits: *mut f32,
    n: usize,
    n_vocab_out: *mut usize,
) -> NudgeStatus {
    guard(|| {
        let h = session_arg(session)?;
        let m: &ModelHandle = &h.model;
        let vocab = m.model.config.vocab_size;
        write_opt(n_vocab_out, vocab);
        if logits.is_null() {
            return Ok(());
        }
        if n < vocab {
            return Err(Failure::invalid(format!(
                "n is {n}: the logits need room for {vocab} floats"
            )));
        }
        let since = m.watch();
        let interrupted = || m.interrupted(since);
        let mut state = lock(&h)?;
        let adapter = current_adapter(&h, &mut state)?;
        let session = &mut state.session;
        let l = with_pool(m.threads, |pool| {
            pool.install(|| session.logits(&m.model, adapter.as_deref(), Some(Cancel::new(&interrupted))))
        })??;
        // SAFETY: C gave room for n >= vocab floats (checked above).
        unsafe { std::ptr::copy_nonoverlapping(l.as_ptr(), logits, vocab) };
        Ok(())
    })
}

/// Removes the last `turns` turns (each user message with what follows it). Fails,
/// changing nothing, when the session has fewer user messages.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_rollback(session: *mut NudgeSession, turns: u32) -> NudgeStatus {
    guard(|| {
        let h = session_arg(session)?;
        lock(&h)?.session.rollback(turns as usize)?;
        Ok(())
    })
}

/// Keeps the first `n_messages` messages (the system prompt counts as one); more than the
/// session has is a no-op.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_truncate(session: *mut NudgeSession, n_messages: u32) -> NudgeStatus {
    guard(|| {
        let h = session_arg(session)?;
        lock(&h)?.session.truncate(n_messages as usize);
        Ok(())
    })
}

/// The conversation as a JSON array of `{"role", "content"}` objects (the format
/// NUDGE_CHAT_JSON takes), in `*json_out`, freed with `nudge_string_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_messages(
    session: *const NudgeSession,
    json_out: *mut *mut c_char,
) -> NudgeStatus {
    guard(|| {
        if json_out.is_null() {
            return Err(Failure::null("json_out"));
        }
        write_opt(json_out, std::ptr::null_mut());
        let h = session_arg(session)?;
        let state = lock(&h)?;
        let list: Vec<serde_json::Value> = state
            .session
            .messages()
            .iter()
            .map(|m| serde_json::json!({"role": m.role, "content": m.content}))
            .collect();
        write_opt(json_out, string_out(&serde_json::Value::Array(list).to_string()));
        Ok(())
    })
}

/// Describes the session. Set `out->struct_size = sizeof(NudgeSessionInfo)` first.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_session_info(session: *const NudgeSession, out: *mut NudgeSessionInfo) -> NudgeStatus {
    guard(|| {
        let h = session_arg(session)?;
        let state = lock(&h)?;
        let s = &state.session;
        let info = NudgeSessionInfo {
            struct_size: 0,
            n_messages: s.messages().len() as u32,
            cached_tokens: s.cached_tokens() as u64,
            reused_tokens: s.reused_tokens() as u64,
            cache_bytes: s.cache_bytes() as u64,
        };
        options::write(out, info, "out")
    })
}

/// Releases the session, its cache, and its references to the model and adapter. NULL,
/// or a session already freed, is a no-op.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_session_free(session: *mut NudgeSession) {
    guard_void(|| {
        handles::release::<SessionHandle>(session);
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn layouts_end_without_padding() {
        crate::assert_packed_end!(super::NudgeSessionInfo, cache_bytes, u64);
    }
}
