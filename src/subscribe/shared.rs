//! Block and log filters shared through Redis (`[redis]`): behind a load balancer one
//! client's polls reach any instance, so the filter lives in Redis and whichever
//! instance is polled answers it.
//!
//! A filter is one signed note (`[redis] secret`, like shared bans) under
//! `filter:{chain id}:{id}`: its kind, the client's criteria, its owner, and its cursor
//! — the last block delivered (at creation, the consensus head), with the hashes of the
//! `KEEP` blocks up to it and, for a log filter, the logs it delivered of the newest of
//! them (up to `LOG_MEMORY` bytes). A poll computes the changes from the chain, not from a
//! queue: the blocks between the cursor and this instance's consensus head, fetched by
//! number through routing (`follow`'s fetches: failover, and the chain's header
//! checks), linked by parent hash from the cursor up to the agreed head hash; their
//! logs by block hash. When the links break the chain reorganised: the new branch is
//! walked back by hash to a block the note remembers, and the logs delivered of the
//! blocks above it, which left the chain, come back with `"removed": true` before the
//! new branch's (as geth sends them). Only the canonical branch is fetched: nodes may
//! forget an orphaned block (Anvil does at once), so its logs come from the note, and
//! only past `LOG_MEMORY` from a node by block hash (if none has them any more, the new
//! branch is sent without those removals, as `follow` does past its history).
//!
//! The cursor moves by compare-and-swap (one Lua script): the new note is written only
//! while the stored one is still the one the changes were computed from. Two instances
//! polled for one filter at once compute the same changes and only one delivers them;
//! the other reads the moved cursor and goes on from there. So each change is delivered
//! once and in order, whichever instance is asked.
//!
//! Expiry is Redis' own: a note lives `filter_timeout_secs` after its last poll. Bounds
//! are counted in Redis per chain: sorted sets of filter ids by expiry, one for the
//! chain and one per owner, checked and written by the same script as the note. The
//! sets are not signed (Lua has no HMAC): a forged member can only make a creation be
//! refused, which whoever can write to Redis can do anyway; it never becomes an answer.
//! A note whose tag does not verify is "filter not found", never used.
//!
//! Pending-transaction filters are never here: they stay with the instance that made
//! them (`filters`). Does I/O through `route` (via `follow`'s fetches) and Redis only.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{
    filters::{FilterError, FilterLimits, Owner, What, json_array, new_id, parse_criteria},
    follow::{self, Fetched, FollowError},
    hub::{Log, LogScope},
};
use crate::{
    cache::redis::{RedisDown, RedisTier},
    route::Chain,
    upstream::heads::Consensus,
};

/// Blocks one poll moves a cursor at most (a filter idle for minutes on a fast chain
/// catches up over a few polls, each bounded in time and memory).
const STEP: u64 = 50;
/// Hashes of the newest blocks delivered that a note remembers: the deepest reorg below
/// a filter's cursor that is followed. Deeper, the filter is removed with an error
/// saying so (never a silent gap).
const KEEP: usize = 32;
/// Bytes of delivered logs a log filter's note remembers (newest blocks first), to send
/// them back removed after a reorg. Every poll rewrites the note: kept small.
const LOG_MEMORY: usize = 16 << 10;
/// Attempts at moving a cursor another instance moved first.
const ATTEMPTS: usize = 3;

/// KEYS: note, chain set, owner set. ARGV: note, ttl ms, now ms, max for the chain,
/// max per owner, id. 0: made; 1: the chain is full; 2: the owner is.
const CREATE: &str = r"
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then return 2 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 1 end
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now + ttl, ARGV[6])
redis.call('ZADD', KEYS[3], now + ttl, ARGV[6])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 0
";

/// KEYS: note, chain set, owner set. ARGV: the note as read, the new note, ttl ms,
/// now ms, id. 1: written (and its expiry renewed); 0: the note changed meanwhile.
const SWAP: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local ttl = tonumber(ARGV[3])
local expiry = tonumber(ARGV[4]) + ttl
redis.call('SET', KEYS[1], ARGV[2], 'PX', ttl)
redis.call('ZADD', KEYS[2], expiry, ARGV[5])
redis.call('ZADD', KEYS[3], expiry, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
return 1
";

/// KEYS: note, chain set, owner set. ARGV: the note as read, id. 1: removed; 0: the
/// note changed meanwhile (or is gone).
const DELETE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
return 1
";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Blocks,
    Logs,
}

