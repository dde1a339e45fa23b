//! The journal file: open with recovery, append, sync, compact, repair.
//!
//! One process writes a journal at a time (an exclusive lock on the file, held while it
//! is open); readers take no lock and never change the file. Every record stays in memory
//! once read: a journal of feedback is small next to the model it trains.

use super::dedup::{self, Dropped, effective};
use super::frame::{self, HEADER_LEN, Skipped};
use super::record::{Entry, Forget, Prompt, Record, TrainingMark};
use crate::error::{Error, Result};
use crate::fsutil::{self, AtomicFile};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// When appended records reach stable storage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `append` returns after the record is fsynced.
    #[default]
    EveryRecord,
    /// Records are fsynced by [`Journal::sync`] and [`Journal::close`]. Until then they
    /// survive the process being killed (they are in the OS's cache) but not power loss.
    Batch,
}

/// What opening a journal cut off (or, read-only, would cut off): the bytes of a record
/// whose write was interrupted, after every intact record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recovery {
    /// Where the torn tail began, and where the file now ends.
    pub offset: u64,
    pub cut_bytes: u64,
    pub records_kept: usize,
    pub why: String,
}

impl Recovery {
    /// What a scan's torn tail (if any) means for the caller: it takes the tail out of the scan.
    fn of(scan: &mut frame::Scan) -> Option<Recovery> {
        scan.tail.take().map(|t| Recovery {
            offset: t.offset,
            cut_bytes: t.bytes,
            records_kept: scan.entries.len(),
            why: t.why,
        })
    }
}

/// Counts for `nudge journal stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub records: usize,
    pub thumbs: usize,
    pub up: usize,
    pub down: usize,
    pub pairs: usize,
    pub training_marks: usize,
    /// Thumbs and pairs the user asked to forget, still in the file until a compaction
    /// (not counted above).
    pub forgotten: usize,
    /// Thumbs and pairs that no training run has consumed yet.
    pub new_since_training: usize,
    pub last_training_ms: Option<u64>,
    pub next_sequence: u64,
    pub file_bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactOptions {
    /// Also drop the events the latest training mark says were consumed.
    pub drop_trained: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    pub records_before: usize,
    pub records_after: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Retries (an earlier event's id) and repeats (an earlier event's content and label).
    pub duplicates: usize,
    /// Thumbs whose label a later thumb on the same completion changed.
    pub superseded: usize,
    /// Training marks before the latest, which decide nothing any more.
    pub old_marks: usize,
    pub trained: usize,
    /// Events the user asked to forget, with the records that asked.
    pub forgotten: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    pub skipped: Vec<Skipped>,
    pub tail: Option<Recovery>,
    pub records_kept: usize,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    writable: bool,
    durability: Durability,
    entries: Vec<Entry>,
    sequence_base: u64,
    /// File length: where the next record goes.
    end: u64,
    /// How many of `entries` are known to be fsynced.
    synced: usize,
    /// Set when a failed write or fsync leaves the file in a state this handle cannot vouch
    /// for; appends are refused until the journal is opened again.
    broken: Option<String>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("writable", &self.writable)
            .field("durability", &self.durability)
            .field("records", &self.entries.len())
            .field("end", &self.end)
            .finish()
    }
}

