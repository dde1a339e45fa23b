//! The feedback journal: an app records thumbs and preference pairs in a crash-safe file as
//! they happen, builds a dataset from them when it trains, and marks them consumed after.

use crate::dataset::{chat_row, text_value};
use crate::handles::{self, DatasetHandle, JournalHandle, NudgeDataset, NudgeJournal};
use crate::options::{self, versioned};
use crate::status::{Failure, FfiResult, NudgeStatus, guard, guard_void};
use crate::text::{c_string, slice_arg, str_arg, write_opt};
use engine::data::chat::Content;
use engine::journal::{
    CompactOptions, Durability, Journal, PreferencePair, Prompt, Record, Target, Thumbs, TrainingOptions,
    UnpairedPolicy,
};
use serde_json::Value;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// `NudgeJournalOptions.durability`: every event is fsynced before its call returns.
pub const NUDGE_DURABILITY_EVERY_RECORD: u32 = 0;
/// Events reach the disk at `nudge_journal_sync` and `nudge_journal_free`; until then they
/// survive the app being killed but not a power loss.
pub const NUDGE_DURABILITY_BATCH: u32 = 1;

/// `NudgeJournalDataOptions.target`: preference pairs (DPO and its variants): thumbs up and
/// down on the same prompt are paired.
pub const NUDGE_JOURNAL_PAIRS: u32 = 0;
/// Unpaired rows only (the "kto" loss): thumbs as they are, a pair as one row each side.
pub const NUDGE_JOURNAL_THUMBS: u32 = 1;

/// `NudgeJournalDataOptions.unpaired`: thumbs without a partner become thumbs rows (KTO).
pub const NUDGE_UNPAIRED_THUMBS: u32 = 0;
/// Thumbs without a partner wait for one in a later run.
pub const NUDGE_UNPAIRED_KEEP: u32 = 1;

/// Options of `nudge_journal_open`. Fill with `nudge_journal_options_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeJournalOptions {
    /// sizeof(NudgeJournalOptions) as the app was compiled.
    pub struct_size: u32,
    /// NUDGE_DURABILITY_* (default NUDGE_DURABILITY_EVERY_RECORD).
    pub durability: u32,
}

impl Default for NudgeJournalOptions {
    fn default() -> Self {
        NudgeJournalOptions {
            struct_size: size_of::<Self>() as u32,
            durability: NUDGE_DURABILITY_EVERY_RECORD,
        }
    }
}
versioned!(NudgeJournalOptions);

/// Which events of a journal `nudge_dataset_add_journal` adds, and how. Fill with
/// `nudge_journal_data_options_init`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeJournalDataOptions {
    /// sizeof(NudgeJournalDataOptions) as the app was compiled.
    pub struct_size: u32,
    /// Non-zero (default): only the events new since the last `nudge_journal_mark_trained`.
    pub only_new: u32,
    /// NUDGE_JOURNAL_PAIRS (default) or NUDGE_JOURNAL_THUMBS.
    pub target: u32,
    /// NUDGE_UNPAIRED_THUMBS (default) or NUDGE_UNPAIRED_KEEP.
    pub unpaired: u32,
}

impl Default for NudgeJournalDataOptions {
    fn default() -> Self {
        NudgeJournalDataOptions {
            struct_size: size_of::<Self>() as u32,
            only_new: 1,
            target: NUDGE_JOURNAL_PAIRS,
            unpaired: NUDGE_UNPAIRED_THUMBS,
        }
    }
}
versioned!(NudgeJournalDataOptions);

/// What `nudge_journal_stats` reports. Set `struct_size` before the call.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeJournalStats {
    /// sizeof(NudgeJournalStats) as the app was compiled; set by the app.
    pub struct_size: u32,
    /// Records in the file: thumbs, pairs and training marks.
    pub records: u32,
    pub thumbs: u32,
    pub thumbs_up: u32,
    pub thumbs_down: u32,
    pub pairs: u32,
    pub training_marks: u32,
    /// Thumbs and pairs no training run has consumed yet.
    pub new_since_training: u32,
    /// The sequence number the next event will get.
    pub next_sequence: u64,
    pub file_bytes: u64,
    /// Milliseconds since the Unix epoch of the last training mark; -1 if none.
    pub last_training_ms: i64,
    /// Events the user asked to forget, still in the file until the next compaction (not
    /// counted in the fields above).
    pub forgotten: u64,
}

