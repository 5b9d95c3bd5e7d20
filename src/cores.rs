//! The serving runtimes. With `[server] worker_threads` above one, Outlast runs one
//! single-threaded tokio runtime per worker thread rather than one work-stealing
//! runtime: the listener hands each accepted connection to one of them, and that
//! connection's requests, their tasks and the upstream connections they use
//! (`upstream::transport` keeps a pool per runtime) all stay on that thread. With the
//! work-stealing runtime a forwarded call crossed threads up to four times (server
//! connection, request task, client connection, back), and two threads forwarded fewer
//! calls than one (bench/README.md). Background work (head tracking, probes, incidents)
//! runs on the first runtime, the one `main` blocks on.

use std::{
    cell::Cell,
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::runtime::Handle;

thread_local! {
    /// Which runtime this thread drives; 0 for the first and for threads outside them.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The runtimes connections are spread over, the first one included.
struct Cores {
    handles: Vec<Handle>,
    next: AtomicUsize,
}

static CORES: OnceLock<Cores> = OnceLock::new();

/// Records the serving runtimes, once, before anything is served; `handles[0]` is the
/// runtime `main` blocks on. Without it (tests, `outlast probe`) everything runs on the
/// runtime it was started on.
pub fn install(handles: Vec<Handle>) {
    let _ = CORES.set(Cores {
        handles,
        next: AtomicUsize::new(0),
    });
}

/// Marks the calling thread as the one driving runtime `index` (at its start).
pub fn enter(index: usize) {
    INDEX.with(|i| i.set(index));
}

/// How many serving runtimes there are (1 when none were installed).
pub fn count() -> usize {
    CORES.get().map_or(1, |c| c.handles.len().max(1))
}

/// The runtime the calling thread drives, below `count()`.
pub fn current() -> usize {
    INDEX.with(Cell::get) % count()
}

/// The runtime for the next connection, in turn; `None` when there is only the one
/// the caller runs on.
pub fn next() -> Option<&'static Handle> {
    let cores = CORES.get().filter(|c| c.handles.len() > 1)?;
    let i = cores.next.fetch_add(1, Ordering::Relaxed) % cores.handles.len();
    cores.handles.get(i)
}
