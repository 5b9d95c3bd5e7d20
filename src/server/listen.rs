//! The accept loop, with the connection hygiene of the proxies operators trust (nginx,
//! Envoy): a cap on connections in total and per client address, a deadline for a
//! request's headers (from its first byte, or from the connection's start), an idle
//! keep-alive timeout, a deadline for the whole request, and on shutdown a drain
//! deadline after which the connections left are closed. Without these, a few hundred
//! sockets that send half a header and stop hold the process's file descriptors for
//! ever, and shutdown waits on the slowest client.
//!
//! hyper's own header timer is not used: it also runs while a connection is idle, so it
//! cannot be told apart from the idle timeout. Each connection has a watchdog instead,
//! fed by its socket's reads and writes and by the requests it serves.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{HeaderMap, Request, Response, StatusCode, header},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use ipnet::IpNet;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
    time::Instant,
};
use tokio_util::{
    sync::CancellationToken,
    task::{AbortOnDropHandle, TaskTracker},
};

use crate::config;

/// `[server]`'s connection limits, as the listener uses them.
#[derive(Debug, Clone)]
pub struct Hygiene {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub drain: Duration,
}

impl Hygiene {
    pub fn new(server: &config::Server) -> Self {
        let room = connection_room();
        if room < server.max_connections {
            tracing::info!(
                configured = server.max_connections,
                room,
                "[server] max_connections held below the file-descriptor limit"
            );
        }
        Hygiene {
            header_timeout: Duration::from_millis(server.header_timeout_ms),
            idle_timeout: Duration::from_secs(server.idle_timeout_secs),
            request_timeout: Duration::from_millis(server.request_timeout_ms),
            max_connections: server.max_connections.min(room),
            max_connections_per_ip: server.max_connections_per_ip,
            trusted_proxies: server.trusted_proxies.clone(),
            drain: Duration::from_secs(server.drain_secs),
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// File descriptors kept for everything but client connections: upstream connections,
/// Redis, the data directory's files, WebSockets to providers.
const RESERVED_FDS: u64 = 256;

/// How many client connections the process's file-descriptor limit leaves room for,
/// after raising the soft limit to the hard one (as Go's runtime does): past it,
/// `accept` fails and every caller's request stalls, so the cap is held below it.
fn connection_room() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed to them.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return usize::MAX;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
        limit.rlim_cur
    };
    if soft == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    let room = soft.saturating_sub(RESERVED_FDS).max(soft / 2);
    usize::try_from(room).unwrap_or(usize::MAX)
}

/// The address a request came from: the TCP peer, or, when the peer is a trusted proxy,
/// the nearest address in `X-Forwarded-For` that is not itself a trusted proxy.
/// `Handler::call` is given it; the router's handlers find it in the request's
/// extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

pub fn client_addr(peer: IpAddr, headers: &HeaderMap, hygiene: &Hygiene) -> ClientAddr {
    if !hygiene.trusts(peer) {
        return ClientAddr(peer);
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','))
        .map(|hop| hop.trim().parse::<IpAddr>());
    let mut nearest = peer;
    for hop in hops {
        // A hop that is not an address was written by someone we do not trust: stop.
        let Ok(ip) = hop else { break };
        nearest = ip;
        if !hygiene.trusts(ip) {
            break;
        }
    }
    ClientAddr(nearest)
}

/// What answers each request a connection reads, told who sent it. The listener owns
/// connections and their limits; what a request means is the handler's.
pub trait Handler: Clone + Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        client: ClientAddr,
    ) -> impl Future<Output = Response<Body>> + Send + use<Self>;
}