/// What Redis holds of one filter (JSON, after the tag).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Note {
    kind: Kind,
    /// Whose bound it counts against (`Owner`).
    owner: String,
    /// A log filter's criteria object, as the client sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    criteria: Option<Box<RawValue>>,
    /// The cursor: the last block delivered, on the chain as it was then.
    number: u64,
    /// Blocks `number - len + 1 ..= number` (at most `KEEP`), oldest first: the last is
    /// the cursor.
    recent: Vec<Seen>,
}

/// A block a filter was told of.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Seen {
    hash: String,
    /// The logs delivered of it (a log filter's, while within `LOG_MEMORY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logs: Option<Vec<Box<RawValue>>>,
}

impl Note {
    fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and raw JSON always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The block delivered at height `n`, if remembered.
    fn at(&self, n: u64) -> Option<&Seen> {
        let back = usize::try_from(self.number.checked_sub(n)?).ok()?;
        let i = self.recent.len().checked_sub(back + 1)?;
        self.recent.get(i)
    }

    fn hash_at(&self, n: u64) -> Option<&str> {
        self.at(n).map(|s| s.hash.as_str())
    }

    /// The cursor moved to the newest of `added`, whose branch meets the delivered one
    /// at block `fork`; `logs`: what was delivered of each added block (log filters).
    fn advance(&mut self, fork: u64, added: &[Fetched], logs: Option<Vec<Vec<Bytes>>>) {
        let Some(last) = added.last() else { return };
        // The blocks above the fork left the chain: forgotten.
        let gone = usize::try_from(self.number.saturating_sub(fork)).unwrap_or(usize::MAX);
        self.recent.truncate(self.recent.len().saturating_sub(gone));
        let mut logs = logs.map(Vec::into_iter);
        for b in added {
            let delivered = logs.as_mut().and_then(Iterator::next).map(|of_block| {
                of_block
                    .iter()
                    .filter_map(|raw| {
                        let text = std::str::from_utf8(raw).ok()?;
                        RawValue::from_string(text.to_owned()).ok()
                    })
                    .collect()
            });
            self.recent.push(Seen {
                hash: b.hash.clone(),
                logs: delivered,
            });
        }
        let over = self.recent.len().saturating_sub(KEEP);
        self.recent.drain(..over);
        self.number = last.number;
        // Logs are remembered for the newest blocks only, within `LOG_MEMORY`.
        let mut room = LOG_MEMORY;
        for seen in self.recent.iter_mut().rev() {
            let size: usize = seen.logs.iter().flatten().map(|l| l.get().len() + 1).sum();
            if size > room {
                seen.logs = None;
                room = 0;
            } else {
                room -= size;
            }
        }
    }
}

/// One chain's filters in the shared tier, for one call.
pub struct Shared<'a> {
    pub redis: &'a RedisTier,
    pub chain: &'a Chain,
    pub limits: FilterLimits,
}

/// The changes of one move of a cursor.
#[derive(Default)]
struct Step {
    /// The newest block the delivered branch and the chain share (the cursor itself,
    /// unless the chain reorganised).
    fork: u64,
    /// Heights of blocks delivered before that left the chain, oldest first.
    removed: Vec<u64>,
    /// Blocks new to the filter, oldest first, linked by parent hash from `fork`.
    added: Vec<Fetched>,
}

