//! Hostile input on the storage routes and from storage gateways and webhook receivers,
//! end to end (issue 13): a `Range` past every `u64`, paths that climb with `..` (sent
//! as is, over a raw socket, since HTTP clients resolve them first), and gateways or
//! receivers answering with a redirect to somewhere internal. Each gets its exact
//! answer, nothing reaches a gateway it should not, and the process serves the next
//! request.

#[path = "testbed/arweave_gateway.rs"]
mod arweave_gateway;
#[path = "testbed/storage_gateway.rs"]
mod storage_gateway;
mod testbed;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    http::{StatusCode, Uri},
    response::IntoResponse,
};
use serde_json::Value;
use storage_gateway::{BlockStore, IpfsGateway, Mode, content_of, fixture_path};
use testbed::gateway::{Outlast, config, recording_upstream, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FAST: &str = "connect_timeout_ms = 500\nfirst_block_timeout_ms = 2000\nstall_timeout_ms = 500\nhedge_min_ms = 200\nrace = 1\n";

fn manifest() -> Value {
    let text = std::fs::read(fixture_path("ipfs.json")).expect("ipfs.json");
    serde_json::from_slice(&text).expect("ipfs.json is JSON")
}

fn root(name: &str) -> String {
    manifest()["fixtures"][name]["root"]
        .as_str()
        .unwrap_or_else(|| panic!("no fixture {name}"))
        .to_owned()
}

fn original(name: &str, file: &str) -> Vec<u8> {
    content_of(&manifest()["fixtures"][name]["files"][file])
}

async fn honest_ipfs() -> IpfsGateway {
    static STORE: tokio::sync::OnceCell<Arc<BlockStore>> = tokio::sync::OnceCell::const_new();
    let store = STORE.get_or_init(BlockStore::fixtures).await.clone();
    IpfsGateway::start(store, Mode::Honest).await
}

/// Outlast with one chain and these gateway URLs: `[[storage.ipfs]]` g0, g1, … and
/// `[[storage.arweave]]` a0, a1, …, each its own operator.
async fn outlast(ipfs: &[&str], arweave: &[&str]) -> Outlast {
    let (chain, _) = recording_upstream().await;
    let mut toml = format!("[storage]\n{FAST}\n");
    for (i, url) in ipfs.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[storage.ipfs]]\nname = \"g{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    for (i, url) in arweave.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[storage.arweave]]\nname = \"a{i}\"\nurl = \"{url}\"\noperator = \"aop{i}\"\n"
        ));
    }
    Outlast::start(&config(&[chain], &toml)).await
}

/// A server that records the path and query of every request and answers 404.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = Router::new().fallback(move |uri: Uri| {
            let log = log.clone();
            async move {
                log.lock().expect("lock").push(uri.to_string());
                (StatusCode::NOT_FOUND, "not here\n")
            }
        });
        let url = serve(app).await;
        Recorder { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A gateway that answers every request with `status` and `Location: location`,
/// counting them.
async fn redirector(status: StatusCode, location: String) -> (String, Arc<Mutex<usize>>) {
    let hits = Arc::new(Mutex::new(0usize));
    let count = hits.clone();
    let app = Router::new().fallback(move || {
        let count = count.clone();
        let location = location.clone();
        async move {
            *count.lock().expect("lock") += 1;
            (status, [("location", location)], "moved\n").into_response()
        }
    });
    (serve(app).await, hits)
}

#[derive(Debug)]
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn error(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)));
        v["error"].as_str().unwrap_or_default().to_owned()
    }
}

