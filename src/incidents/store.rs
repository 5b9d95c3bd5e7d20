//! Incident history on disk, in the data directory:
//!
//! - `incidents.jsonl` — append-only, one whole incident (as JSON) per line each time it
//!   changes, fsynced; on load the last line of each id wins. A torn last line (a crash
//!   while writing) is skipped and the log rewritten without it, so the next record does
//!   not run into it. Rewritten compactly at start when mostly superseded lines.
//! - `uptime.json` — the uptime buckets, replaced whole.
//! - `lock` — held while running, so two Outlasts never write the same history.
//!
//! Every rewrite goes through `lockfile::replace` (temporary file, fsync, rename,
//! directory fsync): a crash leaves the old file or the new one. A file that cannot be
//! read — `uptime.json` that is not uptime, a log with damaged records before its end —
//! is renamed aside (`<name>.corrupt-<unix time>`) with a line in the log, as the
//! transaction store does: never silently reset or overwritten, so it can be recovered
//! by hand.
//!
//! Plain files on purpose: a few hundred small records a day need no database, and an
//! operator can read them with `tail` and `jq`. Blocking I/O: called from
//! `spawn_blocking`, never on the async threads.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
};

use super::{Incident, Time, uptime::Uptime};
use crate::lockfile;

const INCIDENTS: &str = "incidents.jsonl";
const UPTIME: &str = "uptime.json";
const LOCK: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("incident history {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "incident history {path} is in use by another Outlast; give each its own `[status] data_dir`"
    )]
    Locked { path: PathBuf },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What was on disk.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Oldest first.
    pub incidents: Vec<Incident>,
    pub uptime: Uptime,
}

pub struct Store {
    dir: PathBuf,
    log: File,
    /// Lines in the log, and the incidents they are about: when most lines are
    /// superseded, the log is rewritten (`compact`).
    lines: usize,
    ids: std::collections::HashSet<u64>,
    /// Holds the lock until dropped.
    _lock: File,
}

impl Store {
    /// Opens (creating) the history in `dir` and loads it. Resolved incidents older than
    /// `history_days` are left out.
    pub fn open(dir: &Path, history_days: u32) -> Result<(Store, Loaded), StoreError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock_path = dir.join(LOCK);
        let Some(lock) = crate::lockfile::take(&lock_path).map_err(io_error(&lock_path))? else {
            return Err(StoreError::Locked {
                path: dir.to_owned(),
            });
        };

