//! What listens to upstreams on behalf of every client:
//!
//! - `push_heads`: an upstream with a `ws_url` pushes its new heads over one
//!   `newHeads` subscription; each is recorded as that upstream's head, exactly like
//!   a head poll, and the consensus head is recomputed. Polls go on regardless, so a
//!   push that stops costs only latency. Clients still get blocks only from the
//!   consensus (`follow`): a push is one vote, never a block sent on its own.
//! - `pending`: while anyone subscribes to `newPendingTransactions`, one source feeds
//!   the hub: an upstream's WebSocket subscription where one is configured, else a
//!   pending-transaction filter polled on one upstream. When the source fails, the
//!   next upstream takes over; hashes seen recently are not sent twice.
//!
//! Health belongs to the polls (`upstream::track`): these feeds never change it, and
//! dial only upstreams in rotation.

use std::{
    collections::{HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{
    Live,
    filter::PENDING,
    hub::{Event, Hub},
};
use crate::{
    config::UpstreamUrl,
    route::Chain,
    rpc::Call,
    upstream::{Answer, Upstream, UpstreamError},
};

/// First wait before dialing again after a failure; doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A head subscription silent for this long is dialed again.
const HEADS_IDLE: Duration = Duration::from_secs(60);
/// A pending subscription silent for this long is dialed again.
const PENDING_IDLE: Duration = Duration::from_secs(30);
/// How often a pending-transaction filter is polled.
const FILTER_POLL: Duration = Duration::from_millis(250);
/// Pending hashes remembered, so a switch of source sends none twice.
const RECENT_HASHES: usize = 20_000;

pub async fn push_heads(
    chain: Arc<Chain>,
    up: Arc<Upstream>,
    ws_url: UpstreamUrl,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        if !up.health.is_ready() {
            if sleep(&stop, FIRST_BACKOFF).await {
                return;
            }
            continue;
        }
        let dialed = tokio::select! {
            _ = stop.cancelled() => return,
            f = up.ws_subscribe(&ws_url, r#"["newHeads"]"#) => f,
        };
        let mut feed = match dialed {
            Ok(feed) => feed,
            Err(e) => {
                tracing::debug!(chain = %chain.name, upstream = %up.name, error = %e, "head subscription failed; polls go on");
                if sleep(&stop, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        tracing::debug!(chain = %chain.name, upstream = %up.name, "head subscription open");
        backoff = FIRST_BACKOFF;
        loop {
            let note = tokio::select! {
                _ = stop.cancelled() => return,
                n = feed.next(HEADS_IDLE, &ws_url) => n,
            };
            match note.map(|raw| header(&raw)) {
                Ok(Some((number, hash))) => {
                    up.head.record((number, hash), None, None, Instant::now());
                    chain.refresh_head();
                }
                Ok(None) => {
                    tracing::debug!(chain = %chain.name, upstream = %up.name, "a pushed head without number and hash");
                }
                Err(e) => {
                    tracing::debug!(chain = %chain.name, upstream = %up.name, error = %e, "head subscription ended");
                    break;
                }
            }
        }
    }
}

/// Sleeps `d`; true when told to stop meanwhile.
async fn sleep(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

fn header(raw: &[u8]) -> Option<(u64, String)> {
    #[derive(serde::Deserialize)]
    struct Header {
        number: String,
        hash: String,
    }
    let h: Header = serde_json::from_slice(raw).ok()?;
    let number = crate::rpc::quantity::parse(&h.number)?;
    Some((number, h.hash))
}

/// Transaction hashes sent lately.
struct Recent {
    order: VecDeque<Box<str>>,
    set: HashSet<Box<str>>,
}

impl Recent {
    fn new() -> Recent {
        Recent {
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    /// True the first time `hash` is seen (lately).
    fn first(&mut self, hash: &str) -> bool {
        let hash: Box<str> = hash.to_ascii_lowercase().into();
        if !self.set.insert(hash.clone()) {
            return false;
        }
        self.order.push_back(hash);
        if self.order.len() > RECENT_HASHES
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

pub async fn pending(
    chain: Arc<Chain>,
    live: Arc<Live>,
    ws_urls: Vec<(Arc<Upstream>, UpstreamUrl)>,
    stop: CancellationToken,
) {
    let hub = &live.hub;
    let mut wanted = hub.wanted();
    let mut recent = Recent::new();
    let mut turn: usize = 0;
    let mut backoff = FIRST_BACKOFF;
    loop {
        while !hub.wants(PENDING) {
            tokio::select! {
                _ = stop.cancelled() => return,
                changed = wanted.changed() => if changed.is_err() { return },
            }
        }
        let source = pick(&chain, &ws_urls, turn);
        let Some((up, ws_url)) = source else {
            if sleep(&stop, FIRST_BACKOFF).await {
                return;
            }
            continue;
        };
        let started = Instant::now();
        let run = async {
            match &ws_url {
                Some(url) => from_ws(&chain, hub, &up, url, &mut recent).await,
                None => from_filter(&chain, hub, &up, &mut recent).await,
            }
        };
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            e = run => e,
        };
        if let Err(e) = ended {
            turn = turn.wrapping_add(1);
            tracing::debug!(chain = %chain.name, upstream = %up.name, error = %e, "pending transactions: source failed; trying another");
            if started.elapsed() > MAX_BACKOFF {
                backoff = FIRST_BACKOFF;
            }
            if sleep(&stop, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// The next source in turn, among upstreams in rotation: their WebSocket
/// subscriptions first, then their filters (many providers offer neither, or one).
fn pick(
    chain: &Chain,
    ws_urls: &[(Arc<Upstream>, UpstreamUrl)],
    turn: usize,
) -> Option<(Arc<Upstream>, Option<UpstreamUrl>)> {
    let sources: Vec<(Arc<Upstream>, Option<UpstreamUrl>)> = ws_urls
        .iter()
        .filter(|(u, _)| u.health.is_ready())
        .map(|(u, url)| (u.clone(), Some(url.clone())))
        .chain(
            chain
                .upstreams()
                .iter()
                .filter(|u| u.health.is_ready())
                .map(|u| (u.clone(), None)),
        )
        .collect();
    if sources.is_empty() {
        return None;
    }
    // Starts at the first WebSocket, and moves on one source per failure.
    sources.get(turn % sources.len()).cloned()
}

/// Reads an upstream's `newPendingTransactions` until it fails or nobody listens.
async fn from_ws(
    chain: &Chain,
    hub: &Hub,
    up: &Upstream,
    ws_url: &UpstreamUrl,
    recent: &mut Recent,
) -> Result<(), UpstreamError> {
    let mut wanted = hub.wanted();
    let mut feed = up
        .ws_subscribe(ws_url, r#"["newPendingTransactions"]"#)
        .await?;
    tracing::debug!(chain = %chain.name, upstream = %up.name, "pending transactions: WebSocket subscription open");
    loop {
        let note = tokio::select! {
            n = feed.next(PENDING_IDLE, ws_url) => n,
            _ = wanted.changed() => {
                if hub.wants(PENDING) { continue }
                return Ok(());
            }
        };
        match note {
            Ok(raw) => publish(hub, &raw, recent),
            // Quiet is normal on a quiet chain: dial again, without counting a failure.
            Err(UpstreamError::Timeout(_)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Polls a pending-transaction filter on `up` until it fails or nobody listens.
async fn from_filter(
    chain: &Chain,
    hub: &Hub,
    up: &Upstream,
    recent: &mut Recent,
) -> Result<(), UpstreamError> {
    let created = ask(up, "eth_newPendingTransactionFilter", None).await?;
    let id: Box<RawValue> =
        RawValue::from_string(format!("[{}]", String::from_utf8_lossy(&created)))
            .map_err(|e| UpstreamError::Malformed(format!("filter id: {e}")))?;
    tracing::debug!(chain = %chain.name, upstream = %up.name, "pending transactions: polling a filter");
    while hub.wants(PENDING) {
        let changes = ask(up, "eth_getFilterChanges", Some(&id)).await?;
        let hashes: Vec<&RawValue> = serde_json::from_slice(&changes)
            .map_err(|e| UpstreamError::Malformed(format!("filter changes: {e}")))?;
        for h in hashes {
            publish(hub, h.get().as_bytes(), recent);
        }
        tokio::time::sleep(FILTER_POLL).await;
    }
    let _ = ask(up, "eth_uninstallFilter", Some(&id)).await;
    Ok(())
}

/// One call to `up` itself (filters live on one node), its raw result.
async fn ask(
    up: &Upstream,
    method: &str,
    params: Option<&RawValue>,
) -> Result<Bytes, UpstreamError> {
    let call = Call {
        id: None,
        method: method.into(),
        params,
    };
    match up.send(&[&call]).await?.pop().flatten() {
        Some(Answer::Result(raw)) => Ok(raw),
        Some(Answer::Error { code, message, .. }) => Err(UpstreamError::Malformed(format!(
            "{method}: error {code}: {message}"
        ))),
        None => Err(UpstreamError::Malformed(format!("{method}: no answer"))),
    }
}

fn publish(hub: &Hub, raw: &[u8], recent: &mut Recent) {
    let Ok(hash) = serde_json::from_slice::<&str>(raw) else {
        return; // a full transaction object or garbage: not what was asked for
    };
    if recent.first(hash) {
        hub.publish(Event::Pending {
            hash: Bytes::copy_from_slice(raw),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_sent_once_whatever_its_case() {
        let mut r = Recent::new();
        assert!(r.first("0xAB"));
        assert!(!r.first("0xab"));
        assert!(r.first("0xcd"));
    }

    #[test]
    fn pushed_heads_are_read_for_number_and_hash() {
        assert_eq!(
            header(br#"{"number":"0x1f","hash":"0xaa","parentHash":"0x0"}"#),
            Some((31, "0xaa".to_owned()))
        );
        assert_eq!(header(br#"{"number":"31","hash":"0xaa"}"#), None);
    }
}
