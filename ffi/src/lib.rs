//! The C ABI of nudge: `libnudge.so` / `libnudge.a` with the header `include/nudge.h`
//! (generated from this crate by cbindgen; the header's opening comment states the
//! contract: statuses, error messages, handles and their lifetimes, threads, versioned
//! structs).
//!
//! Every exported function runs inside a panic boundary and returns a status; handles are
//! ids into a table of reference-counted objects, never addresses.
//!
//! # Safety
//!
//! The functions that take pointers are `unsafe`, with one contract (stated in the
//! header): every non-NULL pointer argument points to what its type says, valid for the
//! call (NUL-terminated strings, arrays of the given length, structs whose first field is
//! their size, writable outputs). NULL is always checked; handles are never dereferenced.
#![allow(clippy::missing_safety_doc)]

// The header lists items in the order of these modules: keep them in reading order.
mod version;

mod status;

mod model;

mod adapter;

mod dataset;

mod journal;

mod train;

mod score;

mod tokens;

mod generate;

mod session;

mod handles;
mod options;
mod pool;
mod text;

pub use adapter::*;
pub use dataset::*;
pub use generate::*;
pub use handles::{NudgeAdapter, NudgeDataset, NudgeJournal, NudgeModel, NudgeSession, nudge_live_handles};
pub use journal::*;
pub use model::*;
pub use score::*;
pub use session::*;
pub use status::*;
pub use tokens::*;
pub use train::*;
pub use version::*;