async fn get(o: &Outlast, path: &str, headers: &[(&str, &str)]) -> Got {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut req = client.get(o.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: body cut off: {e}"))
        .to_vec();
    Got {
        status,
        headers,
        body,
    }
}

/// `GET path` written on a socket exactly as given (`..` and all, as `curl
/// --path-as-is` would): the status and the body.
async fn get_as_is(o: &Outlast, path: &str) -> (u16, String) {
    let addr = o.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to Outlast");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{path}: not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn a_range_past_every_u64_is_clamped_or_416_and_the_next_request_is_served() {
    let g = honest_ipfs().await;
    let o = outlast(&[&g.url], &[]).await;
    let deep = original("deep", "deep.bin");
    let n = deep.len();
    let path = format!("/ipfs/{}", root("deep"));

    // The header: once a panicking task and a dropped connection.
    let got = get(&o, &path, &[("range", "bytes=1-18446744073709551615")]).await;
    assert_eq!(got.status, 206, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(
        got.header("content-range"),
        format!("bytes 1-{}/{n}", n - 1)
    );
    assert!(got.body[..] == deep[1..], "bytes 1.. exactly");

    for range in [
        "bytes=18446744073709551615-",
        "bytes=18446744073709551615-18446744073709551615",
        "bytes=99999999999999999999999-",
    ] {
        let got = get(&o, &path, &[("range", range)]).await;
        assert_eq!(got.status, 416, "{range}");
        assert_eq!(
            got.header("content-range"),
            format!("bytes */{n}"),
            "{range}"
        );
        assert!(got.error().contains("range not satisfiable"), "{range}");
    }
    for range in [
        "bytes=-18446744073709551615",
        "bytes=0-99999999999999999999",
    ] {
        let got = get(&o, &path, &[("range", range)]).await;
        assert_eq!(got.status, 206, "{range}");
        assert_eq!(
            got.header("content-range"),
            format!("bytes 0-{}/{n}", n - 1)
        );
        assert!(got.body == deep, "{range}: the whole file");
    }

    // A raw block (the root of `small` is one leaf) too.
    let small = original("small", "small.txt");
    let got = get(
        &o,
        &format!("/ipfs/{}", root("small")),
        &[("range", "bytes=1-18446744073709551615")],
    )
    .await;
    assert_eq!(got.status, 206);
    assert!(got.body[..] == small[1..]);

    // Still serving, whole files as ranges.
    let got = get(&o, &path, &[]).await;
    assert_eq!(got.status, 200);
    assert!(got.body == deep, "the next request gets the whole file");
}

#[tokio::test]
async fn dot_and_empty_segments_are_400_and_no_gateway_hears_of_them() {
    let gw = Recorder::start().await;
    // The prefix stands for a token in the gateway's URL.
    let o = outlast(
        &[&format!("{}tok3n", gw.url)],
        &[&format!("{}tok3n", gw.url)],
    )
    .await;
    // A directory (dag-pb), so that a path below it would be asked of a gateway.
    let cid = &root("dir");
    let id = "ZBZGgUChxp9JGDEwkC04ovxyFVnwCx9uLykmR6sBFeM";
    for (path, says) in [
        (format!("/ipfs/{cid}/../../../../admin/x"), "is `..`"),
        (format!("/ipfs/{cid}/%2e%2e/%2E%2E/admin/x"), "is `..`"),
        (format!("/ipfs/{cid}/a/.%2e/.."), "segment 2 is `..`"),
        (format!("/ipfs/{cid}/./x"), "is `.`"),
        (format!("/ipfs/{cid}//x"), "is empty (`//`)"),
        (format!("/ipfs/{cid}/x//"), "is empty (`//`)"),
        (format!("/ipfs/{cid}/..%2F..%2Fadmin"), "holding `/`"),
        (format!("/ipfs/{cid}/a%2fb"), "holding `/`"),
        (format!("/ar/{id}/../../admin"), "is `..`"),
        (format!("/ar/{id}/%2e%2e/admin"), "is `..`"),
        (format!("/ar/{id}//x"), "is empty (`//`)"),
        ("/ar/..%2F..%2Fadmin".to_owned(), "holding `/`"),
        ("/ar/../admin".to_owned(), "is `..`"),
    ] {
        let (status, body) = get_as_is(&o, &path).await;
        assert_eq!(status, 400, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}"));
        let error = error["error"].as_str().unwrap_or_default();
        assert!(error.contains("is not a content path"), "{path}: {error}");
        assert!(error.contains(says), "{path}: {error}");
    }
    assert_eq!(gw.seen(), Vec::<String>::new(), "no gateway was asked");

    // A name with what some parsers take for a separator is only a name: it goes
    // out escaped, under the prefix.
    let (status, _) = get_as_is(&o, &format!("/ipfs/{cid}/..%5C..%5Cadmin")).await;
    assert_eq!(status, 404);
    let seen = gw.seen();
    assert!(!seen.is_empty());
    for url in &seen {
        assert!(url.starts_with(&format!("/tok3n/ipfs/{cid}")), "{url}");
        assert!(
            !url.contains("admin") || url.contains("..%5C..%5Cadmin"),
            "{url}"
        );
    }
    // A path below an Arweave id is not served (and not sent).
    let before = gw.seen().len();
    let (status, body) = get_as_is(&o, &format!("/ar/{id}/index.html")).await;
    assert_eq!(status, 501, "{body}");
    assert!(body.contains("path manifests"), "{body}");
    assert_eq!(gw.seen().len(), before);
}

#[tokio::test]
async fn a_gateway_redirect_is_never_followed_and_the_content_comes_from_an_honest_one() {
    let internal = Recorder::start().await;
    let target = format!("{}internal/admin", internal.url);
    let (redirecting, hits) = redirector(StatusCode::FOUND, target.clone()).await;
    let honest = honest_ipfs().await;
    let small = original("small", "small.txt");
    let path = format!("/ipfs/{}", root("small"));

    let o = outlast(&[&redirecting, &honest.url], &[]).await;
    let got = get(&o, &path, &[]).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert!(got.body == small, "the verified content");
    assert_eq!(got.header("x-outlast-upstream"), "g1");
    assert!(
        *hits.lock().expect("lock") >= 1,
        "the redirecting gateway was asked"
    );
    drop(o);

    // Alone, it is an error naming the redirect; 307 and 308 alike.
    for status in [
        StatusCode::FOUND,
        StatusCode::TEMPORARY_REDIRECT,
        StatusCode::PERMANENT_REDIRECT,
    ] {
        let (redirecting, _) = redirector(status, target.clone()).await;
        let o = outlast(&[&redirecting], &[]).await;
        let got = get(&o, &path, &[]).await;
        assert_eq!(got.status, 502, "{}", String::from_utf8_lossy(&got.body));
        let body: Value = serde_json::from_slice(&got.body).expect("JSON");
        let tried = body["tried"].to_string();
        assert!(
            tried.contains(&format!("redirected (HTTP {})", status.as_u16())),
            "{body}"
        );
    }

    // Arweave gateways too.
    let weave = arweave_gateway::Weave::fixtures();
    let honest =
        arweave_gateway::ArweaveGateway::start(weave.clone(), arweave_gateway::Mode::Honest).await;
    let o = outlast(&[], &[&redirecting, &honest.url]).await;
    let got = get(&o, &format!("/ar/{}", weave.id("meta")), &[]).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert!(got.body == weave.data("meta"));

    assert_eq!(
        internal.seen(),
        Vec::<String>::new(),
        "the target was never requested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_redirect_is_never_followed() {
    use testbed::incidents::{FAST_STATUS, independent, labelled_config};
    let internal = Recorder::start().await;
    let (hook, hits) = redirector(
        StatusCode::TEMPORARY_REDIRECT,
        format!("{}internal/admin", internal.url),
    )
    .await;
    let mut fleet = testbed::Fleet::start(3).await;
    fleet.mine(2).await;
    let webhook = format!("[[webhooks]]\nname = \"moved\"\nurl = \"{hook}\"\nbackoff_ms = 100\n");
    let o = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        &webhook,
    ))
    .await;
    fleet.kill(2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while *hits.lock().expect("lock") == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the webhook was never sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a client that follows redirects to have done so.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        internal.seen(),
        Vec::<String>::new(),
        "the target was never requested"
    );
    drop(o);
}
