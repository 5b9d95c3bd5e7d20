//! Verified content by address, in memory, bounded in bytes (`[storage] cache_bytes`),
//! so that a file once fetched is served while every gateway is down. Holds only
//! bytes that passed their check: IPFS blocks by CID, Arweave headers by id and chunks
//! by `data_root` and offset. Content-addressed entries never go stale, so there is no
//! expiry, only eviction (moka's TinyLFU: one large file read once does not flush the
//! small, often-read ones).

use bytes::Bytes;
use cid::Cid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Block(Vec<u8>),
    ArweaveHeader(String),
    /// `data_root` and the chunk's first byte within the transaction's data.
    ArweaveChunk([u8; 32], u64),
}

impl Key {
    pub fn block(cid: &Cid) -> Key {
        Key::Block(cid.to_bytes())
    }

    fn weight(&self) -> usize {
        match self {
            Key::Block(b) => b.len(),
            Key::ArweaveHeader(id) => id.len(),
            Key::ArweaveChunk(..) => 40,
        }
    }
}

pub struct Cache {
    inner: Option<moka::sync::Cache<Key, Bytes>>,
}

/// Bookkeeping per entry beyond its bytes (key, hash-table slot), for the bound.
const OVERHEAD: usize = 96;

impl Cache {
    /// `bytes == 0` turns the cache off.
    pub fn new(bytes: u64) -> Cache {
        let inner = (bytes > 0).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(bytes)
                .weigher(|k: &Key, v: &Bytes| {
                    u32::try_from(k.weight() + v.len() + OVERHEAD).unwrap_or(u32::MAX)
                })
                .build()
        });
        Cache { inner }
    }

    pub fn get(&self, key: &Key) -> Option<Bytes> {
        self.inner.as_ref()?.get(key)
    }

    /// Only call with bytes that passed their check against `key`.
    pub fn insert(&self, key: Key, verified: Bytes) {
        if let Some(c) = &self.inner {
            c.insert(key, verified);
            // moka evicts in batches; applying them now keeps memory at the bound
            // while a large file streams through (measured: 40% over without it).
            c.run_pending_tasks();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_its_bound() {
        let cache = Cache::new(1 << 20);
        for i in 0..64u64 {
            cache.insert(
                Key::ArweaveChunk([0; 32], i),
                Bytes::from(vec![0u8; 64 * 1024]),
            );
        }
        let c = cache.inner.as_ref().expect("enabled");
        c.run_pending_tasks();
        assert!(c.weighted_size() <= 1 << 20, "{}", c.weighted_size());
        assert!(Cache::new(0).get(&Key::ArweaveHeader("x".into())).is_none());
    }
}
