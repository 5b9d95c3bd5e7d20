//! JSON-RPC over WebSocket on `GET /{chain}` (and `GET /` with one chain). Every call
//! goes through `dispatch` exactly as over HTTP (same routing, errors and limits);
//! `eth_subscribe` / `eth_unsubscribe` are answered here from the chain's subscription
//! hub (`subscribe`), whose events this session renders for its subscriptions.
//!
//! One task per connection reads calls, writes replies and events, and pings. Limits,
//! each with a clean close code: a message over `max_frame_bytes` closes with 1009;
//! `max_subscriptions` per connection (the call beyond gets -32005); at most
//! `MAX_IN_FLIGHT` calls at once (reading pauses meanwhile); a client whose queue of
//! `ws_client_buffer` events is full is told and closed with 1008; one that answers no
//! ping for two `ws_ping_secs` is closed with 1011; shutdown closes with 1001.
//! Never blocks the hub: events reach it through a bounded queue.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Extension,
    extract::{
        Path, State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use futures_util::SinkExt;
use serde_json::value::RawValue;
use tokio::task::JoinSet;

use super::{http::json, listen::ClientAddr};
use crate::{
    auth::Caller,
    dispatch,
    gateway::Gateway,
    route::Chain,
    rpc::{self, Call, ReplyBody, Request, RpcError, parse::Shape, respond::whole_request_error},
    subscribe::{
        Live,
        filter::{self, Kind},
        filters::Owner,
        hub::{Event, Published},
    },
};

/// Calls of one connection being answered at once; beyond, its messages wait unread.
const MAX_IN_FLIGHT: usize = 64;
/// How long one write may take before the client counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the close frame may take to leave.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Initial read buffer per connection (tungstenite's default is 128 KiB: 1,000
/// subscribers would hold 128 MB of it). It grows for a large message.
const READ_BUFFER: usize = 4 * 1024;
/// Writes are flushed after each burst, so no write buffering is needed.
const WRITE_BUFFER: usize = 0;

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

pub async fn upgrade_chain(
    State(gw): State<Arc<Gateway>>,
    Path(chain): Path<String>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    upgrade(gw, Some(&chain), None, client, &headers, ws)
}

/// `GET /{chain}/{key}` with an upgrade: browsers cannot set headers on a WebSocket.
pub async fn upgrade_chain_key(
    State(gw): State<Arc<Gateway>>,
    Path((chain, key)): Path<(String, String)>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    upgrade(gw, Some(&chain), Some(&key), client, &headers, ws)
}

pub async fn upgrade_root(
    State(gw): State<Arc<Gateway>>,
    client: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    ws: Upgrade,
) -> Response {
    upgrade(gw, None, None, client, &headers, ws)
}

fn upgrade(
    gw: Arc<Gateway>,
    path: Option<&str>,
    key: Option<&str>,
    client: Option<Extension<ClientAddr>>,
    headers: &HeaderMap,
    ws: Upgrade,
) -> Response {
    let Some(chain) = gw.chain(path).cloned() else {
        let available = gw
            .chains
            .iter()
            .map(|c| (c.name.to_string(), c.chain_id))
            .collect();
        let error = match path {
            Some(p) => RpcError::UnknownChain {
                requested: p.to_owned(),
                available,
            },
            None => RpcError::ChainRequired { available },
        };
        return json(StatusCode::NOT_FOUND, whole_request_error(&error));
    };
    // The key is checked once, at the handshake; every message is charged to it.
    let address = super::http::address(client);
    let caller = match gw
        .access()
        .identify(key, headers, address)
        .and_then(|c| c.may_use(&chain.name).map(|()| c))
    {
        Ok(c) => c,
        Err(r) => return super::http::refused(&r),
    };
    let owner = Owner::of(&caller, address);
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => {
            let e = RpcError::InvalidRequest(format!(
                "{rejection}: POST JSON-RPC to this path, or GET it with a WebSocket upgrade"
            ));
            return json(StatusCode::UPGRADE_REQUIRED, whole_request_error(&e));
        }
    };
    // A token keeps the hub's tracker open until the session ends, so shutdown can
    // wait for close frames; after shutdown began, new connections are turned away.
    let live = gw.live(&chain).clone();
    if live.hub.closing().is_cancelled() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let token = live.hub.sessions.token();
    let max = gw.limits().max_frame_bytes;
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let _token = token;
            Session::new(gw, chain, live, caller, owner)
                .run(socket)
                .await;
        })
}

