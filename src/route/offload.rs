//! CPU work whose size an outsider decides runs off the serving threads. Each serving
//! runtime is one thread (`cores`) driving every connection it accepted: work of
//! milliseconds there stalls all of them. A verified `eth_call` runs as long as its gas
//! lasts; checking a provider's block body and receipts, or its proofs of many slots,
//! takes as long as what it sent (a mainnet block's receipts: ~50 ms). Such work runs on
//! tokio's blocking pool instead, at most half the cores at once, so the serving threads
//! keep the rest whatever clients and providers send. Waiting work queues in order,
//! within its request's deadline.

use std::sync::{Arc, LazyLock};

use tokio::sync::Semaphore;

/// Work running at once, over all chains: half the cores.
static WORKERS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Arc::new(Semaphore::new((cores / 2).max(1)))
});

/// Runs `work` on the blocking pool when a worker is free; `None` if it panicked.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    // The semaphore is never closed.
    let worker = WORKERS.clone().acquire_owned().await.ok()?;
    tokio::task::spawn_blocking(move || {
        let done = work();
        drop(worker);
        done
    })
    .await
    .ok()
}