impl Default for NudgeJournalStats {
    fn default() -> Self {
        NudgeJournalStats {
            struct_size: size_of::<Self>() as u32,
            records: 0,
            thumbs: 0,
            thumbs_up: 0,
            thumbs_down: 0,
            pairs: 0,
            training_marks: 0,
            new_since_training: 0,
            next_sequence: 0,
            file_bytes: 0,
            last_training_ms: -1,
            forgotten: 0,
        }
    }
}
// The first version ended at `last_training_ms`.
versioned!(NudgeJournalStats, [56]);

/// Prepares `stats` for `nudge_journal_stats`: sets its `struct_size` to `struct_size` (pass
/// sizeof(NudgeJournalStats)) and the other fields to "unknown" (zero, -1 for an id or time that
/// may be absent, "" for a string). The app owns the struct.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_stats_init(stats: *mut NudgeJournalStats, struct_size: usize) -> NudgeStatus {
    guard(|| options::init(stats, struct_size, "stats"))
}

/// Fills `options` with the defaults; `struct_size` is sizeof(NudgeJournalOptions).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_options_init(
    options: *mut NudgeJournalOptions,
    struct_size: usize,
) -> NudgeStatus {
    guard(|| options::init(options, struct_size, "options"))
}

/// Fills `options` with the defaults; `struct_size` is sizeof(NudgeJournalDataOptions).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_data_options_init(
    options: *mut NudgeJournalDataOptions,
    struct_size: usize,
) -> NudgeStatus {
    guard(|| options::init(options, struct_size, "options"))
}

/// Opens the journal file at `path`, creating it if missing. A record whose write was
/// interrupted (the app or the device died) is cut off the end; every complete record is
/// kept. One handle at a time may have a file open: a second open of the same file fails.
/// `options` may be NULL (defaults). On failure `*out` is NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_open(
    path: *const c_char,
    options: *const NudgeJournalOptions,
    out: *mut *mut NudgeJournal,
) -> NudgeStatus {
    guard(|| {
        handles::clear_out(out, "out")?;
        let path = str_arg(path, "path")?;
        let o = options::read(options, "options")?;
        let durability = match o.durability {
            NUDGE_DURABILITY_EVERY_RECORD => Durability::EveryRecord,
            NUDGE_DURABILITY_BATCH => Durability::Batch,
            other => {
                return Err(Failure::invalid(format!(
                    "durability {other} is not a NUDGE_DURABILITY_* value"
                )));
            }
        };
        let (journal, recovery) = Journal::open(path, durability)?;
        let h = JournalHandle {
            journal: RwLock::new(journal),
            recovery,
        };
        handles::put(out, handles::register(Arc::new(h)));
        Ok(())
    })
}

/// Syncs what was appended and closes the file (once no call in progress uses it). NULL,
/// or a handle already freed, is a no-op.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_journal_free(journal: *mut NudgeJournal) {
    guard_void(|| {
        handles::release::<JournalHandle>(journal);
    })
}

/// An event's prompt and completions (`format`: NUDGE_TEXT, or NUDGE_CHAT_JSON with each
/// completion one assistant message), under the same rules as the dataset functions and
/// the CLI ([`engine::data::chat`]).
fn event_args(
    prompt: *const c_char,
    completions: &[(&str, *const c_char)],
    format: u32,
) -> FfiResult<(Prompt, Vec<String>)> {
    let p = text_value(prompt, format, "prompt")?;
    let cs = completions
        .iter()
        .map(|&(what, c)| Ok((what, text_value(c, format, what)?)))
        .collect::<FfiResult<Vec<_>>>()?;
    let refs: Vec<(&str, &Value)> = cs.iter().map(|(w, v)| (*w, v)).collect();
    let (p, cs) = chat_row("", &p, &refs)?;
    let prompt = match p {
        Content::Text(t) => Prompt::Text(t),
        Content::Messages(m) => Prompt::Chat(m),
    };
    Ok((prompt, cs.into_iter().map(Content::into_answer).collect()))
}

