//! The HTTP client every upstream call goes through: keep-alive connections to each
//! upstream, kept per serving runtime (`cores`), HTTP/1.1 or HTTP/2 (ALPN) over rustls
//! with the webpki roots, plain HTTP for local nodes. Each upstream's URL is turned
//! into a request target once (`Target`); user info becomes a Basic `Authorization`
//! header, as browsers and reqwest do, so it never travels in the request line.
//!
//! hyper's connections are driven directly, not through a general pool: reqwest
//! re-parsed the URL and ran redirect and retry layers on every request (a quarter of
//! the pass-through throughput, bench/run.sh), and hyper-util's pool hashed its host
//! key with SipHash twice and formatted a `Host` per request, a tenth of a forwarded
//! call's instructions (bench/instructions.sh). Here a target owns its idle
//! connections, one stack per runtime: taking one is a lock nobody else holds and a
//! pop.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::Engine as _;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Request, StatusCode, Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT},
};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::connect::{Connection as _, HttpConnector},
    rt::TokioExecutor,
};
use url::Url;

use crate::config::Routing;

/// How to reach upstreams: TCP (with the connect timeout), then TLS when the URL says
/// https. Shared by every upstream; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    connector: HttpsConnector<HttpConnector>,
}

pub fn http_client(routing: &Routing) -> HttpClient {
    with_tls(
        hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
        routing,
    )
}

/// The client over `tls` (which roots it trusts), offering HTTP/2 and HTTP/1.1.
fn with_tls(
    tls: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
    routing: &Routing,
) -> HttpClient {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(Duration::from_millis(routing.connect_timeout_ms)));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let connector = tls
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    HttpClient { connector }
}

/// An idle connection is closed after this long unused (providers close theirs sooner).
const IDLE: Duration = Duration::from_secs(90);

/// The most idle connections a target keeps per runtime.
const MAX_IDLE: usize = 512;

/// What one exchange with an upstream gave: its status, headers and whole body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why an exchange gave no reply. Messages never contain the URL (hyper's and the
/// connector's own errors name none).
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    Transport(String),
    /// The body went past the given limit.
    #[error("reply larger than {0} bytes")]
    TooLarge(usize),
}

impl HttpClient {
    /// Sends `request` (its headers and body; method, URI and `Host` are the target's)
    /// over an idle connection of the calling thread's runtime, else a new one, and
    /// reads the whole reply, at most `max_body` bytes. A reused connection that the
    /// upstream had closed takes no request: it is sent once more, on a new one.
    pub async fn send(
        &self,
        target: &Target,
        mut request: Request<Full<Bytes>>,
        max_body: usize,
    ) -> Result<Reply, SendError> {
        let (mut conn, mut reused) = match target.idle.take() {
            Some(conn) => (conn, true),
            None => (Box::pin(self.connect(target)).await?, false),
        };
        loop {
            let sent = match &mut conn.sender {
                Sender::H1(sender) => {
                    if let Err(e) = sender.ready().await {
                        if !reused {
                            return Err(SendError::Transport(innermost(&e)));
                        }
                        conn = Box::pin(self.connect(target)).await?;
                        reused = false;
                        continue;
                    }
                    *request.uri_mut() = target.origin.clone();
                    request.headers_mut().insert(HOST, target.host.clone());
                    sender.try_send_request(request).await
                }
                Sender::H2(sender) => {
                    *request.uri_mut() = target.uri.clone();
                    request.headers_mut().remove(HOST);
                    sender.try_send_request(request).await
                }
            };
            match sent {
                Ok(response) => return read(target, conn, response, max_body).await,
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => {
                        request = unsent;
                        conn = Box::pin(self.connect(target)).await?;
                        reused = false;
                    }
                    _ => return Err(SendError::Transport(innermost(e.error()))),
                },
            }
        }
    }

    /// A new connection to `target`, driven by a task on this runtime. Boxed where it is
    /// awaited: dialing and the TLS handshake make a future of kilobytes, which every
    /// send's future would carry (and copy on each move) though it is rarely taken.
    async fn connect(&self, target: &Target) -> Result<Conn, SendError> {
        use tower_service::Service as _;
        let mut connector = self.connector.clone();
        let connect =
            |e: Box<dyn std::error::Error + Send + Sync>| SendError::Connect(innermost(&*e));
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(connect)?;
        let stream = connector.call(target.uri.clone()).await.map_err(connect)?;
        let h2 = stream.connected().is_negotiated_h2();
        // The connector's stream speaks hyper's IO traits already.
        let io = stream;
        let handshake = |e: hyper::Error| SendError::Connect(innermost(&e));
        let sender = if h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(handshake)?;
            tokio::spawn(conn);
            // Shared from the start: the calls after this one multiplex over it.
            target.idle.put(Conn {
                sender: Sender::H2(sender.clone()),
                since: Instant::now(),
            });
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(handshake)?;
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(Conn {
            sender,
            since: Instant::now(),
        })
    }
}

