//! The on-device feedback journal: an append-only, crash-safe file of what an app
//! collects (thumbs on completions, explicit preference pairs) and of what training runs
//! consumed, from which training data is built.
//!
//! - [`frame`]: the file format (header, length + checksum framed records).
//! - [`record`]: the records.
//! - [`store`]: [`Journal`]: open with torn-tail recovery, append with a [`Durability`],
//!   compaction, repair.
//! - [`dedup`]: retries, duplicates and changed minds.
//! - [`training`]: pairing and "new since the last training run".

mod crc;
pub mod dedup;
pub mod frame;
pub mod record;
pub mod store;
pub mod training;

pub use crc::crc32;
pub use dedup::Dropped;
pub use record::{Entry, Forget, PreferencePair, Prompt, Record, Thumbs, TrainingMark};
pub use store::{CompactOptions, CompactReport, Durability, Journal, Recovery, RepairReport, Stats};
pub use training::{Plan, PlannedPair, PlannedThumb, Target, TrainingOptions, TrainingSet, UnpairedPolicy};
