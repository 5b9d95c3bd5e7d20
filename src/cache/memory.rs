//! The first cache tier: answers in memory, bounded in bytes (`[cache] size_bytes`).
//! Immutable entries never expire, only get evicted; head-tied ones expire once they are
//! too old even to be served stale.
//!
//! Each shard is a ring of records written one after another (key, head, answer and
//! their metadata, side by side) and an index from a key's hash to the position of its
//! latest record. A new record overwrites the oldest bytes; the records it overwrites
//! are not looked at (an index slot whose position fell behind the ring is empty). So
//! a store is a sequential write and one index line, and the bound is the memory:
//! `size_bytes` is the ring and the index, allocated once, nothing per entry.
//!
//! Why not a general cache crate: the one before this (`quick_cache`, S3-FIFO) held each
//! entry in its own allocations, and with the table larger than the processor's last
//! level cache every store evicted an entry whose memory was cold (its key, its answer,
//! the allocator's metadata, the policy's ghost): ~1.5 µs a forwarded call, a third of
//! a forwarded batch's CPU (bench/README). It also had to be told an entry's memory cost
//! (`OVERHEAD`, measured at 320 B beyond key and answer); here an answer costs its bytes
//! and a 32-byte header.
//!
//! Final answers and answers tied to a head have their own shards (three quarters of
//! the bound and one): a head-tied answer is useless once the head moves, and a stream
//! of them must not overwrite what is served through an outage.
//!
//! Eviction is first in, first out, with one exception: an entry asked for while in the
//! oldest quarter of its ring is written again at the front, so what is read keeps its
//! place (the "lazy promotion" of FIFO-reinsertion and CLOCK) without a write per read.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant, UNIX_EPOCH},
};

use bytes::Bytes;

use super::policy::Lifetime;
use super::{Entry, key::Place};
use crate::verify::Level;

pub struct Memory {
    /// Answers about final data: what is served when every upstream is down.
    immutable: Shards,
    /// Answers tied to a head: `HEAD_TIED_SHARE` of the bound, so a stream of them
    /// (each useless once the head moves) never pushes out immutable ones.
    tied: Shards,
    /// How long a head-tied entry may be served from memory at all.
    head_tied: Duration,
    /// The last `usage` for `/metrics`, and when it was counted.
    counted: Mutex<Option<(Instant, (u64, u64))>>,
}

/// How often `/metrics` may have `usage` counted: it reads the whole index, and anyone
/// may ask for `/metrics` as often as they like.
const RECOUNT: Duration = Duration::from_secs(1);

/// The part of `size_bytes` kept for head-tied answers (one over this).
const HEAD_TIED_SHARE: u64 = 4;

/// One shard's lock, on cache lines of its own so two threads taking neighbouring
/// shards do not contend for one line.
#[repr(align(128))]
struct Locked(Mutex<Shard>);

impl Locked {
    fn lock(&self) -> MutexGuard<'_, Shard> {
        // A panic while holding the lock cannot leave a shard unsafe to read: every
        // record read is checked against the ring's bounds and its key.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The smallest shard worth splitting the bound into: the largest answer kept is half
/// a shard's ring (a block with its transactions is a few MiB).
const MIN_SHARD: u64 = 16 << 20;

/// A bound split into shards by hash.
struct Shards(Box<[Locked]>);

impl Shards {
    fn new(bytes: u64) -> Shards {
        if bytes == 0 {
            return Shards(Box::default());
        }
        // A few shards per thread that may store at once, so a store rarely waits; but
        // none smaller than `MIN_SHARD`, so large answers fit.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let n = (threads * 2)
            .next_power_of_two()
            .min((bytes / MIN_SHARD).max(1));
        let each = usize::try_from(bytes / n).unwrap_or(usize::MAX);
        Shards(
            (0..n)
                .map(|_| Locked(Mutex::new(Shard::new(each))))
                .collect(),
        )
    }

    /// The shard of a hash: its high bits (the index within the shard uses the low ones).
    fn lock(&self, hash: u64) -> Option<MutexGuard<'_, Shard>> {
        let n = self.0.len() as u64;
        let s = self.0.get(usize::try_from((hash >> 32) % n.max(1)).ok()?)?;
        Some(s.lock())
    }

