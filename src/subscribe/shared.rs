//! Block and log filters shared through Redis (`[redis]`): behind a load balancer one
//! client's polls reach any instance, so the filter lives in Redis and whichever
//! instance is polled answers it.
//!
//! A filter is one signed note (`[redis] secret`, like shared bans) under
//! `filter:{chain id}:{id}`: its kind, the client's criteria, its owner, and its cursor
//! — the last block delivered (number and hash; at creation, the consensus head). A
//! poll computes the changes from the chain, not from a queue: the blocks between the
//! cursor and this instance's consensus head, fetched by number through routing
//! (`follow`'s fetches: failover, and the chain's header checks), linked by parent hash
//! from the cursor up to the agreed head hash; their logs by block hash. When the links
//! break the chain reorganised: both branches are walked back by hash to where they
//! meet, and the old branch's logs come back with `"removed": true` before the new
//! branch's (as geth sends them).
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
/// The deepest reorg below a filter's cursor that is followed; deeper, the filter is
/// removed with an error saying so (never a silent gap).
const REORG_DEPTH: usize = 64;
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
    hash: String,
}

impl Note {
    fn encode(&self) -> Vec<u8> {
        // A struct of strings, numbers and raw JSON always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// One chain's filters in the shared tier, for one call.
pub struct Shared<'a> {
    pub redis: &'a RedisTier,
    pub chain: &'a Chain,
    pub limits: FilterLimits,
}

/// The changes of one move of a cursor.
struct Step {
    /// The cursor it started from.
    from: (u64, String),
    /// The new cursor: the newest block of `added` (or the old cursor).
    cursor: (u64, String),
    /// Blocks that left the chain since the cursor, oldest first.
    removed: Vec<Fetched>,
    /// Blocks new to the filter, oldest first, linked by parent hash.
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
        let keys = self.keys(&id, owner.as_str());
        let note = Note {
            kind,
            owner: owner.as_str().to_owned(),
            criteria,
            number: head.number,
            hash: head.hash.to_ascii_lowercase(),
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
                Some(head) => step(self.chain, (note.number, &note.hash), head).await,
                None => Ok(Step::none(&note)),
            };
            let (items, cursor) = match step {
                Ok(step) => self.items(&step, filter.as_ref()).await,
                Err(StepError::TooDeep) => {
                    self.uninstall(id).await?;
                    return Err(FilterError::Limit(format!(
                        "the chain reorganised more than {REORG_DEPTH} blocks below this filter's last poll, so its changes cannot be told; the filter was removed: create a new one (eth_getLogs fills the gap)"
                    )));
                }
                Err(StepError::Fetch(e)) => {
                    // Nothing is lost: the cursor stays, and the next poll tries again.
                    tracing::debug!(chain = %self.chain.name, error = %e, "shared filter: cannot fetch the blocks since its cursor yet");
                    (Vec::new(), (note.number, note.hash.clone()))
                }
            };
            (note.number, note.hash) = cursor;
            if self.swap(id, &read, &note).await? {
                return Ok(json_array(&items));
            }
        }
        // Other instances moved it each time: what there was went to their polls.
        Ok(json_array(&[]))
    }

    /// The items a step delivers to a filter (block hashes, or matching logs), and the
    /// cursor after them: at most `max_items` logs, cut at a block boundary (the rest
    /// comes at the next poll).
    async fn items(
        &self,
        step: &Step,
        filter: Option<&LogFilterIn>,
    ) -> (Vec<Bytes>, (u64, String)) {
        let Some(f) = filter else {
            let hashes = step
                .added
                .iter()
                .map(|b| Bytes::from(format!("\"{}\"", b.hash)))
                .collect();
            return (hashes, step.cursor.clone());
        };
        let scope = if f.filter.addresses.is_empty() {
            LogScope::All
        } else {
            LogScope::Addresses(f.filter.addresses.clone())
        };
        let mut items = Vec::new();
        let removed: Vec<&Fetched> = step.removed.iter().filter(|b| f.covers(b.number)).collect();
        if !removed.is_empty() {
            match follow::fetch_logs(self.chain, &owned(&removed), &scope).await {
                Ok(logs) => {
                    for log in logs.iter().flatten().flat_map(|l| l.iter()) {
                        if f.matches(log) {
                            items.push(follow::removed_log(log).raw);
                        }
                    }
                }
                Err(e) => {
                    // A node may no longer serve a side branch's logs: the new branch is
                    // still told, without the removals (as `follow` does past its history).
                    tracing::warn!(chain = %self.chain.name, error = %e, "shared filter: the logs of blocks that left the chain could not be fetched; sending the new branch without removals");
                }
            }
        }
        let added: Vec<&Fetched> = step.added.iter().filter(|b| f.covers(b.number)).collect();
        let logs = match follow::fetch_logs(self.chain, &owned(&added), &scope).await {
            Ok(logs) => logs,
            Err(e) => {
                tracing::debug!(chain = %self.chain.name, error = %e, "shared filter: cannot fetch logs yet");
                // Keep the cursor: removals (if any) and these come at the next poll.
                return (Vec::new(), step.from.clone());
            }
        };
        let mut cursor = step.from.clone();
        let mut logs = added.iter().zip(logs).peekable();
        for b in &step.added {
            let mut of_block = Vec::new();
            if logs.peek().is_some_and(|(a, _)| a.number == b.number)
                && let Some((_, Some(found))) = logs.next()
            {
                of_block.extend(found.iter().filter(|l| f.matches(l)).map(|l| l.raw.clone()));
            }
            if cursor != step.from && items.len() + of_block.len() > self.limits.max_items {
                break;
            }
            items.extend(of_block);
            cursor = (b.number, b.hash.clone());
        }
        if step.added.is_empty() {
            cursor = step.cursor.clone();
        }
        (items, cursor)
    }
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

