//! Handles: what C holds is an id, never an address. A process-wide table maps live ids to
//! reference-counted objects, so a freed, foreign or wrong-kind handle is refused with a
//! status instead of being dereferenced, freeing twice is harmless, and freeing a handle
//! while another thread uses it only drops the table's reference (the call in progress
//! holds its own). Ids are never reused within a process.

use crate::status::{Failure, FfiResult, NudgeStatus};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

/// An open base model (opaque).
pub struct NudgeModel {
    _opaque: [u8; 0],
}

/// A LoRA adapter for one model (opaque).
pub struct NudgeAdapter {
    _opaque: [u8; 0],
}

/// Training examples held in memory (opaque).
pub struct NudgeDataset {
    _opaque: [u8; 0],
}

/// An open feedback journal file (opaque).
pub struct NudgeJournal {
    _opaque: [u8; 0],
}

/// A chat session: a conversation and its KV cache (opaque).
pub struct NudgeSession {
    _opaque: [u8; 0],
}

pub(crate) struct ModelHandle {
    pub model: engine::model::Model,
    /// Worker threads of the calls on this model (0: one per core).
    pub threads: usize,
    /// Raised by `nudge_model_interrupt`: a call running on the model stops once the count
    /// differs from what it was when the call began.
    pub interrupts: std::sync::atomic::AtomicU64,
}

impl ModelHandle {
    /// The count at the start of a call; `interrupted` tells whether it has moved since.
    pub fn watch(&self) -> u64 {
        self.interrupts.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn interrupted(&self, since: u64) -> bool {
        self.watch() != since
    }
}

pub(crate) struct AdapterHandle {
    /// The model the adapter was made for; it stays open while the adapter lives.
    pub model: Arc<ModelHandle>,
    /// What the handle holds now. A call that applies the adapter takes the `Arc` and lets
    /// go of the lock at once, so a swap or a training run that starts meanwhile does not
    /// wait for it (the call finishes with the weights it started with); training holds
    /// the lock for its whole run.
    pub adapter: RwLock<Arc<engine::adapter::Adapter>>,
}

impl AdapterHandle {
    /// The adapter as it is now, for a call that applies it; NUDGE_ERR_BUSY while it is
    /// being trained.
    pub fn snapshot(&self) -> FfiResult<Arc<engine::adapter::Adapter>> {
        Ok(read(&self.adapter, "adapter")?.clone())
    }
}

/// One example as the app gave it: a TRL row (`prompt`, `chosen`, `rejected` or
/// `prompt`, `completion`, `label`), tokenized when a run starts.
pub(crate) struct DatasetHandle {
    pub rows: RwLock<Vec<serde_json::Value>>,
    /// Per journal handle (by id) the dataset took events from: the training mark that
    /// says those events were consumed (None: the journal was empty).
    pub journal_marks: Mutex<BTreeMap<usize, Option<engine::journal::TrainingMark>>>,
}

pub(crate) struct JournalHandle {
    pub journal: RwLock<engine::journal::Journal>,
    /// What opening the file cut off its end (a write the app or device did not finish).
    pub recovery: Option<engine::journal::Recovery>,
}

pub(crate) struct SessionHandle {
    pub model: Arc<ModelHandle>,
    /// The adapter handle the replies use (its current weights at each call).
    pub adapter: Option<Arc<AdapterHandle>>,
    pub state: Mutex<crate::session::SessionState>,
}

pub(crate) enum Entry {
    Model(Arc<ModelHandle>),
    Adapter(Arc<AdapterHandle>),
    Dataset(Arc<DatasetHandle>),
    Journal(Arc<JournalHandle>),
    Session(Arc<SessionHandle>),
}

static TABLE: Mutex<BTreeMap<usize, Entry>> = Mutex::new(BTreeMap::new());
/// Ids step by 16 so that they look like aligned addresses to tools that print them.
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

fn table() -> MutexGuard<'static, BTreeMap<usize, Entry>> {
    // Nothing panics while the table is locked; a poisoned lock still holds a whole map.
    TABLE.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) trait Kind: Sized {
    /// The opaque type C sees.
    type C;
    const NAME: &'static str;
    fn wrap(this: Arc<Self>) -> Entry;
    fn unwrap(e: &Entry) -> Option<&Arc<Self>>;
}