    /// Entries and bytes: the entries an index slot finds, and the memory written so
    /// far (index and ring, old records included). Reads the whole index, a piece per
    /// lock, so requests wait for a piece at most: for a scrape, not for requests.
    fn usage(&self) -> (u64, u64) {
        self.0.iter().fold((0, 0), |(n, b), s| {
            let (buckets, bytes) = {
                let s = s.lock();
                (s.buckets, s.bytes())
            };
            let live: u64 = (0..buckets)
                .step_by(USAGE_PIECE)
                .map(|from| s.lock().live(from..buckets.min(from + USAGE_PIECE)))
                .sum();
            (n + live, b + bytes)
        })
    }
}

impl Memory {
    /// `bytes == 0` turns it off. Head-tied entries are not served after `head_tied`
    /// (they stay until overwritten, counted in the bound like any other). The bytes
    /// are mapped here, at start: more than the machine can map stops the start with
    /// an allocation error, not the server later under load.
    pub fn new(bytes: u64, head_tied: Duration) -> Memory {
        let tied = bytes / HEAD_TIED_SHARE;
        Memory {
            immutable: Shards::new(bytes - tied),
            tied: Shards::new(tied),
            head_tied,
            counted: Mutex::default(),
        }
    }

    /// The shard of `at`, locked: among the head-tied ones when it has a head.
    fn shard(&self, at: Place<'_>) -> Option<MutexGuard<'_, Shard>> {
        match at.head {
            Some(_) => &self.tied,
            None => &self.immutable,
        }
        .lock(at.hash)
    }

    pub fn get(&self, at: Place<'_>) -> Option<Entry> {
        let mut shard = self.shard(at)?;
        let (way, pos) = shard.find(at.hash)?;
        let record = shard.read(pos)?;
        if record.hash != at.hash
            || record.key != at.text.as_bytes()
            || record.head != at.head.map(|h| h.as_bytes())
        {
            return None;
        }
        let entry = record.entry();
        if entry.lifetime == Lifetime::Head && entry.age() >= self.head_tied {
            shard.clear(at.hash, way);
            return None;
        }
        if shard.near_the_end(pos) {
            shard.append(&Record::of(at, &entry));
        }
        Some(entry)
    }

    /// Copies `entry` in: its body may be a slice of a larger buffer.
    pub fn insert(&self, at: Place<'_>, entry: &Entry) {
        if let Some(mut shard) = self.shard(at) {
            shard.append(&Record::of(at, entry));
        }
    }

    pub fn enabled(&self) -> bool {
        !self.immutable.0.is_empty()
    }

    /// Entries and bytes held, head-tied and immutable.
    pub fn usage(&self) -> (u64, u64) {
        let (a, b) = (self.immutable.usage(), self.tied.usage());
        (a.0 + b.0, a.1 + b.1)
    }

    /// `usage` as of at most `RECOUNT` ago (for `/metrics`).
    pub fn recent_usage(&self) -> (u64, u64) {
        let mut counted = self.counted.lock().unwrap_or_else(|p| p.into_inner());
        match *counted {
            Some((at, usage)) if at.elapsed() < RECOUNT => usage,
            _ => {
                let usage = self.usage();
                *counted = Some((Instant::now(), usage));
                usage
            }
        }
    }
}

/// Buckets counted per lock by `usage` (64 KiB of index).
const USAGE_PIECE: usize = 1024;

/// Bytes before a record's key: hash, stored (ns since the epoch), key, head and body
/// lengths, lifetime, level.
const HEADER: usize = 32;
/// A head length meaning "no head" (immutable), not "an empty head".
const NO_HEAD: u32 = u32::MAX;
/// Slots per index bucket: one bucket is one 64-byte cache line of (hash, position).
const WAYS: usize = 4;
/// A shard's bytes over its index's: a quarter, a slot (16 bytes) for every 48 bytes of
/// ring, so about three for every balance-sized answer (~130 B with its header), and a
/// bucket rarely holds more than its ways (when one would, its oldest entry is dropped).
const INDEX_SHARE: usize = 4;

/// One record, borrowed from the ring or from a call.
struct Record<'a> {
    hash: u64,
    /// Nanoseconds since the epoch: wall-clock, as `Entry::stored`.
    stored: u64,
    lifetime: Lifetime,
    level: Level,
    key: &'a [u8],
    head: Option<&'a [u8]>,
    body: &'a [u8],
}