impl Shared<'_> {
    fn keys(&self, id: &str, owner: &str) -> [String; 3] {
        let c = self.chain.chain_id;
        [
            format!("filter:{c}:{id}"),
            format!("filters:{c}:all"),
            format!("filters:{c}:owner:{owner}"),
        ]
    }

    fn ttl_ms(&self) -> Vec<u8> {
        self.limits.idle.as_millis().max(1).to_string().into_bytes()
    }

    /// Makes a block or log filter whose changes start after `head`. `Unreachable`:
    /// Redis did not answer (the caller may hold the filter itself instead).
    pub async fn create(
        &self,
        kind: Kind,
        criteria: Option<Box<RawValue>>,
        owner: &Owner,
        head: &Consensus,
    ) -> Result<String, FilterError> {
        let id = new_id();
        let owner = owner.to_string();
        let keys = self.keys(&id, &owner);
        let note = Note {
            kind,
            owner,
            criteria,
            number: head.number,
            // Nothing of the head's block is owed to a new filter: none to remove.
            recent: vec![Seen {
                hash: head.hash.to_ascii_lowercase(),
                logs: (kind == Kind::Logs).then(Vec::new),
            }],
        };
        let signed = self.redis.signed_note(&keys[0], &note.encode());
        let made = self
            .redis
            .eval(
                CREATE,
                &keys.each_ref().map(String::as_str),
                &[
                    &signed,
                    &self.ttl_ms(),
                    now_ms().as_bytes(),
                    self.limits.max_filters.to_string().as_bytes(),
                    self.limits.max_per_client.to_string().as_bytes(),
                    id.as_bytes(),
                ],
            )
            .await
            .map_err(|RedisDown| FilterError::Unreachable)?;
        match made {
            0 => Ok(id),
            2 => Err(self.limits.per_client_error(true)),
            _ => Err(self.limits.total_error(true)),
        }
    }

    /// The note under `id` as stored, and as read; `NotFound` when absent, expired or
    /// not signed with this secret.
    async fn read(&self, id: &str) -> Result<(Vec<u8>, Note), FilterError> {
        let key = format!("filter:{}:{id}", self.chain.chain_id);
        let value = self
            .redis
            .note(&key)
            .await
            .map_err(|RedisDown| FilterError::Unreachable)?
            .ok_or(FilterError::NotFound)?;
        let note: Note = serde_json::from_slice(&value).map_err(|_| FilterError::NotFound)?;
        Ok((self.redis.signed_note(&key, &value), note))
    }

    /// Writes `new` in place of `read` (renewing its expiry); false when another
    /// instance changed it first.
    async fn swap(&self, id: &str, read: &[u8], new: &Note) -> Result<bool, FilterError> {
        let keys = self.keys(id, &new.owner);
        let signed = self.redis.signed_note(&keys[0], &new.encode());
        let done = self
            .redis
            .eval(
                SWAP,
                &keys.each_ref().map(String::as_str),
                &[
                    read,
                    &signed,
                    &self.ttl_ms(),
                    now_ms().as_bytes(),
                    id.as_bytes(),
                ],
            )
            .await
            .map_err(|RedisDown| FilterError::Unreachable)?;
        Ok(done == 1)
    }

    /// `eth_uninstallFilter`: whether there was such a filter.
    pub async fn uninstall(&self, id: &str) -> Result<bool, FilterError> {
        for _ in 0..ATTEMPTS {
            let (read, note) = match self.read(id).await {
                Ok(r) => r,
                Err(FilterError::NotFound) => return Ok(false),
                Err(e) => return Err(e),
            };
            let keys = self.keys(id, &note.owner);
            let gone = self
                .redis
                .eval(
                    DELETE,
                    &keys.each_ref().map(String::as_str),
                    &[&read, id.as_bytes()],
                )
                .await
                .map_err(|RedisDown| FilterError::Unreachable)?;
            if gone == 1 {
                return Ok(true);
            }
        }
        // Polled on other instances all along: it is there, just moving.
        Err(FilterError::Busy)
    }

    /// A log filter's criteria, for `eth_getFilterLogs` (a poll: its expiry is renewed).
    pub async fn criteria(&self, id: &str) -> Result<Box<RawValue>, FilterError> {
        for _ in 0..ATTEMPTS {
            let (read, note) = self.read(id).await?;
            let Some(criteria) = note.criteria.clone() else {
                return Err(FilterError::NotFound); // a block filter has no logs
            };
            if self.swap(id, &read, &note).await? {
                return Ok(criteria);
            }
        }
        Err(FilterError::Busy)
    }

    /// `eth_getFilterChanges`: what happened on the chain since the cursor, up to the
    /// consensus head `head`; the cursor moves past it.
    pub async fn changes(&self, id: &str, head: Option<&Consensus>) -> Result<Bytes, FilterError> {
        for _ in 0..ATTEMPTS {
            let (read, mut note) = self.read(id).await?;
            let filter = match (&note.kind, &note.criteria) {
                (Kind::Logs, Some(c)) => Some(log_filter(c)?),
                (Kind::Logs, None) => return Err(FilterError::NotFound),
                (Kind::Blocks, _) => None,
            };
            let step = match head {
                Some(head) => step(self.chain, &note, head).await,
                None => Ok(Step::default()),
            };
            let items = match step {
                Ok(step) => match self.items(&note, &step, filter.as_ref()).await {
                    Some(told) => {
                        let added = &step.added[..told.blocks];
                        note.advance(step.fork, added, told.logs);
                        told.items
                    }
                    None => Vec::new(),
                },
                Err(StepError::TooDeep) => {
                    self.uninstall(id).await?;
                    return Err(FilterError::Limit(format!(
                        "the chain reorganised more than {KEEP} blocks below this filter's last poll, so its changes cannot be told; the filter was removed: create a new one (eth_getLogs fills the gap)"
                    )));
                }
                Err(StepError::Fetch(e)) => {
                    // Nothing is lost: the cursor stays, and the next poll tries again.
                    tracing::debug!(chain = %self.chain.name, error = %e, "shared filter: cannot fetch the blocks since its cursor yet");
                    Vec::new()
                }
            };
            // Written even unmoved: a poll renews the filter's expiry.
            if self.swap(id, &read, &note).await? {
                return Ok(json_array(&items));
            }
        }
        // Other instances moved it each time: what there was went to their polls.
        Ok(json_array(&[]))
    }

    /// What a step tells a filter (block hashes, or matching logs: first those of
    /// removed blocks, marked so): logs are cut at a block boundary past `max_items`
    /// (the rest comes at the next poll). `None`: the new blocks' logs could not be
    /// fetched; the cursor stays.
    async fn items(&self, note: &Note, step: &Step, filter: Option<&LogFilterIn>) -> Option<Told> {
        let Some(f) = filter else {
            let items = step
                .added
                .iter()
                .map(|b| Bytes::from(format!("\"{}\"", b.hash)))
                .collect();
            return Some(Told {
                items,
                blocks: step.added.len(),
                logs: None,
            });
        };
        let scope = if f.filter.addresses.is_empty() {
            LogScope::All
        } else {
            LogScope::Addresses(f.filter.addresses.clone())
        };
        let mut items = Vec::new();
        for &n in step.removed.iter().filter(|&&n| f.covers(n)) {
            let Some(seen) = note.at(n) else { continue };
            let logs = match &seen.logs {
                Some(logs) => logs
                    .iter()
                    .map(|raw| Bytes::copy_from_slice(raw.get().as_bytes()))
                    .collect(),
                None => self.orphaned_logs(n, &seen.hash, &scope, f).await,
            };
            items.extend(logs.into_iter().map(|raw| {
                follow::removed_log(&Log {
                    address: String::new(),
                    topics: Vec::new(),
                    raw,
                })
                .raw
            }));
        }
        let wanted: Vec<Fetched> = step
            .added
            .iter()
            .filter(|b| f.covers(b.number))
            .cloned()
            .collect();
        let fetched = match follow::fetch_logs(self.chain, &wanted, &scope).await {
            Ok(logs) => logs,
            Err(e) => {
                tracing::debug!(chain = %self.chain.name, error = %e, "shared filter: cannot fetch the new blocks' logs yet");
                return None;
            }
        };
        let mut fetched = wanted.iter().map(|b| b.number).zip(fetched).peekable();
        let mut per_block = Vec::new();
        for b in &step.added {
            let mut of_block = Vec::new();
            if fetched.peek().is_some_and(|(n, _)| *n == b.number)
                && let Some((_, Some(found))) = fetched.next()
            {
                of_block.extend(found.iter().filter(|l| f.matches(l)).map(|l| l.raw.clone()));
            }
            if !per_block.is_empty() && items.len() + of_block.len() > self.limits.max_items {
                break;
            }
            items.extend(of_block.iter().cloned());
            per_block.push(of_block);
        }
        Some(Told {
            items,
            blocks: per_block.len(),
            logs: Some(per_block),
        })
    }

    /// The matching logs of block `n` (`hash`), which left the chain and whose logs the
    /// note no longer holds: from a node that still has it, else none (logged).
    async fn orphaned_logs(
        &self,
        n: u64,
        hash: &str,
        scope: &LogScope,
        f: &LogFilterIn,
    ) -> Vec<Bytes> {
        let block = Fetched {
            number: n,
            hash: hash.to_owned(),
            parent: String::new(),
            header: Bytes::new(),
        };
        match follow::fetch_logs(self.chain, &[block], scope).await {
            Ok(logs) => logs
                .iter()
                .flatten()
                .flat_map(|l| l.iter())
                .filter(|l| f.matches(l))
                .map(|l| l.raw.clone())
                .collect(),
            Err(e) => {
                tracing::warn!(chain = %self.chain.name, block = n, error = %e, "shared filter: the logs of a block that left the chain are no longer served; the new branch is sent without their removal");
                Vec::new()
            }
        }
    }
}