/// One subscription of this connection.
struct Sub {
    /// The id as a JSON string, quotes included.
    id: String,
    kind: Kind,
    /// Events with a lower sequence number predate it.
    since: u64,
    /// Its subscription epoch: block logs fetched for an older one may lack its logs.
    epoch: u64,
}

struct Session {
    gw: Arc<Gateway>,
    chain: Arc<Chain>,
    /// The chain's subscription hub (`subscribe::Live`).
    live: Arc<Live>,
    subs: Vec<Sub>,
    /// Who opened it (`auth`): each message is charged to it, its methods checked.
    caller: Caller,
    /// Whom the HTTP filters it makes count against (its key, else its address).
    owner: Owner,
}

/// Why a session ends, and what the client is told.
enum End {
    /// The client closed or the connection dropped: nothing more to send.
    Gone,
    Close(u16, String),
}

impl Session {
    fn new(
        gw: Arc<Gateway>,
        chain: Arc<Chain>,
        live: Arc<Live>,
        caller: Caller,
        owner: Owner,
    ) -> Session {
        Session {
            gw,
            chain,
            live,
            subs: Vec::new(),
            caller,
            owner,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let (chain, live) = (self.chain.clone(), self.live.clone());
        let hub = &live.hub;
        let mut client = hub.join();
        let buffer = self.gw.limits().ws_client_buffer;
        let ping_every = Duration::from_secs(self.gw.limits().ws_ping_secs.max(1));
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pong = Instant::now();
        let mut calls: JoinSet<Answered> = JoinSet::new();
        let mut out: Vec<Message> = Vec::new();
        // Events received, rendered only as they are written (`write`).
        let mut events: Vec<Arc<Published>> = Vec::new();
        let end = loop {
            let kicked = client.kicked.clone();
            tokio::select! {
                biased;
                _ = hub.closing().cancelled() => {
                    break End::Close(close_code::AWAY, "Outlast is shutting down; reconnect".into());
                }
                _ = kicked.cancelled() => break cut_off(buffer),
                Some(done) = calls.join_next() => {
                    if let Ok((reply, created)) = done {
                        if let Some(reply) = reply {
                            out.push(text(reply));
                        }
                        // Written before any event rendered from now on.
                        self.activate(&created, &client);
                    }
                }
                event = client.events.recv() => {
                    // The hub drops a client's queue only when it cuts the client off.
                    let Some(event) = event else {
                        break cut_off(buffer);
                    };
                    events.push(event);
                    // Whatever else is queued goes out in the same flush.
                    while events.len() < 256 && let Ok(event) = client.events.try_recv() {
                        events.push(event);
                    }
                }
                msg = socket.recv(), if calls.len() < MAX_IN_FLIGHT => match msg {
                    None | Some(Ok(Message::Close(_))) => break End::Gone,
                    Some(Err(e)) => break read_error(e, self.gw.limits().max_frame_bytes),
                    Some(Ok(msg)) => {
                        // Anything from the client shows it is alive, not only a pong.
                        last_pong = Instant::now();
                        // A call or batch, with its shape: taken once, to charge it and to
                        // parse it. tungstenite answers pings; pongs only count as life.
                        let limits = self.gw.limits();
                        let body = match &msg {
                            Message::Text(t) => Some(t.as_bytes()),
                            Message::Binary(b) => Some(&b[..]),
                            _ => None,
                        }
                        .map(|b| (b, Shape::of(b, limits.max_depth)));
                        let charged = match body {
                            Some((_, shape)) => {
                                let n = super::http::charged(&limits, shape);
                                self.gw.access().charge(&self.caller, n).await
                            }
                            None => Ok(()),
                        };
                        match (body, charged) {
                            // Over its budget: told, with no id (the message is unread).
                            (Some(_), Err(r)) => out.push(text(whole_request_error(&r.rpc_error()))),
                            (Some(body), Ok(())) => self.call(body, &client, &mut calls, &mut out),
                            (None, _) => {}
                        }
                    }
                },
                _ = ping.tick() => {
                    if last_pong.elapsed() > ping_every * 2 {
                        crate::metrics::limit_exceeded("ws_ping");
                        break End::Close(close_code::ERROR, format!(
                            "no pong for {} s; reconnect", last_pong.elapsed().as_secs()
                        ));
                    }
                    out.push(Message::Ping(bytes::Bytes::new()));
                }
            }
            if !out.is_empty() || !events.is_empty() {
                let written = write(&mut socket, &mut out, &events, &self.subs, &client.kicked);
                let written = written.await;
                events.clear();
                if let Err(end) = written {
                    break end;
                }
            }
        };
        calls.abort_all();
        drop(client);
        if let End::Close(code, reason) = end {
            tracing::debug!(chain = %chain.name, code, %reason, "closing a WebSocket");
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from(truncate(reason, 123)),
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                let _ = socket.send(Message::Close(Some(frame))).await;
                // Wait for the client's close (or anything) so the frame is not lost to an RST.
                let _ = socket.recv().await;
            })
            .await;
        }
    }

    /// One message from the client: a call or batch. Subscriptions are answered here,
    /// everything else is dispatched on its own task; replies join `out` or `calls`.
    fn call(
        &mut self,
        (body, shape): (&[u8], Shape),
        client: &crate::subscribe::hub::Client<'_>,
        calls: &mut JoinSet<Answered>,
        out: &mut Vec<Message>,
    ) {
        if !mentions_subscriptions(body) {
            let (gw, chain, body) = (self.gw.clone(), self.chain.clone(), body.to_vec());
            let (caller, owner) = (self.caller.clone(), self.owner.clone());
            let traced = crate::telemetry::Request::websocket(&chain.name, caller.label());
            calls.spawn(traced.run(async move {
                let body = (&body[..], shape);
                let reply = dispatch::handle_as(&gw, &chain, body, caller.methods(), &owner).await;
                (reply.body, Vec::new())
            }));
            return;
        }
        let request = match rpc::parse::parse_shaped(body, shape, self.gw.parse_limits()) {
            Ok(r) => r,
            Err(e) => {
                out.push(text(whole_request_error(&e)));
                return;
            }
        };
        let (batch, entries) = match request {
            Request::Single(e) => (false, vec![e]),
            Request::Batch(es) => (true, es),
        };
        // Answered here only: the reply is written at once, so a subscription starts now.
        // With calls to dispatch, its reply comes later, and so does the start of the
        // subscriptions it makes: the id always reaches the client before the events.
        let now = !entries
            .iter()
            .any(|e| matches!(e, Ok(c) if !is_subscription(&c.method)));
        let mut created = Vec::new();
        // Each entry's reply as one JSON object, in order; dispatched ones later.
        let mut parts: Vec<Part> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            parts.push(match entry {
                Err(rejected) => match rejected.id {
                    Some(id) => Part::Ready(single(id, Err(&rejected.error))),
                    None => Part::Nothing,
                },
                Ok(call) if is_subscription(&call.method) => {
                    let answer = self.subscription(&call, client);
                    if let (Ok(id), "eth_subscribe") = (&answer, call.method.as_ref()) {
                        created.push(id.clone());
                    }
                    match call.id {
                        Some(id) => Part::Ready(single(id, answer.as_deref())),
                        None => Part::Nothing,
                    }
                }
                Ok(_) => Part::Dispatch(i),
            });
        }
        if now {
            let objects = parts
                .into_iter()
                .filter_map(|p| match p {
                    Part::Ready(o) => Some(o),
                    _ => None,
                })
                .collect();
            if let Some(reply) = join(batch, objects) {
                out.push(text(reply));
            }
            self.activate(&created, client);
            return;
        }
        let (gw, chain, body) = (self.gw.clone(), self.chain.clone(), body.to_vec());
        let (caller, owner) = (self.caller.clone(), self.owner.clone());
        let reply = async move {
            // The task owns the message, so its calls are read from it again here (the
            // parse above could not be sent along) and handed to dispatch as parsed.
            let mut entries: Vec<_> =
                match rpc::parse::parse_shaped(&body, shape, gw.parse_limits()) {
                    Ok(Request::Single(e)) => vec![Some(e)],
                    Ok(Request::Batch(es)) => es.into_iter().map(Some).collect(),
                    Err(e) => return (Some(whole_request_error(&e)), Vec::new()),
                };
            let mut objects = Vec::with_capacity(parts.len());
            for part in parts {
                match part {
                    Part::Ready(o) => objects.push(o),
                    Part::Nothing => {}
                    Part::Dispatch(i) => {
                        let Some(entry) = entries.get_mut(i).and_then(Option::take) else {
                            continue;
                        };
                        let reply = dispatch::handle_entries(
                            &gw,
                            &chain,
                            false,
                            vec![entry],
                            caller.methods(),
                            &owner,
                        )
                        .await;
                        if let Some(o) = reply.body {
                            objects.push(o);
                        }
                    }
                }
            }
            (join(batch, objects), created)
        };
        let traced = crate::telemetry::Request::websocket(&self.chain.name, self.caller.label());
        calls.spawn(traced.run(reply));
    }

    /// `eth_subscribe` / `eth_unsubscribe`: the result's raw JSON, or the error. A new
    /// subscription hears nothing until `activate`d.
    fn subscription(
        &mut self,
        call: &Call<'_>,
        client: &crate::subscribe::hub::Client<'_>,
    ) -> Result<String, RpcError> {
        if let Some(refused) = dispatch::refusal(&self.gw, &call.method, self.caller.methods()) {
            return Err(refused);
        }
        let hub = &self.live.hub;
        if call.method == "eth_unsubscribe" {
            let id = unsubscribe_id(call.params)?;
            let before = self.subs.len();
            self.subs.retain(|s| !s.id.eq_ignore_ascii_case(&id));
            if self.subs.len() != before {
                hub.set_subscriptions(client.id, self.kinds(), self.log_addresses());
            }
            return Ok((self.subs.len() != before).to_string());
        }
        let kind = filter::kind(call.params).map_err(|e| RpcError::InvalidParams(e.0))?;
        let max = self.gw.limits().max_subscriptions;
        if self.subs.len() >= max {
            crate::metrics::limit_exceeded("ws_subscriptions");
            return Err(RpcError::LimitExceeded(format!(
                "this connection has {max} subscriptions ([limits] max_subscriptions); unsubscribe one or open another connection"
            )));
        }
        let id = format!("\"{}\"", new_id());
        self.subs.push(Sub {
            id: id.clone(),
            kind,
            since: u64::MAX,
            epoch: u64::MAX,
        });
        Ok(id)
    }

    /// Starts the subscriptions `ids` (those still there): events from now on.
    fn activate(&mut self, ids: &[String], client: &crate::subscribe::hub::Client<'_>) {
        if ids.is_empty() {
            return;
        }
        let hub = &self.live.hub;
        let (since, epoch) = hub.set_subscriptions(client.id, self.kinds(), self.log_addresses());
        for sub in self.subs.iter_mut().filter(|s| ids.contains(&s.id)) {
            (sub.since, sub.epoch) = (since, epoch);
        }
    }

    fn kinds(&self) -> u8 {
        self.subs.iter().fold(0, |acc, s| acc | s.kind.bit())
    }

    /// The addresses the logs subscriptions name; `None` when one names none.
    fn log_addresses(&self) -> Option<Vec<String>> {
        let mut all = Vec::new();
        for sub in &self.subs {
            if let Kind::Logs(f) = &sub.kind {
                if f.addresses.is_empty() {
                    return None;
                }
                all.extend(f.addresses.iter().cloned());
            }
        }
        Some(all)
    }
}

