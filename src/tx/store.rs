//! The embedded store of `[tx] rebroadcast`: the transactions an upstream accepted and
//! nobody has yet seen in a block, in one small JSON file (`[tx] store`), so they are
//! still re-sent after a restart or a crash.
//!
//! - The file is replaced whole on every change: written to a temporary file in the same
//!   directory, fsynced, renamed over the old one, and the directory fsynced. A crash
//!   leaves the old file or the new one, never half of one.
//! - A file that cannot be read as a store is renamed aside (`<name>.corrupt-<unix
//!   time>`) with an error in the log and Outlast starts empty: it is never overwritten,
//!   so whatever it held can still be recovered by hand.
//! - `<name>.lock` is held while running, so two Outlasts never write the same store.
//!
//! Plain JSON on purpose: a handful of pending transactions needs no database, and an
//! operator can read it with `jq`. Blocking I/O: called at start and from
//! `spawn_blocking`, never on the async threads. Knows nothing of chains or upstreams.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use alloy_primitives::{Address, B256, Bytes};
use serde::{Deserialize, Serialize};

/// The format written; a file of another version is set aside like a corrupt one
/// (a newer Outlast's file is kept for it, not misread).
const VERSION: u32 = 1;

/// One pending transaction, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub chain_id: u64,
    /// The transaction's hash (a blob transaction's without its blobs): what the client
    /// was answered.
    pub hash: B256,
    /// Recovered from the signature: whose nonce tells when it was replaced.
    pub sender: Address,
    pub nonce: u64,
    /// The signed transaction exactly as the client sent it.
    pub raw: Bytes,
    /// Unix seconds of the first acceptance by an upstream.
    pub first_sent: u64,
}

#[derive(Serialize, Deserialize)]
struct Contents {
    version: u32,
    transactions: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("transaction store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "transaction store {path} is in use by another Outlast; give each its own `[tx] store`"
    )]
    Locked { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

pub struct Store {
    path: PathBuf,
    /// The temporary file each save writes before renaming it over `path`.
    tmp: PathBuf,
    /// Holds the lock until dropped.
    _lock: File,
}

impl Store {
    /// Takes the store at `path` (creating its directory) and loads what it holds.
    /// Fails when the file cannot be read or set aside, or another Outlast holds it:
    /// starting empty then could overwrite transactions nobody else will re-send.
    pub fn open(path: &Path) -> Result<(Store, Vec<Entry>), StoreError> {
        let dir = parent(path);
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let name = file_name(path);
        let lock_path = dir.join(format!("{name}.lock"));
        let Some(lock) = crate::lockfile::take(&lock_path).map_err(io_error(&lock_path))? else {
            return Err(StoreError::Locked {
                path: path.to_owned(),
            });
        };
        let entries = match fs::read(path) {
            Ok(bytes) => match parse(&bytes) {
                Ok(entries) => entries,
                Err(why) => {
                    let aside = set_aside(path)?;
                    tracing::error!(
                        path = %path.display(),
                        moved_to = %aside.display(),
                        "the transaction store cannot be read ({why}); it was moved aside \
                         untouched and Outlast starts with no pending transactions"
                    );
                    Vec::new()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_error(path)(e)),
        };
        let store = Store {
            path: path.to_owned(),
            tmp: dir.join(format!(".{name}.tmp")),
            _lock: lock,
        };
        Ok((store, entries))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the file with `entries`, atomically (see the module's doc).
    pub fn save(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let contents = Contents {
            version: VERSION,
            transactions: entries.to_vec(),
        };
        // Numbers, hex strings and byte strings only: serializing cannot fail.
        let bytes = serde_json::to_vec_pretty(&contents).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let mut file = File::create(&self.tmp).map_err(io_error(&self.tmp))?;
        file.write_all(&bytes).map_err(io_error(&self.tmp))?;
        file.sync_all().map_err(io_error(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(io_error(&self.path))?;
        // The rename itself is durable only once the directory is.
        let dir = parent(&self.path);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&dir))
    }
}

fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let contents: Contents = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if contents.version != VERSION {
        return Err(format!(
            "version {} is not {VERSION}, the one this Outlast writes",
            contents.version
        ));
    }
    Ok(contents.transactions)
}

/// Renames `path` to `<name>.corrupt-<unix time>` (with `-2`, `-3`… when taken): the
/// bytes are kept for a person to look at, and the name says when and why.
fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.corrupt-{now}", file_name(path));
    let dir = parent(path);
    let mut aside = dir.join(&base);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = dir.join(format!("{base}-{n}"));
    }
    fs::rename(path, &aside).map_err(io_error(path))?;
    Ok(aside)
}

/// The directory of `path`; `.` for a bare file name.
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || "outlast-transactions.json".into(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "outlast-tx-store-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn entry(nonce: u64) -> Entry {
        Entry {
            chain_id: 31337,
            hash: B256::repeat_byte(nonce as u8 + 1),
            sender: Address::repeat_byte(0xaa),
            nonce,
            raw: Bytes::from(vec![0x02, 0xf8, nonce as u8]),
            first_sent: 1_700_000_000 + nonce,
        }
    }

    #[test]
    fn entries_survive_a_reopen() {
        let dir = temp_dir("round-trip");
        let path = dir.join("tx.json");
        let (store, loaded) = Store::open(&path).expect("open");
        assert!(loaded.is_empty());
        store.save(&[entry(0), entry(1)]).expect("save");
        drop(store);
        let (_store, loaded) = Store::open(&path).expect("reopen");
        assert_eq!(loaded, [entry(0), entry(1)]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_save_replaces_the_whole_file_and_leaves_no_temporary_file() {
        let dir = temp_dir("replace");
        let path = dir.join("tx.json");
        let (store, _) = Store::open(&path).expect("open");
        store.save(&[entry(0), entry(1)]).expect("save");
        store.save(&[entry(1)]).expect("save again");
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(parse(text.as_bytes()), Ok(vec![entry(1)]));
        let mut names: Vec<String> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["tx.json", "tx.json.lock"]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_corrupt_file_is_moved_aside_untouched_and_the_store_starts_empty() {
        let dir = temp_dir("corrupt");
        let path = dir.join("tx.json");
        fs::create_dir_all(&dir).expect("mkdir");
        for garbage in [
            &b"{\"version\":1,\"transactions\":[{\"cha"[..],
            b"{\"version\":9,\"transactions\":[]}",
        ] {
            fs::write(&path, garbage).expect("write");
            let (store, loaded) = Store::open(&path).expect("open");
            assert!(loaded.is_empty());
            assert!(!path.exists(), "the corrupt file was moved");
            let aside: Vec<PathBuf> = fs::read_dir(&dir)
                .expect("list")
                .map(|e| e.expect("entry").path())
                .filter(|p| p.to_string_lossy().contains("tx.json.corrupt-"))
                .collect();
            assert!(
                aside.iter().any(|p| fs::read(p).expect("read") == garbage),
                "{aside:?} keeps the bytes"
            );
            // A save after that does not touch the file set aside.
            store.save(&[entry(3)]).expect("save");
            drop(store);
        }
        let aside = fs::read_dir(&dir)
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            })
            .count();
        assert_eq!(aside, 2, "two corrupt files, two names, none overwritten");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_outlast_cannot_take_the_same_store() {
        let dir = temp_dir("locked");
        let path = dir.join("tx.json");
        let (_first, _) = Store::open(&path).expect("open");
        assert!(matches!(Store::open(&path), Err(StoreError::Locked { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