fn strength_arg(strength: f32) -> Option<f32> {
    (!strength.is_nan()).then_some(strength)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn append(journal: *mut NudgeJournal, record: Record, seq_out: *mut u64) -> FfiResult<()> {
    let h = handles::get::<JournalHandle>(journal, "journal")?;
    let seq = handles::write(&h.journal, "journal")?.append(record)?;
    write_opt(seq_out, seq);
    Ok(())
}

/// Records a thumbs-up (`thumbs_up` non-zero) or thumbs-down on `completion` as the answer
/// to `prompt` (`format`: NUDGE_TEXT, or NUDGE_CHAT_JSON with the completion as one
/// assistant message). `id` (non-empty) is the app's name for the event: an event
/// repeating an earlier id is a retry and does not train twice. `strength` weighs the
/// event in training (1: ordinary; NaN: none given, which trains as 1). A later thumb on
/// the same prompt and completion with the other label replaces the earlier one.
/// `seq_out` (may be NULL) receives the event's sequence number.
#[unsafe(no_mangle)]
// The argument list is the C API (include/nudge.h): it stays as C callers see it.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nudge_journal_add_thumb(
    journal: *mut NudgeJournal,
    id: *const c_char,
    prompt: *const c_char,
    completion: *const c_char,
    format: u32,
    thumbs_up: u32,
    strength: f32,
    seq_out: *mut u64,
) -> NudgeStatus {
    guard(|| {
        let id = str_arg(id, "id")?.to_string();
        let (prompt, mut completions) = event_args(prompt, &[("completion", completion)], format)?;
        let record = Record::Thumbs(Thumbs {
            id,
            prompt,
            completion: completions.remove(0),
            up: thumbs_up != 0,
            strength: strength_arg(strength),
            timestamp_ms: now_ms(),
        });
        append(journal, record, seq_out)
    })
}

/// Records that the user preferred `chosen` over `rejected` as the answer to `prompt`
/// (`format`, `id`, `strength` and `seq_out` as for `nudge_journal_add_thumb`).
#[unsafe(no_mangle)]
// The argument list is the C API (include/nudge.h): it stays as C callers see it.
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn nudge_journal_add_pair(
    journal: *mut NudgeJournal,
    id: *const c_char,
    prompt: *const c_char,
    chosen: *const c_char,
    rejected: *const c_char,
    format: u32,
    strength: f32,
    seq_out: *mut u64,
) -> NudgeStatus {
    guard(|| {
        let id = str_arg(id, "id")?.to_string();
        let (prompt, mut answers) = event_args(prompt, &[("chosen", chosen), ("rejected", rejected)], format)?;
        let rejected = answers.remove(1);
        let record = Record::Pair(PreferencePair {
            id,
            prompt,
            chosen: answers.remove(0),
            rejected,
            strength: strength_arg(strength),
            timestamp_ms: now_ms(),
        });
        append(journal, record, seq_out)
    })
}

/// Fsyncs the events appended since the last sync (with NUDGE_DURABILITY_BATCH; with
/// every-record durability they already are).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_sync(journal: *mut NudgeJournal) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<JournalHandle>(journal, "journal")?;
        handles::write(&h.journal, "journal")?.sync()?;
        Ok(())
    })
}

/// Counts the journal's records. Set `out->struct_size = sizeof(NudgeJournalStats)` first.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_stats(journal: *const NudgeJournal, out: *mut NudgeJournalStats) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<JournalHandle>(journal, "journal")?;
        let s = handles::read(&h.journal, "journal")?.stats();
        let u = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        let stats = NudgeJournalStats {
            struct_size: 0,
            records: u(s.records),
            thumbs: u(s.thumbs),
            thumbs_up: u(s.up),
            thumbs_down: u(s.down),
            pairs: u(s.pairs),
            training_marks: u(s.training_marks),
            new_since_training: u(s.new_since_training),
            next_sequence: s.next_sequence,
            file_bytes: s.file_bytes,
            last_training_ms: s.last_training_ms.map_or(-1, |t| i64::try_from(t).unwrap_or(i64::MAX)),
            forgotten: s.forgotten as u64,
        };
        options::write(out, stats, "out")
    })
}

