//! The second cache tier: Redis, shared by every Outlast instance (`[redis] url`).
//! Stores what the memory tier stores, under `key_prefix` + key, encoded as a 32-byte
//! tag, one byte of lifetime, one of verification level, eight of when it was stored
//! (Unix ms), then the raw answer. Head-tied entries carry Redis' own expiry. Every call
//! is bounded by `timeout_ms`, and every read by the longest value written here (an
//! answer of at most 8 MiB); Redis being down only makes this tier miss, and each
//! change up/down is logged once.
//!
//! Whoever can write to Redis is not trusted with answers: the tag is an HMAC-SHA256,
//! under `[redis] secret` (shared by the instances), of the full key and everything
//! after the tag, the verification level included. An entry whose tag is missing or
//! wrong (forged, edited, moved to another key, written with another secret or by an
//! older Outlast) is a miss: never an answer, never "verified". It is counted
//! (`outlast_cache_redis_rejected_total`) and logged at most once a minute.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use redis::{AsyncCommands, aio::ConnectionManager};
use sha2::Sha256;

use super::{Entry, policy::Lifetime};
use crate::{config, verify::Level};

pub struct RedisTier {
    client: redis::Client,
    /// Connected lazily, inside the runtime, at first use; reconnects by itself.
    manager: OnceLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    /// Shown in logs instead of the URL, which may hold a password.
    shown: String,
    /// Keyed with `[redis] secret`; cloned for each entry.
    mac: Hmac<Sha256>,
    /// Entries refused since start, and when (Unix s) that was last logged.
    rejected: AtomicU64,
    last_logged: AtomicU64,
}

