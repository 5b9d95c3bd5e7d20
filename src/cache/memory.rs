//! The first cache tier: answers in memory, bounded in bytes (`[cache] size_bytes`),
//! weighed by key and answer length. Immutable entries never expire, only get evicted;
//! head-tied ones expire once they are too old even to be served stale.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::Entry;
use super::policy::Lifetime;

/// What an entry costs in memory beyond its key's and answer's bytes: the entry and its
/// allocations, moka's hash-table slot, access-order and expiry nodes, allocator
/// rounding. Measured, not guessed: `cargo run --example cache_weight` fills the tier
/// and prints resident memory per entry against the weight counted for it (about
/// 540 B resident for an `eth_getBalance` answer whose key and body are 85 B), so
/// `[cache] size_bytes` bounds what the tier really holds. With 96 here the process
/// held three times the configured size.
const OVERHEAD: usize = 460;

pub struct Memory {
    inner: Option<moka::sync::Cache<Arc<str>, Entry>>,
}

struct Expire {
    head_tied: Duration,
}

impl moka::Expiry<Arc<str>, Entry> for Expire {
    fn expire_after_create(&self, _: &Arc<str>, entry: &Entry, _: Instant) -> Option<Duration> {
        match entry.lifetime {
            Lifetime::Immutable => None,
            Lifetime::Head => Some(self.head_tied),
        }
    }
}

impl Memory {
    /// `bytes == 0` turns it off. Head-tied entries are dropped after `head_tied`.
    pub fn new(bytes: u64, head_tied: Duration) -> Memory {
        let inner = (bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|k: &Arc<str>, e: &Entry| {
                    u32::try_from(k.len() + e.body.len() + OVERHEAD).unwrap_or(u32::MAX)
                })
                .expire_after(Expire { head_tied })
                .build()
        });
        Memory { inner }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        self.inner.as_ref()?.get(key)
    }

    pub fn insert(&self, key: Arc<str>, entry: Entry) {
        if let Some(c) = &self.inner {
            c.insert(key, entry);
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Entries and bytes held, after pending evictions ran (for tests and metrics).
    pub fn usage(&self) -> (u64, u64) {
        self.inner.as_ref().map_or((0, 0), |c| {
            c.run_pending_tasks();
            (c.entry_count(), c.weighted_size())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::Level;
    use bytes::Bytes;

    #[test]
    fn stays_within_its_bound() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        for i in 0..64 {
            m.insert(
                Arc::from(format!("k{i}")),
                Entry::new(
                    Lifetime::Immutable,
                    Level::None,
                    Bytes::from(vec![b'0'; 64 * 1024]),
                ),
            );
        }
        let (_, bytes) = m.usage();
        assert!(bytes <= 1 << 20, "{bytes}");
        assert!(Memory::new(0, Duration::ZERO).get("k1").is_none());
    }
}