/// Serves `handler` on `listener` until `shutdown`, then drains: requests in flight get
/// `hygiene.drain` to finish, after which their connections are closed.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: H,
    hygiene: Hygiene,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let hygiene = Arc::new(hygiene);
    let counts = Arc::new(Counts::default());
    let conns = TaskTracker::new();
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let draining = CancellationToken::new();
    let closing = CancellationToken::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder.http2().max_concurrent_streams(128);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    let mut accept_failures = 0u32;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                accept_failures = 0;
                a
            }
            Err(e) => {
                // Out of file descriptors (or a like condition): the connections already
                // open are served; new ones wait in the backlog a moment.
                if accept_failures == 0 {
                    tracing::warn!("cannot accept a connection: {e}; retrying");
                }
                accept_failures = accept_failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match counts.admit(peer.ip(), &hygiene) {
            Err(cap) => {
                crate::metrics::limit_exceeded(cap.label());
                // Past `MAX_REFUSING` at once, closed without its 503.
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    conns.spawn(async move {
                        refuse(stream, cap).await;
                        drop(permit);
                    });
                }
            }
            Ok(guard) => {
                let conn = Connection {
                    peer,
                    handler: handler.clone(),
                    hygiene: hygiene.clone(),
                    builder: builder.clone(),
                    draining: draining.clone(),
                    closing: closing.clone(),
                };
                // On the next serving runtime (`cores`), registered with its reactor.
                match crate::cores::next() {
                    None => drop(conns.spawn(conn.run(stream, guard))),
                    Some(core) => match stream.into_std() {
                        Ok(std) => drop(conns.spawn_on(
                            async move {
                                match TcpStream::from_std(std) {
                                    Ok(stream) => conn.run(stream, guard).await,
                                    Err(e) => tracing::warn!(
                                        "cannot register a connection with its runtime: {e}"
                                    ),
                                }
                            },
                            core,
                        )),
                        Err(e) => tracing::warn!("cannot hand a connection over: {e}"),
                    },
                }
            }
        }
    }
    drop(listener);
    draining.cancel();
    conns.close();
    if tokio::time::timeout(hygiene.drain, conns.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            after = ?hygiene.drain,
            "requests still in flight at the drain deadline ([server] drain_secs): closing their connections"
        );
        closing.cancel();
        conns.wait().await;
    }
    Ok(())
}

/// Which connection cap a new connection is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    /// `[server] max_connections` (held below the file-descriptor limit).
    Total,
    /// `[server] max_connections_per_ip`.
    PerAddress,
}

impl Cap {
    /// Its `limit` label in `outlast_limits_exceeded_total`.
    fn label(self) -> &'static str {
        match self {
            Cap::Total => "connections",
            Cap::PerAddress => "connections_per_ip",
        }
    }
}

/// Connections open, in total and per address.
#[derive(Default)]
struct Counts {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Counts {
    /// Counts a new connection from `ip`, or says which cap it is over.
    fn admit(self: &Arc<Self>, ip: IpAddr, hygiene: &Hygiene) -> Result<Slot, Cap> {
        let total = self.total.fetch_add(1, Ordering::AcqRel) + 1;
        // Counted first, so a refused connection is uncounted by the slot's drop.
        let mut slot = Slot {
            counts: self.clone(),
            ip: None,
        };
        if total > hygiene.max_connections {
            return Err(Cap::Total);
        }
        if !hygiene.trusts(ip) {
            // An IPv6 client's /64 counts as one address (`auth::network`).
            let ip = crate::auth::network(ip);
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= hygiene.max_connections_per_ip {
                return Err(Cap::PerAddress);
            }
            *n += 1;
            slot.ip = Some(ip);
        }
        crate::metrics::connections(total);
        Ok(slot)
    }
}

/// One admitted connection, counted until dropped — which is when its socket closes,
/// also after an upgrade to WebSocket (the slot travels inside the socket).
struct Slot {
    counts: Arc<Counts>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let left = self
            .counts
            .total
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        crate::metrics::connections(left);
        if let Some(ip) = self.ip {
            let mut per_ip = self.counts.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Refusals in progress at most. Each holds its socket up to a second, so the client
/// can read its 503; a flood of connections over a cap would otherwise hold a
/// descriptor each beyond the cap, and take those `RESERVED_FDS` keeps for upstreams.
/// Past it, a connection over a cap is closed at once (and still counted).
const MAX_REFUSING: usize = 64;

/// Over a cap: a 503 the client can read, then the connection is closed.
async fn refuse(mut stream: TcpStream, cap: Cap) {
    let what = match cap {
        Cap::PerAddress => "too many connections from your address",
        Cap::Total => "too many connections",
    };
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32005,"message":"limit exceeded: {what}; retry shortly, or reuse one keep-alive connection"}}}}"#
    );
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let refusal = async {
        stream.write_all(reply.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent, so closing does not reset the connection before it
        // has read the 503.
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            let n = stream.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            left = left.saturating_sub(n);
        }
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), refusal).await;
}

struct Connection<H> {
    peer: SocketAddr,
    handler: H,
    hygiene: Arc<Hygiene>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    draining: CancellationToken,
    closing: CancellationToken,
}

