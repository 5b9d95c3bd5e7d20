//! A fault-injecting TCP proxy for chaos tests.
//!
//! `FaultProxy::start(node_url)` listens on 127.0.0.1:0 and relays every connection to
//! one target (an Anvil node), applying the *current* [`Fault`]. A test changes it at
//! any time with [`FaultProxy::set`]; the change reaches new connections and the ones
//! already open (Outlast pools its connections), as each fault's doc says.
//!
//! ```ignore
//! let proxy = FaultProxy::start(fleet.url(0)).await;
//! let outlast = Outlast::start(&config(&[proxy.url()], FAST_ROUTING)).await;
//! proxy.set(Fault::Blackhole);
//! // … the upstream hangs; assert that Outlast fails over …
//! assert_eq!(proxy.forwarded(), 1);
//! ```
//!
//! How it relays: each client connection gets its own upstream connection, opened when
//! the first byte has to go upstream and closed with it. While the client speaks
//! HTTP/1.1, the proxy reads one whole request at a time — the head up to the blank
//! line, then `Content-Length` bytes of body — and handles it under the fault current
//! at that moment: answer it itself, swallow it, or forward it and read one whole
//! response back the same way (HTTP clients do not pipeline: one request, then its
//! response). A WebSocket upgrade (after the upstream's `101`), a chunked body, a
//! response without `Content-Length`, or bytes that are not HTTP turn the connection
//! into a plain byte relay for the rest of its life; there, only `Latency`,
//! `Blackhole`, `SlowBody`, `Refuse` and `Reset` apply, to each chunk read.
//!
//! It counts what it reads: connections, requests, requests forwarded, and per JSON-RPC
//! method (of a single call or any call of a batch) the requests read and the most of
//! them open at once ([`FaultProxy::requests_of`], [`FaultProxy::peak_in_flight`]), so a
//! test can tell its client calls from Outlast's own head polls and probes.
//!
//! What it never does: TLS, HTTP/2, pipelining, HEAD requests, `Expect: 100-continue`;
//! change a byte it relays (headers included; `SwapReplies` sends whole responses to
//! the wrong request, each unchanged); time anything out itself (clients do);
//! reconnect a client connection whose upstream closed (the client's closes too, as it
//! would direct; an upstream it cannot connect to resets the client's connection); talk to anything but its one 127.0.0.1 target; panic on a peer's
//! I/O error (an error ends that one connection). Dropping the `FaultProxy` aborts its
//! listener and every connection, so nothing leaks between tests.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// How the proxy misbehaves. "Answers" means the proxy writes an HTTP response itself
/// and never forwards the request; the connection stays open (keep-alive).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Relay every byte unchanged.
    #[default]
    None,
    /// Hold each request and each response (each chunk, once relaying raw bytes) this
    /// long before passing it on: a far region. A kept-alive call takes twice this.
    Latency(Duration),
    /// Accept and read everything, never answer, never close. A response already on
    /// its way from the upstream is swallowed too: open connections stall as well.
    Blackhole,
    /// Like a dead node: accept new connections and close them at once, and close
    /// the open ones (a FIN; the kernel sends an RST instead when a request is
    /// already waiting unread). A true ECONNREFUSED needs `Fleet::kill`.
    Refuse,
    /// `Refuse`, but every close is an RST (`SO_LINGER` 0): "connection reset by peer".
    Reset,
    /// Answer every HTTP request with this status and body (e.g. a 502/503 burst).
    /// The content type is `application/json` when the body starts with `{` or `[`,
    /// else `text/html`.
    Http(u16, String),
    /// Answer every HTTP request with `429 Too Many Requests` and `Retry-After`.
    RateLimit { retry_after_secs: u64 },
    /// Answer every HTTP request with `200 OK`, `application/json`, and a complete
    /// body that is not JSON ([`GARBAGE_BODY`]).
    Garbage,
    /// Forward the request, then send the head of the upstream's response and only
    /// the first half of its body, and close the connection.
    Truncate,
    /// Forward the request, send the response head at once, then drip the body a few
    /// bytes ([`DRIP_BYTES`]) at a time, spread over this duration.
    SlowBody(Duration),
    /// Forward the request, but answer it with the response to the request forwarded
    /// before it (on any connection; the very first gets its own), keeping this one's
    /// for the next: a provider or load balancer that mixes up its answers. Every
    /// answer is well-formed JSON-RPC — carrying another call's id.
    SwapReplies,
}