fn training_options(o: &NudgeJournalDataOptions) -> FfiResult<TrainingOptions> {
    let target = match o.target {
        NUDGE_JOURNAL_PAIRS => Target::Dpo,
        NUDGE_JOURNAL_THUMBS => Target::Kto,
        other => {
            return Err(Failure::invalid(format!(
                "target {other} is not a NUDGE_JOURNAL_* value"
            )));
        }
    };
    let unpaired = match o.unpaired {
        NUDGE_UNPAIRED_THUMBS => UnpairedPolicy::Kto,
        NUDGE_UNPAIRED_KEEP => UnpairedPolicy::Keep,
        other => {
            return Err(Failure::invalid(format!(
                "unpaired {other} is not a NUDGE_UNPAIRED_* value"
            )));
        }
    };
    Ok(TrainingOptions {
        only_new: o.only_new != 0,
        target,
        unpaired,
        truncation: Default::default(),
    })
}

/// Adds the journal's events to the dataset as training examples: retries, duplicates and
/// thumbs the user took back are left out; with NUDGE_JOURNAL_PAIRS thumbs up and down on
/// the same prompt become pairs (newest with newest). `options` may be NULL (defaults: new
/// events only, pairs, leftover thumbs as thumbs). The dataset remembers what it took, for
/// `nudge_journal_mark_trained`. `n_pairs` and `n_thumbs` (may be NULL) receive the
/// numbers of examples added.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_dataset_add_journal(
    dataset: *mut NudgeDataset,
    journal: *const NudgeJournal,
    options: *const NudgeJournalDataOptions,
    n_pairs: *mut usize,
    n_thumbs: *mut usize,
) -> NudgeStatus {
    guard(|| {
        let d = handles::get::<DatasetHandle>(dataset, "dataset")?;
        let h = handles::get::<JournalHandle>(journal, "journal")?;
        let o = options::read(options, "options")?;
        let opts = training_options(&o)?;
        let plan = handles::read(&h.journal, "journal")?.plan(&opts);
        let mut rows = handles::write(&d.rows, "dataset")?;
        rows.extend(plan.rows().into_iter().map(|(_, row)| row));
        d.journal_marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(journal.addr(), plan.mark(0));
        write_opt(n_pairs, plan.pairs.len());
        write_opt(n_thumbs, plan.unpaired.len());
        Ok(())
    })
}

/// Records in the journal that a training run consumed the events `dataset` took from it
/// (the last `nudge_dataset_add_journal` of this journal into it): call it once training on
/// the dataset succeeded, so that the next dataset of new events leaves them out. Thumbs
/// kept waiting for a partner (NUDGE_UNPAIRED_KEEP) stay new. NUDGE_ERR_INVALID if the
/// dataset took nothing from this journal handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_mark_trained(
    journal: *mut NudgeJournal,
    dataset: *const NudgeDataset,
) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<JournalHandle>(journal, "journal")?;
        let d = handles::get::<DatasetHandle>(dataset, "dataset")?;
        let mark = d
            .journal_marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&journal.addr())
            .cloned()
            .ok_or_else(|| {
                Failure::invalid("the dataset took no events from this journal (see nudge_dataset_add_journal)")
            })?;
        if let Some(mut mark) = mark {
            mark.timestamp_ms = now_ms();
            handles::write(&h.journal, "journal")?.append(Record::TrainingMark(mark))?;
        }
        Ok(())
    })
}

/// `NudgeEvent.kind`: a thumbs-up or thumbs-down on one answer.
pub const NUDGE_EVENT_THUMB: u32 = 0;
/// `NudgeEvent.kind`: an explicit preference of one answer over another.
pub const NUDGE_EVENT_PAIR: u32 = 1;

