//! The fault proxy itself: each fault does what chaos tests rely on, in front of a
//! real Anvil node. Calls that must show one kept-alive connection use a raw
//! `TcpStream`, so which connection carries a request is never up to a client pool.

mod testbed;

use std::io;
use std::time::Duration;

use serde_json::json;
use testbed::faultproxy::{Fault, FaultProxy, GARBAGE_BODY};
use testbed::{Fleet, RpcError, rpc_result, try_rpc, try_rpc_within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CHAIN_ID_CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
const CHAIN_ID_ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":"0x7a69"}"#;
/// A client timeout well below every delay a fault adds here.
const SHORT: Duration = Duration::from_millis(300);
/// How long a raw read may wait for what must come: only a guard against hanging.
const GUARD: Duration = Duration::from_secs(5);

async fn node_and_proxy() -> (Fleet, FaultProxy) {
    let fleet = Fleet::start(1).await;
    let proxy = FaultProxy::start(fleet.url(0)).await;
    (fleet, proxy)
}

/// Waits (up to GUARD) until `cond` holds: the proxy counts on its own tasks.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never true: {what}");
}

fn chain_id_request() -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{CHAIN_ID_CALL}",
        CHAIN_ID_CALL.len()
    )
    .into_bytes()
}

async fn connect(proxy: &FaultProxy) -> TcpStream {
    TcpStream::connect(proxy.addr())
        .await
        .expect("connect to the proxy")
}

/// One read, or a panic after GUARD.
async fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    tokio::time::timeout(GUARD, stream.read(buf))
        .await
        .unwrap_or_else(|_| panic!("nothing to read within {GUARD:?}"))
}

/// An HTTP response read off a raw connection.
struct Raw {
    head: String,
    body: String,
    /// How many reads brought the body.
    body_reads: usize,
}