/// The notifications `published` makes for subscription `sub`.
fn render(sub: &Sub, published: &Published, out: &mut Vec<Message>) {
    if published.seq < sub.since {
        return;
    }
    match (&published.event, &sub.kind) {
        (Event::Block { header, .. }, Kind::NewHeads) => {
            out.push(notification(&sub.id, header));
        }
        (
            Event::Block {
                logs: Some(logs),
                logs_as_of,
                ..
            },
            Kind::Logs(f),
        ) if sub.epoch <= *logs_as_of => {
            for log in logs.iter().filter(|l| f.matches(&l.address, &l.topics)) {
                out.push(notification(&sub.id, &log.raw));
            }
        }
        (Event::Removed { of, logs }, Kind::Logs(f)) if sub.epoch <= *of => {
            for log in logs.iter().filter(|l| f.matches(&l.address, &l.topics)) {
                out.push(notification(&sub.id, &log.raw));
            }
        }
        (Event::Pending { hash }, Kind::NewPendingTransactions) => {
            out.push(notification(&sub.id, hash));
        }
        _ => {}
    }
}

/// A finished message: its reply (none for notifications only), and the subscriptions
/// it created, which start once the reply is written.
type Answered = (Option<Vec<u8>>, Vec<String>);

/// A reply to assemble: ready now, from `dispatch` later, or none (a notification).
enum Part {
    Ready(Vec<u8>),
    /// The call at this position of the message, for dispatch.
    Dispatch(usize),
    Nothing,
}

