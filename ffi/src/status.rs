//! Status codes, the calling thread's last error message, and the panic boundary every
//! exported function runs inside.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// What a call returned. The values are part of the ABI: they are never renumbered, and
/// new codes only get new numbers.
#[repr(C)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NudgeStatus {
    /// Success.
    NUDGE_OK = 0,
    /// A required pointer argument (handle, string, array or output) was NULL.
    NUDGE_ERR_NULL = 1,
    /// A string argument is not valid UTF-8.
    NUDGE_ERR_UTF8 = 2,
    /// The operating system refused a read, write, map or rename.
    NUDGE_ERR_IO = 3,
    /// A file (model, adapter, data) is malformed or does not fit the model.
    NUDGE_ERR_FORMAT = 4,
    /// An argument or option is out of its domain, a handle is not a live handle of the
    /// expected kind, or the input cannot be used (e.g. a prompt longer than the context).
    NUDGE_ERR_INVALID = 5,
    /// The handle is in use by another call that needs it exclusively (e.g. training).
    NUDGE_ERR_BUSY = 6,
    /// The progress callback asked the run to stop; what was done is kept.
    NUDGE_ERR_CANCELLED = 7,
    /// An internal error (a bug) was caught at the API boundary; the handles used by the
    /// call stay valid, but a trained adapter's values are unspecified.
    NUDGE_ERR_PANIC = 8,
    /// The file or option asks for something this build does not implement (e.g. an
    /// unsupported model architecture).
    NUDGE_ERR_UNSUPPORTED = 9,
    /// A buffer the call needs (activations of a long input, an adapter of a high rank, a
    /// KV cache) could not be allocated; the handles are as they were before the call.
    NUDGE_ERR_NO_MEMORY = 10,
}

use NudgeStatus::*;

impl NudgeStatus {
    /// Every status, in value order.
    pub(crate) const ALL: [NudgeStatus; 11] = [
        NUDGE_OK,
        NUDGE_ERR_NULL,
        NUDGE_ERR_UTF8,
        NUDGE_ERR_IO,
        NUDGE_ERR_FORMAT,
        NUDGE_ERR_INVALID,
        NUDGE_ERR_BUSY,
        NUDGE_ERR_CANCELLED,
        NUDGE_ERR_PANIC,
        NUDGE_ERR_UNSUPPORTED,
        NUDGE_ERR_NO_MEMORY,
    ];

    pub(crate) fn name(self) -> &'static std::ffi::CStr {
        match self {
            NUDGE_OK => c"NUDGE_OK",
            NUDGE_ERR_NULL => c"NUDGE_ERR_NULL",
            NUDGE_ERR_UTF8 => c"NUDGE_ERR_UTF8",
            NUDGE_ERR_IO => c"NUDGE_ERR_IO",
            NUDGE_ERR_FORMAT => c"NUDGE_ERR_FORMAT",
            NUDGE_ERR_INVALID => c"NUDGE_ERR_INVALID",
            NUDGE_ERR_BUSY => c"NUDGE_ERR_BUSY",
            NUDGE_ERR_CANCELLED => c"NUDGE_ERR_CANCELLED",
            NUDGE_ERR_PANIC => c"NUDGE_ERR_PANIC",
            NUDGE_ERR_UNSUPPORTED => c"NUDGE_ERR_UNSUPPORTED",
            NUDGE_ERR_NO_MEMORY => c"NUDGE_ERR_NO_MEMORY",
        }
    }
}

/// A failed call: its status and the message `nudge_last_error_message` returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: NudgeStatus,
    pub message: String,
}

pub(crate) type FfiResult<T> = Result<T, Failure>;

impl Failure {
    pub fn new(status: NudgeStatus, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
        }
    }
    pub fn null(what: &str) -> Self {
        Failure::new(NUDGE_ERR_NULL, format!("{what} is NULL"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(NUDGE_ERR_INVALID, message)
    }
}

/// The status of an engine error; a batch request's error has its cause's.
fn status_of(e: &engine::Error) -> NudgeStatus {
    use engine::Error as E;
    match e {
        E::Io { .. } => NUDGE_ERR_IO,
        E::Format { .. } | E::Tensor { .. } | E::Field { .. } | E::Row { .. } | E::CorruptRecord { .. } => {
            NUDGE_ERR_FORMAT
        }
        E::UnsupportedArchitecture { .. } | E::UnsupportedVersion { .. } => NUDGE_ERR_UNSUPPORTED,
        E::Cancelled => NUDGE_ERR_CANCELLED,
        E::OutOfMemory { .. } => NUDGE_ERR_NO_MEMORY,
        E::Request { source, .. } => status_of(source),
        _ => NUDGE_ERR_INVALID,
    }
}

impl From<engine::Error> for Failure {
    fn from(e: engine::Error) -> Self {
        Failure::new(status_of(&e), e.to_string())
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message never holds a NUL (paths and text come from C strings), but must not be cut.
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

/// The message of the calling thread's last call that returned a status: empty ("") if it
/// succeeded. Valid until the thread's next call into this library; never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn nudge_last_error_message() -> *const c_char {
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("internal error (panic): {what}")
}

thread_local! {
    /// Set while an exported function runs on this thread.
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Where this thread's last panic inside the library happened.
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps the library's panics off the host's stderr: a panic on a thread inside an exported
/// call, or on one of the library's worker threads (`nudge-N`), is recorded for the error
/// message instead of printed. Any other panic in the process (the host's own Rust code,
/// this crate's tests) goes to the hook that was there before.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let ours =
                IN_CALL.with(|c| c.get()) || std::thread::current().name().is_some_and(|n| n.starts_with("nudge-"));
            if !ours {
                return previous(info);
            }
            let at = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
            let _ = PANIC_AT.try_with(|p| *p.borrow_mut() = at);
        }));
    });
}