impl Raw {
    fn status(&self) -> u16 {
        self.head[9..12].parse().expect("a status code")
    }
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.head, name)
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends eth_chainId on `stream` and reads one whole response (by Content-Length).
async fn call_raw(stream: &mut TcpStream) -> Raw {
    stream
        .write_all(&chain_id_request())
        .await
        .expect("write a request");
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let blank = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = read_some(stream, &mut chunk).await.expect("read a head");
        assert!(n > 0, "closed before a whole head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..blank]).into_owned();
    let mut body = buf[blank + 4..].to_vec();
    let mut body_reads = usize::from(!body.is_empty());
    let len: usize = header(&head, "content-length")
        .expect("a content-length")
        .parse()
        .expect("a number");
    while body.len() < len {
        let n = read_some(stream, &mut chunk).await.expect("read a body");
        assert!(n > 0, "closed {} bytes into a {len}-byte body", body.len());
        body.extend_from_slice(&chunk[..n]);
        body_reads += 1;
    }
    Raw {
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
        body_reads,
    }
}

/// Asserts that `stream` gets no byte within SHORT.
async fn assert_silent(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    if let Ok(read) = tokio::time::timeout(SHORT, stream.read(&mut byte)).await {
        panic!("expected silence, read {read:?}");
    }
}

async fn chain_id(url: &str) -> String {
    rpc_result(url, "eth_chainId", json!([]))
        .await
        .as_str()
        .expect("a string")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn none_relays_every_call_over_one_kept_alive_connection() {
    let (_fleet, proxy) = node_and_proxy().await;
    let mut conn = connect(&proxy).await;
    for _ in 0..3 {
        let r = call_raw(&mut conn).await;
        assert_eq!((r.status(), r.body.as_str()), (200, CHAIN_ID_ANSWER));
    }
    assert_eq!(chain_id(&proxy.url()).await, "0x7a69");
    assert_eq!(proxy.connections(), 2);
    assert_eq!(proxy.requests(), 4);
    assert_eq!(proxy.forwarded(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_fault_delays_each_answer() {
    let (_fleet, proxy) = node_and_proxy().await;
    proxy.set(Fault::Latency(Duration::from_millis(800)));
    // Held 800 ms each way: a 300 ms client gives up, a patient one gets the answer.
    let err = try_rpc_within(&proxy.url(), "eth_chainId", json!([]), SHORT)
        .await
        .expect_err("answered within the short timeout despite the latency");
    assert!(err.is_timeout(), "not a timeout: {err}");
    assert_eq!(chain_id(&proxy.url()).await, "0x7a69");

    // An open connection slows down too, and its answers still come in order.
    proxy.set(Fault::None);
    let mut conn = connect(&proxy).await;
    assert_eq!(call_raw(&mut conn).await.body, CHAIN_ID_ANSWER);
    proxy.set(Fault::Latency(Duration::from_millis(800)));
    conn.write_all(&chain_id_request())
        .await
        .expect("write a request");
    assert_silent(&mut conn).await;
    assert_eq!(read_response(&mut conn).await.body, CHAIN_ID_ANSWER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_holds_calls_until_client_timeout() {
    let (_fleet, proxy) = node_and_proxy().await;
    proxy.set(Fault::Blackhole);
    let err = try_rpc_within(&proxy.url(), "eth_chainId", json!([]), SHORT)
        .await
        .expect_err("a blackhole answered");
    assert!(err.is_timeout(), "not a timeout: {err}");
    eventually("the proxy read the request", || proxy.requests() == 1).await;
    assert_eq!(proxy.forwarded(), 0, "a blackholed call reached the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackhole_also_stalls_an_open_keep_alive_connection() {
    let (_fleet, proxy) = node_and_proxy().await;
    let mut conn = connect(&proxy).await;
    assert_eq!(call_raw(&mut conn).await.body, CHAIN_ID_ANSWER);
    proxy.set(Fault::Blackhole);
    conn.write_all(&chain_id_request())
        .await
        .expect("write a request");
    assert_silent(&mut conn).await;
    assert_eq!(proxy.connections(), 1);
    assert_eq!(proxy.forwarded(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_back_to_none_relays_again() {
    let (_fleet, proxy) = node_and_proxy().await;
    proxy.set(Fault::Blackhole);
    let err = try_rpc_within(&proxy.url(), "eth_chainId", json!([]), SHORT)
        .await
        .expect_err("a blackhole answered");
    assert!(err.is_timeout(), "not a timeout: {err}");
    proxy.set(Fault::Http(503, "<html>503</html>".into()));
    match try_rpc(&proxy.url(), "eth_chainId", json!([])).await {
        Err(RpcError::NotJson { status: 503, .. }) => {}
        other => panic!("expected a 503, got {other:?}"),
    }
    proxy.set(Fault::None);
    assert_eq!(proxy.fault(), Fault::None);
    assert_eq!(chain_id(&proxy.url()).await, "0x7a69");
    assert_eq!(proxy.forwarded(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_closes_new_connections_and_drops_open_ones() {
    let (_fleet, proxy) = node_and_proxy().await;
    let mut open = connect(&proxy).await;
    assert_eq!(call_raw(&mut open).await.body, CHAIN_ID_ANSWER);
    proxy.set(Fault::Refuse);
    let mut byte = [0u8; 1];
    assert_eq!(
        read_some(&mut open, &mut byte)
            .await
            .expect("a FIN, not an error"),
        0,
        "the open connection was not closed"
    );
    let err = try_rpc(&proxy.url(), "eth_chainId", json!([]))
        .await
        .expect_err("a refusing proxy answered");
    assert!(
        !err.is_timeout(),
        "timed out instead of failing fast: {err}"
    );
    assert_eq!(proxy.forwarded(), 1);
    assert!(proxy.connections() >= 2);
}

fn assert_reset(result: io::Result<usize>, what: &str) {
    match result {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected a reset, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_sends_rst_to_open_and_new_connections() {
    let (_fleet, proxy) = node_and_proxy().await;
    let mut open = connect(&proxy).await;
    assert_eq!(call_raw(&mut open).await.body, CHAIN_ID_ANSWER);
    proxy.set(Fault::Reset);
    let mut buf = [0u8; 64];
    assert_reset(read_some(&mut open, &mut buf).await, "open connection");

    // The kernel completes the handshake before the proxy accepts and resets, so the
    // RST shows on the connect (tokio checks SO_ERROR), the write or the read.
    let new = async {
        let mut new = TcpStream::connect(proxy.addr()).await?;
        new.write_all(&chain_id_request()).await?;
        read_some(&mut new, &mut buf).await
    };
    assert_reset(new.await, "new connection");
    let err = try_rpc(&proxy.url(), "eth_chainId", json!([]))
        .await
        .expect_err("a resetting proxy answered");
    assert!(
        !err.is_timeout(),
        "timed out instead of failing fast: {err}"
    );
    assert_eq!(proxy.forwarded(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fault_answers_502_on_keep_alive_connection() {
    let (_fleet, proxy) = node_and_proxy().await;
    let mut conn = connect(&proxy).await;
    assert_eq!(call_raw(&mut conn).await.status(), 200);
    let page = "<html>502 Bad Gateway</html>";
    proxy.set(Fault::Http(502, page.into()));
    for _ in 0..2 {
        let r = call_raw(&mut conn).await;
        assert_eq!((r.status(), r.body.as_str()), (502, page));
        assert_eq!(r.header("content-type"), Some("text/html"));
    }
    assert_eq!(
        proxy.connections(),
        1,
        "the 502s did not keep the connection"
    );
    assert_eq!(proxy.requests(), 3);
    assert_eq!(proxy.forwarded(), 1, "a 502 call reached the node");
    match try_rpc(&proxy.url(), "eth_chainId", json!([])).await {
        Err(RpcError::NotJson { status: 502, body }) => assert_eq!(body, page),
        other => panic!("expected a 502, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_fault_answers_429_with_retry_after() {
    let (_fleet, proxy) = node_and_proxy().await;
    proxy.set(Fault::RateLimit {
        retry_after_secs: 7,
    });
    let mut conn = connect(&proxy).await;
    for _ in 0..2 {
        let r = call_raw(&mut conn).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.header("retry-after"), Some("7"));
    }
    assert!(matches!(
        try_rpc(&proxy.url(), "eth_chainId", json!([])).await,
        Err(RpcError::NotJson { status: 429, .. })
    ));
    assert_eq!(proxy.forwarded(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_fault_answers_200_with_a_body_that_is_not_json() {
    let (_fleet, proxy) = node_and_proxy().await;
    proxy.set(Fault::Garbage);
    match try_rpc(&proxy.url(), "eth_chainId", json!([])).await {
        Err(RpcError::NotJson { status: 200, body }) => assert_eq!(body, GARBAGE_BODY),
        other => panic!("expected a 200 that is not JSON, got {other:?}"),
    }
    assert_eq!(proxy.forwarded(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_fault_sends_half_the_body_then_closes() {
    let (_fleet, proxy) = node_and_proxy().await;
    proxy.set(Fault::Truncate);
    let mut conn = connect(&proxy).await;
    conn.write_all(&chain_id_request())
        .await
        .expect("write a request");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match read_some(&mut conn, &mut chunk).await {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("expected a FIN after the cut, got {e}"),
        }
    }
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length = format!("content-length: {}", CHAIN_ID_ANSWER.len());
    assert!(head.to_ascii_lowercase().contains(&length), "{head}");
    assert_eq!(body, &CHAIN_ID_ANSWER[..CHAIN_ID_ANSWER.len() / 2]);

    let err = try_rpc(&proxy.url(), "eth_chainId", json!([]))
        .await
        .expect_err("a truncated answer parsed");
    assert!(
        matches!(err, RpcError::Transport(_)) && !err.is_timeout(),
        "expected a body error: {err}"
    );
    assert_eq!(proxy.forwarded(), 2, "the node did get the calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_fault_drips_the_answer() {
    let (_fleet, proxy) = node_and_proxy().await;
    proxy.set(Fault::SlowBody(Duration::from_secs(1)));
    let mut conn = connect(&proxy).await;
    let r = call_raw(&mut conn).await;
    assert_eq!((r.status(), r.body.as_str()), (200, CHAIN_ID_ANSWER));
    assert!(r.body_reads > 1, "the body came in one piece");

    let err = try_rpc_within(&proxy.url(), "eth_chainId", json!([]), SHORT)
        .await
        .expect_err("a dripped body arrived within the short timeout");
    assert!(err.is_timeout(), "not a timeout: {err}");
    assert_eq!(chain_id(&proxy.url()).await, "0x7a69");
}

/// A masked client text frame (payloads under 126 bytes).
fn ws_frame(payload: &str) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let len = u8::try_from(payload.len()).expect("a short payload");
    assert!(len < 126);
    let mut frame = vec![0x81, 0x80 | len];
    frame.extend_from_slice(&mask);
    frame.extend(payload.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads one unmasked server text frame (payloads under 64 KiB).
async fn read_ws_frame(stream: &mut TcpStream) -> String {
    let mut header = [0u8; 2];
    let guarded = tokio::time::timeout(GUARD, stream.read_exact(&mut header));
    guarded
        .await
        .expect("a frame within GUARD")
        .expect("read a frame header");
    assert_eq!(header[0], 0x81, "not a final text frame");
    let len = match header[1] {
        126 => {
            let mut ext = [0u8; 2];
            stream.read_exact(&mut ext).await.expect("read a length");
            usize::from(u16::from_be_bytes(ext))
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    stream
        .read_exact(&mut payload)
        .await
        .expect("read a payload");
    String::from_utf8(payload).expect("UTF-8 text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_relayed_and_blackhole_stalls_it() {
    let (_fleet, proxy) = node_and_proxy().await;
    let mut ws = connect(&proxy).await;
    ws.write_all(
        b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
          sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
    )
    .await
    .expect("write the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = read_some(&mut ws, &mut byte).await.expect("read the 101");
        assert_eq!(n, 1, "closed during the handshake: {head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");

    ws.write_all(&ws_frame(CHAIN_ID_CALL))
        .await
        .expect("write a frame");
    assert!(read_ws_frame(&mut ws).await.contains("0x7a69"));

    proxy.set(Fault::Blackhole);
    ws.write_all(&ws_frame(CHAIN_ID_CALL))
        .await
        .expect("write a frame");
    assert_silent(&mut ws).await;

    proxy.set(Fault::None);
    let call = r#"{"jsonrpc":"2.0","id":2,"method":"eth_chainId","params":[]}"#;
    ws.write_all(&ws_frame(call)).await.expect("write a frame");
    let answer = read_ws_frame(&mut ws).await;
    assert!(answer.contains(r#""id":2"#), "{answer}");
    assert_eq!(proxy.requests(), 1, "frames were counted as HTTP requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_closes_its_port_and_connections() {
    let (_fleet, proxy) = node_and_proxy().await;
    let mut open = connect(&proxy).await;
    assert_eq!(call_raw(&mut open).await.body, CHAIN_ID_ANSWER);
    let addr = proxy.addr();
    drop(proxy);
    let mut byte = [0u8; 1];
    assert!(
        !matches!(read_some(&mut open, &mut byte).await, Ok(1..)),
        "an open connection outlived the proxy"
    );
    let mut refused = false;
    for _ in 0..500 {
        if let Err(e) = TcpStream::connect(addr).await
            && e.kind() == io::ErrorKind::ConnectionRefused
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the proxy's port still accepts connections");
}

/// A raw request carrying `body`.
fn request_with(body: &str) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_replies_answers_each_request_with_the_one_before() {
    let (mut fleet, proxy) = node_and_proxy().await;
    fleet.mine(2).await;
    let block = |n: u64, id: u64| {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_getBlockByNumber","params":["{n:#x}",false]}}"#
        )
    };
    let mut conn = connect(&proxy).await;
    conn.write_all(&request_with(&block(0, 10)))
        .await
        .expect("write");
    let first: serde_json::Value =
        serde_json::from_str(&read_response(&mut conn).await.body).expect("JSON");
    assert_eq!(
        (first["id"].clone(), first["result"]["number"].clone()),
        (json!(10), json!("0x0"))
    );

    proxy.set(Fault::SwapReplies);
    // On another connection too: each answer is the previous request's, id and all.
    let mut other = connect(&proxy).await;
    for (n, id, stream) in [(1, 11, &mut other), (2, 12, &mut conn)] {
        stream
            .write_all(&request_with(&block(n, id)))
            .await
            .expect("write");
        let r = read_response(stream).await;
        assert_eq!(r.status(), 200);
        let got: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(got["id"], json!(id - 1), "{got}");
        assert_eq!(got["result"]["number"], format!("{:#x}", n - 1), "{got}");
    }
    assert_eq!(proxy.forwarded(), 3, "every request still reached the node");
    proxy.set(Fault::None);
    assert_eq!(chain_id(&proxy.url()).await, "0x7a69");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_per_method_with_their_peak_in_flight() {
    let (_fleet, proxy) = node_and_proxy().await;
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":3,"method":"eth_chainId"}]"#;
    let mut conn = connect(&proxy).await;
    conn.write_all(&request_with(batch)).await.expect("write");
    assert_eq!(read_response(&mut conn).await.status(), 200);
    assert_eq!(
        proxy.requests_of("eth_chainId"),
        1,
        "one request, counted once"
    );
    assert_eq!(proxy.requests_of("eth_blockNumber"), 1);
    assert_eq!(proxy.requests_of("eth_getBalance"), 0);

    // Three held at once: each read, none answered. Held long enough (3 s before and 3 s
    // after the node, with a client that waits 20 s) that all three overlap even when the
    // machine is busy (a start delayed past the first's end would make the peak 2).
    proxy.set(Fault::Latency(Duration::from_secs(3)));
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let url = proxy.url();
            tokio::spawn(async move {
                let reply = try_rpc_within(&url, "eth_chainId", json!([]), Duration::from_secs(20))
                    .await
                    .expect("answered");
                reply["result"].as_str().unwrap_or_default().to_owned()
            })
        })
        .collect();
    eventually("three chain-id calls in flight", || {
        proxy.peak_in_flight("eth_chainId") == 3
    })
    .await;
    for c in calls {
        assert_eq!(c.await.expect("call"), "0x7a69");
    }
    assert_eq!(proxy.requests_of("eth_chainId"), 4);
    assert_eq!(proxy.peak_in_flight("eth_blockNumber"), 1);
}
