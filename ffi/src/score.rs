//! Scoring: the log-probability of a completion given a prompt, with or without an adapter.

use crate::dataset::{text_value, tokenize_one};
use crate::handles::{self, AdapterHandle, NudgeAdapter, NudgeModel};
use crate::model::model_arg;
use crate::pool::with_pool;
use crate::status::{Failure, NudgeStatus, guard};
use crate::text::write_opt;
use engine::cancel::Cancel;
use engine::score::ScoreItem;
use std::ffi::c_char;
use std::path::Path;

/// The log-probability (natural log, summed over tokens) of `completion` after `prompt`
/// under `model`, with `adapter` applied (NULL: the base model). The text is tokenized as
/// training sees it (`format`: NUDGE_TEXT appends the EOS token to the completion;
/// NUDGE_CHAT_JSON renders both with the chat template). `n_tokens` (may be NULL) receives
/// the number of completion tokens scored. The adapter must fit the model's shape; it may
/// come from another handle of the same model. NUDGE_ERR_BUSY while the adapter is being
/// trained. Any number of threads may score with the same model and adapter at once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_score(
    model: *const NudgeModel,
    adapter: *const NudgeAdapter,
    prompt: *const c_char,
    completion: *const c_char,
    format: u32,
    logp: *mut f64,
    n_tokens: *mut u32,
) -> NudgeStatus {
    guard(|| {
        if logp.is_null() {
            return Err(Failure::null("logp"));
        }
        let m = model_arg(model)?;
        let since = m.watch();
        let a = if adapter.is_null() {
            None
        } else {
            Some(handles::get::<AdapterHandle>(adapter, "adapter")?)
        };
        let prompt = text_value(prompt, format, "prompt")?;
        let completion = text_value(completion, format, "completion")?;
        let held = a.as_ref().map(|a| a.snapshot()).transpose()?;
        if let Some(held) = &held {
            held.check_fits(&m.model.config, Path::new("adapter"))?;
        }
        let adapter_ref = held.as_deref();
        let (p, c) = tokenize_one(&m.model, prompt, completion)?;
        let item = ScoreItem {
            prompt: &p,
            completions: vec![&c],
        };
        let interrupted = || m.interrupted(since);
        let cancel = Some(Cancel::new(&interrupted));
        let scored = with_pool(m.threads, |pool| {
            pool.install(|| m.model.score_packed_cancel(&[item], adapter_ref, cancel))
        })??;
        let s = scored
            .first()
            .and_then(|per| per.first())
            .ok_or_else(|| Failure::new(NudgeStatus::NUDGE_ERR_PANIC, "scoring returned no result"))?;
        write_opt(logp, s.logp);
        write_opt(n_tokens, c.len() as u32);
        Ok(())
    })
}