/// One event of a journal, as `nudge_journal_list` shows it. The strings belong to the
/// library and are valid during the callback only. (Layout frozen.)
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NudgeEvent {
    /// The event's sequence number (what the forget functions take).
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// NUDGE_EVENT_THUMB or NUDGE_EVENT_PAIR.
    pub kind: u32,
    /// NUDGE_TEXT, or NUDGE_CHAT_JSON when `prompt` is a JSON array of chat messages.
    pub format: u32,
    /// Thumbs: 1 for up, 0 for down; pairs: 0.
    pub thumbs_up: u32,
    /// 1 when no training run has consumed the event yet.
    pub is_new: u32,
    /// How strongly it was meant; NaN when the app gave none.
    pub strength: f32,
    /// The app's id of the event.
    pub id: *const c_char,
    pub prompt: *const c_char,
    /// Thumbs: the rated answer; pairs: the chosen one.
    pub completion: *const c_char,
    /// Pairs: the rejected answer; thumbs: NULL.
    pub rejected: *const c_char,
}

/// Called by `nudge_journal_list` once per event, oldest first; non-zero stops the listing.
pub type NudgeEventFn = Option<unsafe extern "C" fn(event: *const NudgeEvent, user_data: *mut c_void) -> i32>;

/// Shows the journal's events (thumbs and pairs, not those forgotten; retries and
/// duplicates included, as recorded) to `on_event`, oldest first, on the calling thread.
/// The journal is read-locked meanwhile: the callback must not write to it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_list(
    journal: *const NudgeJournal,
    on_event: NudgeEventFn,
    user_data: *mut c_void,
) -> NudgeStatus {
    guard(|| {
        let f = on_event.ok_or_else(|| Failure::null("on_event"))?;
        let h = handles::get::<JournalHandle>(journal, "journal")?;
        let j = handles::read(&h.journal, "journal")?;
        for e in j.live_events() {
            let (prompt, format) = match e.record.prompt() {
                Some(Prompt::Text(t)) => (c_string(t), crate::dataset::NUDGE_TEXT),
                Some(Prompt::Chat(m)) => (
                    c_string(&serde_json::to_string(m).expect("messages serialize")),
                    crate::dataset::NUDGE_CHAT_JSON,
                ),
                None => continue,
            };
            let (kind, id, completion, rejected, up, strength) = match &e.record {
                Record::Thumbs(t) => (NUDGE_EVENT_THUMB, &t.id, &t.completion, None, t.up, t.strength),
                Record::Pair(p) => (NUDGE_EVENT_PAIR, &p.id, &p.chosen, Some(&p.rejected), false, p.strength),
                _ => continue,
            };
            let (id, completion, rejected) = (c_string(id), c_string(completion), rejected.map(|r| c_string(r)));
            let event = NudgeEvent {
                seq: e.seq,
                timestamp_ms: e.record.timestamp_ms(),
                kind,
                format,
                thumbs_up: up as u32,
                is_new: j.is_new(e.seq) as u32,
                strength: strength.unwrap_or(f32::NAN),
                id: id.as_ptr(),
                prompt: prompt.as_ptr(),
                completion: completion.as_ptr(),
                rejected: rejected.as_ref().map_or(std::ptr::null(), |r| r.as_ptr()),
            };
            // SAFETY: the app's callback, given an event whose strings outlive the call.
            if unsafe { f(&event, user_data) } != 0 {
                break;
            }
        }
        Ok(())
    })
}

fn forget(
    journal: *mut NudgeJournal,
    n_forgotten: *mut usize,
    which: impl FnOnce(&Journal) -> FfiResult<Vec<u64>>,
) -> FfiResult<()> {
    let h = handles::get::<JournalHandle>(journal, "journal")?;
    let mut j = handles::write(&h.journal, "journal")?;
    let seqs = which(&j)?;
    let done = j.forget(&seqs, now_ms())?;
    write_opt(n_forgotten, done.len());
    Ok(())
}

