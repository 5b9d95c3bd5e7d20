//! Follows the chain's consensus head and turns each move into `Block` events, every
//! block of the consensus chain once and in order, with its logs.
//!
//! The consensus head (`upstream::heads`, fed by every upstream's head polls and pushes)
//! says *which* block is the newest a quorum agrees on; this task fetches what lies
//! between the last block it sent and that head — by number, in batches, through
//! `route::forward` (so with the normal failover, hedging and block-aware selection) —
//! and checks that the fetched blocks link by `parentHash` up to the agreed hash. A
//! block missed while the upstream that would have pushed it was dying is therefore
//! backfilled, never skipped, and a block is sent at most once.
//!
//! When the links do not hold, the chain reorganised (or an upstream answered off the
//! consensus chain): it walks back from the agreed hash, by hash, to the last block it
//! sent that is still on the chain, sends the logs of the blocks that left it again
//! with `removed: true` (as geth does, oldest first), then the new branch's blocks.
//!
//! Fetches only while some client subscribes to `newHeads` or `logs`; otherwise it only
//! remembers the head, so a first subscriber starts right after it.

use std::{collections::VecDeque, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use serde::{Deserialize, Deserializer, de};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{
    Live,
    filter::{HEADS, LOGS},
    hub::{Event, Hub, Log, LogScope},
};
use crate::{
    config::Verify,
    route::Chain,
    route::{Outcome, forward, resolve::Need},
    rpc::Call,
    upstream::Answer,
    upstream::heads::Consensus,
};

/// Blocks remembered after they were sent: the deepest reorg that can be undone.
const HISTORY: usize = 128;
/// Of those, the newest whose logs are kept, to be sent again as removed on a reorg
/// (a reorg deeper than this sends the new branch but no removals).
const LOG_HISTORY: usize = 64;
/// Blocks fetched per `forward` call (public providers cap batches near 10).
const BATCH: u64 = 10;
/// Blocks fetched per round before the head is looked at again.
const ROUND: u64 = 50;
/// A gap larger than this is not backfilled (clients are told by a jump instead).
const MAX_GAP: u64 = 10_000;
/// First wait after a failed round; doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_millis(50);
const MAX_RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("block {number}: {why}")]
    Fetch { number: u64, why: String },
    #[error("reorg deeper than the {HISTORY} blocks remembered")]
    TooDeep,
}

/// A block this task has seen on the consensus chain.
#[derive(Debug)]
struct Seen {
    number: u64,
    hash: String,
    /// Sequence number of its `Block` event; `None` when it was never sent.
    seq: Option<u64>,
    logs: Option<Arc<[Log]>>,
    /// The subscription epoch its logs were fetched for.
    logs_as_of: u64,
}

/// One block as fetched: what chaining needs, and the header as `newHeads` sends it.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    pub(super) number: u64,
    pub(super) hash: String,
    pub(super) parent: String,
    pub(super) header: Bytes,
}

/// The blocks seen, oldest first; the last is the tip.
#[derive(Default)]
struct Follower {
    seen: VecDeque<Seen>,
}