/// The reply's body, at most `max_body` bytes; an HTTP/1.1 connection goes back to the
/// idle ones once it is read (an HTTP/2 one never left them).
async fn read(
    target: &Target,
    conn: Conn,
    response: http::Response<hyper::body::Incoming>,
    max_body: usize,
) -> Result<Reply, SendError> {
    let (parts, body) = response.into_parts();
    let body = http_body_util::Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                SendError::TooLarge(max_body)
            } else {
                SendError::Transport(innermost(&*e))
            }
        })?;
    if matches!(conn.sender, Sender::H1(_)) {
        target.idle.put(conn);
    }
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.to_bytes(),
    })
}

/// The innermost cause of an error: the words that say what went wrong (e.g.
/// "connection reset by peer"); `capabilities` words its probes' failures with it too.
pub(super) fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e;
    while let Some(s) = last.source() {
        last = s;
    }
    last.to_string()
}

enum Sender {
    /// One request at a time: taken from the idle ones, put back when answered.
    H1(http1::SendRequest<Full<Bytes>>),
    /// Many at once: among the idle ones from its making on (a clone is taken).
    H2(http2::SendRequest<Full<Bytes>>),
}

struct Conn {
    sender: Sender,
    /// When it was last put back (HTTP/1.1) or taken (HTTP/2).
    since: Instant,
}

impl Conn {
    fn usable(&self, now: Instant) -> bool {
        let open = match &self.sender {
            Sender::H1(s) => !s.is_closed(),
            Sender::H2(s) => !s.is_closed(),
        };
        open && now.duration_since(self.since) < IDLE
    }
}

/// A target's idle connections, one stack per serving runtime, so a call never waits
/// on a connection that another thread drives.
struct Idle {
    per_core: Box<[Mutex<Vec<Conn>>]>,
}

impl Idle {
    fn new() -> Idle {
        Idle {
            per_core: (0..crate::cores::count())
                .map(|_| Mutex::default())
                .collect(),
        }
    }

    fn mine(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        let i = crate::cores::current() % self.per_core.len();
        // Whole connections pushed and popped: a poisoned stack is still whole.
        self.per_core[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that is still open; closed and expired ones
    /// are dropped on the way. An HTTP/2 one stays, shared.
    fn take(&self) -> Option<Conn> {
        let now = Instant::now();
        let mut idle = self.mine();
        while let Some(conn) = idle.pop() {
            if !conn.usable(now) {
                continue;
            }
            if let Sender::H2(sender) = &conn.sender {
                let shared = Conn {
                    sender: Sender::H2(sender.clone()),
                    since: now,
                };
                idle.push(Conn { since: now, ..conn });
                return Some(shared);
            }
            return Some(conn);
        }
        None
    }

    fn put(&self, mut conn: Conn) {
        conn.since = Instant::now();
        let mut idle = self.mine();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").finish_non_exhaustive()
    }
}

/// Where one upstream's requests go, worked out once from its URL, and its idle
/// connections.
#[derive(Debug)]
pub struct Target {
    /// Absolute: what the connector dials and HTTP/2 names (`:scheme`, `:authority`).
    uri: Uri,
    /// Path and query: HTTP/1.1's request line.
    origin: Uri,
    /// HTTP/1.1's `Host`: the host, and the port unless it is the scheme's default.
    host: HeaderValue,
    /// Every request's headers: the body's type, Outlast's name, and `Authorization`
    /// from the URL's user info. Made once: each request clones the map, where building
    /// it copied every value and grew the map header by header.
    pub headers: HeaderMap,
    idle: Idle,
}

impl Target {
    pub fn new(url: &Url) -> Result<Target, String> {
        let mut bare = url.clone();
        let authorization = (!url.username().is_empty()).then(|| {
            let user = percent_decoded(url.username());
            let password = url.password().map(percent_decoded).unwrap_or_default();
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            value.set_sensitive(true);
            value
        });
        // Neither setter fails on an http(s) URL with a host, the only kind configured.
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        bare.set_fragment(None);
        let uri = bare
            .as_str()
            .parse::<Uri>()
            .map_err(|e| format!("not usable as a request target: {e}"))?;
        // Room for these, `content-length` (hyper's) and `Host` (HTTP/1.1).
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("outlast/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, value);
        }
        let authority = uri
            .authority()
            .ok_or_else(|| "not usable as a request target: no host".to_owned())?;
        let default_port = if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
            443
        } else {
            80
        };
        let host = host_header(authority, default_port);
        let origin = uri
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()));
        Ok(Target {
            uri,
            origin,
            host,
            headers,
            idle: Idle::new(),
        })
    }
}