/// Runs the body of an exported function: clears the thread's error message, catches any
/// panic (kept off stderr, see `quiet_panics`), and turns the outcome into a status
/// (recording the message of a failure).
///
/// Unwind safety is asserted: a panic can only leave a handle's lock poisoned, and every
/// lock is taken with its poison cleared, so later calls see a consistent (if partially
/// trained) value rather than a torn one.
pub(crate) fn guard(f: impl FnOnce() -> FfiResult<()>) -> NudgeStatus {
    set_last_error("");
    match in_call(f) {
        Ok(Ok(())) => NUDGE_OK,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            let at = PANIC_AT.try_with(|p| p.borrow_mut().take()).ok().flatten();
            let mut message = panic_message(&*payload);
            if let Some(at) = at {
                message = format!("{message} (at {at})");
            }
            set_last_error(&message);
            NUDGE_ERR_PANIC
        }
    }
}

/// `f` under `catch_unwind`, marked as a call into the library for `quiet_panics`.
fn in_call<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    quiet_panics();
    let outer = IN_CALL.with(|c| c.replace(true));
    let _ = PANIC_AT.try_with(|p| p.borrow_mut().take());
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_CALL.with(|c| c.set(outer));
    r
}

/// The panic boundary of a function that returns nothing (the `*_free` functions).
pub(crate) fn guard_void(f: impl FnOnce()) {
    let _ = in_call(f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    fn last() -> String {
        unsafe { CStr::from_ptr(nudge_last_error_message()) }
            .to_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let s = guard(|| panic!("boom {}", 7));
        assert_eq!(s, NUDGE_ERR_PANIC);
        let m = last();
        assert!(m.starts_with("internal error (panic): boom 7 (at "), "{m}");
        assert!(m.contains("status.rs:"), "the hook recorded where: {m}");
        let s = guard(|| std::panic::panic_any(42u8));
        assert_eq!(s, NUDGE_ERR_PANIC);
        assert!(last().starts_with("internal error (panic): (no message)"), "{}", last());
    }

    #[test]
    fn success_clears_the_message_and_failure_sets_it() {
        assert_eq!(guard(|| Err(Failure::null("path"))), NUDGE_ERR_NULL);
        assert_eq!(last(), "path is NULL");
        assert_eq!(guard(|| Ok(())), NUDGE_OK);
        assert_eq!(last(), "");
    }

    #[test]
    fn a_message_with_a_nul_is_kept_whole() {
        assert_eq!(guard(|| Err(Failure::invalid("a\0b"))), NUDGE_ERR_INVALID);
        assert_eq!(last(), "a b");
    }

    #[test]
    fn engine_errors_map_to_their_status() {
        let cases = [
            (
                engine::Error::io("/x", std::io::Error::from(std::io::ErrorKind::NotFound)),
                NUDGE_ERR_IO,
            ),
            (engine::Error::format("/x", "bad magic"), NUDGE_ERR_FORMAT),
            (engine::Error::tensor("/x", "t", "bad"), NUDGE_ERR_FORMAT),
            (engine::Error::field("/x", "f", "bad"), NUDGE_ERR_FORMAT),
            (engine::Error::row("/x", 3, "bad"), NUDGE_ERR_FORMAT),
            (
                engine::Error::UnsupportedArchitecture {
                    file: "/x".into(),
                    arch: "gpt2".into(),
                },
                NUDGE_ERR_UNSUPPORTED,
            ),
            (engine::Error::invalid("r"), NUDGE_ERR_INVALID),
            (engine::Error::SequenceTooLong { len: 9, max: 8 }, NUDGE_ERR_INVALID),
            (engine::Error::Cancelled, NUDGE_ERR_CANCELLED),
            (
                engine::Error::CorruptRecord {
                    file: "/j".into(),
                    record: 3,
                    offset: 90,
                    what: "checksum".into(),
                },
                NUDGE_ERR_FORMAT,
            ),
            (
                engine::Error::UnsupportedVersion {
                    file: "/j".into(),
                    found: 9,
                    supported: 1,
                },
                NUDGE_ERR_UNSUPPORTED,
            ),
            (
                engine::Error::OutOfMemory {
                    what: "the logits",
                    bytes: 1 << 40,
                },
                NUDGE_ERR_NO_MEMORY,
            ),
            (engine::Error::invalid("r").for_request(2), NUDGE_ERR_INVALID),
            (engine::Error::row("/x", 3, "bad").for_request(0), NUDGE_ERR_FORMAT),
        ];
        for (e, want) in cases {
            let text = e.to_string();
            let f = Failure::from(e);
            assert_eq!(f.status, want, "{text}");
            assert_eq!(f.message, text);
        }
    }

    #[test]
    fn values_are_the_documented_ones() {
        for (i, s) in NudgeStatus::ALL.iter().enumerate() {
            assert_eq!(*s as i32, i as i32);
            assert!(s.name().to_str().unwrap().starts_with("NUDGE_"));
        }
    }
}