impl<H: Handler> Connection<H> {
    async fn run(self, stream: TcpStream, slot: Slot) {
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
            _slot: slot,
        });
        let (peer, handler, hygiene) = (self.peer, self.handler, self.hygiene.clone());
        let served = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let busy = served.begin();
            let client = client_addr(peer.ip(), req.headers(), &hygiene);
            let answer = handler.call(req, client);
            let deadline = hygiene.request_timeout;
            async move {
                let response = match tokio::time::timeout(deadline, answer).await {
                    Ok(response) => response,
                    Err(_) => too_slow(deadline),
                };
                drop(busy);
                Ok::<_, std::convert::Infallible>(response)
            }
        });
        let conn = self.builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        // The watchdog runs beside the connection, on a task of its own: this task is
        // woken for every read and write, and polling the timer and both shutdown
        // tokens at each wake (a lock on each token, shared by every connection) cost
        // more than a thousand instructions per request. The watchdog wakes only when
        // its timer or a token fires, and tells this task through one-shot channels,
        // which are cheap to poll.
        let (drain_tx, mut drain) = oneshot::channel();
        let (close_tx, mut close) = oneshot::channel();
        let _watchdog = AbortOnDropHandle::new(tokio::spawn(watch(
            activity,
            self.hygiene.clone(),
            (self.draining.clone(), self.closing.clone()),
            drain_tx,
            close_tx,
        )));
        let mut drain_started = false;
        loop {
            tokio::select! {
                biased;
                _ = conn.as_mut() => return,
                Ok(()) = &mut drain, if !drain_started => {
                    conn.as_mut().graceful_shutdown();
                    drain_started = true;
                }
                Ok(limit) = &mut close => {
                    crate::metrics::limit_exceeded(limit);
                    return;
                }
            }
        }
    }
}

/// How often the watchdog looks again while a request is in flight (no deadline then).
const BUSY_RECHECK: Duration = Duration::from_secs(1);

/// A connection's watchdog: `close` says the connection is to be closed (past its header
/// or idle deadline, naming that limit, or at the drain deadline), `drain` that it is to
/// finish its request and close (shutdown began). Aborted with its connection.
async fn watch(
    activity: Arc<Activity>,
    hygiene: Arc<Hygiene>,
    (draining, closing): (CancellationToken, CancellationToken),
    drain: oneshot::Sender<()>,
    close: oneshot::Sender<&'static str>,
) {
    let mut drain = Some(drain);
    loop {
        let (deadline, _) = activity.deadline(&hygiene);
        let wake = deadline.unwrap_or_else(|| Instant::now() + BUSY_RECHECK);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {
                if let (Some(d), limit) = activity.deadline(&hygiene)
                    && d <= Instant::now()
                {
                    let _ = close.send(limit);
                    return;
                }
            }
            () = draining.cancelled(), if drain.is_some() => {
                if let Some(drain) = drain.take() {
                    let _ = drain.send(());
                }
            }
            () = closing.cancelled() => {
                let _ = close.send("drain");
                return;
            }
        }
    }
}

/// The whole-request deadline passed: the client hears so (the work it started, such as
/// a broadcast, finishes on its own task).
fn too_slow(deadline: Duration) -> Response<Body> {
    crate::metrics::limit_exceeded("request_timeout");
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":null,"error":{{"code":-32002,"message":"resource unavailable: no answer within {} ms ([server] request_timeout_ms); retry"}}}}"#,
        deadline.as_millis()
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// What a connection is doing, for its watchdog: requests in flight, when it last moved
/// bytes or finished a request, when the head of the next request started (the
/// connection's start counts: a new connection owes its first request's headers), and
/// whether an answer is stalled on a client that does not read it. Times are
/// milliseconds since `start`.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    last: AtomicU64,
    head_from: AtomicU64,
    /// Bytes written to the client so far.
    written: AtomicU64,
    /// When a write last found the client's socket full with no whole write since
    /// (`NO_STALL`: none), and `written` then.
    stalled_at: AtomicU64,
    written_at_stall: AtomicU64,
}

const NO_HEAD: u64 = u64::MAX;
const NO_STALL: u64 = u64::MAX;

/// The slowest a client may read an answer once its socket is full, on average since
/// then, after `SEND_GRACE_MS`: each write that made progress reset only the idle
/// deadline, so a client reading a few bytes a minute held a connection and a whole
/// answer (up to a batch of large ones) in memory for as long as it liked. A phone on a
/// poor link reads well above this. The watchdog sees a stall at its next wake (within
/// a second while a request is in flight, else at the idle deadline it slept for).
const MIN_SEND_RATE: u64 = 16 * 1024;
const SEND_GRACE_MS: u64 = 10_000;