        let path = dir.join(INCIDENTS);
        let tmp = dir.join(format!("{INCIDENTS}.tmp"));
        let read = read_incidents(&path)?;
        let oldest = Time::now()
            .0
            .saturating_sub(u64::from(history_days) * 86_400_000);
        let incidents: Vec<Incident> = read
            .incidents
            .into_values()
            .filter(|i| i.resolved.is_none_or(|r| r.0 >= oldest))
            .collect();
        let mut lines = read.lines;
        if read.damaged > 0 {
            // Records were lost, not just cut short: keep the file as it is for a person,
            // and go on with what could be read.
            let aside = lockfile::set_aside(&path).map_err(io_error(&path))?;
            tracing::error!(
                path = %path.display(),
                moved_to = %aside.display(),
                damaged = read.damaged,
                kept = incidents.len(),
                "the incident history has unreadable records; it was moved aside untouched \
                 and a new one started with the incidents that could be read"
            );
        } else if read.torn {
            tracing::warn!(
                path = %path.display(),
                "the incident history ends in a record cut short (a crash while writing); \
                 rewriting it without that record"
            );
        }
        if read.damaged > 0 || read.torn || lines > incidents.len() * 2 + 16 {
            lockfile::replace(&path, &tmp, &lines_of(&incidents)).map_err(io_error(&path))?;
            lines = incidents.len();
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;

        let uptime_path = dir.join(UPTIME);
        let uptime = match fs::read(&uptime_path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(uptime) => uptime,
                Err(e) => {
                    let aside =
                        lockfile::set_aside(&uptime_path).map_err(io_error(&uptime_path))?;
                    tracing::warn!(
                        path = %uptime_path.display(),
                        moved_to = %aside.display(),
                        "the uptime history cannot be read ({e}); it was moved aside untouched \
                         and uptime is counted afresh"
                    );
                    Uptime::default()
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => Uptime::default(),
            Err(e) => return Err(io_error(&uptime_path)(e)),
        };
        let store = Store {
            dir: dir.to_owned(),
            log,
            lines,
            ids: incidents.iter().map(|i| i.id).collect(),
            _lock: lock,
        };
        Ok((store, Loaded { incidents, uptime }))
    }

    /// Appends the current state of each incident.
    pub fn append(&mut self, incidents: &[Incident]) -> Result<(), StoreError> {
        let buf = lines_of(incidents);
        let path = self.dir.join(INCIDENTS);
        // Incidents change rarely: each record is on disk before the next evaluation.
        self.log
            .write_all(&buf)
            .and_then(|()| self.log.sync_data())
            .map_err(io_error(&path))?;
        self.lines += incidents.len();
        self.ids.extend(incidents.iter().map(|i| i.id));
        Ok(())
    }

    /// Most lines are superseded: time to `compact`.
    pub fn needs_compaction(&self) -> bool {
        self.lines > self.ids.len() * 4 + 1024
    }

    /// Rewrites the log as one line per incident of `all` (`lockfile::replace`).
    pub fn compact(&mut self, all: &[Incident]) -> Result<(), StoreError> {
        let path = self.dir.join(INCIDENTS);
        let tmp = self.dir.join(format!("{INCIDENTS}.tmp"));
        lockfile::replace(&path, &tmp, &lines_of(all)).map_err(io_error(&path))?;
        self.log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        self.lines = all.len();
        self.ids = all.iter().map(|i| i.id).collect();
        Ok(())
    }

    /// Replaces the uptime snapshot (`lockfile::replace`).
    pub fn save_uptime(&self, uptime: &Uptime) -> Result<(), StoreError> {
        let path = self.dir.join(UPTIME);
        let tmp = self.dir.join(format!("{UPTIME}.tmp"));
        // Maps of strings to numbers: serializing cannot fail, and an empty file would
        // be set aside at the next start rather than read as no uptime.
        let bytes = serde_json::to_vec(uptime).map_err(|e| io_error(&path)(e.into()))?;
        lockfile::replace(&path, &tmp, &bytes).map_err(io_error(&path))
    }
}

/// What the log held.
#[derive(Debug, Default)]
struct Read {
    /// The last record of each id.
    incidents: BTreeMap<u64, Incident>,
    /// Non-empty lines.
    lines: usize,
    /// Unreadable lines before the last one (or anywhere, when it ends in a newline):
    /// records lost, not just cut short.
    damaged: usize,
    /// The file does not end in a newline: its last record was cut short (and skipped
    /// when unreadable); the next append would run into it.
    torn: bool,
}

fn read_incidents(path: &Path) -> Result<Read, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Read::default()),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut read = Read {
        torn: !bytes.is_empty() && !bytes.ends_with(b"\n"),
        ..Read::default()
    };
    let count = bytes.split(|&b| b == b'\n').count();
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        read.lines += 1;
        match serde_json::from_slice::<Incident>(line) {
            Ok(i) => {
                read.incidents.insert(i.id, i);
            }
            Err(_) if read.torn && n + 1 == count => {}
            Err(e) => {
                read.damaged += 1;
                tracing::warn!(
                    path = %path.display(),
                    line = n + 1,
                    "an unreadable incident record: {e}"
                );
            }
        }
    }
    Ok(read)
}