impl<'a> Record<'a> {
    fn of(at: Place<'a>, entry: &'a Entry) -> Record<'a> {
        let stored = entry
            .stored
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        Record {
            hash: at.hash,
            stored,
            lifetime: entry.lifetime,
            level: entry.level,
            key: at.text.as_bytes(),
            head: at.head.map(|h| h.as_bytes()),
            body: &entry.body,
        }
    }

    /// Its length in the ring: header, key, head and body, rounded up to 8 bytes.
    /// `None` when a length does not fit the header's 32 bits.
    fn len(&self) -> Option<usize> {
        let head = self.head.map_or(0, <[u8]>::len);
        for n in [self.key.len(), head, self.body.len()] {
            u32::try_from(n).ok().filter(|&n| n != NO_HEAD)?;
        }
        let n = HEADER
            .checked_add(self.key.len())?
            .checked_add(head)?
            .checked_add(self.body.len())?;
        n.checked_next_multiple_of(8)
    }

    fn write(&self, out: &mut [u8]) {
        let head = self.head.map_or(NO_HEAD, |h| h.len() as u32);
        out[0..8].copy_from_slice(&self.hash.to_le_bytes());
        out[8..16].copy_from_slice(&self.stored.to_le_bytes());
        out[16..20].copy_from_slice(&(self.key.len() as u32).to_le_bytes());
        out[20..24].copy_from_slice(&head.to_le_bytes());
        out[24..28].copy_from_slice(&(self.body.len() as u32).to_le_bytes());
        out[28] = match self.lifetime {
            Lifetime::Immutable => 0,
            Lifetime::Head => 1,
        };
        out[29] = match self.level {
            Level::None => 0,
            Level::Quorum => 1,
            Level::Proof => 2,
        };
        let mut at = HEADER;
        for part in [self.key, self.head.unwrap_or_default(), self.body] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
    }

    /// The record at the start of `ring`; `None` unless every length stays inside it.
    fn read(ring: &'a [u8]) -> Option<Record<'a>> {
        let u64_at = |i: usize| Some(u64::from_le_bytes(ring.get(i..i + 8)?.try_into().ok()?));
        let u32_at = |i: usize| Some(u32::from_le_bytes(ring.get(i..i + 4)?.try_into().ok()?));
        let (key, head) = (u32_at(16)? as usize, u32_at(20)?);
        let body = u32_at(24)? as usize;
        let mut rest = ring.get(HEADER..)?;
        let mut take = |n: usize| {
            let (part, after) = rest.split_at_checked(n)?;
            rest = after;
            Some(part)
        };
        let key = take(key)?;
        let head = match head {
            NO_HEAD => None,
            n => Some(take(n as usize)?),
        };
        Some(Record {
            hash: u64_at(0)?,
            stored: u64_at(8)?,
            // Any other byte reads as the weaker claim: expiring, unverified.
            lifetime: match ring.get(28)? {
                0 => Lifetime::Immutable,
                _ => Lifetime::Head,
            },
            level: match ring.get(29)? {
                2 => Level::Proof,
                1 => Level::Quorum,
                _ => Level::None,
            },
            key,
            head,
            body: take(body)?,
        })
    }

    fn entry(&self) -> Entry {
        Entry {
            lifetime: self.lifetime,
            level: self.level,
            stored: UNIX_EPOCH + Duration::from_nanos(self.stored),
            body: Bytes::copy_from_slice(self.body),
        }
    }
}

/// A ring of records and the index into it, in one allocation.
struct Shard {
    /// The index, from `index`, then the ring, from `ring`. Zeroed memory the allocator
    /// takes fresh from the system for a shard's size: resident as it is written.
    memory: Box<[u8]>,
    /// Where the index's first bucket starts: a cache line's start. Its buckets hold
    /// `WAYS` slots of (hash, position + 1) as little-endian `u64`s, 0 for none, so a
    /// slot finds an intact record when its second half is above `start()`.
    index: usize,
    buckets: usize,
    ring: usize,
    /// Bytes ever written (with the unused ends of laps): where the next record goes,
    /// counted from the first. A record at position `p` is intact while
    /// `p + cap >= end`.
    end: u64,
}

/// A slot's bytes: hash and position + 1.
const SLOT: usize = 16;

impl Shard {
    fn new(bytes: usize) -> Shard {
        let memory = vec![0u8; bytes].into_boxed_slice();
        let buckets = (bytes / INDEX_SHARE / (WAYS * SLOT)).max(1);
        let index = (64 - memory.as_ptr().addr() % 64) % 64;
        let ring = (index + buckets * WAYS * SLOT).min(memory.len());
        Shard {
            memory,
            index,
            buckets,
            ring,
            end: 0,
        }
    }

