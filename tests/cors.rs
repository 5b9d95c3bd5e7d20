//! Browsers and Outlast (`[cors]`): a dapp on another origin calls it from real headless
//! Chromium; preflights are answered for allowed origins only; a page of another origin
//! cannot POST or open a WebSocket; a request for a host name not served (DNS
//! rebinding) is refused; storage content is sandboxed.

mod testbed;

use std::{process::Stdio, time::Duration};

use axum::{Router, response::Html, routing::get};
use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Outlast, config, scratch_dir, serve},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A dapp page: POSTs `eth_chainId` to the `rpc` URL in its query string and writes
/// what happened into the document.
const DAPP: &str = r#"<!doctype html><html><body><pre id="out">pending</pre><script>
const rpc = new URLSearchParams(location.search).get("rpc");
fetch(rpc, {method: "POST", headers: {"content-type": "application/json"},
  body: JSON.stringify({jsonrpc: "2.0", id: 1, method: "eth_chainId", params: []})})
  .then(r => r.json().then(j => "status " + r.status + " upstream " + r.headers.get("x-outlast-upstream") + " result " + j.result))
  .catch(e => "blocked " + e)
  .then(t => { document.getElementById("out").textContent = t; });
</script></body></html>"#;

async fn outlast(fleet: &Fleet, cors: &str) -> Outlast {
    Outlast::start(&config(
        &fleet.urls(),
        &format!("{FAST_ROUTING}\n[cors]\n{cors}\n"),
    ))
    .await
}

/// Headless Chromium's DOM of `url` once its scripts had up to 10 s (virtual time).
async fn chromium_dom(url: &str) -> String {
    let profile = scratch_dir();
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium runs (scripts/test.sh installs it)");
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dapp_on_an_allowed_origin_calls_outlast_from_a_real_browser_and_others_cannot() {
    let fleet = Fleet::start(1).await;
    let allowed = serve(Router::new().route("/", get(|| async { Html(DAPP) }))).await;
    let other = serve(Router::new().route("/", get(|| async { Html(DAPP) }))).await;
    let origin = allowed.trim_end_matches('/');
    let o = outlast(&fleet, &format!("allowed_origins = [\"{origin}\"]")).await;
    let rpc = o.url("/local");

    let dom = chromium_dom(&format!("{allowed}?rpc={rpc}")).await;
    assert!(
        dom.contains("status 200 upstream u0 result 0x7a69"),
        "the page read the answer and Outlast's headers: {dom}"
    );
    let dom = chromium_dom(&format!("{other}?rpc={rpc}")).await;
    assert!(
        dom.contains("blocked"),
        "another origin is not let in: {dom}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_for_allowed_origins_and_other_origins_cannot_act() {
    let fleet = Fleet::start(1).await;
    let o = outlast(
        &fleet,
        "allowed_origins = [\"https://app.example\"]\nmax_age_secs = 60",
    )
    .await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, o.url("/local"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type, x-api-key")
            .send()
    };
    let r = preflight("https://app.example").await.expect("preflight");
    assert_eq!(r.status(), 204);
    let h = r.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap_or("")
            .contains("x-api-key")
    );
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap_or("")
            .contains("POST")
    );
    assert_eq!(h["access-control-max-age"], "60");
    let r = preflight("https://evil.example").await.expect("preflight");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());

    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let post = |origin: &'static str| {
        client
            .post(o.url("/local"))
            .header("origin", origin)
            // What a page may send without a preflight.
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    let r = post("https://app.example").await.expect("post");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(
        r.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap_or("")
            .contains("x-outlast-upstream")
    );
    let r = post("https://evil.example").await.expect("post");
    assert_eq!(r.status(), 403, "a page elsewhere cannot make Outlast act");
    let text = r.text().await.expect("body");
    assert!(text.contains("allowed_origins"), "{text}");
    // Clients that are not browsers send no Origin and are not affected.
    let r = client
        .post(o.url("/local"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200);

    // A WebSocket from another page's origin is refused at the handshake.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws = o.base.replace("http://", "ws://") + "/local";
    let mut req = ws.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    let mut req = ws.as_str().into_client_request().expect("request");
    req.headers_mut()
        .insert("origin", "https://app.example".parse().expect("header"));
    tokio_tungstenite::connect_async(req)
        .await
        .expect("an allowed origin's WebSocket");
}

/// One raw HTTP/1.1 request with this `Host`; the status code.
async fn status_for_host(o: &Outlast, host: &str) -> u16 {
    let addr = o.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    let req = format!(
        "POST /local HTTP/1.1\r\nhost: {host}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("read");
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {reply:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_rebinding_request_for_another_host_name_is_refused() {
    let fleet = Fleet::start(1).await;
    // Listening on loopback with no allowed_hosts: localhost and addresses only.
    let o = outlast(&fleet, "").await;
    let port = o.base.rsplit(':').next().expect("port").to_owned();
    assert_eq!(
        status_for_host(&o, &format!("attacker.example:{port}")).await,
        403
    );
    assert_eq!(status_for_host(&o, &format!("localhost:{port}")).await, 200);
    assert_eq!(status_for_host(&o, &format!("127.0.0.1:{port}")).await, 200);
    let named = outlast(&fleet, "allowed_hosts = [\"rpc.example.com\"]").await;
    assert_eq!(status_for_host(&named, "rpc.example.com").await, 200);
    assert_eq!(status_for_host(&named, "localhost").await, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_content_is_sandboxed() {
    let fleet = Fleet::start(1).await;
    let o = outlast(&fleet, "").await;
    let r = reqwest::get(o.url("/ipfs/bafkqaaa"))
        .await
        .expect("GET /ipfs");
    assert_eq!(
        r.headers()
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap_or("")),
        Some("sandbox"),
        "status {}",
        r.status()
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}
