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
pub mod memory;
pub mod policy;
pub mod redis;

use std::{
    hash::{BuildHasher, Hash, RandomState},
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use bytes::Bytes;

use crate::{config, verify::Level};
use policy::Lifetime;

/// The hash of a key made of what clients sent. It is keyed with this process's own
/// random SipHash key, as std's `HashMap` is, so nobody can aim many keys at one slot;
/// each key is hashed once, and tables keyed by it (`memory`, `coalesce`) pass the
/// number through.
fn keyed_hash(key: impl Hash) -> u64 {
    static KEYED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEYED.hash_one(key)
}

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

    /// Entries and bytes in memory.
    pub fn usage(&self) -> (u64, u64) {
        self.memory.usage()
    }

    async fn get(&self, key: &str) -> Option<Entry> {
        if let Some(e) = self.memory.get(key) {
            return Some(e);
        }
        let e = self.redis.as_ref()?.get(key).await?;
        self.memory.insert(Arc::from(key), e.clone());
        Some(e)
    }

    /// A fresh answer: immutable under `key`, or tied to the head `head` (its hash)
    /// while `live` (an upstream serves the chain, so the head is current) and younger
    /// than `ttl_secs`.
    pub async fn fresh(&self, key: &str, head: Option<&str>, live: bool) -> Option<Entry> {
        if let Some(e) = self.get(key).await
            && e.lifetime == Lifetime::Immutable
        {
            return Some(e);
        }
        let head = head.filter(|_| live)?;
        let e = self.get(&policy::at_head(key, head)).await?;
        (e.age() < self.ttl).then_some(e)
    }

    /// With `serve_stale`: the answer tied to head `head`, however old (up to
    /// `max_stale_secs`).
    pub async fn stale(&self, key: &str, head: Option<&str>) -> Option<Entry> {
        if !self.serve_stale {
            return None;
        }
        let e = self.get(&policy::at_head(key, head?)).await?;
        (e.age() < self.max_stale).then_some(e)
    }

    /// Keeps `body` as the answer under `key`; a head-tied one only with the head's hash.
    /// Redis is written in the background, so the client does not wait for it.
    pub fn store(
        &self,
        key: &Arc<str>,
        head: Option<&str>,
        lifetime: Lifetime,
        level: Level,
        body: Bytes,
    ) {
        let full: Arc<str> = match (lifetime, head) {
            (Lifetime::Immutable, _) => key.clone(),
            (Lifetime::Head, Some(h)) => Arc::from(policy::at_head(key, h)),
            (Lifetime::Head, None) => return,
        };
        // An answer is a slice of the upstream's whole reply buffer (kilobytes, even
        // for a short answer); a copy keeps only its own bytes alive, and the cache's
        // weight stays true.
        let entry = Entry::new(lifetime, level, Bytes::copy_from_slice(&body));
        // Cloned only for Redis: a copied body's first clone allocates its shared header.
        let shared = self
            .redis
            .as_ref()
            .map(|r| (r.clone(), full.clone(), entry.clone()));
        self.memory.insert(full, entry);
        if let Some((r, full, entry)) = shared {
            let keep = (lifetime == Lifetime::Head).then_some(self.keep);
            tokio::spawn(async move { r.set(&full, &entry, keep).await });
        }
    }
}
