//! The bytes of a journal file.
//!
//! ```text
//! header (32 bytes): magic "NUDGEJNL" | version u32 | flags u32 (0) | sequence base u64
//!                    | reserved u32 (0) | CRC-32 of the 28 bytes before it
//! record:            length u32 | CRC-32 of (length bytes ++ payload) u32 | payload
//! ```
//!
//! All integers are little-endian. A payload is `(seq, Record)` in bincode's standard
//! configuration. The checksum covers the length too, so a damaged length field is caught,
//! and a run of zero bytes (what a file system may leave after a crash) is never a record.
//! The sequence base is where numbering resumes when compaction has dropped the newest
//! records.

use super::crc::{RangeCrc, crc32, crc32_of};
use super::record::{Entry, Record};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const MAGIC: [u8; 8] = *b"NUDGEJNL";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 32;
/// Length and checksum before each payload.
pub const FRAME_OVERHEAD: usize = 8;
/// The largest payload written or read; larger lengths are damage.
pub const MAX_PAYLOAD: usize = 64 << 20;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

#[derive(Serialize)]
struct StoredRef<'a> {
    seq: u64,
    record: &'a Record,
}

#[derive(Deserialize)]
struct Stored {
    seq: u64,
    record: Record,
}

pub fn encode_header(sequence_base: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&sequence_base.to_le_bytes());
    let c = crc32(&h[..28]);
    h[28..32].copy_from_slice(&c.to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

/// Checks the header and returns the sequence base.
pub fn decode_header(b: &[u8], file: &Path) -> Result<u64> {
    if b.len() < HEADER_LEN {
        return Err(Error::format(
            file,
            format!(
                "not a nudge journal: {} bytes, shorter than the {HEADER_LEN}-byte header",
                b.len()
            ),
        ));
    }
    if b[0..8] != MAGIC {
        return Err(Error::format(
            file,
            format!("not a nudge journal: magic {:02x?}, expected {:02x?}", &b[0..8], MAGIC),
        ));
    }
    let version = u32_at(b, 8).unwrap_or(0);
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            file: file.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let stored = u32_at(b, 28).unwrap_or(0);
    if crc32(&b[..28]) != stored {
        return Err(Error::format(file, "journal header checksum mismatch"));
    }
    let flags = u32_at(b, 12).unwrap_or(0);
    if flags != 0 || u32_at(b, 24) != Some(0) {
        return Err(Error::format(
            file,
            format!("journal header has unknown flags {flags:#x}"),
        ));
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&b[16..24]);
    Ok(u64::from_le_bytes(base))
}

/// The frame of one record: length, checksum, payload.
pub fn encode_record(seq: u64, record: &Record) -> Result<Vec<u8>> {
    let payload = bincode::serde::encode_to_vec(StoredRef { seq, record }, config())
        .map_err(|e| Error::invalid(format!("record cannot be encoded: {e}")))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::invalid(format!(
            "record of {} bytes is larger than the journal's limit of {MAX_PAYLOAD}",
            payload.len()
        )));
    }
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32_of(&[&len, &payload]);
    let mut frame = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    frame.extend_from_slice(&len);
    frame.extend_from_slice(&crc.to_le_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// What lies at one offset.
enum Parsed {
    Record {
        seq: u64,
        record: Record,
        end: usize,
    },
    /// Short, bad length or bad checksum: what an interrupted write leaves, or damage.
    Damaged(String),
    /// The checksum holds but the payload is not a record of this format.
    Unreadable {
        why: String,
        end: usize,
    },
}

fn parse_at(b: &[u8], pos: usize) -> Parsed {
    let rest = b.len().saturating_sub(pos);
    let (Some(len), Some(stored)) = (u32_at(b, pos), u32_at(b, pos.saturating_add(4))) else {
        return Parsed::Damaged(format!("{rest} bytes, shorter than a record header"));
    };
    let len = len as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Parsed::Damaged(format!("record length {len} is out of range"));
    }
    let start = pos + FRAME_OVERHEAD;
    let Some(payload) = start.checked_add(len).and_then(|end| b.get(start..end)) else {
        return Parsed::Damaged(format!(
            "record of {len} bytes runs past the end of the file ({} bytes left)",
            rest - FRAME_OVERHEAD
        ));
    };
    let end = start + len;
    if crc32_of(&[&b[pos..pos + 4], payload]) != stored {
        return Parsed::Damaged("record checksum mismatch".into());
    }
    match bincode::serde::decode_from_slice::<Stored, _>(payload, config()) {
        Ok((s, used)) if used == len => match s.record.check() {
            // A record a writer could not have appended (a NaN strength, an empty id) is
            // refused on read as well: a crafted one must not reach training.
            Err(e) => Parsed::Unreadable {
                why: format!("record {} fails validation: {e}", s.seq),
                end,
            },
            Ok(()) => Parsed::Record {
                seq: s.seq,
                record: s.record,
                end,
            },
        },
        Ok((_, used)) => Parsed::Unreadable {
            why: format!("record payload has {} bytes after its end", len - used),
            end,
        },
        Err(e) => Parsed::Unreadable {
            why: format!("record payload is not a record of format version {FORMAT_VERSION}: {e}"),
            end,
        },
    }
}