/// Creates an empty journal without ever leaving a partial header at `path`: the header is
/// written and fsynced under another name, then put in place without replacing (which
/// fails rather than replacing a journal another process created meanwhile).
fn create(path: &Path) -> Result<()> {
    // Say which folder is missing rather than naming the temporary file that failed.
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(Error::io(
            path,
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("the folder {} does not exist; create it first", folder.display()),
            ),
        ));
    }
    let f = AtomicFile::new(path)?;
    f.file()
        .write_all(&frame::encode_header(0))
        .map_err(|e| Error::io(path, e))?;
    match f.commit_new() {
        Ok(_) => Ok(()),
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn same_file(f: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (f.metadata()?, std::fs::metadata(path)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &File, _: &Path) -> io::Result<bool> {
    Ok(true)
}

/// How long to wait for the lock before reporting that another writer holds it.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Takes the exclusive lock. The wait is for a process another thread is spawning: until
/// it execs it holds a copy of every descriptor, and with it the lock of a journal this
/// process has just closed.
fn try_lock(f: &File, path: &Path) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::io(
                    path,
                    io::Error::new(io::ErrorKind::WouldBlock, "the journal is open for writing elsewhere"),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
    }
}

/// Opens and locks the journal at `path`, creating it when missing. A compaction in another
/// process may replace the file between open and lock; then the new file is opened.
fn open_locked(path: &Path) -> Result<File> {
    for _ in 0..16 {
        let f = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create(path)?;
                continue;
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        try_lock(&f, path)?;
        match same_file(&f, path) {
            Ok(true) => return Ok(f),
            Ok(false) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Err(Error::io(
        path,
        io::Error::other("the journal keeps being replaced while it is opened"),
    ))
}

fn read_all(f: &mut File, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    f.seek(SeekFrom::Start(0))
        .and_then(|_| f.read_to_end(&mut bytes))
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

impl Journal {
    /// Opens `path` for appending (creating it when missing) and locks it. A torn tail, the
    /// remains of an interrupted append, is cut off and reported; damage followed by intact
    /// records is an [`Error::CorruptRecord`] and leaves the file untouched.
    pub fn open(path: impl AsRef<Path>, durability: Durability) -> Result<(Journal, Option<Recovery>)> {
        let path = path.as_ref();
        let mut file = open_locked(path)?;
        let bytes = read_all(&mut file, path)?;
        let mut scan = frame::scan(&bytes, path, false)?;
        let recovery = Recovery::of(&mut scan);
        if recovery.is_some() {
            file.set_len(scan.good_end).map_err(|e| Error::io(path, e))?;
        }
        // Also makes durable what a writer in batch mode left unsynced when it died.
        file.sync_all().map_err(|e| Error::io(path, e))?;
        let synced = scan.entries.len();
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                writable: true,
                durability,
                entries: scan.entries,
                sequence_base: scan.sequence_base,
                end: scan.good_end,
                synced,
                broken: None,
            },
            recovery,
        ))
    }

    /// Reads `path` without locking or changing it (a writer may be appending meanwhile).
    /// A torn tail is reported and left in place.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<(Journal, Option<Recovery>)> {
        let path = path.as_ref();
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let bytes = read_all(&mut file, path)?;
        let mut scan = frame::scan(&bytes, path, false)?;
        let recovery = Recovery::of(&mut scan);
        let synced = scan.entries.len();
        Ok((
            Journal {
                path: path.to_path_buf(),
                file,
                writable: false,
                durability: Durability::Batch,
                entries: scan.entries,
                sequence_base: scan.sequence_base,
                end: scan.good_end,
                synced,
                broken: None,
            },
            recovery,
        ))
    }

    /// Opens a journal that [`Journal::open`] refuses for damage in its middle: rewrites it
    /// without the damaged stretches (each reported) and cuts a torn tail.
    pub fn repair(path: impl AsRef<Path>, durability: Durability) -> Result<(Journal, RepairReport)> {
        let path = path.as_ref();
        let mut file = open_locked(path)?;
        let bytes = read_all(&mut file, path)?;
        let mut scan = frame::scan(&bytes, path, true)?;
        let tail = Recovery::of(&mut scan);
        let report = RepairReport {
            skipped: scan.skipped,
            tail,
            records_kept: scan.entries.len(),
        };
        let synced = scan.entries.len();
        let mut j = Journal {
            path: path.to_path_buf(),
            file,
            writable: true,
            durability,
            entries: scan.entries,
            sequence_base: scan.sequence_base,
            end: scan.good_end,
            synced,
            broken: None,
        };
        if !report.skipped.is_empty() {
            // A lost record may have been the newest, or a mark may name numbers past the
            // survivors: numbering resumes after all of them.
            let marked = j.entries.iter().filter_map(|e| match &e.record {
                Record::TrainingMark(m) => m.up_to_sequence.checked_add(1),
                _ => None,
            });
            let base = marked.fold(j.next_sequence(), u64::max);
            let entries = std::mem::take(&mut j.entries);
            j.rewrite(entries, base)?;
        } else if report.tail.is_some() {
            j.file.set_len(j.end).map_err(|e| Error::io(path, e))?;
            j.file.sync_all().map_err(|e| Error::io(path, e))?;
        }
        Ok((j, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Every record, oldest first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries
            .binary_search_by_key(&seq, |e| e.seq)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The sequence number the next append gets (`u64::MAX` once they are exhausted: no
    /// record is ever written with it, see [`Journal::append`]).
    pub fn next_sequence(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.sequence_base, |e| e.seq.saturating_add(1))
            .max(self.sequence_base)
    }

    /// The newest record known to be on stable storage (everything before it is too).
    pub fn durable_through(&self) -> Option<u64> {
        self.entries[..self.synced].last().map(|e| e.seq)
    }

    pub fn file_bytes(&self) -> u64 {
        self.end
    }

    fn check_writable(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::invalid(format!(
                "{}: the journal is open read-only",
                self.path.display()
            )));
        }
        if let Some(why) = &self.broken {
            return Err(Error::invalid(format!(
                "{}: {why}; open the journal again",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Appends one record and returns its sequence number once it is written (and, with
    /// [`Durability::EveryRecord`], fsynced). A failed write is cut back off the file.
    pub fn append(&mut self, record: Record) -> Result<u64> {
        self.check_writable()?;
        record.check()?;
        let seq = self.next_sequence();
        // A record at u64::MAX would leave no number for the next one (and a header may
        // claim any base): refuse it rather than acknowledge what could not be read back.
        if seq == u64::MAX {
            return Err(Error::invalid(format!(
                "{}: the journal's sequence numbers are exhausted; export its records into a new journal",
                self.path.display()
            )));
        }
        if let Record::Forget(f) = &record
            && let Some(bad) = f
                .seqs
                .iter()
                .find(|&&s| !self.get(s).is_some_and(|e| e.record.is_event()))
        {
            return Err(Error::invalid(format!(
                "cannot forget record {bad}: no such thumbs or pair event"
            )));
        }
        if let Record::TrainingMark(m) = &record
            && m.up_to_sequence >= seq
        {
            return Err(Error::invalid(format!(
                "training mark up to {} names records not yet written (next is {seq})",
                m.up_to_sequence
            )));
        }
        let bytes = frame::encode_record(seq, &record)?;
        let offset = self.end;
        let written = self
            .file
            .seek(SeekFrom::Start(offset))
            .and_then(|_| self.file.write_all(&bytes));
        if let Err(e) = written {
            // A partial record followed by later ones would be damage, not a torn tail.
            if let Err(cut) = self.file.set_len(offset) {
                self.broken = Some(format!("a failed append could not be cut off ({cut})"));
            }
            return Err(Error::io(&self.path, e));
        }
        if self.durability == Durability::EveryRecord
            && let Err(e) = self.file.sync_data()
        {
            self.broken = Some(format!("fsync failed ({e})"));
            return Err(Error::io(&self.path, e));
        }
        self.end = offset + bytes.len() as u64;
        self.entries.push(Entry { seq, offset, record });
        if self.durability == Durability::EveryRecord {
            self.synced = self.entries.len();
        }
        Ok(seq)
    }

    /// Fsyncs what was appended since the last sync.
    pub fn sync(&mut self) -> Result<()> {
        self.check_writable()?;
        if self.synced < self.entries.len() {
            if let Err(e) = self.file.sync_data() {
                self.broken = Some(format!("fsync failed ({e})"));
                return Err(Error::io(&self.path, e));
            }
            self.synced = self.entries.len();
        }
        Ok(())
    }

    /// Syncs and releases the lock.
    pub fn close(mut self) -> Result<()> {
        if self.writable { self.sync() } else { Ok(()) }
    }

    /// The latest training mark, which decides what is new.
    pub fn last_mark(&self) -> Option<&TrainingMark> {
        self.entries.iter().rev().find_map(|e| match &e.record {
            Record::TrainingMark(m) => Some(m),
            _ => None,
        })
    }

    /// Whether the event `seq` is new since the last training run: after the latest mark,
    /// or left unconsumed by it.
    pub fn is_new(&self, seq: u64) -> bool {
        self.new_filter()(seq)
    }

    pub(crate) fn new_filter(&self) -> impl Fn(u64) -> bool + '_ {
        let mark = self.last_mark();
        let unconsumed: std::collections::HashSet<u64> =
            mark.map(|m| m.unconsumed.iter().copied().collect()).unwrap_or_default();
        move |seq| mark.is_none_or(|m| seq > m.up_to_sequence || unconsumed.contains(&seq))
    }

    /// Appends a mark saying a training run consumed every event up to `up_to_sequence`
    /// except `unconsumed`.
    pub fn mark_trained(&mut self, up_to_sequence: u64, unconsumed: Vec<u64>, timestamp_ms: u64) -> Result<u64> {
        self.append(Record::TrainingMark(TrainingMark {
            up_to_sequence,
            unconsumed,
            timestamp_ms,
        }))
    }

    /// The events the user asked to forget (still in the file until a compaction).
    pub fn forgotten(&self) -> std::collections::HashSet<u64> {
        dedup::forgotten(&self.entries)
    }

    /// Forgets the events `seqs` (thumbs or pairs): appends a record that makes them count
    /// for nothing from now on (training, listings, duplicates), durable as any append;
    /// the next [`Self::compact`] removes them from the file. Events already forgotten are
    /// passed over. Returns the events newly forgotten (empty: nothing was written).
    pub fn forget(&mut self, seqs: &[u64], timestamp_ms: u64) -> Result<Vec<u64>> {
        let already = self.forgotten();
        let mut new: Vec<u64> = seqs.iter().copied().filter(|s| !already.contains(s)).collect();
        new.sort_unstable();
        new.dedup();
        if !new.is_empty() {
            self.append(Record::Forget(Forget {
                seqs: new.clone(),
                timestamp_ms,
            }))?;
        }
        Ok(new)
    }

    /// The events (not forgotten) whose prompt is `prompt`, and those recorded between
    /// `from_ms` and `to_ms` (inclusive): what [`Self::forget`] takes when a user asks to
    /// forget a conversation or a stretch of time.
    pub fn events_of_prompt(&self, prompt: &Prompt) -> Vec<u64> {
        self.live_events()
            .filter(|e| e.record.prompt() == Some(prompt))
            .map(|e| e.seq)
            .collect()
    }

    /// See [`Self::events_of_prompt`].
    pub fn events_between(&self, from_ms: u64, to_ms: u64) -> Vec<u64> {
        self.live_events()
            .filter(|e| (from_ms..=to_ms).contains(&e.record.timestamp_ms()))
            .map(|e| e.seq)
            .collect()
    }

    /// Thumbs and pairs, not forgotten, in order.
    pub fn live_events(&self) -> impl Iterator<Item = &Entry> {
        let forgotten = self.forgotten();
        self.entries
            .iter()
            .filter(move |e| e.record.is_event() && !forgotten.contains(&e.seq))
    }

    pub fn stats(&self) -> Stats {
        let is_new = self.new_filter();
        let forgotten = self.forgotten();
        let mut s = Stats {
            records: self.entries.len(),
            next_sequence: self.next_sequence(),
            file_bytes: self.end,
            last_training_ms: self.last_mark().map(|m| m.timestamp_ms),
            ..Stats::default()
        };
        for e in &self.entries {
            if forgotten.contains(&e.seq) {
                s.forgotten += 1;
                continue;
            }
            match &e.record {
                Record::Thumbs(t) => {
                    s.thumbs += 1;
                    if t.up { s.up += 1 } else { s.down += 1 }
                }
                Record::Pair(_) => s.pairs += 1,
                Record::TrainingMark(_) => s.training_marks += 1,
                Record::Forget(_) => {}
            }
            if e.record.is_event() && is_new(e.seq) {
                s.new_since_training += 1;
            }
        }
        s
    }

    /// Rewrites the journal without what no longer matters: events that training drops as
    /// duplicates or superseded (see [`super::training`]), training marks before the
    /// latest, and (if asked) consumed events, after which their ids and contents are no
    /// longer recognized as duplicates. Training data from the journal is the same before
    /// and after. The new file is written and fsynced beside the old one and renamed over
    /// it, so a crash leaves one or the other, whole. Sequence numbers are kept.
    pub fn compact(&mut self, opts: CompactOptions) -> Result<CompactReport> {
        self.check_writable()?;
        let mut report = CompactReport {
            records_before: self.entries.len(),
            bytes_before: self.end,
            ..CompactReport::default()
        };
        let last_mark = self
            .entries
            .iter()
            .rev()
            .find(|e| matches!(e.record, Record::TrainingMark(_)))
            .map(|e| e.seq);
        let dropped: std::collections::HashMap<u64, Dropped> = effective(&self.entries).dropped.into_iter().collect();
        let forgotten = self.forgotten();
        let is_new = self.new_filter();
        let mut kept = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let keep = match (&e.record, dropped.get(&e.seq)) {
                _ if forgotten.contains(&e.seq) => {
                    report.forgotten += 1;
                    false
                }
                (Record::Forget(_), _) => false,
                (Record::TrainingMark(_), _) => {
                    let latest = Some(e.seq) == last_mark;
                    report.old_marks += usize::from(!latest);
                    latest
                }
                (_, Some(Dropped::Superseded { .. })) => {
                    report.superseded += 1;
                    false
                }
                (_, Some(_)) => {
                    report.duplicates += 1;
                    false
                }
                _ if opts.drop_trained && !is_new(e.seq) => {
                    report.trained += 1;
                    false
                }
                _ => true,
            };
            if keep {
                let mut e = e.clone();
                // The latest mark stays consistent: it no longer lists forgotten events.
                if let Record::TrainingMark(m) = &mut e.record {
                    m.unconsumed.retain(|s| !forgotten.contains(s));
                }
                kept.push(e);
            }
        }
        drop(is_new);
        let base = self.next_sequence();
        self.rewrite(kept, base)?;
        report.records_after = self.entries.len();
        report.bytes_after = self.end;
        Ok(report)
    }

    /// Replaces the file with one holding `entries` (their sequence numbers kept).
    fn rewrite(&mut self, mut entries: Vec<Entry>, sequence_base: u64) -> Result<()> {
        // Left by a compaction that crashed (`<name>.compact`: by builds before the atomic
        // writer); this process holds the journal's lock.
        let mut legacy = self.path.as_os_str().to_owned();
        legacy.push(".compact");
        let _ = std::fs::remove_file(legacy);
        fsutil::remove_leftovers(&self.path);
        // Opened for reading too: after the commit this is the journal's file.
        let tmp = AtomicFile::new(&self.path)?;
        // Locked before it is visible under the journal's name.
        try_lock(tmp.file(), tmp.temp_path())?;
        let io_tmp = |e| Error::io(tmp.temp_path(), e);
        let mut w = BufWriter::new(tmp.file());
        w.write_all(&frame::encode_header(sequence_base)).map_err(io_tmp)?;
        let mut end = HEADER_LEN as u64;
        for e in &mut entries {
            let bytes = frame::encode_record(e.seq, &e.record)?;
            w.write_all(&bytes).map_err(io_tmp)?;
            e.offset = end;
            end += bytes.len() as u64;
        }
        w.flush().map_err(io_tmp)?;
        drop(w);
        self.file = tmp.commit()?;
        self.synced = entries.len();
        self.entries = entries;
        self.end = end;
        self.sequence_base = sequence_base;
        Ok(())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // Best effort; `close` reports a failure.
        if self.writable && self.broken.is_none() && self.synced < self.entries.len() {
            let _ = self.file.sync_data();
        }
    }
}