    fn ring(&self) -> &[u8] {
        &self.memory[self.ring..]
    }

    fn cap(&self) -> u64 {
        (self.memory.len() - self.ring) as u64
    }

    /// Where `hash`'s bucket starts (its low 32 bits, scaled to the bucket count).
    fn bucket(&self, hash: u64) -> usize {
        let b = ((hash & 0xffff_ffff) * self.buckets as u64) >> 32;
        self.index + b as usize * WAYS * SLOT
    }

    /// The (hash, position + 1) of a slot; none past the index's end.
    fn slot(&self, bucket: usize, way: usize) -> (u64, u64) {
        let at = bucket + way * SLOT;
        let word = |i: usize| {
            self.memory
                .get(i..i + 8)
                .and_then(|w| w.try_into().ok())
                .map_or(0, u64::from_le_bytes)
        };
        if at + SLOT > self.ring {
            return (0, 0);
        }
        (word(at), word(at + 8))
    }

    fn set_slot(&mut self, bucket: usize, way: usize, hash: u64, after: u64) {
        let at = bucket + way * SLOT;
        if at + SLOT <= self.ring {
            self.memory[at..at + 8].copy_from_slice(&hash.to_le_bytes());
            self.memory[at + 8..at + SLOT].copy_from_slice(&after.to_le_bytes());
        }
    }

    /// The oldest position still intact.
    fn start(&self) -> u64 {
        self.end.saturating_sub(self.cap())
    }

    /// The way and position of `hash`'s latest record, if it is still intact.
    fn find(&self, hash: u64) -> Option<(usize, u64)> {
        let (b, start) = (self.bucket(hash), self.start());
        (0..WAYS).find_map(|way| {
            let (h, after) = self.slot(b, way);
            (h == hash && after > start).then(|| (way, after - 1))
        })
    }

