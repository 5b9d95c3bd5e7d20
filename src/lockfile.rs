//! What every on-disk store (incident history and uptime, pending transactions) needs
//! to stay whole: an exclusive lock on a file beside it, held for as long as the store
//! is open, so two Outlast processes never write the same store (the OS drops the lock
//! when the process ends, even by a crash); a file replaced only by a whole new version
//! of itself (`replace`); and a file that cannot be read set aside, never overwritten
//! (`set_aside`). Blocking I/O; knows nothing of what the files hold.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
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

/// Replaces `path` with `bytes`: written to `tmp` (in the same directory, so the rename
/// stays on one file system), fsynced, renamed over `path`, and the directory fsynced
/// so the rename itself survives a power cut. A crash leaves the old file or the new
/// one, never half of one. Errors name the file that failed.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    let named = |p: &Path| {
        let p = p.to_owned();
        move |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    let mut file = File::create(tmp).map_err(named(tmp))?;
    file.write_all(bytes).map_err(named(tmp))?;
    file.sync_all().map_err(named(tmp))?;
    drop(file);
    fs::rename(tmp, path).map_err(named(path))?;
    sync_dir(path)
}

/// Renames `path` to `<name>.corrupt-<unix time>` (with `-2`, `-3`… when taken): the
/// bytes are kept for a person to look at, the name says when, and nothing later
/// written at `path` touches them. Returns where it went.
pub fn set_aside(path: &Path) -> io::Result<PathBuf> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let name = path
        .file_name()
        .map_or_else(|| "store".into(), |n| n.to_string_lossy().into_owned());
    let base = format!("{name}.corrupt-{now}");
    let dir = parent(path);
    let mut aside = dir.join(&base);
    let mut n = 1;
    while aside.exists() {
        n += 1;
        aside = dir.join(format!("{base}-{n}"));
    }
    fs::rename(path, &aside)?;
    sync_dir(path)?;
    Ok(aside)
}

/// The directory of `path`; `.` for a bare file name.
pub fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// A rename or a new file is durable only once its directory is.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = parent(path);
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "outlast-lockfile-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_replaced_file_is_whole_and_no_temporary_file_is_left() {
        let dir = temp_dir("replace");
        let path = dir.join("s.json");
        replace(&path, &dir.join(".s.json.tmp"), b"one").expect("write");
        replace(&path, &dir.join(".s.json.tmp"), b"two").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        assert_eq!(names(&dir), ["s.json"]);
        let err = replace(&dir.join("no/such/dir/s.json"), &dir.join("no/x.tmp"), b"")
            .expect_err("missing directory");
        assert!(err.to_string().contains("x.tmp"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_set_aside_keep_their_bytes_under_names_of_their_own() {
        let dir = temp_dir("aside");
        let path = dir.join("s.json");
        for bytes in [&b"first"[..], b"second"] {
            fs::write(&path, bytes).expect("write");
            let aside = set_aside(&path).expect("set aside");
            assert!(!path.exists());
            assert_eq!(fs::read(&aside).expect("read"), bytes);
        }
        let names = names(&dir);
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(
            names.iter().all(|n| n.starts_with("s.json.corrupt-")),
            "{names:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