macro_rules! kind {
    ($t:ty, $c:ty, $variant:ident, $name:literal) => {
        impl Kind for $t {
            type C = $c;
            const NAME: &'static str = $name;
            fn wrap(this: Arc<Self>) -> Entry {
                Entry::$variant(this)
            }
            fn unwrap(e: &Entry) -> Option<&Arc<Self>> {
                match e {
                    Entry::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}

kind!(ModelHandle, NudgeModel, Model, "model");
kind!(AdapterHandle, NudgeAdapter, Adapter, "adapter");
kind!(DatasetHandle, NudgeDataset, Dataset, "dataset");
kind!(JournalHandle, NudgeJournal, Journal, "journal");
kind!(SessionHandle, NudgeSession, Session, "session");

/// Enters an object in the table and returns its handle.
pub(crate) fn register<T: Kind>(object: Arc<T>) -> *mut T::C {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).wrapping_mul(16);
    table().insert(id, T::wrap(object));
    std::ptr::without_provenance_mut(id)
}

/// The object behind a live handle of kind `T`; `what` names the argument in errors.
pub(crate) fn get<T: Kind>(handle: *const T::C, what: &str) -> FfiResult<Arc<T>> {
    if handle.is_null() {
        return Err(Failure::null(what));
    }
    table().get(&handle.addr()).and_then(T::unwrap).cloned().ok_or_else(|| {
        Failure::invalid(format!(
            "{what} is not a live {} handle (it was freed, or is another kind of handle)",
            T::NAME
        ))
    })
}

/// Drops the table's reference; false if the handle was not live.
pub(crate) fn release<T: Kind>(handle: *const T::C) -> bool {
    if handle.is_null() {
        return false;
    }
    let mut t = table();
    let live = t.get(&handle.addr()).is_some_and(|e| T::unwrap(e).is_some());
    // The object is dropped after the table is unlocked (dropping a model unmaps files).
    let entry = if live { t.remove(&handle.addr()) } else { None };
    drop(t);
    entry.is_some()
}

/// The number of live handles of every kind: those created and not yet freed (for an
/// app's leak checks).
#[unsafe(no_mangle)]
pub extern "C" fn nudge_live_handles() -> usize {
    std::panic::catch_unwind(|| table().len()).unwrap_or(0)
}

/// Shared access that never waits: an exclusive user makes it `NUDGE_ERR_BUSY`.
pub(crate) fn read<'a, T>(lock: &'a RwLock<T>, what: &str) -> FfiResult<RwLockReadGuard<'a, T>> {
    match lock.try_read() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(busy(what)),
    }
}

/// Exclusive access that never waits: any other user makes it `NUDGE_ERR_BUSY`.
pub(crate) fn write<'a, T>(lock: &'a RwLock<T>, what: &str) -> FfiResult<RwLockWriteGuard<'a, T>> {
    match lock.try_write() {
        Ok(g) => Ok(g),
        Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
        Err(TryLockError::WouldBlock) => Err(busy(what)),
    }
}

fn busy(what: &str) -> Failure {
    Failure::new(
        NudgeStatus::NUDGE_ERR_BUSY,
        format!("{what} is in use by another call (e.g. a training run); try again when it returns"),
    )
}

/// Writes a new handle to an output argument (which must not be NULL).
pub(crate) fn put<C>(out: *mut *mut C, handle: *mut C) {
    // SAFETY: the caller checked `out` is not NULL; C gave a pointer to a pointer slot.
    unsafe { out.write(handle) }
}

/// Checks an output argument and clears it, so that it reads NULL if the call fails.
pub(crate) fn clear_out<C>(out: *mut *mut C, what: &str) -> FfiResult<()> {
    if out.is_null() {
        return Err(Failure::null(what));
    }
    put(out, std::ptr::null_mut());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> Arc<DatasetHandle> {
        Arc::new(DatasetHandle {
            rows: RwLock::new(Vec::new()),
            journal_marks: Mutex::new(BTreeMap::new()),
        })
    }

    #[test]
    fn a_freed_handle_is_refused_and_freeing_twice_is_harmless() {
        let h = register(dataset());
        assert!(get::<DatasetHandle>(h, "d").is_ok());
        assert!(release::<DatasetHandle>(h));
        assert!(!release::<DatasetHandle>(h));
        let e = get::<DatasetHandle>(h, "d").err().unwrap();
        assert_eq!(e.status, NudgeStatus::NUDGE_ERR_INVALID);
    }

    #[test]
    fn a_handle_of_another_kind_is_refused_and_not_freed() {
        let h = register(dataset());
        let as_model = h.cast::<NudgeModel>();
        assert!(get::<ModelHandle>(as_model, "m").is_err());
        assert!(!release::<ModelHandle>(as_model));
        assert!(get::<DatasetHandle>(h, "d").is_ok());
        assert!(release::<DatasetHandle>(h));
    }

    #[test]
    fn a_reference_taken_before_free_stays_usable() {
        let d = dataset();
        let h = register(d.clone());
        let held = get::<DatasetHandle>(h, "d").unwrap();
        drop(d);
        assert!(release::<DatasetHandle>(h));
        write(&held.rows, "d").unwrap().push(serde_json::Value::Null);
        assert_eq!(Arc::strong_count(&held), 1);
    }

    #[test]
    fn exclusive_and_shared_use_exclude_each_other_without_waiting() {
        let lock = RwLock::new(0);
        let r = read(&lock, "x").unwrap();
        assert!(read(&lock, "x").is_ok());
        assert_eq!(write(&lock, "x").err().unwrap().status, NudgeStatus::NUDGE_ERR_BUSY);
        drop(r);
        let w = write(&lock, "x").unwrap();
        assert_eq!(read(&lock, "x").err().unwrap().status, NudgeStatus::NUDGE_ERR_BUSY);
        drop(w);
    }
}
