//! Incident history on disk, in the data directory:
//!
//! - `incidents.jsonl` — append-only, one whole incident (as JSON) per line each time it
//!   changes; on load the last line of each id wins. A torn last line (a crash while
//!   writing) is skipped. Rewritten compactly at start when mostly superseded lines.
//! - `uptime.json` — the uptime buckets, replaced whole (write, then rename).
//! - `lock` — held while running, so two Outlasts never write the same history.
//!
//! Plain files on purpose: a few hundred small records a day need no database, and an
//! operator can read them with `tail` and `jq`. Blocking I/O: called from
//! `spawn_blocking`, never on the async threads.

use std::{
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use super::{Incident, Time, uptime::Uptime};

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
        let (incidents, lines) = read_incidents(&path)?;
        let oldest = Time::now()
            .0
            .saturating_sub(u64::from(history_days) * 86_400_000);
        let incidents: Vec<Incident> = incidents
            .into_values()
            .filter(|i| i.resolved.is_none_or(|r| r.0 >= oldest))
            .collect();
        let mut lines = lines;
        if lines > incidents.len() * 2 + 16 {
            let tmp = dir.join(format!("{INCIDENTS}.tmp"));
            write_lines(&tmp, &incidents)?;
            fs::rename(&tmp, &path).map_err(io_error(&path))?;
            lines = incidents.len();
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;

        let uptime_path = dir.join(UPTIME);
        let uptime = match fs::read(&uptime_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %uptime_path.display(), "unreadable uptime history ({e}); starting afresh");
                Uptime::default()
            }),
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
        let mut buf = Vec::new();
        for i in incidents {
            // An `Incident` is plain strings, numbers and enums: serializing cannot fail.
            if serde_json::to_writer(&mut buf, i).is_ok() {
                buf.push(b'\n');
            }
        }
        let path = self.dir.join(INCIDENTS);
        self.log.write_all(&buf).map_err(io_error(&path))?;
        self.lines += incidents.len();
        self.ids.extend(incidents.iter().map(|i| i.id));
        Ok(())
    }

    /// Most lines are superseded: time to `compact`.
    pub fn needs_compaction(&self) -> bool {
        self.lines > self.ids.len() * 4 + 1024
    }

    /// Rewrites the log as one line per incident of `all` (write, then rename).
    pub fn compact(&mut self, all: &[Incident]) -> Result<(), StoreError> {
        let path = self.dir.join(INCIDENTS);
        let tmp = self.dir.join(format!("{INCIDENTS}.tmp"));
        write_lines(&tmp, all)?;
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        self.log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error(&path))?;
        self.lines = all.len();
        self.ids = all.iter().map(|i| i.id).collect();
        Ok(())
    }

    /// Replaces the uptime snapshot.
    pub fn save_uptime(&self, uptime: &Uptime) -> Result<(), StoreError> {
        let path = self.dir.join(UPTIME);
        let tmp = self.dir.join(format!("{UPTIME}.tmp"));
        let bytes = serde_json::to_vec(uptime).unwrap_or_default();
        fs::write(&tmp, bytes).map_err(io_error(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_error(&path))
    }
}

/// The last record of each id, and how many lines there were.
fn read_incidents(path: &Path) -> Result<(BTreeMap<u64, Incident>, usize), StoreError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((BTreeMap::new(), 0)),
        Err(e) => return Err(io_error(path)(e)),
    };
    let mut out = BTreeMap::new();
    let mut lines = 0;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        match serde_json::from_str::<Incident>(&line) {
            Ok(i) => {
                out.insert(i.id, i);
            }
            Err(e) => tracing::warn!(
                path = %path.display(),
                line = n + 1,
                "skipping an unreadable incident record: {e}"
            ),
        }
    }
    Ok((out, lines))
}

fn write_lines(path: &Path, incidents: &[Incident]) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    for i in incidents {
        if serde_json::to_writer(&mut buf, i).is_ok() {
            buf.push(b'\n');
        }
    }
    fs::write(path, buf).map_err(io_error(path))
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