/// The offset of the first frame whose checksum holds, starting at or after `from`: what
/// follows damage is either such a frame (so the damage is not a torn tail) or nothing.
/// Each candidate costs a logarithm of its length, not its length, through `crcs`.
fn next_frame_after(b: &[u8], from: usize, crcs: &RangeCrc<'_>) -> Option<usize> {
    (from..b.len().saturating_sub(FRAME_OVERHEAD)).find(|&p| {
        let (Some(len), Some(stored)) = (u32_at(b, p), u32_at(b, p + 4)) else {
            return false;
        };
        let (len, start) = (len as usize, p + FRAME_OVERHEAD);
        (1..=MAX_PAYLOAD).contains(&len)
            && start + len <= b.len()
            && crcs.after(&b[p..p + 4], start, start + len) == stored
    })
}

/// The end of a journal that did not end cleanly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tail {
    pub offset: u64,
    pub bytes: u64,
    pub why: String,
}

/// A damaged stretch in the middle of a journal, which only a repair skips.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    pub offset: u64,
    pub bytes: u64,
    pub why: String,
}

pub struct Scan {
    pub sequence_base: u64,
    pub entries: Vec<Entry>,
    /// Where the intact records end (the file length when nothing is torn).
    pub good_end: u64,
    pub tail: Option<Tail>,
    /// Damaged stretches passed over (salvage only).
    pub skipped: Vec<Skipped>,
}

/// Reads every record. Damage followed by an intact record is an error naming it, or with
/// `salvage` a stretch passed over; damage with nothing intact after it is a torn tail.
/// A record whose checksum holds but whose payload cannot be read is never a torn write:
/// it is an error (or, salvaging, skipped).
pub fn scan(b: &[u8], file: &Path, salvage: bool) -> Result<Scan> {
    let sequence_base = decode_header(b, file)?;
    let mut s = Scan {
        sequence_base,
        entries: Vec::new(),
        good_end: HEADER_LEN as u64,
        tail: None,
        skipped: Vec::new(),
    };
    let mut pos = HEADER_LEN;
    let mut crcs = None;
    while pos < b.len() {
        let corrupt = |s: &Scan, what: String| Error::CorruptRecord {
            file: file.to_path_buf(),
            record: s.entries.len() as u64,
            offset: pos as u64,
            what,
        };
        let (why, next) = match parse_at(b, pos) {
            Parsed::Record { seq, record, end } => {
                // Numbers increase; compaction leaves gaps and may keep numbers below the base.
                let floor = s.entries.last().map_or(Some(0), |e| e.seq.checked_add(1));
                if floor.is_some_and(|f| seq >= f) {
                    s.entries.push(Entry {
                        seq,
                        offset: pos as u64,
                        record,
                    });
                    pos = end;
                    s.good_end = end as u64;
                    continue;
                }
                let why = format!("sequence number {seq} does not follow the previous record's");
                (why, end)
            }
            Parsed::Unreadable { why, end } => (why, end),
            Parsed::Damaged(why) => match next_frame_after(b, pos + 1, crcs.get_or_insert_with(|| RangeCrc::new(b))) {
                None => {
                    s.tail = Some(Tail {
                        offset: pos as u64,
                        bytes: (b.len() - pos) as u64,
                        why,
                    });
                    return Ok(s);
                }
                Some(next) => (format!("{why}; an intact frame follows at byte {next}"), next),
            },
        };
        if !salvage {
            return Err(corrupt(&s, why));
        }
        s.skipped.push(Skipped {
            offset: pos as u64,
            bytes: (next - pos) as u64,
            why,
        });
        pos = next;
    }
    Ok(s)
}
