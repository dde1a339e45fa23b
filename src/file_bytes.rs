//! The bytes of a weights file, mapped (the default) or read into memory.
//!
//! A mapping costs no copy and no RSS for pages not yet used, but the kernel backs it with
//! the file: if another process truncates the file while it is open, the next read of a
//! page past the new end raises SIGBUS, which kills the process (C hosts included); if it
//! rewrites the file in place, the weights change under the model. Replace a model file by
//! renaming a new one over it, which leaves open mappings on the old file. A host that
//! cannot promise that reads the weights into memory instead ([`WeightsLoad::Read`]).

use crate::error::{Error, Result};
use memmap2::{Mmap, MmapMut};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

/// How a model's weights files are opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightsLoad {
    /// Memory-map the files (no copy; the file must not be truncated or rewritten while
    /// the model is open).
    #[default]
    Map,
    /// Read the files into anonymous memory: the model no longer depends on the file
    /// after opening, at the cost of the whole file in RSS and the time to read it.
    Read,
}

/// The bytes of `path`, page-aligned in either case.
pub fn open(path: &Path, how: WeightsLoad) -> Result<Arc<Mmap>> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let len = usize::try_from(len).map_err(|_| Error::format(path, format!("{len} bytes do not fit in memory")))?;
    let mapped = match how {
        // An empty file has nothing to lose; the anonymous mapping needs a length.
        WeightsLoad::Map => None,
        WeightsLoad::Read if len == 0 => None,
        WeightsLoad::Read => Some(()),
    };
    let map = match mapped {
        // SAFETY: the mapping is read-only. It stays valid while the file is neither
        // truncated nor rewritten (module docs); `WeightsLoad::Read` is for hosts that
        // cannot promise that.
        None => unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?,
        Some(()) => {
            let mut copy = MmapMut::map_anon(len).map_err(|e| Error::io(path, e))?;
            // A file that shrank since its length was read is an I/O error (unexpected end).
            file.read_exact(&mut copy).map_err(|e| Error::io(path, e))?;
            copy.make_read_only().map_err(|e| Error::io(path, e))?
        }
    };
    Ok(Arc::new(map))
}