/// The body `Fault::Garbage` answers with.
pub const GARBAGE_BODY: &str = "<html>this is not JSON</html>";
/// Bytes per write under `Fault::SlowBody`.
pub const DRIP_BYTES: usize = 4;
/// A request or response head longer than this is not HTTP as far as the proxy goes.
const MAX_HEAD: usize = 64 * 1024;

/// A running proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    target: SocketAddr,
    fault: watch::Sender<Fault>,
    connections: AtomicUsize,
    requests: AtomicUsize,
    forwarded: AtomicUsize,
    methods: Mutex<HashMap<String, MethodCount>>,
    /// The last response read from the upstream (head and body), for `SwapReplies`.
    last_response: Mutex<Option<Vec<u8>>>,
}

/// Requests read for one JSON-RPC method: in all, open now, and at most open at once.
#[derive(Clone, Copy, Debug, Default)]
struct MethodCount {
    requests: usize,
    open: usize,
    peak: usize,
}

/// One request counted open for its methods until dropped.
struct Open<'a> {
    shared: &'a Shared,
    methods: Vec<String>,
}

impl<'a> Open<'a> {
    fn new(shared: &'a Shared, body: &[u8]) -> Open<'a> {
        let methods = methods_of(body);
        let mut counts = shared.methods.lock().unwrap_or_else(|p| p.into_inner());
        for m in &methods {
            let c = counts.entry(m.clone()).or_default();
            c.requests += 1;
            c.open += 1;
            c.peak = c.peak.max(c.open);
        }
        Open { shared, methods }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        let mut counts = self
            .shared
            .methods
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for m in &self.methods {
            if let Some(c) = counts.get_mut(m) {
                c.open -= 1;
            }
        }
    }
}

/// The distinct JSON-RPC methods of a request body (one call or a batch); none when
/// it is not JSON-RPC.
fn methods_of(body: &[u8]) -> Vec<String> {
    let calls = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Array(calls)) => calls,
        Ok(call) => vec![call],
        Err(_) => return Vec::new(),
    };
    let mut methods: Vec<String> = calls
        .iter()
        .filter_map(|c| c.get("method")?.as_str().map(str::to_owned))
        .collect();
    methods.sort();
    methods.dedup();
    methods
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1:0 in front of `target` ("http://127.0.0.1:P",
    /// "ws://127.0.0.1:P/…" or "127.0.0.1:P"), relaying with `Fault::None`.
    pub async fn start(target: impl Into<String>) -> FaultProxy {
        let target = target.into();
        let hostport = target
            .split_once("://")
            .map_or(target.as_str(), |(_, rest)| rest);
        let hostport = hostport.split('/').next().unwrap_or(hostport);
        let target_addr: SocketAddr = hostport
            .parse()
            .unwrap_or_else(|e| panic!("fault proxy target {target:?}: {e} (want 127.0.0.1:P)"));
        assert!(
            target_addr.ip().is_loopback(),
            "fault proxy target {target:?} is not on 127.0.0.1"
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the fault proxy");
        let addr = listener.local_addr().expect("local_addr of a bound socket");
        let shared = Arc::new(Shared {
            target: target_addr,
            fault: watch::Sender::new(Fault::None),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            forwarded: AtomicUsize::new(0),
            methods: Mutex::new(HashMap::new()),
            last_response: Mutex::new(None),
        });
        let accept = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        FaultProxy {
            addr,
            shared,
            accept,
        }
    }

    /// "http://127.0.0.1:PORT", to put in a config instead of the node's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// "ws://127.0.0.1:PORT".
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Makes `fault` the current fault, for new and open connections alike.
    pub fn set(&self, fault: Fault) {
        self.shared.fault.send_replace(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        self.shared.fault.borrow().clone()
    }

    /// TCP connections accepted so far (refused ones included).
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests read so far, whatever became of them (not counted: bytes relayed
    /// raw, such as WebSocket frames).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// HTTP requests written to the upstream so far: the calls that reached the node.
    pub fn forwarded(&self) -> usize {
        self.shared.forwarded.load(Ordering::SeqCst)
    }

    /// HTTP requests read so far with a call of `method` (alone or in a batch), whatever
    /// became of them: Outlast's client calls apart from its `eth_chainId` probes and
    /// `eth_getBlockByNumber` head polls.
    pub fn requests_of(&self, method: &str) -> usize {
        self.count(method).requests
    }

    /// The most requests with a call of `method` open at once: read and not yet
    /// answered (or swallowed, or failed).
    pub fn peak_in_flight(&self, method: &str) -> usize {
        self.count(method).peak
    }

    fn count(&self, method: &str) -> MethodCount {
        let counts = self
            .shared
            .methods
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        counts.get(method).copied().unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks: dropping it aborts them.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            // E.g. out of file descriptors: wait instead of spinning.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let fault = shared.fault.borrow().clone();
        match fault {
            Fault::Refuse => drop(client),
            Fault::Reset => reset(client),
            _ => {
                connections.spawn(connection(client, Arc::clone(&shared)));
            }
        }
    }
}

/// Closes `stream` with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

/// How a connection ends.
enum End {
    Close,
    Reset,
}

async fn connection(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let rx = shared.fault.subscribe();
    let mut upstream = None;
    let end = tokio::select! {
        end = converse(&mut client, &mut upstream, &shared, &rx) => end.unwrap_or(End::Close),
        end = refused(rx.clone()) => end,
    };
    if let End::Reset = end {
        reset(client);
    }
}

/// Resolves when the fault becomes `Refuse` or `Reset`, whatever the connection is doing.
async fn refused(mut rx: watch::Receiver<Fault>) -> End {
    loop {
        match *rx.borrow_and_update() {
            Fault::Refuse => return End::Close,
            Fault::Reset => return End::Reset,
            _ => {}
        }
        if rx.changed().await.is_err() {
            // The proxy is being dropped, which aborts this task anyway.
            std::future::pending::<()>().await;
        }
    }
}

fn current(rx: &watch::Receiver<Fault>) -> Fault {
    rx.borrow().clone()
}

/// The HTTP conversation on one client connection, request by request.
async fn converse(
    client: &mut TcpStream,
    upstream: &mut Option<TcpStream>,
    shared: &Shared,
    rx: &watch::Receiver<Fault>,
) -> io::Result<End> {
    let mut from_client = Vec::new(); // bytes read from the client, not yet handled
    let mut from_upstream = Vec::new(); // bytes read from the upstream, not yet handled
    loop {
        // Between calls, an upstream that closes (or speaks unasked) ends the connection.
        let next = tokio::select! {
            next = next_message(client, &mut from_client, false) => next?,
            () = upstream_speaks(upstream.as_ref()) => return Ok(End::Close),
        };
        let request = match next {
            Next::Eof => return Ok(End::Close),
            Next::Unframed => {
                let Some(up) = connect(upstream, shared.target).await else {
                    return Ok(End::Reset);
                };
                return relay_raw(client, up, &from_client, &from_upstream, rx).await;
            }
            Next::Message(m) => m,
        };
        shared.requests.fetch_add(1, Ordering::SeqCst);
        let request_bytes: Vec<u8> = from_client.drain(..request.len).collect();
        let _open = Open::new(shared, &request_bytes[request.head_len..]);

        match current(rx) {
            Fault::Blackhole => continue,
            Fault::Http(status, body) => {
                let kind = if body.starts_with(['{', '[']) {
                    "application/json"
                } else {
                    "text/html"
                };
                client.write_all(&answer(status, kind, "", &body)).await?;
                continue;
            }
            Fault::RateLimit { retry_after_secs } => {
                let retry = format!("retry-after: {retry_after_secs}\r\n");
                let body = "Too Many Requests";
                client
                    .write_all(&answer(429, "text/plain", &retry, body))
                    .await?;
                continue;
            }
            Fault::Garbage => {
                let reply = answer(200, "application/json", "", GARBAGE_BODY);
                client.write_all(&reply).await?;
                continue;
            }
            Fault::Latency(d) => tokio::time::sleep(d).await,
            Fault::None | Fault::Truncate | Fault::SlowBody(_) | Fault::SwapReplies => {}
            Fault::Refuse | Fault::Reset => {} // `refused` ends the connection
        }

        let Some(up) = connect(upstream, shared.target).await else {
            return Ok(End::Reset);
        };
        up.write_all(&request_bytes).await?;
        shared.forwarded.fetch_add(1, Ordering::SeqCst);
        let response = match next_message(up, &mut from_upstream, true).await? {
            Next::Eof => return Ok(End::Close),
            Next::Unframed => return relay_raw(client, up, &from_client, &from_upstream, rx).await,
            Next::Message(m) => m,
        };
        let bytes: Vec<u8> = from_upstream.drain(..response.len).collect();
        if request.upgrade && response.status == 101 {
            client.write_all(&bytes).await?;
            return relay_raw(client, up, &from_client, &from_upstream, rx).await;
        }
        let (bytes, head_len) = {
            let mut last = shared
                .last_response
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let previous = last.replace(bytes.clone());
            match (current(rx), previous) {
                (Fault::SwapReplies, Some(previous)) => {
                    let head_len = find(&previous, b"\r\n\r\n").map_or(0, |b| b + 4);
                    (previous, head_len)
                }
                _ => (bytes, response.head_len),
            }
        };

        match current(rx) {
            Fault::Blackhole => {} // swallowed: the client waits forever
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                client.write_all(&bytes).await?;
            }
            Fault::Truncate => {
                let body = bytes.len() - head_len;
                client.write_all(&bytes[..head_len + body / 2]).await?;
                return Ok(End::Close);
            }
            Fault::SlowBody(d) => {
                client.write_all(&bytes[..head_len]).await?;
                drip(client, &bytes[head_len..], d).await?;
            }
            _ => client.write_all(&bytes).await?,
        }
    }
}

/// The upstream connection, opened now if it is not yet; `None` when that fails.
async fn connect(upstream: &mut Option<TcpStream>, target: SocketAddr) -> Option<&mut TcpStream> {
    if upstream.is_none() {
        let stream = TcpStream::connect(target).await.ok()?;
        let _ = stream.set_nodelay(true);
        *upstream = Some(stream);
    }
    upstream.as_mut()
}

/// Resolves when a connected upstream sends bytes or closes; never when there is none.
async fn upstream_speaks(upstream: Option<&TcpStream>) {
    match upstream {
        Some(up) => {
            let _ = up.peek(&mut [0u8; 1]).await;
        }
        None => std::future::pending().await,
    }
}

/// Writes `bytes` DRIP_BYTES at a time, the pauses between adding up to `over`.
async fn drip<W: AsyncWrite + Unpin>(to: &mut W, bytes: &[u8], over: Duration) -> io::Result<()> {
    let pieces = bytes.len().div_ceil(DRIP_BYTES).max(1);
    let pause = over / u32::try_from(pieces).unwrap_or(u32::MAX);
    for piece in bytes.chunks(DRIP_BYTES) {
        tokio::time::sleep(pause).await;
        to.write_all(piece).await?;
    }
    Ok(())
}

/// An HTTP/1.1 response the proxy makes up. `extra_headers`: "name: value\r\n" lines.
fn answer(status: u16, content_type: &str, extra_headers: &str, body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Fault",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Relays raw bytes both ways until both sides have closed (or one fails), after
/// passing on what the HTTP reader had already buffered.
async fn relay_raw(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    from_client: &[u8],
    from_upstream: &[u8],
    rx: &watch::Receiver<Fault>,
) -> io::Result<End> {
    upstream.write_all(from_client).await?;
    client.write_all(from_upstream).await?;
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    tokio::try_join!(
        pump(&mut client_read, &mut upstream_write, rx, false),
        pump(&mut upstream_read, &mut client_write, rx, true),
    )?;
    Ok(End::Close)
}

/// Copies chunks from `from` to `to` under the current fault, until `from` closes.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    rx: &watch::Receiver<Fault>,
    to_client: bool,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let chunk = &buf[..n];
        match current(rx) {
            Fault::Blackhole => {}
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                to.write_all(chunk).await?;
            }
            Fault::SlowBody(d) if to_client => drip(to, chunk, d).await?,
            _ => to.write_all(chunk).await?,
        }
    }
}