impl RedisTier {
    pub fn new(cfg: &config::Redis) -> Option<RedisTier> {
        let url = cfg.url.as_ref()?;
        // `load` requires the secret with a URL; a config built in code may lack it.
        let Some(secret) = cfg.secret.as_ref() else {
            tracing::error!(redis = %url, "[redis] url without [redis] secret: entries could not be authenticated; caching in memory only");
            return None;
        };
        let mac = match Hmac::<Sha256>::new_from_slice(secret.expose()) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(redis = %url, error = %e, "cannot use [redis] secret; caching in memory only");
                return None;
            }
        };
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
            mac,
            rejected: AtomicU64::new(0),
            last_logged: AtomicU64::new(0),
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
        // At most one byte past the largest value written here: whoever else writes a
        // huge value under a key is not read whole on every request for it.
        let mut range = redis::cmd("GETRANGE");
        range.arg(&full).arg(0).arg(MAX_VALUE);
        let got: Vec<u8> = self.report(
            tokio::time::timeout(self.timeout, range.query_async::<Vec<u8>>(&mut conn)).await,
        )?;
        // GETRANGE reads an absent key as empty; nothing written here is.
        if got.is_empty() {
            return None;
        }
        if got.len() > MAX_VALUE {
            self.refused(Refused::TooLarge);
            return None;
        }
        match decode(&self.mac, &full, &got) {
            Ok(entry) => Some(entry),
            Err(why) => {
                self.refused(why);
                None
            }
        }
    }

    /// Counts a refused entry; logs at most once a minute, with the count so far.
    fn refused(&self, why: Refused) {
        crate::metrics::cache_redis_rejected(why.label());
        let total = self.rejected.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_logged.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 60)
            && self
                .last_logged
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                redis = %self.shown,
                reason = why.label(),
                refused_since_start = total,
                "ignored a Redis cache entry without a valid tag (forged or edited, or \
                 written with another [redis] secret or by an older Outlast): the call \
                 goes upstream; logged at most once a minute"
            );
        }
    }

    /// `keep`: Redis' expiry for the entry (`None`: kept until Redis evicts it). An
    /// answer over `MAX_ANSWER` is not shared.
    pub async fn set(&self, key: &str, entry: &Entry, keep: Option<Duration>) {
        if entry.body.len() > MAX_ANSWER {
            return;
        }
        let Some(mut conn) = self.manager() else {
            return;
        };
        let full = format!("{}{key}", self.prefix);
        let value = encode(&self.mac, &full, entry);
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

impl RedisTier {
    /// Writes a note every instance may read (a ban), signed like cache entries, kept
    /// for `keep`.
    pub async fn put_note(&self, key: &str, value: &[u8], keep: Duration) {
        let Some(mut conn) = self.manager() else {
            return;
        };
        let full = format!("{}{key}", self.prefix);
        let out = self.signed_note(key, value);
        let ms = u64::try_from(keep.as_millis()).unwrap_or(u64::MAX).max(1);
        let done =
            tokio::time::timeout(self.timeout, conn.pset_ex::<_, _, ()>(full, out, ms)).await;
        self.report(done);
    }

    /// Reads notes (one round trip); a missing one, or one whose tag does not verify
    /// (forged, or written with another secret), is `None` — the latter counted like a
    /// refused cache entry.
    pub async fn get_notes(&self, keys: &[String]) -> Vec<Option<Vec<u8>>> {
        let none = || vec![None; keys.len()];
        let Some(mut conn) = self.manager() else {
            return none();
        };
        if keys.is_empty() {
            return Vec::new();
        }
        let full: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
        let got: Option<Vec<Option<Vec<u8>>>> =
            self.report(tokio::time::timeout(self.timeout, conn.mget(&full)).await);
        let Some(got) = got.filter(|g| g.len() == keys.len()) else {
            return none();
        };
        got.into_iter()
            .zip(&full)
            .map(|(raw, key)| {
                let raw = raw?;
                let (tag, value) = raw.split_at_checked(TAG)?;
                match tagged_in(&self.mac, NOTE_DOMAIN, key, value).verify_slice(tag) {
                    Ok(()) => Some(value.to_vec()),
                    Err(_) => {
                        self.refused(Refused::Tag);
                        None
                    }
                }
            })
            .collect()
    }
}

/// Redis did not answer (down, slow past `timeout_ms`, or never set up).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("Redis did not answer")]
pub struct RedisDown;

/// Signed notes that change in place (shared HTTP filters, `subscribe::shared`): read
/// one, sign one, and change several keys at once in a Lua script, so that a read,
/// compare and write is atomic across instances.
impl RedisTier {
    /// The note under `key`; `Ok(None)` when there is none or its tag does not verify
    /// (forged, edited, moved from another key, another secret: counted as refused).
    pub async fn note(&self, key: &str) -> Result<Option<Vec<u8>>, RedisDown> {
        let mut conn = self.manager().ok_or(RedisDown)?;
        let full = format!("{}{key}", self.prefix);
        let got: Option<Vec<u8>> = self
            .report(tokio::time::timeout(self.timeout, conn.get(&full)).await)
            .ok_or(RedisDown)?;
        let Some(raw) = got else { return Ok(None) };
        let verified = raw.split_at_checked(TAG).filter(|(tag, value)| {
            tagged_in(&self.mac, NOTE_DOMAIN, &full, value)
                .verify_slice(tag)
                .is_ok()
        });
        match verified {
            Some((_, value)) => Ok(Some(value.to_vec())),
            None => {
                self.refused(Refused::Tag);
                Ok(None)
            }
        }
    }

    /// The bytes `put_note` would store for `value` under `key` (tag, then value): what a
    /// script writes, or compares with what is stored.
    pub fn signed_note(&self, key: &str, value: &[u8]) -> Vec<u8> {
        let full = format!("{}{key}", self.prefix);
        let tag = tagged_in(&self.mac, NOTE_DOMAIN, &full, value)
            .finalize()
            .into_bytes();
        let mut out = Vec::with_capacity(TAG + value.len());
        out.extend_from_slice(&tag);
        out.extend_from_slice(value);
        out
    }

    /// Runs a Lua `script` on `keys` (prefixed here) with `args`; its integer answer.
    pub async fn eval(
        &self,
        script: &str,
        keys: &[&str],
        args: &[&[u8]],
    ) -> Result<i64, RedisDown> {
        let mut conn = self.manager().ok_or(RedisDown)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for key in keys {
            cmd.arg(format!("{}{key}", self.prefix));
        }
        for arg in args {
            cmd.arg(*arg);
        }
        self.report(tokio::time::timeout(self.timeout, cmd.query_async::<i64>(&mut conn)).await)
            .ok_or(RedisDown)
    }
}

/// Why an entry read from Redis is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Missing or wrong: not written by an instance holding this secret, for this key.
    Tag,
    /// A valid tag on bytes this version cannot read (a newer format).
    Format,
    /// Longer than anything written here (`MAX_VALUE`): not read past that.
    TooLarge,
}

impl Refused {
    fn label(self) -> &'static str {
        match self {
            Refused::Tag => "tag",
            Refused::Format => "format",
            Refused::TooLarge => "too_large",
        }
    }
}

