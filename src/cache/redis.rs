//! The second cache tier: Redis, shared by every Outlast instance (`[redis] url`).
//! Stores what the memory tier stores, under `key_prefix` + key, encoded as one byte of
//! lifetime, one of verification level, eight of when it was stored (Unix ms), then
//! the raw answer. Head-tied
//! entries carry Redis' own expiry. Every call is bounded by `timeout_ms`; Redis being
//! down only makes this tier miss, and each change up/down is logged once.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, UNIX_EPOCH},
};

use bytes::Bytes;
use redis::{AsyncCommands, aio::ConnectionManager};

use super::{Entry, policy::Lifetime};
use crate::{config, route::verified::Level};

pub struct RedisTier {
    client: redis::Client,
    /// Connected lazily, inside the runtime, at first use; reconnects by itself.
    manager: OnceLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    /// Shown in logs instead of the URL, which may hold a password.
    shown: String,
}

impl RedisTier {
    pub fn new(cfg: &config::Redis) -> Option<RedisTier> {
        let url = cfg.url.as_ref()?;
        let client = match redis::Client::open(url.expose().as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(redis = %url, error = %e, "cannot use [redis] url; caching in memory only");
                return None;
            }
        };
        Some(RedisTier {
            client,
            manager: OnceLock::new(),
            prefix: cfg.key_prefix.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            up: AtomicBool::new(true),
            shown: url.to_string(),
        })
    }

    fn manager(&self) -> Option<ConnectionManager> {
        self.manager
            .get_or_init(|| {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .inspect_err(|e| tracing::error!(redis = %self.shown, error = %e, "cannot set up Redis; caching in memory only"))
                    .ok()
            })
            .clone()
    }

    /// Whether the last Redis call worked (for `/readyz` detail).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn report<T>(
        &self,
        result: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
    ) -> Option<T> {
        let (ok, value, why) = match result {
            Ok(Ok(v)) => (true, Some(v), String::new()),
            Ok(Err(e)) => (false, None, e.to_string()),
            Err(_) => (
                false,
                None,
                format!("no answer within {} ms", self.timeout.as_millis()),
            ),
        };
        if self.up.swap(ok, Ordering::Relaxed) != ok {
            if ok {
                tracing::info!(redis = %self.shown, "Redis answers again: the shared cache tier is back");
            } else {
                tracing::warn!(redis = %self.shown, error = %why, "Redis is unavailable: caching in memory only until it answers");
            }
        }
        value
    }

    pub async fn get(&self, key: &str) -> Option<Entry> {
        let mut conn = self.manager()?;
        let full = format!("{}{key}", self.prefix);
        let got: Option<Vec<u8>> = self
            .report(tokio::time::timeout(self.timeout, conn.get(full)).await)
            .flatten();
        decode(&got?)
    }

    /// `keep`: Redis' expiry for the entry (`None`: kept until Redis evicts it).
    pub async fn set(&self, key: &str, entry: &Entry, keep: Option<Duration>) {
        let Some(mut conn) = self.manager() else {
            return;
        };
        let full = format!("{}{key}", self.prefix);
        let value = encode(entry);
        let done = match keep {
            Some(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
                tokio::time::timeout(self.timeout, conn.pset_ex::<_, _, ()>(full, value, ms)).await
            }
            None => tokio::time::timeout(self.timeout, conn.set::<_, _, ()>(full, value)).await,
        };
        self.report(done);
    }
}

fn encode(e: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + e.body.len());
    out.push(match e.lifetime {
        Lifetime::Immutable => b'I',
        Lifetime::Head => b'H',
    });
    out.push(match e.level {
        Level::None => b'n',
        Level::Quorum => b'q',
        Level::Proof => b'p',
    });
    let ms = e
        .stored
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    out.extend_from_slice(&u64::try_from(ms).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&e.body);
    out
}

fn decode(raw: &[u8]) -> Option<Entry> {
    let lifetime = match raw.first()? {
        b'I' => Lifetime::Immutable,
        b'H' => Lifetime::Head,
        _ => return None,
    };
    let level = match raw.get(1)? {
        b'n' => Level::None,
        b'q' => Level::Quorum,
        b'p' => Level::Proof,
        _ => return None,
    };
    let ms = u64::from_be_bytes(raw.get(2..HEADER)?.try_into().ok()?);
    Some(Entry {
        lifetime,
        level,
        stored: UNIX_EPOCH + Duration::from_millis(ms),
        body: Bytes::copy_from_slice(raw.get(HEADER..)?),
    })
}

/// Bytes before the answer: lifetime, level, time stored.
const HEADER: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_the_round_trip() {
        let e = Entry {
            lifetime: Lifetime::Head,
            level: Level::Proof,
            stored: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            body: Bytes::from_static(b"\"0x1\""),
        };
        let back = decode(&encode(&e)).expect("decodes");
        assert_eq!(
            (back.lifetime, back.level, back.stored, back.body),
            (e.lifetime, e.level, e.stored, e.body)
        );
        assert!(decode(b"Xgarbage").is_none());
    }
}
