//! The first cache tier: answers in memory, bounded in bytes (`[cache] size_bytes`),
//! weighed by key and answer length. Immutable entries never expire, only get evicted;
//! head-tied ones expire once they are too old even to be served stale.

use std::{
    hash::{BuildHasherDefault, Hasher},
    sync::Arc,
    time::Duration,
};

use super::policy::Lifetime;
use super::{Entry, key::Place};

/// What an entry costs in memory beyond its key's and answer's bytes: the entry and its
/// allocations, the table's slot and the policy's ghost of it, allocator rounding, and
/// the fragmentation of a heap shared with requests. Measured, not guessed: alone
/// (`cargo run --release --example cache_weight`) an `eth_getBalance` answer whose key
/// and body are 84 B costs 234 B resident; in a server filling its cache under load
/// (`bench/run.sh`, two worker threads) it costs about 410 B, where 404 B are counted,
/// so `[cache] size_bytes` bounds what the tier really holds. (moka's entries cost
/// 540 B alone; with 96 counted then, the process held three times the configured size.)
const OVERHEAD: usize = 320;

pub struct Memory {
    inner: Option<Inner>,
    /// How long a head-tied entry may be served from memory at all.
    head_tied: Duration,
}

/// Entries by the hash of their key, in `quick_cache` (S3-FIFO, sharded locks): a
/// lookup is a lock and a probe. moka, before it, recorded every read and write for its
/// policy and re-hashed every key it held while clearing evicted slots: over a quarter
/// of a forwarded batch's CPU (bench/profiles). A key is hashed once, on its way in,
/// and the table only passes that number through (`Prehashed`).
type Inner = quick_cache::sync::Cache<u64, Held, Weigh, BuildHasherDefault<Prehashed>>;

/// An entry with its whole key: two keys of one hash are never taken for each other
/// (a lookup whose key differs is a miss; the later insert replaces the earlier entry).
/// A head-tied entry holds its head (the block's hash) in one `Arc` with every other
/// entry of that head.
#[derive(Clone)]
struct Held {
    key: Arc<str>,
    head: Option<Arc<str>>,
    entry: Entry,
}

/// An entry weighs its key, its answer and `OVERHEAD`.
#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<u64, Held> for Weigh {
    fn weight(&self, _: &u64, h: &Held) -> u64 {
        (h.key.len() + h.entry.body.len() + OVERHEAD) as u64
    }
}

/// Passes a `u64` that is already a hash through, as the table's hash of it.
#[derive(Default, Clone)]
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

impl Memory {
    /// `bytes == 0` turns it off. Head-tied entries are not served after `head_tied`
    /// (they stay until evicted, counted in the bound like any other).
    pub fn new(bytes: u64, head_tied: Duration) -> Memory {
        let inner = (bytes > 0).then(|| {
            // The table grows as entries come; the estimate (answers of ~100 B of key
            // and body) only sizes the policy's record of recently evicted keys.
            let items = usize::try_from(bytes / (OVERHEAD as u64 + 100))
                .unwrap_or(usize::MAX)
                .clamp(64, 1 << 24);
            quick_cache::sync::Cache::with(
                items,
                bytes,
                Weigh,
                BuildHasherDefault::<Prehashed>::default(),
                quick_cache::sync::DefaultLifecycle::default(),
            )
        });
        Memory { inner, head_tied }
    }

    pub fn get(&self, at: Place<'_>) -> Option<Entry> {
        let inner = self.inner.as_ref()?;
        let held = inner.get(&at.hash)?;
        if !at.is(&held.key, held.head.as_deref()) {
            return None;
        }
        if held.entry.lifetime == Lifetime::Head && held.entry.age() >= self.head_tied {
            inner.remove(&at.hash);
            return None;
        }
        Some(held.entry)
    }

    pub fn insert(&self, at: Place<'_>, entry: Entry) {
        if let Some(c) = &self.inner {
            let held = Held {
                key: at.text.clone(),
                head: at.head.cloned(),
                entry,
            };
            c.insert(at.hash, held);
        }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Entries and bytes held (for tests and metrics).
    pub fn usage(&self) -> (u64, u64) {
        self.inner
            .as_ref()
            .map_or((0, 0), |c| (c.len() as u64, c.weight()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{Key, Reach};
    use crate::verify::Level;
    use bytes::Bytes;

    /// The key of an immutable answer `text`.
    fn key(text: &str) -> Key {
        let reach = Reach {
            immutable: true,
            head_tied: false,
        };
        Key::new(Arc::from(text), reach, None)
    }

    #[test]
    fn stays_within_its_bound() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        for i in 0..64 {
            m.insert(
                key(&format!("k{i}")).immutable(),
                Entry::new(
                    Lifetime::Immutable,
                    Level::None,
                    Bytes::from(vec![b'0'; 64 * 1024]),
                ),
            );
        }
        let (_, bytes) = m.usage();
        assert!(bytes <= 1 << 20, "{bytes}");
        assert!(
            Memory::new(0, Duration::ZERO)
                .get(key("k1").immutable())
                .is_none()
        );
    }

    #[test]
    fn a_key_is_never_answered_with_another_keys_entry() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        let entry = |body: &'static [u8]| {
            Entry::new(Lifetime::Immutable, Level::None, Bytes::from_static(body))
        };
        let (a, b) = (key("a"), key("b"));
        m.insert(a.immutable(), entry(b"\"a\""));
        assert_eq!(
            m.get(a.immutable()).map(|e| e.body),
            Some(Bytes::from_static(b"\"a\""))
        );
        assert!(m.get(b.immutable()).is_none());
        // Another key stored under `a`'s hash, as a collision would: `a` misses.
        if let Some(c) = &m.inner {
            c.insert(
                a.immutable().hash,
                Held {
                    key: Arc::from("b"),
                    head: None,
                    entry: entry(b"\"b\""),
                },
            );
        }
        assert!(m.get(a.immutable()).is_none());
        // The same text tied to a head is another entry, even of the same hash.
        m.insert(a.immutable(), entry(b"\"a\""));
        let tied = Key::colliding("a", Some("0xaa"), a.immutable().hash);
        assert!(m.get(tied.flight()).is_none());
    }
}