pub async fn follow(chain: Arc<Chain>, live: Arc<Live>, stop: CancellationToken) {
    let hub = &live.hub;
    let mut heads = chain.moves();
    let mut wanted = hub.wanted();
    let mut follower = Follower::default();
    let mut retry: Option<Duration> = None;
    loop {
        let target = heads.borrow_and_update().clone();
        if let Some(target) = target {
            let round = tokio::select! {
                _ = stop.cancelled() => break,
                r = follower.advance(&chain, hub, &target) => r,
            };
            match round {
                Ok(true) => continue, // more blocks to fetch before waiting
                Ok(false) => retry = None,
                Err(e) => {
                    let wait = retry.map_or(FIRST_RETRY, |r| (r * 2).min(MAX_RETRY));
                    if wait == MAX_RETRY && retry != Some(MAX_RETRY) {
                        // Failing for a few seconds: subscribers are waiting; say why once.
                        tracing::warn!(chain = %chain.name, error = %e, "newHeads feed: cannot fetch the next blocks; retrying every {} s", MAX_RETRY.as_secs());
                    } else {
                        tracing::debug!(chain = %chain.name, error = %e, retry_ms = wait.as_millis() as u64, "newHeads feed: round failed");
                    }
                    retry = Some(wait);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = heads.changed() => if changed.is_err() { break },
            changed = wanted.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(retry.unwrap_or(MAX_RETRY)), if retry.is_some() => {}
        }
    }
}

impl Follower {
    fn tip(&self) -> Option<&Seen> {
        self.seen.back()
    }

    fn at(&self, number: u64) -> Option<&Seen> {
        let first = self.seen.front()?.number;
        self.seen
            .get(usize::try_from(number.checked_sub(first)?).ok()?)
    }

    /// Forgets everything but `head`, which becomes the (unsent) tip.
    fn reset(&mut self, head: &Consensus) {
        self.seen.clear();
        self.seen.push_back(Seen {
            number: head.number,
            hash: head.hash.to_string(),
            seq: None,
            logs: None,
            logs_as_of: 0,
        });
    }

    /// One round towards `target`. `Ok(true)`: more to fetch at once.
    async fn advance(
        &mut self,
        chain: &Chain,
        hub: &Hub,
        target: &Consensus,
    ) -> Result<bool, FollowError> {
        // Fetched hashes are compared lowercased.
        let target = &Consensus {
            hash: target.hash.to_ascii_lowercase().into(),
            ..target.clone()
        };
        let Some(tip) = self.tip() else {
            self.reset(target);
            return Ok(false);
        };
        if !hub.wants(HEADS | LOGS) {
            self.reset(target);
            return Ok(false);
        }
        if target.number < tip.number || (target.number == tip.number && *target.hash == *tip.hash)
        {
            return Ok(false);
        }
        if target.number - tip.number > MAX_GAP {
            tracing::warn!(chain = %chain.name, from = tip.number, to = target.number, "newHeads feed: gap too large to backfill; continuing from the head");
            self.reset(target);
            return Ok(false);
        }
        let (tip_number, tip_hash) = (tip.number, tip.hash.clone());
        // Block numbers are the providers' word: saturating, up to u64::MAX.
        let to = target.number.min(tip_number.saturating_add(ROUND));
        let scope = hub.wants(LOGS).then(|| hub.log_scope());
        let mut fetched = fetch_range(chain, tip_number.saturating_add(1), to, target).await?;
        let linked = links(&tip_hash, &fetched)
            && (to < target.number || fetched.last().is_some_and(|b| *b.hash == *target.hash));
        let ancestor = if linked && !fetched.is_empty() {
            tip_number
        } else {
            match self.walk_back(chain, target).await {
                Ok((ancestor, branch)) => {
                    fetched = branch;
                    ancestor
                }
                Err(FollowError::TooDeep) => {
                    tracing::warn!(chain = %chain.name, head = target.number, "newHeads feed: reorg deeper than {HISTORY} blocks; continuing from the head without removals");
                    self.reset(target);
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        };
        let (logs, logs_as_of) = match &scope {
            Some((scope, epoch)) => (fetch_logs(chain, &fetched, scope).await?, *epoch),
            None => (vec![None; fetched.len()], 0),
        };
        self.emit(chain, hub, ancestor, fetched, logs, logs_as_of);
        Ok(to < target.number)
    }

    /// Walks from `target` back by parent hash to a block seen on our side of the
    /// chain (or below everything seen). Returns that ancestor's number and the branch
    /// above it, oldest first.
    async fn walk_back(
        &self,
        chain: &Chain,
        target: &Consensus,
    ) -> Result<(u64, Vec<Fetched>), FollowError> {
        let lowest = self.seen.front().map_or(0, |s| s.number);
        let mut branch = Vec::new();
        let (mut number, mut hash) = (target.number, target.hash.to_string());
        loop {
            match self.at(number) {
                Some(s) if s.hash == hash => break,
                None if number < lowest => break,
                _ => {}
            }
            if branch.len() >= HISTORY || number == 0 {
                return Err(FollowError::TooDeep);
            }
            let block = fetch_by_hash(chain, number, &hash).await?;
            hash = block.parent.clone();
            number -= 1;
            branch.push(block);
        }
        branch.reverse();
        Ok((number, branch))
    }

    /// Sends the removed logs of blocks above `ancestor`, then the new blocks.
    fn emit(
        &mut self,
        chain: &Chain,
        hub: &Hub,
        ancestor: u64,
        blocks: Vec<Fetched>,
        logs: Vec<Option<Arc<[Log]>>>,
        logs_as_of: u64,
    ) {
        let first = self.seen.front().map_or(0, |s| s.number);
        let keep = usize::try_from((ancestor + 1).saturating_sub(first)).unwrap_or(usize::MAX);
        let orphaned: Vec<Seen> = self.seen.drain(keep.min(self.seen.len())..).collect();
        if orphaned.iter().any(|s| s.seq.is_some()) {
            tracing::info!(chain = %chain.name, ancestor, depth = orphaned.len(), "newHeads feed: reorg; sending the new branch and removing the old branch's logs");
        }
        for old in orphaned {
            if let (Some(_), Some(logs)) = (old.seq, old.logs)
                && !logs.is_empty()
            {
                let removed: Arc<[Log]> = logs.iter().map(removed_log).collect();
                hub.publish(Event::Removed {
                    of: old.logs_as_of,
                    logs: removed,
                });
            }
        }
        for (block, logs) in blocks.into_iter().zip(logs) {
            let seq = hub.publish(Event::Block {
                number: block.number,
                header: block.header,
                logs: logs.clone(),
                logs_as_of,
            });
            tracing::trace!(chain = %chain.name, number = block.number, "newHeads feed: sent");
            self.seen.push_back(Seen {
                number: block.number,
                hash: block.hash,
                seq: Some(seq),
                logs,
                logs_as_of,
            });
        }
        while self.seen.len() > HISTORY {
            self.seen.pop_front();
        }
        let old = self.seen.len().saturating_sub(LOG_HISTORY);
        for s in self.seen.iter_mut().take(old) {
            s.logs = None;
        }
    }
}

/// Each block's parent is the one before it, the first's is `tip`.
pub(super) fn links(tip: &str, blocks: &[Fetched]) -> bool {
    let mut parent = tip;
    for b in blocks {
        if b.parent != parent {
            return false;
        }
        parent = &b.hash;
    }
    true
}

fn raw(json: String) -> Result<Box<RawValue>, FollowError> {
    RawValue::from_string(json).map_err(|e| FollowError::Fetch {
        number: 0,
        why: format!("building params: {e}"),
    })
}

/// Sends `calls` (method, params) through the normal routing; per call who answered
/// and the raw result, or why there is none.
async fn ask(
    chain: &Chain,
    calls: &[(&'static str, Box<RawValue>)],
    need: Need,
) -> Vec<Result<(Arc<str>, Bytes), String>> {
    let calls: Vec<Call<'_>> = calls
        .iter()
        .map(|(method, params)| Call {
            id: None,
            method: (*method).into(),
            params: Some(params),
        })
        .collect();
    let refs: Vec<&Call<'_>> = calls.iter().collect();
    forward(chain, &refs, need)
        .await
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Answered {
                upstream,
                answer: Answer::Result(raw),
            } => Ok((upstream, raw)),
            Outcome::Answered {
                upstream,
                answer: Answer::Error { code, message, .. },
            } => Err(format!("{upstream}: error {code}: {message}")),
            Outcome::Unverified { what, why } => Err(format!("{what}: {why}")),
            Outcome::Refused(e) => Err(e.to_string()),
            Outcome::Unavailable(tried) => Err(format!(
                "no upstream answered ({})",
                tried
                    .iter()
                    .map(|a| format!("{}: {}", a.upstream, a.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        })
        .collect()
}

/// Blocks `from..=to` by number, except `target` itself, which is asked for by hash.
/// Numbers are providers' claims: a range ending at `u64::MAX` ends there, it does not
/// wrap to block 0.
pub(super) async fn fetch_range(
    chain: &Chain,
    from: u64,
    to: u64,
    target: &Consensus,
) -> Result<Vec<Fetched>, FollowError> {
    let mut out = Vec::new();
    let mut start = from;
    while start <= to {
        let end = to.min(start.saturating_add(BATCH - 1));
        let mut calls = Vec::new();
        for n in start..=end {
            calls.push(if n == target.number {
                (
                    "eth_getBlockByHash",
                    raw(format!("[\"{}\",false]", target.hash))?,
                )
            } else {
                ("eth_getBlockByNumber", raw(format!("[\"{n:#x}\",false]"))?)
            });
        }
        for (n, answer) in (start..=end).zip(ask(chain, &calls, Need::Block(end)).await) {
            out.push(block(chain, n, answer)?);
        }
        let Some(next) = end.checked_add(1) else {
            break;
        };
        start = next;
    }
    Ok(out)
}

pub(super) async fn fetch_by_hash(
    chain: &Chain,
    number: u64,
    hash: &str,
) -> Result<Fetched, FollowError> {
    let calls = [("eth_getBlockByHash", raw(format!("[\"{hash}\",false]"))?)];
    let answer = ask(chain, &calls, Need::Block(number))
        .await
        .pop()
        .unwrap_or_else(|| Err("no answer".into()));
    let b = block(chain, number, answer)?;
    if b.hash != hash {
        return Err(FollowError::Fetch {
            number,
            why: format!("asked for {hash}, got {}", b.hash),
        });
    }
    Ok(b)
}

/// The logs of each block within `scope`, by `blockHash` so they belong to exactly
/// that block.
pub(super) async fn fetch_logs(
    chain: &Chain,
    blocks: &[Fetched],
    scope: &LogScope,
) -> Result<Vec<Option<Arc<[Log]>>>, FollowError> {
    let addresses = match scope {
        LogScope::All => String::new(),
        LogScope::Addresses(list) if list.is_empty() => {
            return Ok(blocks.iter().map(|_| Some(Arc::from([]))).collect());
        }
        // A list of strings always serializes; an empty one would only fetch nothing.
        LogScope::Addresses(list) => format!(
            ",\"address\":{}",
            serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
        ),
    };
    let mut out = Vec::with_capacity(blocks.len());
    for group in blocks.chunks(BATCH as usize) {
        let calls = group
            .iter()
            .map(|b| {
                Ok((
                    "eth_getLogs",
                    raw(format!("[{{\"blockHash\":\"{}\"{addresses}}}]", b.hash))?,
                ))
            })
            .collect::<Result<Vec<_>, FollowError>>()?;
        let need = Need::Block(group.last().map_or(0, |b| b.number));
        for (b, answer) in group.iter().zip(ask(chain, &calls, need).await) {
            let fail = |why: String| FollowError::Fetch {
                number: b.number,
                why,
            };
            let (upstream, answer) = answer.map_err(fail)?;
            let logs =
                parse_logs(&answer, &b.hash).map_err(|e| fail(format!("{upstream}: {e}")))?;
            out.push(Some(logs));
        }
    }
    Ok(out)
}

/// Reads a block answer: `null`, a malformed block, or (unless the chain's `verify` is
/// off) one whose hash is not that of its fields, is an error (retried later).
fn block(
    chain: &Chain,
    number: u64,
    answer: Result<(Arc<str>, Bytes), String>,
) -> Result<Fetched, FollowError> {
    let fail = |why: String| FollowError::Fetch { number, why };
    let (upstream, raw) = answer.map_err(fail)?;
    if chain.verify != Verify::Off
        && let Err(e) = crate::verify::header::check(&raw)
    {
        return Err(fail(format!("{upstream}: {e}")));
    }
    read_block(number, &raw).map_err(|why| fail(format!("{upstream}: {why}")))
}

fn read_block(number: u64, raw: &[u8]) -> Result<Fetched, String> {
    let fields: Fields<'_> =
        serde_json::from_slice(raw).map_err(|e| format!("not a block object ({e})"))?;
    let text = |key: &str| -> Result<String, String> {
        fields
            .get(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .ok_or_else(|| format!("the block has no `{key}`"))
    };
    let (hash, parent, got) = (text("hash")?, text("parentHash")?, text("number")?);
    if parse_quantity(&got) != Some(number) {
        return Err(format!("asked for block {number}, got {got}"));
    }
    Ok(Fetched {
        number,
        hash: hash.to_ascii_lowercase(),
        parent: parent.to_ascii_lowercase(),
        header: fields.header(),
    })
}

use crate::rpc::quantity::parse as parse_quantity;

/// A block's members in their order; values stay raw.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The header as `newHeads` sends it: the block without its bodies.
    fn header(&self) -> Bytes {
        const BODIES: [&str; 3] = ["transactions", "uncles", "withdrawals"];
        object(self.0.iter().filter(|(k, _)| !BODIES.contains(&k.as_str())))
    }
}

fn object<'x>(members: impl Iterator<Item = &'x (String, &'x RawValue)>) -> Bytes {
    let mut out = Vec::with_capacity(1024);
    out.push(b'{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> de::Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, mut map: M) -> Result<Fields<'a>, M::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    members.push((k, v));
                }
                Ok(Fields(members))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// The logs of one block, checked to belong to it.
fn parse_logs(answer: &[u8], block_hash: &str) -> Result<Arc<[Log]>, String> {
    #[derive(Deserialize)]
    struct Shape {
        address: String,
        #[serde(default)]
        topics: Vec<String>,
        #[serde(default, rename = "blockHash")]
        block_hash: Option<String>,
    }
    let items: Vec<&RawValue> =
        serde_json::from_slice(answer).map_err(|e| format!("logs are not an array ({e})"))?;
    items
        .into_iter()
        .map(|item| {
            let s: Shape =
                serde_json::from_str(item.get()).map_err(|e| format!("malformed log ({e})"))?;
            if let Some(h) = &s.block_hash
                && !h.eq_ignore_ascii_case(block_hash)
            {
                return Err(format!("a log of block {h} in the answer for {block_hash}"));
            }
            Ok(Log {
                address: s.address.to_ascii_lowercase(),
                topics: s.topics.iter().map(|t| t.to_ascii_lowercase()).collect(),
                raw: Bytes::copy_from_slice(item.get().as_bytes()),
            })
        })
        .collect()
}

/// The same log with `"removed": true`.
pub(super) fn removed_log(log: &Log) -> Log {
    let parsed = serde_json::from_slice::<Fields<'_>>(&log.raw);
    let yes = serde_json::from_str::<&RawValue>("true");
    let raw = match (parsed, yes) {
        (Ok(fields), Ok(yes)) => {
            let mut members: Vec<(String, &RawValue)> = fields
                .0
                .into_iter()
                .filter(|(k, _)| k != "removed")
                .collect();
            members.push(("removed".to_owned(), yes));
            object(members.iter())
        }
        // Logs were parsed once already, so this does not happen; sent as they were.
        _ => log.raw.clone(),
    };
    Log {
        address: log.address.clone(),
        topics: log.topics.clone(),
        raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_drop_block_bodies_and_keep_member_order() {
        let block = br#"{"hash":"0xAB","parentHash":"0x01","number":"0x2","transactions":["0x5"],"uncles":[],"timestamp":"0x6","withdrawals":[]}"#;
        let b = read_block(2, block).expect("a block");
        assert_eq!(
            &b.header[..],
            br#"{"hash":"0xAB","parentHash":"0x01","number":"0x2","timestamp":"0x6"}"#
        );
        assert_eq!((b.hash.as_str(), b.parent.as_str()), ("0xab", "0x01"));
        assert!(read_block(3, block).is_err());
        assert!(read_block(2, b"null").is_err());
    }

    #[test]
    fn removed_logs_say_so_and_keep_everything_else() {
        let logs = parse_logs(
            br#"[{"address":"0xAA","topics":["0xT"],"data":"0x","blockHash":"0xb1","removed":false}]"#,
            "0xB1",
        )
        .expect("logs");
        assert_eq!(logs[0].address, "0xaa");
        let r = removed_log(&logs[0]);
        assert_eq!(
            &r.raw[..],
            br#"{"address":"0xAA","topics":["0xT"],"data":"0x","blockHash":"0xb1","removed":true}"#
        );
        assert!(parse_logs(br#"[{"address":"0xAA","blockHash":"0xb2"}]"#, "0xb1").is_err());
    }

    #[test]
    fn links_follow_parent_hashes_from_the_tip() {
        let b = |n: u64, parent: &str, hash: &str| Fetched {
            number: n,
            hash: hash.into(),
            parent: parent.into(),
            header: Bytes::new(),
        };
        assert!(links("0xa", &[b(2, "0xa", "0xb"), b(3, "0xb", "0xc")]));
        assert!(!links("0xa", &[b(2, "0xa", "0xb"), b(3, "0xx", "0xc")]));
        assert!(!links("0xz", &[b(2, "0xa", "0xb")]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_range_ending_at_the_last_block_number_ends_there() {
        use crate::upstream::fake::{self, Act};
        use serde_json::json;
        const TOP: u64 = u64::MAX;
        let hash = |n: u64| format!("0x{n:064x}");
        // A provider claiming blocks up to u64::MAX; anything else asked is an error.
        let node = fake::upstream("test", "node", "op-a", move |method, params| {
            let n = match method {
                "eth_getBlockByNumber" => params[0].as_str().and_then(parse_quantity),
                "eth_getBlockByHash" => (params[0] == json!(hash(TOP))).then_some(TOP),
                _ => None,
            };
            match n.filter(|&n| n >= TOP - 2) {
                Some(n) => Act::result(json!({"number": format!("{n:#x}"), "hash": hash(n),
                    "parentHash": hash(n - 1)})),
                None => Act::Error(-32000, format!("{method} {params}: not in the range")),
            }
        });
        let chain = crate::route::testing::chain("off", 1, &[&node]);
        let target = Consensus {
            number: TOP,
            hash: Arc::from(hash(TOP)),
            confirmed: true,
        };
        let fetched = fetch_range(&chain, TOP - 2, TOP, &target)
            .await
            .unwrap_or_else(|e| panic!("the range wrapped past u64::MAX: {e}"));
        let numbers: Vec<u64> = fetched.iter().map(|b| b.number).collect();
        assert_eq!(numbers, [TOP - 2, TOP - 1, TOP]);
    }
}
