//! Sequence numbers that survive restarts and crashes without ever being reused.
//!
//! The file `seq` in the state directory holds the first number *not* yet reserved. The
//! allocator reserves [`BLOCK`] numbers at a time: it writes the new limit to a temporary
//! file, fsyncs it, renames it over `seq` and fsyncs the directory, and only then hands out
//! numbers below the limit. A crash loses at most the unused rest of a block (a forward gap
//! the controller's replay window accepts), never a reuse.

use std::fs;
use std::path::{Path, PathBuf};

/// Numbers reserved per fsync.
pub const BLOCK: u64 = 256;

/// A sequence file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SeqError {
    /// I/O on the sequence file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold a number.
    #[error("{0}: not a sequence number; refusing to guess (move it away to start over)")]
    Corrupt(PathBuf),
}

/// Hands out monotonic sequence numbers backed by a file.
#[derive(Debug)]
pub struct SeqAllocator {
    path: PathBuf,
    next: u64,
    limit: u64,
}

impl SeqAllocator {
    /// Opens (or creates) the counter in `dir`.
    ///
    /// # Errors
    /// [`SeqError`].
    pub fn open(dir: &Path) -> Result<SeqAllocator, SeqError> {
        let path = dir.join("seq");
        let start = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| SeqError::Corrupt(path.clone()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(source) => return Err(SeqError::Io { path, source }),
        };
        let mut alloc = SeqAllocator {
            path,
            next: start,
            limit: start,
        };
        alloc.reserve()?;
        Ok(alloc)
    }

    fn reserve(&mut self) -> Result<(), SeqError> {
        let limit = self.limit.saturating_add(BLOCK);
        write_durably(&self.path, format!("{limit}\n").as_bytes())?;
        self.limit = limit;
        Ok(())
    }

    /// The next number.
    ///
    /// # Errors
    /// [`SeqError::Io`] when a new block cannot be reserved; no number is handed out then.
    pub fn allocate(&mut self) -> Result<u64, SeqError> {
        if self.next >= self.limit {
            self.reserve()?;
        }
        let n = self.next;
        self.next += 1;
        Ok(n)
    }
}

/// Replaces `path` whole and durably with `bytes` ([`crate::durable::replace`]).
///
/// # Errors
/// [`SeqError::Io`].
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), SeqError> {
    crate::durable::replace(path, bytes).map_err(|source| SeqError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_never_repeat_across_restarts_and_crashes() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = SeqAllocator::open(dir.path()).unwrap();
        let first: Vec<u64> = (0..300).map(|_| a.allocate().unwrap()).collect();
        assert!(first.windows(2).all(|w| w[1] == w[0] + 1));
        // A "crash": drop without any shutdown step, reopen.
        drop(a);
        let mut b = SeqAllocator::open(dir.path()).unwrap();
        let n = b.allocate().unwrap();
        assert!(n > *first.last().unwrap());
        assert!(n - first.last().unwrap() <= BLOCK);
    }

    #[test]
    fn a_corrupt_counter_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("seq"), "garbage").unwrap();
        assert!(matches!(
            SeqAllocator::open(dir.path()),
            Err(SeqError::Corrupt(_))
        ));
    }
}