/// Bytes of the tag, first in the value.
const TAG: usize = 32;
/// Bytes after the tag and before the answer: lifetime, level, time stored.
const HEADER: usize = 10;
/// The largest answer shared through Redis (a block with its transactions is a few
/// MiB); a larger one is kept in memory only. Bounds what a read takes from Redis too.
const MAX_ANSWER: usize = 8 << 20;
/// The longest value written here: tag, header, answer.
const MAX_VALUE: usize = TAG + HEADER + MAX_ANSWER;
/// Bound into every tag, so a tag made for anything else (another format, another use
/// of the same secret) never verifies here.
const DOMAIN: &[u8] = b"outlast cache entry v1\0";

/// The MAC of `value` (everything after the tag) stored under `key` (the full Redis
/// key). The key's length comes first, so no key/value split can stand for another.
fn tagged(mac: &Hmac<Sha256>, key: &str, value: &[u8]) -> Hmac<Sha256> {
    tagged_in(mac, DOMAIN, key, value)
}

/// Shared notes (not answers: bans) are tagged in a domain of their own, so one can
/// never pass for the other.
const NOTE_DOMAIN: &[u8] = b"outlast shared note v1\0";

fn tagged_in(mac: &Hmac<Sha256>, domain: &[u8], key: &str, value: &[u8]) -> Hmac<Sha256> {
    let mut mac = mac.clone();
    mac.update(domain);
    mac.update(&(key.len() as u64).to_be_bytes());
    mac.update(key.as_bytes());
    mac.update(value);
    mac
}

fn encode(mac: &Hmac<Sha256>, key: &str, e: &Entry) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER + e.body.len());
    value.push(match e.lifetime {
        Lifetime::Immutable => b'I',
        Lifetime::Head => b'H',
    });
    value.push(match e.level {
        Level::None => b'n',
        Level::Quorum => b'q',
        Level::Proof => b'p',
    });
    let ms = e
        .stored
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    value.extend_from_slice(&u64::try_from(ms).unwrap_or(0).to_be_bytes());
    value.extend_from_slice(&e.body);
    let tag = tagged(mac, key, &value).finalize().into_bytes();
    let mut out = Vec::with_capacity(TAG + value.len());
    out.extend_from_slice(&tag);
    out.extend_from_slice(&value);
    out
}