    fn read(&self, pos: u64) -> Option<Record<'_>> {
        let at = usize::try_from(pos % self.cap().max(1)).ok()?;
        Record::read(self.ring().get(at..)?)
    }

    /// Whether the record at `pos` is in the quarter of the ring overwritten next.
    fn near_the_end(&self, pos: u64) -> bool {
        pos + self.cap() < self.end + self.cap() / 4
    }

    fn clear(&mut self, hash: u64, way: usize) {
        self.set_slot(self.bucket(hash), way, 0, 0);
    }

    /// Writes `record` at the front, over the oldest bytes, and points its hash's slot
    /// at it. A record larger than half the ring is not kept.
    fn append(&mut self, record: &Record<'_>) {
        let cap = self.cap();
        let Some(len) = record.len().filter(|&n| n as u64 <= cap / 2) else {
            return;
        };
        let mut at = self.end % cap;
        if at + len as u64 > cap {
            // Not split over the lap's end: the rest of the lap stays unused.
            self.end += cap - at;
            at = 0;
        }
        let pos = self.end;
        self.end += len as u64;
        let at = self.ring + at as usize;
        record.write(&mut self.memory[at..at + len]);

        // The slot: this hash's own, else an empty or overwritten one, else the oldest.
        let (b, start) = (self.bucket(record.hash), self.start());
        let slots: [(u64, u64); WAYS] = std::array::from_fn(|w| self.slot(b, w));
        let way = (0..WAYS)
            .find(|&w| slots[w].0 == record.hash && slots[w].1 > 0)
            .or_else(|| (0..WAYS).find(|&w| slots[w].1 <= start))
            .unwrap_or_else(|| (0..WAYS).min_by_key(|&w| slots[w].1).unwrap_or(0));
        self.set_slot(b, way, record.hash, pos + 1);
    }

    /// Entries found by the slots of `buckets`.
    fn live(&self, buckets: std::ops::Range<usize>) -> u64 {
        let start = self.start();
        buckets
            .flat_map(|b| (0..WAYS).map(move |w| (b, w)))
            .filter(|&(b, w)| self.slot(self.index + b * WAYS * SLOT, w).1 > start)
            .count() as u64
    }

    /// Memory written so far: the index, and as much of the ring as was.
    fn bytes(&self) -> u64 {
        self.end.min(self.cap()) + self.ring as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{Key, Reach};
    use std::sync::Arc;

    /// The key of an immutable answer `text`.
    fn key(text: &str) -> Key {
        let reach = Reach {
            immutable: true,
            head_tied: false,
        };
        Key::new(Arc::from(text), reach, None)
    }

    /// The key of an answer `text` tied to `head`.
    fn tied(text: &str, head: &str) -> Key {
        let reach = Reach {
            immutable: false,
            head_tied: true,
        };
        Key::new(Arc::from(text), reach, Some(&Arc::from(head)))
    }

    fn entry(body: Vec<u8>) -> Entry {
        Entry::new(Lifetime::Immutable, Level::None, Bytes::from(body))
    }

    #[test]
    fn stays_within_its_bound() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        for i in 0..64 {
            m.insert(
                key(&format!("k{i}")).immutable(),
                &entry(vec![b'0'; 64 * 1024]),
            );
        }
        let (entries, bytes) = m.usage();
        assert!(bytes <= 1 << 20, "{bytes}");
        assert!((1..64).contains(&entries), "{entries}");
        // The latest are the ones kept.
        assert!(m.get(key("k63").immutable()).is_some());
        assert!(m.get(key("k0").immutable()).is_none());
        assert!(
            Memory::new(0, Duration::ZERO)
                .get(key("k1").immutable())
                .is_none()
        );
    }

    #[test]
    fn an_entry_comes_back_as_it_was_kept() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        let tied = tied("1:eth_getBalance:[]", "0xaa");
        let kept = Entry::new(Lifetime::Head, Level::Proof, Bytes::from_static(b"\"0x1\""));
        let place = tied.tied().expect("tied to a head");
        m.insert(place, &kept);
        let got = m.get(place).expect("kept");
        assert_eq!(
            (got.lifetime, got.level, got.stored, got.body),
            (kept.lifetime, kept.level, kept.stored, kept.body)
        );
        // An empty answer and an empty key are entries like any other.
        m.insert(key("").immutable(), &entry(Vec::new()));
        assert_eq!(m.get(key("").immutable()).map(|e| e.body.len()), Some(0));
    }

    #[test]
    fn a_head_tied_entry_is_not_served_once_too_old() {
        let m = Memory::new(1 << 20, Duration::from_secs(5));
        let tied = tied("k", "0xaa");
        let place = tied.tied().expect("tied to a head");
        let mut old = Entry::new(Lifetime::Head, Level::None, Bytes::from_static(b"1"));
        old.stored -= Duration::from_secs(6);
        m.insert(place, &old);
        assert!(m.get(place).is_none());
        assert_eq!(m.usage().0, 0, "its slot is cleared");
    }

    /// An immutable key whose hash is the `n`th of a fixed sequence (splitmix64), so a
    /// test sees the same buckets every run.
    fn numbered(text: &str, n: u64) -> Key {
        let mut z = n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Key::colliding(text, None, z ^ (z >> 31))
    }

    #[test]
    fn what_is_read_outlives_what_is_not() {
        // One shard (below `MIN_SHARD`): 64 KiB of ring and index.
        let m = Memory::new(64 << 10, Duration::from_secs(60));
        let body = || entry(vec![b'1'; 200]);
        let (read, unread) = (numbered("read", 0), numbered("unread", 1));
        m.insert(read.immutable(), &body());
        m.insert(unread.immutable(), &body());
        // Many times the ring over; "read" is asked for all along.
        for i in 0..5_000 {
            m.insert(numbered(&format!("filler{i}"), i + 2).immutable(), &body());
            assert!(m.get(read.immutable()).is_some(), "lost after {i}");
        }
        assert!(m.get(unread.immutable()).is_none());
        let (_, bytes) = m.usage();
        assert!(bytes <= 64 << 10, "{bytes}");
    }

    #[test]
    fn head_tied_answers_never_push_out_immutable_ones() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        m.insert(key("final").immutable(), &entry(vec![b'1'; 100]));
        // Ten times the whole bound of answers tied to a head.
        for i in 0..10_000 {
            let latest = tied(&format!("latest{i}"), "0xaa");
            m.insert(
                latest.tied().expect("tied to a head"),
                &entry(vec![b'1'; 1000]),
            );
        }
        assert!(m.get(key("final").immutable()).is_some());
        let (_, bytes) = m.usage();
        assert!(bytes <= 1 << 20, "{bytes}");
    }

    #[test]
    fn too_large_an_answer_is_not_kept() {
        let m = Memory::new(64 << 10, Duration::from_secs(60));
        m.insert(key("big").immutable(), &entry(vec![b'1'; 40 << 10]));
        assert!(m.get(key("big").immutable()).is_none());
        m.insert(key("small").immutable(), &entry(vec![b'1'; 10 << 10]));
        assert!(m.get(key("small").immutable()).is_some());
    }

    #[test]
    fn a_key_is_never_answered_with_another_keys_entry() {
        let m = Memory::new(1 << 20, Duration::from_secs(60));
        let entry = |body: &'static [u8]| {
            Entry::new(Lifetime::Immutable, Level::None, Bytes::from_static(body))
        };
        let (a, b) = (key("a"), key("b"));
        m.insert(a.immutable(), &entry(b"\"a\""));
        assert_eq!(
            m.get(a.immutable()).map(|e| e.body),
            Some(Bytes::from_static(b"\"a\""))
        );
        assert!(m.get(b.immutable()).is_none());
        // Another key stored under `a`'s hash, as a collision would: `a` misses.
        let other = Key::colliding("b", None, a.immutable().hash);
        m.insert(other.immutable(), &entry(b"\"b\""));
        assert!(m.get(a.immutable()).is_none());
        // The same text tied to a head is another entry, even of the same hash.
        m.insert(a.immutable(), &entry(b"\"a\""));
        let tied = Key::colliding("a", Some("0xaa"), a.immutable().hash);
        assert!(m.get(tied.flight()).is_none());
    }

    #[test]
    fn a_record_read_from_anywhere_stays_in_bounds() {
        // Whatever bytes a position holds, reading them never panics.
        let ring: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for at in 0..ring.len() {
            let _ = Record::read(&ring[at..]);
        }
        let mut max = vec![0xffu8; 64];
        max[20..24].copy_from_slice(&0u32.to_le_bytes());
        assert!(Record::read(&max).is_none());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        /// A store or a lookup of key `text` (one of a few), with or without a head (one
        /// of two), under one of a few hashes, so keys often share a hash and a bucket.
        #[derive(Debug, Clone)]
        enum Op {
            Store {
                key: (u8, Option<u8>, u8),
                body: usize,
            },
            Get((u8, Option<u8>, u8)),
        }

        fn any_op() -> impl Strategy<Value = Op> {
            let key = (0..6u8, proptest::option::of(0..2u8), 0..4u8);
            prop_oneof![
                (key.clone(), 0..30_000usize).prop_map(|(key, body)| Op::Store { key, body }),
                key.prop_map(Op::Get),
            ]
        }

        fn place(key: &(u8, Option<u8>, u8)) -> Key {
            let (text, head, hash) = key;
            Key::colliding(
                &format!("k{text}"),
                head.map(|h| format!("0x{h}")).as_deref(),
                // High bits pick the shard, low bits the bucket: both vary.
                u64::from(*hash).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Whatever is stored and looked up, in whatever order, a lookup answers
            /// nothing or an answer stored under that exact key (text and head), never
            /// another key's; and the answer just stored is the one found.
            #[test]
            fn a_lookup_finds_nothing_or_what_its_key_stored(
                ops in proptest::collection::vec(any_op(), 1..400)
            ) {
                let m = Memory::new(256 << 10, Duration::from_secs(60));
                let mut stored: HashMap<(u8, Option<u8>), Vec<Bytes>> = HashMap::new();
                for (n, op) in ops.iter().enumerate() {
                    match op {
                        Op::Store { key, body } => {
                            // Each answer its own bytes: which store it came from shows.
                            let body = Bytes::from(format!("{n}:{}", "x".repeat(*body)));
                            let k = place(key);
                            let at = k.flight();
                            m.insert(at, &Entry::new(Lifetime::Immutable, Level::None, body.clone()));
                            stored.entry((key.0, key.1)).or_default().push(body.clone());
                            if body.len() < 16 << 10 {
                                prop_assert_eq!(m.get(at).map(|e| e.body), Some(body));
                            }
                        }
                        Op::Get(key) => {
                            let k = place(key);
                            if let Some(e) = m.get(k.flight()) {
                                let ok = stored.get(&(key.0, key.1)).is_some_and(|b| b.contains(&e.body));
                                prop_assert!(ok, "{:?} answered {:?}", key, e.body);
                            }
                        }
                    }
                }
                prop_assert!(m.usage().1 <= 256 << 10);
            }
        }
    }
}