/// Writes `out` (emptying it), then the notifications `events` make for `subs`, flushed
/// once; gives up when the client is cut off or a write stalls. Notifications are
/// rendered one subscription's at a time, as they are written: a connection's many
/// subscriptions to every log of a large block would otherwise hold all their copies
/// at once (100 of them, up to ~100 MB for a mainnet block).
async fn write(
    socket: &mut WebSocket,
    out: &mut Vec<Message>,
    events: &[Arc<Published>],
    subs: &[Sub],
    kicked: &tokio_util::sync::CancellationToken,
) -> Result<(), End> {
    let burst = async {
        for msg in out.drain(..) {
            socket.feed(msg).await?;
        }
        for event in events {
            for sub in subs {
                render(sub, event, out);
                for msg in out.drain(..) {
                    socket.feed(msg).await?;
                }
            }
        }
        socket.flush().await
    };
    tokio::select! {
        r = tokio::time::timeout(WRITE_TIMEOUT, burst) => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                crate::metrics::limit_exceeded("ws_write_timeout");
                Err(End::Close(close_code::POLICY, format!(
                    "too slow: a write took over {} s", WRITE_TIMEOUT.as_secs()
                )))
            }
        },
        // The close reason is sent by the caller, which sees the token too.
        _ = kicked.cancelled() => Ok(()),
    }
}