/// What one poll tells a filter.
struct Told {
    items: Vec<Bytes>,
    /// How many of the step's added blocks that covers.
    blocks: usize,
    /// A log filter's logs of each of those blocks.
    logs: Option<Vec<Vec<Bytes>>>,
}

/// A log filter as a poll applies it.
struct LogFilterIn {
    filter: super::filter::LogFilter,
    from: Option<u64>,
    to: Option<u64>,
}

impl LogFilterIn {
    fn covers(&self, n: u64) -> bool {
        self.from.is_none_or(|f| n >= f) && self.to.is_none_or(|t| n <= t)
    }

    fn matches(&self, log: &Log) -> bool {
        self.filter.matches(&log.address, &log.topics)
    }
}

fn log_filter(criteria: &RawValue) -> Result<LogFilterIn, FilterError> {
    let params = RawValue::from_string(format!("[{}]", criteria.get()))
        .map_err(|_| FilterError::NotFound)?;
    match parse_criteria(Some(&params)) {
        Ok(What::Logs {
            filter, from, to, ..
        }) => Ok(LogFilterIn { filter, from, to }),
        // Stored by an instance that accepted it: unreadable only if another version
        // wrote it. Not this filter, as far as this instance can tell.
        _ => Err(FilterError::NotFound),
    }
}

