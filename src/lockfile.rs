//! An exclusive lock on a file beside a store, held for as long as the store is open,
//! so two Outlast processes never write the same store (incident history, pending
//! transactions). The OS drops the lock when the process ends, even by a crash.

use std::{
    fs::{self, File, OpenOptions},
    io,
    path::Path,
};

/// Takes the lock at `path` (creating the file). `Ok(None)`: another process holds it.
pub fn take(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}