/// When an answer stalled at `at` (ms), with `sent` bytes written since, has been read
/// too slowly: `SEND_GRACE_MS` after the stall, or later as long as the client keeps
/// up with `MIN_SEND_RATE`.
fn send_deadline(at: u64, sent: u64) -> u64 {
    let earned = sent.saturating_mul(1000) / MIN_SEND_RATE;
    at.saturating_add(earned.max(SEND_GRACE_MS))
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            head_from: AtomicU64::new(0),
            written: AtomicU64::new(0),
            stalled_at: AtomicU64::new(NO_STALL),
            written_at_stall: AtomicU64::new(0),
        }
    }

    /// `n` bytes of `offered` were written.
    fn wrote(&self, n: usize, offered: usize) {
        self.moved(false);
        self.written.fetch_add(n as u64, Ordering::Relaxed);
        if n == offered {
            self.stalled_at.store(NO_STALL, Ordering::Relaxed);
        }
    }

    /// A write found the client's socket full.
    fn stalled(&self) {
        if self.stalled_at.load(Ordering::Relaxed) == NO_STALL {
            let written = self.written.load(Ordering::Relaxed);
            self.written_at_stall.store(written, Ordering::Relaxed);
            self.stalled_at.store(self.now(), Ordering::Relaxed);
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn moved(&self, bytes_in: bool) {
        let now = self.now();
        self.last.store(now, Ordering::Relaxed);
        if bytes_in && self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ =
                self.head_from
                    .compare_exchange(NO_HEAD, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_from.store(NO_HEAD, Ordering::Relaxed);
        // The answer before was written whole (HTTP/1.1 answers in order).
        self.stalled_at.store(NO_STALL, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// When the connection is to be closed if nothing changes, and the limit that says so.
    fn deadline(&self, h: &Hygiene) -> (Option<Instant>, &'static str) {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return (None, "");
        }
        let (deadline, limit) = match self.head_from.load(Ordering::Relaxed) {
            NO_HEAD => (
                self.at(self.last.load(Ordering::Relaxed)) + h.idle_timeout,
                "idle_timeout",
            ),
            from => (self.at(from) + h.header_timeout, "header_timeout"),
        };
        let stalled = match self.stalled_at.load(Ordering::Relaxed) {
            NO_STALL => None,
            at => {
                let written = self.written.load(Ordering::Relaxed);
                let sent = written.saturating_sub(self.written_at_stall.load(Ordering::Relaxed));
                Some(self.at(send_deadline(at, sent)))
            }
        };
        match stalled {
            Some(by) if by < deadline => (Some(by), "send_rate"),
            _ => (Some(deadline), limit),
        }
    }
}

/// One request being served; when it is answered the connection is idle again.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        a.last.store(a.now(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The socket, telling the watchdog about every read and write, and carrying the
/// connection's slot in the counts.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved(true);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        match polled {
            Poll::Ready(Ok(n)) if n > 0 => self.activity.wrote(n, data.len()),
            Poll::Pending => self.activity.stalled(),
            _ => {}
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        match polled {
            Poll::Ready(Ok(n)) if n > 0 => {
                let offered = bufs.iter().map(|b| b.len()).sum();
                self.activity.wrote(n, offered);
            }
            Poll::Pending => self.activity.stalled(),
            _ => {}
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hygiene(trusted: &[&str]) -> Hygiene {
        let mut h = Hygiene::new(&config::Server::default());
        h.trusted_proxies = trusted.iter().map(|t| t.parse().expect("cidr")).collect();
        h
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().expect("header"));
        }
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let h = hygiene(&["10.0.0.0/8"]);
        let headers = xff(&["203.0.113.9, 10.1.1.1"]);
        assert_eq!(
            client_addr(ip("10.0.0.5"), &headers, &h).0,
            ip("203.0.113.9")
        );
        assert_eq!(
            client_addr(ip("198.51.100.7"), &headers, &h).0,
            ip("198.51.100.7"),
            "an untrusted peer's header is ignored"
        );
        let spoofed = xff(&["1.2.3.4", "203.0.113.9"]);
        assert_eq!(
            client_addr(ip("10.0.0.5"), &spoofed, &h).0,
            ip("203.0.113.9"),
            "what the client itself wrote further left is not believed"
        );
        let garbage = xff(&["not-an-ip"]);
        assert_eq!(client_addr(ip("10.0.0.5"), &garbage, &h).0, ip("10.0.0.5"));
    }

    #[test]
    fn connections_are_capped_in_total_and_per_address() {
        let mut h = hygiene(&["10.0.0.1/32"]);
        h.max_connections = 3;
        h.max_connections_per_ip = 2;
        let counts = Arc::new(Counts::default());
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let first = counts.admit(a, &h).expect("1st");
        let _second = counts.admit(a, &h).expect("2nd");
        assert_eq!(counts.admit(a, &h).err(), Some(Cap::PerAddress));
        drop(first);
        let _again = counts.admit(a, &h).expect("a slot was freed");
        let proxy: IpAddr = "10.0.0.1".parse().expect("ip");
        let _p = counts
            .admit(proxy, &h)
            .expect("a trusted proxy is not capped per address");
        assert_eq!(counts.admit(proxy, &h).err(), Some(Cap::Total));
        assert_eq!(
            counts.total.load(Ordering::Relaxed),
            3,
            "refused ones are not counted"
        );
    }

    /// The watchdog's channels, as a connection holds them, for a connection with
    /// `activity`: header deadline 50 ms, idle deadline 100 ms.
    fn watched(
        activity: &Arc<Activity>,
    ) -> (
        (CancellationToken, CancellationToken),
        oneshot::Receiver<()>,
        oneshot::Receiver<&'static str>,
        AbortOnDropHandle<()>,
    ) {
        let mut h = hygiene(&[]);
        h.header_timeout = Duration::from_millis(50);
        h.idle_timeout = Duration::from_millis(100);
        let tokens = (CancellationToken::new(), CancellationToken::new());
        let (drain_tx, drain) = oneshot::channel();
        let (close_tx, close) = oneshot::channel();
        let task = tokio::spawn(watch(
            activity.clone(),
            Arc::new(h),
            tokens.clone(),
            drain_tx,
            close_tx,
        ));
        (tokens, drain, close, AbortOnDropHandle::new(task))
    }

    #[tokio::test]
    async fn a_connection_busy_past_its_header_deadline_still_idles_out() {
        let activity = Arc::new(Activity::new());
        let busy = activity.begin();
        let (_tokens, _drain, close, _watchdog) = watched(&activity);
        // The request outlasts the header deadline (the watchdog wakes and finds it busy).
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(busy);
        let closed = tokio::time::timeout(Duration::from_secs(5), close).await;
        assert_eq!(closed.ok().and_then(Result::ok), Some("idle_timeout"));
    }

    #[test]
    fn an_answer_stalled_on_a_client_must_be_read_at_the_minimum_rate() {
        // Nothing read: the grace, then closed.
        assert_eq!(send_deadline(1_000, 0), 1_000 + SEND_GRACE_MS);
        // Read at the minimum rate: the deadline moves with what was read.
        assert_eq!(send_deadline(1_000, 60 * MIN_SEND_RATE), 61_000);
        // Far past it (a phone at 1 MB/s for a minute): far ahead.
        assert!(send_deadline(0, 60 << 20) > 60_000 * 60);
        assert_eq!(send_deadline(u64::MAX - 1, u64::MAX), u64::MAX);
    }

    #[tokio::test]
    async fn a_connection_whose_answer_stalls_unread_is_closed_for_its_send_rate() {
        let activity = Arc::new(Activity::new());
        // A request answered; its answer's writing stalls on a client that reads nothing.
        drop(activity.begin());
        activity.stalled();
        let (at, limit) = activity.deadline(&hygiene(&[]));
        assert_eq!(
            limit, "send_rate",
            "the default idle timeout is after the grace"
        );
        let grace = Duration::from_millis(SEND_GRACE_MS);
        assert!(at.is_some_and(|at| at <= Instant::now() + grace));
        // A whole write ends the stall.
        activity.wrote(10, 10);
        assert_eq!(activity.deadline(&hygiene(&[])).1, "idle_timeout");
    }

    #[tokio::test]
    async fn shutdown_drains_then_closes() {
        let activity = Arc::new(Activity::new());
        let _busy = activity.begin();
        let ((draining, closing), drain, mut close, _watchdog) = watched(&activity);
        draining.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(5), drain).await;
        assert!(matches!(drained, Ok(Ok(()))), "told to drain");
        assert!(close.try_recv().is_err(), "not closed while draining");
        closing.cancel();
        let closed = tokio::time::timeout(Duration::from_secs(5), close).await;
        assert_eq!(closed.ok().and_then(Result::ok), Some("drain"));
    }
}