/// The entry stored under `key`, only if its tag verifies (in constant time); what it
/// says, its level included, is read only after that.
fn decode(mac: &Hmac<Sha256>, key: &str, raw: &[u8]) -> Result<Entry, Refused> {
    let (tag, value) = raw.split_at_checked(TAG).ok_or(Refused::Tag)?;
    tagged(mac, key, value)
        .verify_slice(tag)
        .map_err(|_| Refused::Tag)?;
    let lifetime = match value.first() {
        Some(b'I') => Lifetime::Immutable,
        Some(b'H') => Lifetime::Head,
        _ => return Err(Refused::Format),
    };
    let level = match value.get(1) {
        Some(b'n') => Level::None,
        Some(b'q') => Level::Quorum,
        Some(b'p') => Level::Proof,
        _ => return Err(Refused::Format),
    };
    let ms = value
        .get(2..HEADER)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or(Refused::Format)?;
    let stored = UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or(Refused::Format)?;
    Ok(Entry {
        lifetime,
        level,
        stored,
        body: Bytes::copy_from_slice(value.get(HEADER..).ok_or(Refused::Format)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(secret: &[u8]) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length")
    }

    const KEY: &str = "outlast:1:eth_getBalance:[\"0xab\",\"0x3\"]";

    fn entry(level: Level, body: &'static [u8]) -> Entry {
        Entry {
            lifetime: Lifetime::Head,
            level,
            stored: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            body: Bytes::from_static(body),
        }
    }

    fn same(a: &Entry, b: &Entry) -> bool {
        (a.lifetime, a.level, a.stored, &a.body) == (b.lifetime, b.level, b.stored, &b.body)
    }

    #[test]
    fn entries_survive_the_round_trip() {
        let m = mac(b"0123456789abcdef");
        let e = entry(Level::Proof, b"\"0x1\"");
        let back = decode(&m, KEY, &encode(&m, KEY, &e)).expect("decodes");
        assert!(same(&back, &e));
        assert_eq!(decode(&m, KEY, b"Xgarbage").err(), Some(Refused::Tag));
    }

    #[test]
    fn an_edited_forged_or_moved_entry_is_refused() {
        let m = mac(b"0123456789abcdef");
        let good = encode(&m, KEY, &entry(Level::Proof, b"\"0x21e19e0c9bab2400000\""));
        // The answer edited, the tag kept.
        let mut lie = good.clone();
        lie.truncate(TAG + HEADER);
        lie.extend_from_slice(b"\"0x0\"");
        // A level raised from none to proof, the tag kept.
        let unverified = encode(&m, KEY, &entry(Level::None, b"\"0x1\""));
        let mut raised = unverified.clone();
        raised[TAG + 1] = b'p';
        // Written with another secret, or in the old untagged format.
        let other = encode(
            &mac(b"another secret of 16"),
            KEY,
            &entry(Level::Proof, b"\"0x0\""),
        );
        let untagged = good[TAG..].to_vec();
        for (what, raw, key) in [
            ("edited", &lie, KEY),
            ("level raised", &raised, KEY),
            ("other secret", &other, KEY),
            ("untagged", &untagged, KEY),
            (
                "moved to another key",
                &good,
                "outlast:1:eth_getBalance:[\"0xab\",\"0x4\"]",
            ),
            ("empty", &Vec::new(), KEY),
        ] {
            assert_eq!(decode(&m, key, raw).err(), Some(Refused::Tag), "{what}");
        }
        assert!(decode(&m, KEY, &good).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_entry() -> impl Strategy<Value = Entry> {
            (
                prop_oneof![Just(Lifetime::Immutable), Just(Lifetime::Head)],
                prop_oneof![Just(Level::None), Just(Level::Quorum), Just(Level::Proof)],
                0..=u64::from(u32::MAX) * 1_000,
                proptest::collection::vec(any::<u8>(), 0..256),
            )
                .prop_map(|(lifetime, level, ms, body)| Entry {
                    lifetime,
                    level,
                    stored: UNIX_EPOCH + Duration::from_millis(ms),
                    body: Bytes::from(body),
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Bytes from Redis are whatever anyone wrote: never a panic, never an entry.
            #[test]
            fn arbitrary_bytes_are_never_accepted(
                raw in proptest::collection::vec(any::<u8>(), 0..300),
                key in "\\PC{0,64}",
            ) {
                let m = mac(b"0123456789abcdef");
                prop_assert!(decode(&m, &key, &raw).is_err());
            }

            /// Even bytes carrying a valid tag (a future format, a bug) never panic,
            /// and what is accepted encodes back to the same bytes.
            #[test]
            fn tagged_bytes_never_panic_and_what_is_read_is_what_was_written(
                value in proptest::collection::vec(any::<u8>(), 0..64),
                key in "\\PC{0,64}",
            ) {
                let m = mac(b"0123456789abcdef");
                let mut raw = tagged(&m, &key, &value).finalize().into_bytes().to_vec();
                raw.extend_from_slice(&value);
                match decode(&m, &key, &raw) {
                    Ok(e) => prop_assert_eq!(encode(&m, &key, &e), raw),
                    Err(why) => prop_assert_eq!(why, Refused::Format),
                }
            }

            #[test]
            fn a_valid_entry_round_trips(e in any_entry(), key in "\\PC{0,64}") {
                let m = mac(b"0123456789abcdef");
                let back = decode(&m, &key, &encode(&m, &key, &e));
                prop_assert!(back.as_ref().is_ok_and(|b| same(b, &e)), "{back:?}");
            }

            /// Any change to an entry (tag, level, lifetime, time, answer, length) or
            /// to its key makes it a miss.
            #[test]
            fn any_change_is_refused(
                e in any_entry(),
                at in any::<proptest::sample::Index>(),
                flip in 1..=255u8,
                cut in any::<proptest::sample::Index>(),
                key in "[a-z0-9:]{1,32}",
            ) {
                let m = mac(b"0123456789abcdef");
                let good = encode(&m, &key, &e);
                let mut flipped = good.clone();
                flipped[at.index(good.len())] ^= flip;
                prop_assert_eq!(decode(&m, &key, &flipped).err(), Some(Refused::Tag));
                let short = &good[..cut.index(good.len())];
                prop_assert_eq!(decode(&m, &key, short).err(), Some(Refused::Tag));
                let mut longer = good.clone();
                longer.push(flip);
                prop_assert_eq!(decode(&m, &key, &longer).err(), Some(Refused::Tag));
                prop_assert_eq!(decode(&m, &format!("{key}x"), &good).err(), Some(Refused::Tag));
                prop_assert_eq!(
                    decode(&mac(b"0123456789abcdeF"), &key, &good).err(),
                    Some(Refused::Tag)
                );
            }
        }
    }
}