/// `Host`: the host, and the port unless it is `default` (as hyper-util writes it).
fn host_header(authority: &http::uri::Authority, default: u16) -> HeaderValue {
    let value = match authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_becomes_a_basic_header_and_leaves_the_target() {
        let url = Url::parse("https://alice:s%40cret@rpc.example/v1/KEY?x=1").expect("url");
        let t = Target::new(&url).expect("target");
        assert_eq!(t.uri.to_string(), "https://rpc.example/v1/KEY?x=1");
        let header = t.headers.get(AUTHORIZATION).expect("header");
        // base64("alice:s@cret")
        assert_eq!(header.to_str().expect("ascii"), "Basic YWxpY2U6c0BjcmV0");
        let plain =
            Target::new(&Url::parse("http://127.0.0.1:8545").expect("url")).expect("target");
        assert!(plain.headers.get(AUTHORIZATION).is_none());
        assert_eq!(plain.headers[CONTENT_TYPE], "application/json");
        assert_eq!(plain.uri.to_string(), "http://127.0.0.1:8545/");
        // HTTP/1.1's request line and Host.
        assert_eq!(t.origin, "/v1/KEY?x=1");
        assert_eq!(t.host, "rpc.example");
        assert_eq!(plain.origin, "/");
        for (url, host) in [
            ("http://alice:pw@node.local/rpc", "node.local"),
            ("http://node.local:80/", "node.local"),
            ("https://node.local:443/", "node.local"),
            ("https://node.local:80/", "node.local:80"),
            ("http://127.0.0.1:8545", "127.0.0.1:8545"),
            ("http://[::1]:8545/", "[::1]:8545"),
        ] {
            let t = Target::new(&Url::parse(url).expect("url")).expect("target");
            assert_eq!(t.host, host, "{url}");
            assert!(t.headers.get(HOST).is_none(), "set per connection: {url}");
        }
    }

    /// A plain HTTP/1.1 upstream on 127.0.0.1 answering `body` to every request, that
    /// closes each connection after one answer when `close` (without saying so, as a
    /// provider's idle timeout does). Returns its URL and how many connections it took.
    async fn upstream(
        body: &'static str,
        close: bool,
    ) -> (Url, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = Url::parse(&format!(
            "http://{}/rpc",
            listener.local_addr().expect("addr")
        ))
        .expect("url");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        // Each test request fits one read: head and a short body.
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(reply.as_bytes()).await.is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    fn request() -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(Bytes::from_static(b"{}")));
        *r.method_mut() = http::Method::POST;
        r
    }

    fn client() -> HttpClient {
        http_client(&Routing::default())
    }

    #[tokio::test]
    async fn a_connection_is_kept_and_used_again() {
        let (url, accepted) = upstream("\"ok\"", false).await;
        let target = Target::new(&url).expect("target");
        let http = client();
        for _ in 0..3 {
            let reply = http.send(&target, request(), 1024).await.expect("reply");
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body, "\"ok\"");
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_idle_connection_the_upstream_closed_fails_no_call() {
        let (url, accepted) = upstream("1", true).await;
        let target = Target::new(&url).expect("target");
        let http = client();
        for _ in 0..4 {
            let reply = http.send(&target, request(), 1024).await.expect("reply");
            assert_eq!(reply.body, "1");
            // Whether the close is seen before the next call or only on sending it,
            // that call goes out on a new connection.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_and_its_connection_not_kept() {
        let (url, accepted) = upstream("0123456789", false).await;
        let target = Target::new(&url).expect("target");
        let http = client();
        let refused = http.send(&target, request(), 4).await;
        assert!(
            matches!(refused, Err(SendError::TooLarge(4))),
            "{refused:?}"
        );
        let reply = http.send(&target, request(), 1024).await.expect("reply");
        assert_eq!(reply.body, "0123456789");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url =
            Url::parse(&format!("http://{}/", listener.local_addr().expect("addr"))).expect("url");
        drop(listener);
        let target = Target::new(&url).expect("target");
        let sent = client().send(&target, request(), 1024).await;
        assert!(matches!(sent, Err(SendError::Connect(_))), "{sent:?}");
    }

    /// A TLS upstream for `localhost` speaking only `alpn` (`h2` or `http/1.1`), with a
    /// certificate of its own; returns its URL, the certificate (to trust), and each
    /// request's protocol version and `Host` as it saw them.
    async fn tls_upstream(
        alpn: &[u8],
    ) -> (
        Url,
        rustls::pki_types::CertificateDer<'static>,
        std::sync::Arc<Mutex<Vec<(http::Version, Option<String>)>>>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a certificate");
        let cert = made.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .expect("server config");
        config.alpn_protocols = vec![alpn.to_vec()];
        let h2 = alpn == b"h2";
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = Url::parse(&format!("https://localhost:{port}/rpc")).expect("url");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (saw, counted) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let saw = saw.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let host = req
                            .headers()
                            .get(HOST)
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_owned);
                        saw.lock().expect("lock").push((req.version(), host));
                        async {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                                Bytes::from_static(b"\"ok\""),
                            )))
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(tls);
                tokio::spawn(async move {
                    let _ = if h2 {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    } else {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    };
                });
            }
        });
        (url, cert, seen, accepted)
    }

    /// A client that trusts `cert` (and nothing else).
    fn trusting(cert: rustls::pki_types::CertificateDer<'static>) -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).expect("a root");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        with_tls(
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config),
            &Routing::default(),
        )
    }

    #[tokio::test]
    async fn over_tls_http2_is_spoken_when_offered_on_one_shared_connection() {
        let (url, cert, seen, accepted) = tls_upstream(b"h2").await;
        let target = Target::new(&url).expect("target");
        let http = trusting(cert);
        let first = http.send(&target, request(), 1024).await.expect("reply");
        assert_eq!(first.body, "\"ok\"");
        // Four at once after it: all over the one connection.
        let sends = (0..4).map(|_| http.send(&target, request(), 1024));
        for reply in futures_util::future::join_all(sends).await {
            assert_eq!(reply.expect("reply").body, "\"ok\"");
        }
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen.len(), 5);
        // HTTP/2 names the host in `:authority`; no `host` header is added.
        assert!(
            seen.iter()
                .all(|(v, host)| *v == http::Version::HTTP_2 && host.is_none()),
            "{seen:?}"
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn over_tls_http1_takes_the_path_and_host_made_once() {
        let (url, cert, seen, accepted) = tls_upstream(b"http/1.1").await;
        let target = Target::new(&url).expect("target");
        let http = trusting(cert);
        for _ in 0..3 {
            let reply = http.send(&target, request(), 1024).await.expect("reply");
            assert_eq!(reply.body, "\"ok\"");
        }
        let port = url.port().expect("port");
        let seen = seen.lock().expect("lock").clone();
        let expected = (http::Version::HTTP_11, Some(format!("localhost:{port}")));
        assert!(seen.iter().all(|s| *s == expected), "{seen:?}");
        assert_eq!(seen.len(), 3);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