/// Forgets the events `seqs` (`n` sequence numbers, as `nudge_journal_list` gives them):
/// from now on they count for nothing (datasets, listings, duplicates), durably as an add;
/// `nudge_journal_compact` removes them from the file. Events already forgotten are passed
/// over; a number that names no event is NUDGE_ERR_INVALID (nothing is forgotten).
/// `n_forgotten` (may be NULL) receives how many were newly forgotten.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_forget(
    journal: *mut NudgeJournal,
    seqs: *const u64,
    n: usize,
    n_forgotten: *mut usize,
) -> NudgeStatus {
    guard(|| {
        let seqs = slice_arg(seqs, n, "seqs")?.to_vec();
        forget(journal, n_forgotten, |_| Ok(seqs))
    })
}

/// Forgets every event whose prompt is `prompt` (`format` as for the add functions): what
/// an app calls when the user asks it to forget a conversation.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_forget_prompt(
    journal: *mut NudgeJournal,
    prompt: *const c_char,
    format: u32,
    n_forgotten: *mut usize,
) -> NudgeStatus {
    guard(|| {
        let (prompt, _) = event_args(prompt, &[], format)?;
        forget(journal, n_forgotten, |j| Ok(j.events_of_prompt(&prompt)))
    })
}

/// Forgets every event recorded from `from_ms` to `to_ms` (milliseconds since the Unix
/// epoch, both included).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_forget_between(
    journal: *mut NudgeJournal,
    from_ms: u64,
    to_ms: u64,
    n_forgotten: *mut usize,
) -> NudgeStatus {
    guard(|| forget(journal, n_forgotten, |j| Ok(j.events_between(from_ms, to_ms))))
}

/// Rewrites the journal without what no longer counts: forgotten events (gone from the
/// file once this returns), retries, duplicates, thumbs taken back, old training marks,
/// and with `drop_trained` 1 the events a training run consumed. Atomic: a crash leaves
/// the old file or the new one. Datasets built from the journal are the same after.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_compact(journal: *mut NudgeJournal, drop_trained: u32) -> NudgeStatus {
    guard(|| {
        let h = handles::get::<JournalHandle>(journal, "journal")?;
        handles::write(&h.journal, "journal")?.compact(CompactOptions {
            drop_trained: drop_trained != 0,
        })?;
        Ok(())
    })
}

/// What opening the journal did: `*cut_bytes` (required) receives the bytes of an
/// unfinished write cut off the end (0 when the file ended cleanly), `*cut_at` (may be
/// NULL) where they began.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_recovered(
    journal: *const NudgeJournal,
    cut_bytes: *mut u64,
    cut_at: *mut u64,
) -> NudgeStatus {
    guard(|| {
        if cut_bytes.is_null() {
            return Err(Failure::null("cut_bytes"));
        }
        let h = handles::get::<JournalHandle>(journal, "journal")?;
        write_opt(cut_bytes, h.recovery.as_ref().map_or(0, |r| r.cut_bytes));
        write_opt(cut_at, h.recovery.as_ref().map_or(0, |r| r.offset));
        Ok(())
    })
}