fn now_ms() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
        .to_string()
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Fetch(#[from] FollowError),
    #[error("reorg deeper than {KEEP} blocks below the cursor")]
    TooDeep,
}

/// How the cursor of `note` moves towards the consensus `head`, at most `STEP` blocks.
async fn step(chain: &Chain, note: &Note, head: &Consensus) -> Result<Step, StepError> {
    let n = note.number;
    let cursor = note.hash_at(n).unwrap_or_default().to_ascii_lowercase();
    let head = Consensus {
        hash: head.hash.to_ascii_lowercase().into(),
        ..head.clone()
    };
    let unmoved = Step {
        fork: n,
        ..Step::default()
    };
    // Ahead of this instance (another instance's head was): nothing new here.
    if head.number < n || (head.number == n && *head.hash == *cursor) {
        return Ok(unmoved);
    }
    let to = head.number.min(n.saturating_add(STEP));
    let fetched = if to > n {
        follow::fetch_range(chain, n + 1, to, &head).await?
    } else {
        Vec::new()
    };
    let reaches = to < head.number || fetched.last().is_some_and(|b| *b.hash == *head.hash);
    if reaches && !fetched.is_empty() && follow::links(&cursor, &fetched) {
        return Ok(Step {
            added: fetched,
            ..unmoved
        });
    }
    // The links break: a reorg. Walk the new branch back by hash from this step's tip
    // (the agreed head when it is within reach), reusing what was fetched by number
    // where it is on that branch, down to a block the note remembers delivering.
    let (mut number, mut expect) = if to == head.number {
        (head.number, head.hash.to_string())
    } else {
        match fetched.last() {
            Some(b) => (b.number, b.hash.clone()),
            None => return Ok(unmoved),
        }
    };
    let mut branch: Vec<Fetched> = Vec::new(); // newest first
    loop {
        if number <= n {
            match note.hash_at(number) {
                Some(h) if h.eq_ignore_ascii_case(&expect) => break,
                Some(_) => {}
                None => return Err(StepError::TooDeep),
            }
        }
        let block = match fetched
            .iter()
            .find(|b| b.number == number && b.hash == expect)
        {
            Some(b) => b.clone(),
            None => follow::fetch_by_hash(chain, number, &expect).await?,
        };
        expect = block.parent.clone();
        branch.push(block);
        number = number.checked_sub(1).ok_or(StepError::TooDeep)?;
    }
    branch.reverse();
    let removed = (number + 1..=n).collect();
    Ok(Step {
        fork: number,
        removed,
        added: branch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(hash: &str) -> Seen {
        Seen {
            hash: hash.into(),
            logs: None,
        }
    }

    fn note(number: u64, hashes: &[&str]) -> Note {
        Note {
            kind: Kind::Logs,
            owner: "ip:127.0.0.1".into(),
            criteria: Some(RawValue::from_string(r#"{"address":"0xab"}"#.into()).expect("JSON")),
            number,
            recent: hashes.iter().map(|h| seen(h)).collect(),
        }
    }

    fn block(number: u64, hash: &str) -> Fetched {
        Fetched {
            number,
            hash: hash.into(),
            parent: String::new(),
            header: Bytes::new(),
        }
    }

    fn hashes(note: &Note) -> Vec<&str> {
        note.recent.iter().map(|s| s.hash.as_str()).collect()
    }

    #[test]
    fn notes_round_trip_and_refuse_unknown_fields() {
        let n = note(7, &["0x06", "0x07"]);
        let bytes = n.encode();
        let back: Note = serde_json::from_slice(&bytes).expect("reads back");
        assert_eq!(back.encode(), bytes);
        let extra =
            br#"{"kind":"blocks","owner":"x","number":1,"recent":[{"hash":"0x1"}],"more":1}"#;
        assert!(serde_json::from_slice::<Note>(extra).is_err());
    }

    #[test]
    fn a_note_remembers_the_newest_blocks_and_forgets_a_branch_that_left() {
        let mut n = note(10, &["0x09", "0x0a"]);
        assert_eq!(
            (n.hash_at(10), n.hash_at(9), n.hash_at(8), n.hash_at(11)),
            (Some("0x0a"), Some("0x09"), None, None)
        );
        n.advance(10, &[block(11, "0x0b"), block(12, "0x0c")], None);
        assert_eq!(n.number, 12);
        assert_eq!(hashes(&n), ["0x09", "0x0a", "0x0b", "0x0c"]);
        // A reorg above block 10: 11 and 12 are replaced by 11', 12', 13'.
        n.advance(
            10,
            &[block(11, "0xb1"), block(12, "0xc1"), block(13, "0xd1")],
            None,
        );
        assert_eq!(n.number, 13);
        assert_eq!(hashes(&n), ["0x09", "0x0a", "0xb1", "0xc1", "0xd1"]);
        let many: Vec<Fetched> = (14..14 + KEEP as u64)
            .map(|k| block(k, &format!("{k:#x}")))
            .collect();
        n.advance(13, &many, None);
        assert_eq!(n.recent.len(), KEEP);
        let top = format!("{:#x}", n.number);
        assert_eq!(n.hash_at(n.number), Some(top.as_str()));
        n.advance(n.number, &[], None);
        assert_eq!(n.recent.len(), KEEP, "nothing added: unchanged");
    }

    #[test]
    fn delivered_logs_are_remembered_for_the_newest_blocks_only() {
        let mut n = note(1, &["0x01"]);
        let log = Bytes::from(format!(r#"{{"data":"0x{}"}}"#, "ab".repeat(1000)));
        let blocks: Vec<Fetched> = (2..=20).map(|k| block(k, &format!("{k:#x}"))).collect();
        let logs = blocks
            .iter()
            .map(|_| vec![log.clone(), log.clone()])
            .collect();
        n.advance(1, &blocks, Some(logs));
        let kept: Vec<bool> = n.recent.iter().map(|s| s.logs.is_some()).collect();
        let remembered = kept.iter().filter(|k| **k).count();
        assert!(remembered > 0 && remembered < kept.len(), "{kept:?}");
        assert!(
            kept.ends_with(&vec![true; remembered]),
            "newest first: {kept:?}"
        );
        let size: usize = n
            .recent
            .iter()
            .flat_map(|s| s.logs.iter().flatten())
            .map(|l| l.get().len())
            .sum();
        assert!(size <= LOG_MEMORY);
        assert_eq!(
            n.at(20)
                .and_then(|s| s.logs.as_ref())
                .map(|l| l[0].get().to_owned()),
            Some(String::from_utf8_lossy(&log).into_owned())
        );
    }
}