/// One line of JSON per incident.
fn lines_of(incidents: &[Incident]) -> Vec<u8> {
    let mut buf = Vec::new();
    for i in incidents {
        // An `Incident` is plain strings, numbers and enums: serializing cannot fail.
        if serde_json::to_writer(&mut buf, i).is_ok() {
            buf.push(b'\n');
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incidents::{Event, Kind, Severity, Update};

    fn incident(id: u64, resolved: Option<Time>) -> Incident {
        Incident {
            id,
            key: format!("down:c/u{id}"),
            kind: Kind::UpstreamDown,
            severity: Severity::Minor,
            title: format!("c: upstream u{id} is down"),
            chains: vec!["c".into()],
            upstreams: Vec::new(),
            factor: None,
            started: Time(Time::now().0 - 1_000),
            resolved,
            updates: vec![Update {
                at: Time::now(),
                event: Event::Opened,
                message: "connection refused".into(),
            }],
            evidence: None,
            window: None,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("outlast-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn history_survives_reopening_and_the_last_record_wins() {
        let dir = temp_dir("reopen");
        {
            let (mut store, loaded) = Store::open(&dir, 90).expect("open");
            assert!(loaded.incidents.is_empty());
            store
                .append(&[incident(1, None), incident(2, None)])
                .expect("append");
            store
                .append(&[incident(1, Some(Time::now()))])
                .expect("append");
        }
        // A torn last line from a crash is skipped.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(INCIDENTS))
            .expect("open log");
        f.write_all(b"{\"id\":3,\"key\":").expect("write");
        let (_store, loaded) = Store::open(&dir, 90).expect("reopen");
        let ids: Vec<(u64, bool)> = loaded
            .incidents
            .iter()
            .map(|i| (i.id, i.is_open()))
            .collect();
        assert_eq!(ids, [(1, false), (2, true)]);
        let _ = fs::remove_dir_all(&dir);
    }

    /// Files in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn ids(loaded: &Loaded) -> Vec<u64> {
        loaded.incidents.iter().map(|i| i.id).collect()
    }

    #[test]
    fn a_record_after_a_torn_one_is_not_lost() {
        let dir = temp_dir("torn");
        {
            let (mut store, _) = Store::open(&dir, 90).expect("open");
            store.append(&[incident(1, None)]).expect("append");
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(INCIDENTS))
            .expect("open log");
        f.write_all(b"{\"id\":3,\"key\":").expect("write");
        {
            let (mut store, loaded) = Store::open(&dir, 90).expect("reopen");
            assert_eq!(ids(&loaded), [1]);
            store.append(&[incident(4, None)]).expect("append");
        }
        let (_store, loaded) = Store::open(&dir, 90).expect("reopen");
        assert_eq!(ids(&loaded), [1, 4]);
        // Cut short by a crash is not damage: nothing set aside.
        assert_eq!(names(&dir), [INCIDENTS, LOCK]);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_history_is_moved_aside_untouched_and_its_readable_records_kept() {
        let dir = temp_dir("damaged");
        fs::create_dir_all(&dir).expect("mkdir");
        let mut bytes = lines_of(&[incident(1, None)]);
        bytes.extend_from_slice(b"{\"id\":2,\"garbage\n\xff\xfe not even UTF-8\n");
        bytes.extend_from_slice(&lines_of(&[incident(3, None)]));
        fs::write(dir.join(INCIDENTS), &bytes).expect("write");
        let (_store, loaded) = Store::open(&dir, 90).expect("open");
        assert_eq!(ids(&loaded), [1, 3]);
        let names = names(&dir);
        let aside: Vec<&String> = names
            .iter()
            .filter(|n| n.starts_with("incidents.jsonl.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{names:?}");
        assert_eq!(fs::read(dir.join(aside[0])).expect("read"), bytes);
        let text = fs::read_to_string(dir.join(INCIDENTS)).expect("new log");
        assert_eq!(text.lines().count(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_uptime_file_is_moved_aside_never_overwritten() {
        let dir = temp_dir("uptime");
        {
            let (store, _) = Store::open(&dir, 90).expect("open");
            let mut uptime = Uptime::default();
            uptime.record("c/a", Some(true), Time::now(), 1_000);
            store.save_uptime(&uptime).expect("save");
            // Saving leaves no temporary file behind.
            assert_eq!(names(&dir), [INCIDENTS, LOCK, UPTIME]);
        }
        let (_store, loaded) = Store::open(&dir, 90).expect("reopen");
        assert_eq!(loaded.uptime.view("c/a", Time::now()).ratio_24h, Some(1.0));
        drop(_store);
        for garbage in [&b"{\"series\":{\"c/a\":{\"fine\":[[1,2"[..], b"[]"] {
            fs::write(dir.join(UPTIME), garbage).expect("write");
            let (store, loaded) = Store::open(&dir, 90).expect("open");
            assert_eq!(loaded.uptime.view("c/a", Time::now()).ratio_24h, None);
            assert!(!dir.join(UPTIME).exists(), "moved, not read as empty");
            store.save_uptime(&Uptime::default()).expect("save");
        }
        let kept: Vec<Vec<u8>> = names(&dir)
            .iter()
            .filter(|n| n.starts_with("uptime.json.corrupt-"))
            .map(|n| fs::read(dir.join(n)).expect("read"))
            .collect();
        assert_eq!(kept.len(), 2, "each set aside under its own name");
        assert!(kept.iter().any(|k| k == b"[]"));
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_of_mostly_superseded_lines_is_compacted() {
        let dir = temp_dir("compact");
        let (mut store, _) = Store::open(&dir, 90).expect("open");
        let one = incident(1, None);
        for _ in 0..1100 {
            store.append(std::slice::from_ref(&one)).expect("append");
        }
        assert!(store.needs_compaction());
        store.compact(std::slice::from_ref(&one)).expect("compact");
        assert!(!store.needs_compaction());
        store
            .append(&[incident(2, None)])
            .expect("append after compaction");
        drop(store);
        let text = fs::read_to_string(dir.join(INCIDENTS)).expect("log");
        assert_eq!(text.lines().count(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_second_outlast_cannot_take_the_same_history() {
        let dir = temp_dir("locked");
        let (_first, _) = Store::open(&dir, 90).expect("open");
        assert!(matches!(
            Store::open(&dir, 90),
            Err(StoreError::Locked { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