fn owned(blocks: &[&Fetched]) -> Vec<Fetched> {
    blocks.iter().map(|b| (*b).clone()).collect()
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
    #[error("reorg deeper than {REORG_DEPTH} blocks below the cursor")]
    TooDeep,
}

impl Step {
    fn none(note: &Note) -> Step {
        let cursor = (note.number, note.hash.clone());
        Step {
            from: cursor.clone(),
            cursor,
            removed: Vec::new(),
            added: Vec::new(),
        }
    }
}

/// The move of a cursor `from` towards the consensus `head`, at most `STEP` blocks.
async fn step(chain: &Chain, from: (u64, &str), head: &Consensus) -> Result<Step, StepError> {
    let (n, hash) = (from.0, from.1.to_ascii_lowercase());
    let head = Consensus {
        hash: head.hash.to_ascii_lowercase(),
        ..head.clone()
    };
    let unmoved = Step {
        from: (n, hash.clone()),
        cursor: (n, hash.clone()),
        removed: Vec::new(),
        added: Vec::new(),
    };
    // Behind this filter (another instance's head is ahead of ours): nothing new here.
    if head.number < n || (head.number == n && head.hash == hash) {
        return Ok(unmoved);
    }
    let to = head.number.min(n + STEP);
    let fetched = if to > n {
        follow::fetch_range(chain, n + 1, to, &head).await?
    } else {
        Vec::new()
    };
    let reaches = to < head.number || fetched.last().is_some_and(|b| b.hash == head.hash);
    if reaches && follow::links(&hash, &fetched) {
        if let Some(last) = fetched.last() {
            return Ok(Step {
                cursor: (last.number, last.hash.clone()),
                added: fetched,
                ..unmoved
            });
        }
    }
    // The links break: a reorg. Walk the new branch back by hash from this step's tip
    // (the agreed head when it is within reach) to the cursor's height, reusing what
    // was fetched by number where it is on that branch.
    let (tip_number, tip_hash) = if to == head.number {
        (head.number, head.hash.clone())
    } else {
        match fetched.last() {
            Some(b) => (b.number, b.hash.clone()),
            None => return Ok(unmoved),
        }
    };
    let mut new_branch: Vec<Fetched> = Vec::new(); // newest first
    let (mut number, mut expect) = (tip_number, tip_hash);
    while number > n {
        let block = match fetched
            .iter()
            .find(|b| b.number == number && b.hash == expect)
        {
            Some(b) => b.clone(),
            None => follow::fetch_by_hash(chain, number, &expect).await?,
        };
        expect = block.parent.clone();
        number -= 1;
        new_branch.push(block);
    }
    // Below the cursor: both branches back until they meet.
    let mut old_branch: Vec<Fetched> = Vec::new(); // newest first
    let mut old = hash.clone();
    while expect != old {
        if old_branch.len() >= REORG_DEPTH || number == 0 {
            return Err(StepError::TooDeep);
        }
        let gone = follow::fetch_by_hash(chain, number, &old).await?;
        let kept = follow::fetch_by_hash(chain, number, &expect).await?;
        old = gone.parent.clone();
        expect = kept.parent.clone();
        old_branch.push(gone);
        new_branch.push(kept);
        number -= 1;
    }
    old_branch.reverse();
    new_branch.reverse();
    let cursor = new_branch
        .last()
        .map_or((n, hash.clone()), |b| (b.number, b.hash.clone()));
    Ok(Step {
        cursor,
        removed: old_branch,
        added: new_branch,
        ..unmoved
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_refuse_unknown_fields() {
        let note = Note {
            kind: Kind::Logs,
            owner: "ip:127.0.0.1".into(),
            criteria: Some(RawValue::from_string(r#"{"address":"0xab"}"#.into()).expect("JSON")),
            number: 7,
            hash: "0x07".into(),
        };
        let bytes = note.encode();
        let back: Note = serde_json::from_slice(&bytes).expect("reads back");
        assert_eq!(back.encode(), bytes);
        let extra = br#"{"kind":"blocks","owner":"x","number":1,"hash":"0x1","more":1}"#;
        assert!(serde_json::from_slice::<Note>(extra).is_err());
    }
}