/// Repairs the journal at `path` (not open elsewhere) when damage in its middle makes
/// `nudge_journal_open` refuse it (NUDGE_ERR_FORMAT naming the record): rewrites it without
/// the damaged stretches. `*dropped_bytes` (may be NULL) receives how many bytes were
/// passed over. Every intact record is kept.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nudge_journal_repair(path: *const c_char, dropped_bytes: *mut u64) -> NudgeStatus {
    guard(|| {
        let path = str_arg(path, "path")?;
        let (j, report) = Journal::repair(path, Durability::EveryRecord)?;
        j.close()?;
        let tail = report.tail.as_ref().map_or(0, |t| t.cut_bytes);
        write_opt(
            dropped_bytes,
            report.skipped.iter().map(|s| s.bytes).sum::<u64>() + tail,
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{NUDGE_CHAT_JSON, NUDGE_TEXT};

    #[test]
    fn layouts_end_without_padding() {
        crate::assert_packed_end!(NudgeJournalOptions, durability, u32);
        crate::assert_packed_end!(NudgeJournalDataOptions, unpaired, u32);
        crate::assert_packed_end!(NudgeJournalStats, forgotten, u64);
    }

    #[test]
    fn data_options_map_to_the_engine_and_bad_ones_are_refused() {
        let t = training_options(&NudgeJournalDataOptions::default()).unwrap();
        assert_eq!(
            t,
            TrainingOptions {
                only_new: true,
                ..TrainingOptions::default()
            }
        );
        for o in [
            NudgeJournalDataOptions {
                target: 2,
                ..Default::default()
            },
            NudgeJournalDataOptions {
                unpaired: 2,
                ..Default::default()
            },
        ] {
            assert_eq!(
                training_options(&o).err().unwrap().status,
                NudgeStatus::NUDGE_ERR_INVALID
            );
        }
    }

    #[test]
    fn chat_completions_are_one_assistant_message() {
        let hi = cr#"[{"role":"user","content":"hi"}]"#;
        let ok = cr#"[{"role":"assistant","content":"Paris."}]"#;
        let (p, c) = event_args(hi.as_ptr(), &[("c", ok.as_ptr())], NUDGE_CHAT_JSON).unwrap();
        assert!(matches!(p, Prompt::Chat(m) if m.len() == 1));
        assert_eq!(c, ["Paris."]);
        let (_, c) = event_args(c"q".as_ptr(), &[("c", ok.as_ptr())], NUDGE_TEXT).unwrap();
        assert_eq!(c, [ok.to_str().unwrap()]);
        for bad in [cr#"[{"role":"user","content":"x"}]"#, cr#"[]"#, cr#"not json"#] {
            let e = event_args(hi.as_ptr(), &[("c", bad.as_ptr())], NUDGE_CHAT_JSON)
                .err()
                .unwrap();
            assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID, "{bad:?}");
        }
        assert!(event_args(c"[]".as_ptr(), &[("c", ok.as_ptr())], NUDGE_CHAT_JSON).is_err());
    }

    #[test]
    fn the_c_api_follows_the_shared_chat_rules() {
        // The cases the library and `nudge journal ingest` run (tests/data/chat_rules.jsonl):
        // the journal and the dataset functions accept and refuse the same inputs.
        use crate::dataset::{NudgeThumb, nudge_dataset_add_thumbs, nudge_dataset_free, nudge_dataset_new};
        use std::ffi::CString;
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/chat_rules.jsonl");
        let dir = std::env::temp_dir().join(format!("nudge-ffi-chat-rules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = CString::new(dir.join("j.nj").to_str().unwrap()).unwrap();
        let (mut j, mut ds) = (std::ptr::null_mut(), std::ptr::null_mut());
        unsafe {
            assert_eq!(
                nudge_journal_open(path.as_ptr(), std::ptr::null(), &mut j),
                NudgeStatus::NUDGE_OK
            );
            assert_eq!(nudge_dataset_new(&mut ds), NudgeStatus::NUDGE_OK);
        }
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let (case, ok) = (v["case"].as_str().unwrap(), v["ok"].as_bool().unwrap());
            // Two strings are text; anything else goes in as JSON (which must be a list).
            let text = v["prompt"].is_string() && v["completion"].is_string();
            let arg = |x: &Value| {
                CString::new(if text {
                    x.as_str().unwrap().to_string()
                } else {
                    x.to_string()
                })
            };
            let (p, c) = (arg(&v["prompt"]).unwrap(), arg(&v["completion"]).unwrap());
            let format = if text { NUDGE_TEXT } else { NUDGE_CHAT_JSON };
            let id = CString::new(case).unwrap();
            let thumb = NudgeThumb {
                prompt: p.as_ptr(),
                completion: c.as_ptr(),
                thumbs_up: 1,
            };
            let (journal, dataset) = unsafe {
                (
                    nudge_journal_add_thumb(
                        j,
                        id.as_ptr(),
                        p.as_ptr(),
                        c.as_ptr(),
                        format,
                        1,
                        f32::NAN,
                        std::ptr::null_mut(),
                    ),
                    nudge_dataset_add_thumbs(ds, &thumb, 1, format),
                )
            };
            assert_eq!(journal == NudgeStatus::NUDGE_OK, ok, "journal: {case}");
            assert_eq!(dataset == NudgeStatus::NUDGE_OK, ok, "dataset: {case}");
        }
        nudge_journal_free(j);
        nudge_dataset_free(ds);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
