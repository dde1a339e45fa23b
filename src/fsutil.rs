//! Atomic, durable file writes: every file the engine writes whole (adapters, checkpoints,
//! exported models, journal snapshots and exports, the CLI's reports) goes through here.
//!
//! A file is written under a unique temporary name in its destination's folder (the
//! `tempfile` crate), fsynced, renamed over the destination, and the folder is fsynced so
//! that the rename itself survives a power cut. Readers see the old file or the whole new
//! one, never a part. On every error path the temporary file is removed (`NamedTempFile`
//! deletes it when dropped); only a crash of the process can leave one behind, named
//! `.<name>.<random>.tmp`.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// The folder a path's file is in (`.` for a bare file name).
fn folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Makes renames and links in `dir` durable: on Unix a rename is only on disk once the
/// directory entry is. (Elsewhere a folder cannot be opened as a file; the rename is
/// what the platform offers.)
pub fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A file being written under a temporary name beside its destination; [`Self::commit`]
/// puts it in place. Dropped without a commit, it is deleted.
pub struct AtomicFile {
    tmp: NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    /// Creates the temporary file in `path`'s folder. Errors name `path`.
    pub fn new(path: &Path) -> Result<AtomicFile> {
        let name = path
            .file_name()
            .ok_or_else(|| Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, "not a file name")))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{}.", name.to_string_lossy()))
            .suffix(".tmp")
            .tempfile_in(folder(path))
            .map_err(|e| Error::io(path, e))?;
        Ok(AtomicFile {
            tmp,
            path: path.to_path_buf(),
        })
    }

    /// The open temporary file, for writing (and locking) before the commit.
    pub fn file(&self) -> &File {
        self.tmp.as_file()
    }

    /// The temporary file's path, for writers that insist on opening a path themselves
    /// (they must write this very file: the commit fsyncs and renames it).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fsyncs the file, renames it over the destination and fsyncs the folder. Returns the
    /// file, open, now under the destination's name.
    pub fn commit(self) -> Result<File> {
        self.sync()?;
        let AtomicFile { tmp, path } = self;
        // On failure the error owns the temporary file and deletes it when dropped.
        let file = tmp.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_dir(folder(&path))?;
        Ok(file)
    }

    /// [`Self::commit`] that never replaces a file: an error of kind `AlreadyExists` when
    /// the destination exists (e.g. created meanwhile by another process).
    pub fn commit_new(self) -> Result<File> {
        self.sync()?;
        let AtomicFile { tmp, path } = self;
        let file = tmp.persist_noclobber(&path).map_err(|e| Error::io(&path, e.error))?;
        sync_dir(folder(&path))?;
        Ok(file)
    }

    fn sync(&self) -> Result<()> {
        self.file().sync_all().map_err(|e| Error::io(&self.path, e))
    }
}

/// Removes the temporary files that writers of `path` killed mid-write left behind
/// (`.<name>.<random>.tmp`). Only for a file that one writer at a time writes, called by
/// that writer (the journal, under its lock): another writer's file in flight would go too.
pub fn remove_leftovers(path: &Path) {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(folder(path)) else {
        return;
    };
    let prefix = format!(".{name}.");
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Writes what `write` produces (through a buffer) to `path` atomically and durably.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<()> {
    let f = AtomicFile::new(path)?;
    let mut w = BufWriter::new(f.file());
    write(&mut w).and_then(|()| w.flush()).map_err(|e| Error::io(path, e))?;
    drop(w);
    f.commit().map(drop)
}

/// Files that belong together in one folder (an adapter's weights and its config, a
/// model's config, tokenizer and weights), replaced so that a crash never leaves a new file
/// beside an old one.
///
/// Every file is first written whole under a temporary name in the folder and fsynced.
/// Then the set's *marker*, the file a reader opens first and without which the folder is
/// not one of these (PEFT's `adapter_config.json`, HF's `config.json`), is removed; the
/// other files are renamed over their old versions; the marker is renamed in last; the
/// folder is fsynced after each step. A crash before the marker is removed leaves the old
/// set; between, a folder without its marker, which loads as "missing
/// adapter_config.json", never as a mix of old and new; after, the new set.
///
/// Swapping a whole staged folder in would keep the old set readable a little longer, but
/// the folder may hold other files that are not ours to move (a training run's folder
/// keeps its log and checkpoint beside the adapter).
pub struct FileSet {
    dir: PathBuf,
    staged: Vec<(String, AtomicFile)>,
}

impl FileSet {
    /// A set of files for `dir` (created when missing).
    pub fn new(dir: &Path) -> Result<FileSet> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(FileSet {
            dir: dir.to_path_buf(),
            staged: Vec::new(),
        })
    }

    /// Stages the file `name` with contents `bytes`.
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.add_with(name, |f| f.file().write_all(bytes).map_err(|e| Error::io(f.path(), e)))
    }

    /// Stages the file `name` with what `write` writes into the temporary file.
    pub fn add_with(&mut self, name: &str, write: impl FnOnce(&AtomicFile) -> Result<()>) -> Result<()> {
        let f = AtomicFile::new(&self.dir.join(name))?;
        write(&f)?;
        self.staged.push((name.to_string(), f));
        Ok(())
    }

    /// Puts the staged files in place, `marker` last (see the type's documentation).
    pub fn commit(self, marker: &str) -> Result<()> {
        let FileSet { dir, staged } = self;
        let (mut last, rest): (Vec<_>, Vec<_>) = staged.into_iter().partition(|(n, _)| n == marker);
        let marker_file = match last.pop() {
            Some((_, f)) if last.is_empty() => f,
            _ => {
                return Err(Error::invalid(format!(
                    "{}: the file set must hold its marker `{marker}` exactly once",
                    dir.display()
                )));
            }
        };
        for (_, f) in &rest {
            f.sync()?;
        }
        marker_file.sync()?;
        let marker_path = dir.join(marker);
        match std::fs::remove_file(&marker_path) {
            Ok(()) => sync_dir(&dir)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&marker_path, e)),
        }
        for (_, f) in rest {
            f.commit()?;
        }
        marker_file.commit().map(drop)
    }
}
