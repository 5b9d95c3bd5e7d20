//! The first cache tier: answers in memory, bounded in bytes (`[cache] size_bytes`),
//! weighed by key and answer length. Immutable entries never expire, only get evicted;
//! head-tied ones expire once they are too old even to be served stale.

use std::{
    hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState},
    sync::{Arc, LazyLock},
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
    inner: Option<Inner>,
}

/// Entries by the hash of their key. moka's table re-hashes every key it holds when it
/// clears out the slots of evicted entries, which, with ~110-byte string keys and
/// SipHash, took a fifth of a forwarded batch's CPU once the tier was full
/// (bench/profiles): a key is now hashed once, on its way in, and moka only passes that
/// number through (`Prehashed`).
type Inner = moka::sync::Cache<u64, Held, BuildHasherDefault<Prehashed>>;

/// An entry with its whole key: two keys of one hash are never taken for each other
/// (a lookup whose key differs is a miss; the later insert replaces the earlier entry).
#[derive(Clone)]
struct Held {
    key: Arc<str>,
    entry: Entry,
}

/// The hash of a key. Keys come from clients, so it is keyed with this process's own
/// random SipHash key, as std's `HashMap` is: nobody can aim many keys at one slot.
fn hash_of(key: &str) -> u64 {
    static KEYED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEYED.hash_one(key)
}

/// Passes a `u64` that is already a hash through, as moka's hash of it.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    /// Not used for `u64` keys; mixes anything else in, so it stays a hash.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
}

struct Expire {
    head_tied: Duration,
}

impl moka::Expiry<u64, Held> for Expire {
    fn expire_after_create(&self, _: &u64, held: &Held, _: Instant) -> Option<Duration> {
        match held.entry.lifetime {
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
                .weigher(|_: &u64, h: &Held| {
                    u32::try_from(h.key.len() + h.entry.body.len() + OVERHEAD).unwrap_or(u32::MAX)
                })
                .expire_after(Expire { head_tied })
                .build_with_hasher(BuildHasherDefault::<Prehashed>::default())
        });
        Memory { inner }
    }

    pub fn get(&self, key: &str) -> Option<Entry> {
        let held = self.inner.as_ref()?.get(&hash_of(key))?;
        (*held.key == *key).then_some(held.entry)
    }

    pub fn insert(&self, key: Arc<str>, entry: Entry) {
        if let Some(c) = &self.inner {
            c.insert(hash_of(&key), Held { key, entry });
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

    #[test]
    fn a_key_is_never_answered_with_another_keys_entry() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        let entry = |body: &'static [u8]| {
            Entry::new(Lifetime::Immutable, Level::None, Bytes::from_static(body))
        };
        m.insert(Arc::from("a"), entry(b"\"a\""));
        assert_eq!(
            m.get("a").map(|e| e.body),
            Some(Bytes::from_static(b"\"a\""))
        );
        assert!(m.get("b").is_none());
        // Another key stored under `a`'s hash, as a collision would: `a` misses.
        if let Some(c) = &m.inner {
            c.insert(
                hash_of("a"),
                Held {
                    key: Arc::from("b"),
                    entry: entry(b"\"b\""),
                },
            );
        }
        assert!(m.get("a").is_none());
    }
}