// --- Just enough HTTP/1.1 to find where one message ends and the next begins. ---

/// What `next_message` found at the front of the buffer.
enum Next {
    /// The peer closed before sending another byte.
    Eof,
    /// Not HTTP the proxy can frame (see the module doc): relay raw from here on.
    Unframed,
    /// A whole message is buffered.
    Message(Message),
}

struct Message {
    /// Head, including its blank line.
    head_len: usize,
    /// Head and body.
    len: usize,
    /// A response's status code (0 for a request).
    status: u16,
    /// A request that asks to switch protocols (`Upgrade:` header).
    upgrade: bool,
}

/// Reads from `stream` into `buf` until it holds one whole request (or `response`).
async fn next_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    response: bool,
) -> io::Result<Next> {
    loop {
        if let Some(eol) = find(buf, b"\r\n")
            && first_line(&buf[..eol], response).is_none()
        {
            return Ok(Next::Unframed);
        }
        if let Some(blank) = find(buf, b"\r\n\r\n") {
            let head_len = blank + 4;
            let Some((status, body, upgrade)) = parse_head(&buf[..blank], response) else {
                return Ok(Next::Unframed);
            };
            let Some(body) = body else {
                return Ok(Next::Unframed);
            };
            let len = head_len + body;
            while buf.len() < len {
                if read_more(stream, buf).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            return Ok(Next::Message(Message {
                head_len,
                len,
                status,
                upgrade,
            }));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Next::Unframed);
        }
        if read_more(stream, buf).await? == 0 {
            return if buf.is_empty() {
                Ok(Next::Eof)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response's status ("HTTP/1.1 200 OK" → 200), or 0 for a request line that ends
/// in " HTTP/1.1" or " HTTP/1.0"; `None` when the line is neither.
fn first_line(line: &[u8], response: bool) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?;
    if response {
        let rest = line.strip_prefix("HTTP/1.")?;
        rest.get(2..5)?.parse().ok()
    } else {
        (line.ends_with(" HTTP/1.1") || line.ends_with(" HTTP/1.0")).then_some(0)
    }
}

/// (status, body length, upgrade) of a head without its blank line. The body length
/// is `None` when only the end of the connection would tell (chunked, or a response
/// without `Content-Length`); a request without either has no body.
fn parse_head(head: &[u8], response: bool) -> Option<(u16, Option<usize>, bool)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = first_line(lines.next()?.as_bytes(), response)?;
    let (mut length, mut chunked, mut upgrade) = (None, false, false);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.trim().parse::<usize>().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        }
    }
    let body = if response && (status < 200 || status == 204 || status == 304) {
        Some(0)
    } else if chunked {
        None
    } else if response {
        length
    } else {
        Some(length.unwrap_or(0))
    };
    Some((status, body, upgrade))
}
