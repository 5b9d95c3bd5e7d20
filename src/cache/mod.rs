//! Step 5 of a request: answers from cache, and identical calls in flight joined.
//! Finality-aware (`policy`): answers about finalized data are immutable and kept until
//! evicted; answers tied to the consensus head are keyed by its hash, so a new head or
//! a reorg misses them, and they also age out after `[cache] ttl_secs`. Two tiers: memory
//! (`memory`, bounded in bytes) and, with `[redis] url`, Redis (`redis`), shared
//! between instances, each entry authenticated under `[redis] secret` (one that is not
//! is a miss). In-flight joining is `coalesce`.
//! Holds only successful, non-null, non-pending answers; never errors. An answer that
//! was verified (proof or quorum) keeps its level, so a call that must be verified is
//! only ever answered from an entry that was. Calls no upstream.

pub mod coalesce;
pub mod key;
pub mod memory;
pub mod policy;
pub mod redis;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use crate::{config, verify::Level};
use key::Place;
pub use key::{Key, Reach};
use policy::Lifetime;

/// One cached answer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub lifetime: Lifetime,
    /// How the answer was checked before it was kept.
    pub level: Level,
    /// Wall-clock time, so instances sharing Redis agree on an entry's age.
    pub stored: SystemTime,
    /// The raw JSON `result`.
    pub body: Bytes,
}

impl Entry {
    pub fn new(lifetime: Lifetime, level: Level, body: Bytes) -> Entry {
        Entry {
            lifetime,
            level,
            stored: SystemTime::now(),
            body,
        }
    }

    pub fn age(&self) -> Duration {
        SystemTime::now()
            .duration_since(self.stored)
            .unwrap_or_default()
    }
}

pub struct Cache {
    memory: memory::Memory,
    redis: Option<Arc<redis::RedisTier>>,
    pub flights: coalesce::Flights,
    ttl: Duration,
    pub serve_stale: bool,
    /// The oldest a head-tied answer may be to be served stale (`max_stale_secs`).
    max_stale: Duration,
    /// How long a head-tied answer is kept: for `ttl_secs`, and for `max_stale_secs`
    /// when stale answers are served.
    keep: Duration,
}

impl Cache {
    pub fn new(cache: &config::Cache, redis: &config::Redis) -> Cache {
        let ttl = Duration::from_secs(cache.ttl_secs);
        let max_stale = Duration::from_secs(cache.max_stale_secs);
        let keep = if cache.serve_stale {
            ttl.max(max_stale)
        } else {
            ttl
        };
        Cache {
            memory: memory::Memory::new(cache.size_bytes, keep),
            redis: redis::RedisTier::new(redis).map(Arc::new),
            flights: coalesce::Flights::default(),
            ttl,
            serve_stale: cache.serve_stale,
            max_stale,
            keep,
        }
    }

    /// Off when there is neither memory for it nor Redis.
    pub fn enabled(&self) -> bool {
        self.memory.enabled() || self.redis.is_some()
    }

    /// `None` without Redis; else whether Redis answered last time (`/readyz` detail).
    /// The shared tier, for what instances share besides answers (`bans`).
    pub fn shared(&self) -> Option<Arc<redis::RedisTier>> {
        self.redis.clone()
    }

    pub fn redis_up(&self) -> Option<bool> {
        self.redis.as_ref().map(|r| r.is_up())
    }

    /// Entries and bytes in memory, counted at most once a second (for `/metrics`).
    pub fn usage(&self) -> (u64, u64) {
        self.memory.recent_usage()
    }

    async fn get(&self, at: Place<'_>) -> Option<Entry> {
        if let Some(e) = self.memory.get(at) {
            return Some(e);
        }
        let e = self.redis.as_ref()?.get(&at.shared_key()).await?;
        self.memory.insert(at, &e);
        Some(e)
    }

    /// A fresh answer: immutable, or tied to the key's head while `live` (an upstream
    /// serves the chain, so the head is current) and younger than `ttl_secs`. Only the
    /// entries the call's answer can be kept as are looked for (`Reach`).
    pub async fn fresh(&self, key: &Key, live: bool) -> Option<Entry> {
        if key.may_be_immutable()
            && let Some(e) = self.get(key.immutable()).await
            && e.lifetime == Lifetime::Immutable
        {
            return Some(e);
        }
        let e = self.get(key.tied().filter(|_| live)?).await?;
        (e.age() < self.ttl).then_some(e)
    }

    /// With `serve_stale`: the answer tied to the key's head, however old (up to
    /// `max_stale_secs`).
    pub async fn stale(&self, key: &Key) -> Option<Entry> {
        if !self.serve_stale {
            return None;
        }
        let e = self.get(key.tied()?).await?;
        (e.age() < self.max_stale).then_some(e)
    }

    /// Keeps `body` as the answer under `key`; a head-tied one only with a head.
    /// Redis is written in the background, so the client does not wait for it.
    pub fn store(&self, key: &Key, lifetime: Lifetime, level: Level, body: Bytes) {
        let Some(at) = (match lifetime {
            Lifetime::Immutable => Some(key.immutable()),
            Lifetime::Head => key.tied(),
        }) else {
            return;
        };
        // Memory copies the answer into its ring. For Redis it is copied too: it is a
        // slice of the upstream's whole reply buffer (kilobytes, even for a short
        // answer), which the write in the background would otherwise keep alive.
        let entry = Entry::new(lifetime, level, body);
        self.memory.insert(at, &entry);
        let shared = self.redis.as_ref().map(|r| {
            let copied = Entry {
                body: Bytes::copy_from_slice(&entry.body),
                ..entry
            };
            (r.clone(), at.shared_key(), copied)
        });
        if let Some((r, full, entry)) = shared {
            let keep = (lifetime == Lifetime::Head).then_some(self.keep);
            tokio::spawn(async move { r.set(&full, &entry, keep).await });
        }
    }
}