/// The end of a client whose queue of `buffer` events filled: it reads too slowly.
fn cut_off(buffer: usize) -> End {
    crate::metrics::limit_exceeded("ws_client_buffer");
    End::Close(
        close_code::POLICY,
        format!("too slow: over {buffer} events waited for you; reconnect and resubscribe"),
    )
}

fn read_error(e: axum::Error, max: usize) -> End {
    let too_big = e
        .into_inner()
        .downcast_ref::<tokio_tungstenite::tungstenite::Error>()
        .is_some_and(|e| matches!(e, tokio_tungstenite::tungstenite::Error::Capacity(_)));
    if too_big {
        crate::metrics::limit_exceeded("ws_frame");
        End::Close(
            close_code::SIZE,
            format!("message over {max} bytes ([limits] max_frame_bytes)"),
        )
    } else {
        End::Gone
    }
}

fn text(body: Vec<u8>) -> Message {
    // Replies are built from JSON that was parsed as UTF-8; lossy only as a fallback.
    match String::from_utf8(body) {
        Ok(s) => Message::Text(Utf8Bytes::from(s)),
        Err(e) => Message::Text(Utf8Bytes::from(
            String::from_utf8_lossy(e.as_bytes()).into_owned(),
        )),
    }
}

fn notification(id: &str, result: &[u8]) -> Message {
    let result = std::str::from_utf8(result).unwrap_or("null");
    let mut s = String::with_capacity(90 + id.len() + result.len());
    s.push_str(r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"#);
    s.push_str(id);
    s.push_str(r#","result":"#);
    s.push_str(result);
    s.push_str("}}");
    Message::Text(Utf8Bytes::from(s))
}

fn is_subscription(method: &str) -> bool {
    matches!(method, "eth_subscribe" | "eth_unsubscribe")
}

/// Cheap pre-check: only messages naming these methods are parsed here.
fn mentions_subscriptions(body: &[u8]) -> bool {
    body.windows(b"subscribe".len()).any(|w| w == b"subscribe")
}

/// One reply object for `id`: a raw result, or an error.
fn single(id: &RawValue, answer: Result<&str, &RpcError>) -> Vec<u8> {
    let mut body = ReplyBody::new(false, 128);
    match answer {
        Ok(result) => body.result(id, result.as_bytes()),
        Err(e) => body.error(id, e),
    }
    // One member was written, so there is a body.
    body.finish().unwrap_or_default()
}

/// Reply objects as the request was shaped: one object, or an array.
fn join(batch: bool, objects: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    if objects.is_empty() {
        return None;
    }
    if !batch {
        return objects.into_iter().next();
    }
    let mut out = Vec::with_capacity(objects.iter().map(|o| o.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(o);
    }
    out.push(b']');
    Some(out)
}

fn unsubscribe_id(params: Option<&RawValue>) -> Result<String, RpcError> {
    params
        .and_then(|p| serde_json::from_str::<(String,)>(p.get()).ok())
        .map(|(id,)| format!("\"{id}\""))
        .ok_or_else(|| RpcError::InvalidParams("eth_unsubscribe takes [subscription id]".into()))
}

/// A subscription id: 0x and 32 hex digits, unpredictable and unique in this process.
fn new_id() -> String {
    use std::hash::BuildHasher;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let state = std::collections::hash_map::RandomState::new();
    format!("0x{:016x}{:016x}", state.hash_one(n), state.hash_one(!n))
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_replies_are_joined_in_order() {
        assert_eq!(
            join(true, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]),
            Some(b"[{\"a\":1},{\"b\":2}]".to_vec())
        );
        assert_eq!(join(true, vec![]), None);
        assert_eq!(join(false, vec![b"{}".to_vec()]), Some(b"{}".to_vec()));
    }

    #[test]
    fn subscription_ids_are_distinct_hex() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 34);
        assert!(a[2..].bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
