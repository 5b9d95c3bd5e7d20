//! `GET /ipfs/{cid}[/path]` end to end: Outlast in front of local trustless gateways
//! (tests/testbed/storage_gateway.rs) serving UnixFS DAGs made by the real JavaScript
//! importer (tests/fixtures/storage/), some honest, some lying, hanging, stalling or
//! dying mid-stream. Every answer must be exactly the original bytes, or an honest
//! error; never a byte that was not verified.

#[path = "testbed/storage_gateway.rs"]
mod storage_gateway;
mod testbed;

use std::{sync::Arc, time::Instant};

use serde_json::Value;
use storage_gateway::{BlockStore, IpfsGateway, Mode, content_of, fixture_path};
use testbed::gateway::{Outlast, config, recording_upstream};

/// Storage settings that make faults cost little time here.
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

/// The original bytes of `file` in fixture `name`.
fn original(name: &str, file: &str) -> Vec<u8> {
    content_of(&manifest()["fixtures"][name]["files"][file])
}

/// Outlast with one chain (a fake upstream, so it is ready) and these IPFS gateways,
/// named g0, g1, … in order, each its own operator. `settings` go in `[storage]`.
async fn outlast(gateways: &[&IpfsGateway], settings: &str) -> Outlast {
    let (chain, _) = recording_upstream().await;
    let mut toml = format!("[storage]\n{settings}\n");
    for (i, g) in gateways.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[storage.ipfs]]\nname = \"g{i}\"\nurl = \"{}\"\noperator = \"op{i}\"\n",
            g.url
        ));
    }
    Outlast::start(&config(&[chain], &toml)).await
}

async fn gateway(mode: Mode) -> IpfsGateway {
    static STORE: tokio::sync::OnceCell<Arc<BlockStore>> = tokio::sync::OnceCell::const_new();
    let store = STORE.get_or_init(BlockStore::fixtures).await.clone();
    IpfsGateway::start(store, mode).await
}

#[derive(Debug)]
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
    /// The body arrived whole (not cut off).
    complete: bool,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn get(o: &Outlast, path: &str, headers: &[(&str, &str)]) -> Got {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("client")
    });
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
    let mut body = Vec::new();
    let mut stream = r.bytes_stream();
    let mut complete = true;
    use futures_util::StreamExt;
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(p) => body.extend_from_slice(&p),
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    Got {
        status,
        headers,
        body,
        complete,
    }
}

/// Asserts a 200 with exactly `want`.
fn assert_exact(got: &Got, want: &[u8], what: &str) {
    assert_eq!(
        got.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&got.body[..got.body.len().min(500)])
    );
    assert!(got.complete, "{what}: body cut off");
    assert_eq!(got.body.len(), want.len(), "{what}: length");
    assert!(got.body == want, "{what}: bytes differ");
}

/// Every file of every fixture, as (path under /ipfs/, fixture, file).
fn every_file() -> Vec<(String, &'static str, &'static str)> {
    let mut out = vec![
        (root("small"), "small", "small.txt"),
        (root("big"), "big", "big.bin"),
        (root("big_v0"), "big_v0", "big.bin"),
        (root("deep"), "deep", "deep.bin"),
    ];
    for file in [
        "a.txt",
        "sub/b.bin",
        "sub/meta.json",
        "site/index.html",
        "site/style.css",
        "pixel",
    ] {
        out.push((format!("{}/{file}", root("dir")), "dir", file));
    }
    for file in ["f00.txt", "f17.txt", "f39.txt"] {
        out.push((format!("{}/{file}", root("hamt")), "hamt", file));
    }
    out
}

#[tokio::test]
async fn every_fixture_file_is_served_byte_exact_with_immutable_headers() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], FAST).await;
    for (path, name, file) in every_file() {
        let got = get(&o, &format!("/ipfs/{path}"), &[]).await;
        assert_exact(&got, &original(name, file), &path);
        assert!(
            ["g0", "cache", "g0,cache", "cache,g0"].contains(&got.header("x-outlast-upstream")),
            "{path}: {}",
            got.header("x-outlast-upstream")
        );
        let target = path.split('/').next().unwrap_or_default();
        if !path.contains('/') {
            assert_eq!(got.header("etag"), format!("\"{target}\""), "{path}");
        }
        assert_eq!(
            got.header("cache-control"),
            "public, max-age=29030400, immutable",
            "{path}"
        );
        assert_eq!(got.header("x-outlast-verified"), "proof", "{path}");
        assert_eq!(got.header("accept-ranges"), "bytes", "{path}");
    }
    let types = [
        ("a.txt", "text/plain; charset=utf-8"),
        ("sub/meta.json", "application/json"),
        ("site/style.css", "text/css; charset=utf-8"),
        ("pixel", "image/png"),
    ];
    for (file, want) in types {
        let got = get(&o, &format!("/ipfs/{}/{file}", root("dir")), &[]).await;
        assert_eq!(got.header("content-type"), want, "{file}");
    }
    // No extension: sniffed from the verified bytes.
    let got = get(&o, &format!("/ipfs/{}", root("small")), &[]).await;
    assert_eq!(got.header("content-type"), "text/plain; charset=utf-8");
}

#[tokio::test]
async fn a_gateway_serving_a_flipped_byte_is_banned_and_the_file_comes_exact_from_another() {
    let liar = gateway(Mode::Flip).await;
    let honest = gateway(Mode::Honest).await;
    let o = outlast(&[&liar, &honest], FAST).await;
    let got = get(&o, &format!("/ipfs/{}", root("big")), &[]).await;
    assert_exact(
        &got,
        &original("big", "big.bin"),
        "big from a liar and an honest gateway",
    );
    assert_eq!(got.header("x-outlast-upstream"), "g1");
    assert_eq!(liar.requests(), 1, "the liar was asked first, once");
    // Banned: the next files never touch it.
    for (path, name, file) in every_file() {
        let got = get(&o, &format!("/ipfs/{path}"), &[]).await;
        assert_exact(&got, &original(name, file), &path);
    }
    assert_eq!(liar.requests(), 1, "a banned gateway is not asked again");
}

#[tokio::test]
async fn a_lie_in_the_middle_of_a_stream_is_never_sent() {
    // Honest for the root and the first leaf, then every block flipped.
    let liar = gateway(Mode::FlipFrom(2)).await;
    let o = outlast(&[&liar], FAST).await;
    let want = original("big", "big.bin");
    let got = get(&o, &format!("/ipfs/{}", root("big")), &[]).await;
    assert_eq!(got.status, 200, "the first verified bytes went out");
    assert!(
        !got.complete,
        "the response must be cut, not completed: {} of {} bytes, {:?}",
        got.body.len(),
        want.len(),
        got.headers
    );
    assert!(got.body.len() < want.len());
    assert!(
        got.body[..] == want[..got.body.len()],
        "every byte sent is the original"
    );

    // With an honest gateway beside it, the same file arrives whole.
    let honest = gateway(Mode::Honest).await;
    let liar = gateway(Mode::FlipFrom(2)).await;
    let o = outlast(&[&liar, &honest], FAST).await;
    let got = get(&o, &format!("/ipfs/{}", root("big")), &[]).await;
    assert_exact(&got, &want, "big, resumed after a lie mid-stream");
    assert_eq!(
        got.header("x-outlast-upstream"),
        "g0",
        "headers name who served first"
    );
    assert!(
        honest.car_requests() >= 1,
        "the rest came from the honest gateway"
    );
}

#[tokio::test]
async fn a_stream_that_stalls_mid_way_is_resumed_at_another_gateway() {
    // 300 000 bytes: the root and the first 256 KiB leaf, then silence.
    let staller = gateway(Mode::StallAfter(300_000)).await;
    let honest = gateway(Mode::Honest).await;
    let o = outlast(&[&staller, &honest], FAST).await;
    let got = get(&o, &format!("/ipfs/{}", root("big")), &[]).await;
    assert_exact(
        &got,
        &original("big", "big.bin"),
        "big, resumed after a stall",
    );
    assert_eq!(staller.requests(), 1, "asked once, then left");
    assert!(honest.car_requests() >= 1);
}

#[tokio::test]
async fn a_gateway_dying_mid_stream_is_resumed_elsewhere_from_the_byte_reached() {
    let dying = gateway(Mode::DieAfter(300_000)).await;
    let honest = gateway(Mode::Honest).await;
    let o = outlast(&[&dying, &honest], FAST).await;
    for (path, name, file) in [
        (root("big"), "big", "big.bin"),
        (root("big_v0"), "big_v0", "big.bin"),
    ] {
        let got = get(&o, &format!("/ipfs/{path}"), &[]).await;
        assert_exact(&got, &original(name, file), &path);
    }
    assert!(dying.requests() >= 1 && honest.car_requests() >= 1);
}

#[tokio::test]
async fn gateways_that_all_die_mid_stream_still_give_the_whole_file_block_by_block() {
    let a = gateway(Mode::DieAfter(40_000)).await;
    let b = gateway(Mode::DieAfter(40_000)).await;
    let o = outlast(&[&a, &b], FAST).await;
    let got = get(&o, &format!("/ipfs/{}", root("deep")), &[]).await;
    assert_exact(
        &got,
        &original("deep", "deep.bin"),
        "deep, from dying gateways",
    );
    assert!(
        a.raw_requests() + b.raw_requests() > 0,
        "single blocks were the last resort"
    );
}

#[tokio::test]
async fn honest_lying_stalling_and_dying_gateways_together_give_exact_bytes_every_time() {
    let liar = gateway(Mode::Flip).await;
    let staller = gateway(Mode::StallAfter(200_000)).await;
    let dying = gateway(Mode::DieAfter(150_000)).await;
    let honest = gateway(Mode::Honest).await;
    let o = outlast(
        &[&liar, &staller, &dying, &honest],
        &FAST.replace("race = 1", "race = 2"),
    )
    .await;
    for round in 0..2 {
        for (path, name, file) in every_file() {
            let got = get(&o, &format!("/ipfs/{path}"), &[]).await;
            assert_exact(
                &got,
                &original(name, file),
                &format!("round {round}: {path}"),
            );
        }
    }
}

#[tokio::test]
async fn a_hung_gateway_costs_a_hedge_delay_not_a_timeout() {
    let hung = gateway(Mode::Hang).await;
    let honest = gateway(Mode::Honest).await;
    // The hung gateway would hold the request for its whole first-block timeout; only
    // a hedge (after hedge_min_ms, 200 ms) to the other one answers sooner.
    let timeout = std::time::Duration::from_secs(20);
    let o = outlast(
        &[&hung, &honest],
        &FAST.replace(
            "first_block_timeout_ms = 2000",
            &format!("first_block_timeout_ms = {}", timeout.as_millis()),
        ),
    )
    .await;
    let started = Instant::now();
    let got = get(&o, &format!("/ipfs/{}", root("small")), &[]).await;
    let took = started.elapsed();
    assert_exact(
        &got,
        &original("small", "small.txt"),
        "small past a hung gateway",
    );
    assert!(hung.requests() > 0, "the hung gateway was never asked");
    assert_eq!(got.header("x-outlast-upstream"), "g1");
    // Not a wall-clock guess: without a hedge this cannot take less than the timeout.
    assert!(
        took < timeout,
        "took {took:?}: the hung gateway's first-block timeout ({timeout:?}) was waited out"
    );
    println!("past a hung gateway in {took:?}");
}

#[tokio::test]
async fn a_cid_nobody_has_is_a_404_listing_every_gateway_tried() {
    let a = gateway(Mode::Honest).await;
    let b = gateway(Mode::Missing).await;
    let o = outlast(&[&a, &b], FAST).await;
    // sha2-256 of "nobody has this", as a raw CIDv1.
    let cid = "bafkreiemqpndzewx4bioklzfvhtiegsfny5fxuc3nkjk2vmcpjxiammsti";
    let got = get(&o, &format!("/ipfs/{cid}"), &[]).await;
    assert_eq!(got.status, 404, "{}", String::from_utf8_lossy(&got.body));
    let body = got.json();
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("not found at any ipfs gateway"), "{error}");
    let tried: Vec<&str> = body["tried"]
        .as_array()
        .expect("tried")
        .iter()
        .map(|t| t["gateway"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(tried.len(), 2, "{body}");
    assert!(tried.contains(&"g0") && tried.contains(&"g1"), "{body}");
}

#[tokio::test]
async fn content_every_gateway_hangs_on_is_a_504_saying_so() {
    let a = gateway(Mode::Hang).await;
    let b = gateway(Mode::Hang).await;
    let o = outlast(
        &[&a, &b],
        &FAST.replace(
            "first_block_timeout_ms = 2000",
            "first_block_timeout_ms = 500",
        ),
    )
    .await;
    let got = get(&o, &format!("/ipfs/{}", root("small")), &[]).await;
    assert_eq!(got.status, 504, "{}", String::from_utf8_lossy(&got.body));
    let body = got.json();
    let tried = body["tried"].as_array().expect("tried");
    assert_eq!(tried.len(), 2, "{body}");
    for t in tried {
        assert!(
            t["error"]
                .as_str()
                .unwrap_or_default()
                .contains("no answer within"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn malformed_cids_are_400_naming_the_problem_and_unsupported_ones_501() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], FAST).await;
    for (path, status, says) in [
        ("/ipfs/notacid", 400, "is not a CID: not a multibase string"),
        ("/ipfs/QmTooShort", 400, "46 base58 characters"),
        (
            "/ipfs/bafkreig7cqc2rv6nkjdbkrrvr4ckohvsvzlghntk7cvlqr6",
            400,
            "is not a CID",
        ),
        (
            "/ipfs/bafyreigtbfsabdvubh7ttftaubfrtb2c6hedsdskbwqexbwh4vqujhnav4",
            501,
            "codec dag-cbor (0x71) is not supported",
        ),
    ] {
        let got = get(&o, path, &[]).await;
        assert_eq!(
            got.status,
            status,
            "{path}: {}",
            String::from_utf8_lossy(&got.body)
        );
        let error = got.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{path}: {error}");
    }
    assert_eq!(g.requests(), 0, "no gateway is asked about a bad CID");
}

#[tokio::test]
async fn ranges_are_206_with_exact_bytes_and_fetch_only_what_they_need() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], &format!("{FAST}cache_bytes = 0\n")).await;
    let deep = original("deep", "deep.bin");
    let big = original("big", "big.bin");
    let n = deep.len();
    for (fixture, data, range, from, to) in [
        ("deep", &deep, "bytes=0-0", 0, 0),
        ("deep", &deep, "bytes=1000-5000", 1000, 5000),
        ("deep", &deep, "bytes=50000-50000", 50000, 50000),
        ("deep", &deep, "bytes=99990-", 99990, n - 1),
        ("deep", &deep, "bytes=-100", n - 100, n - 1),
        ("big", &big, "bytes=262140-262150", 262140, 262150),
        ("big", &big, "bytes=599999-", 599999, 599999),
        // A last position past every u64 is the end (it once wrapped and panicked).
        ("deep", &deep, "bytes=1-18446744073709551615", 1, n - 1),
        ("big", &big, "bytes=0-99999999999999999999999", 0, 599999),
    ] {
        let got = get(&o, &format!("/ipfs/{}", root(fixture)), &[("range", range)]).await;
        assert_eq!(got.status, 206, "{fixture} {range}");
        assert!(got.complete);
        assert_eq!(
            got.header("content-range"),
            format!("bytes {from}-{to}/{}", data.len()),
            "{fixture} {range}"
        );
        assert!(
            got.body[..] == data[from..=to],
            "{fixture} {range}: bytes differ"
        );
    }
    let got = get(
        &o,
        &format!("/ipfs/{}", root("deep")),
        &[("range", "bytes=100000-")],
    )
    .await;
    assert_eq!(got.status, 416);
    assert_eq!(got.header("content-range"), "bytes */100000");
    let got = get(
        &o,
        &format!("/ipfs/{}", root("deep")),
        &[("range", "bytes=18446744073709551615-")],
    )
    .await;
    assert_eq!(got.status, 416);
    assert_eq!(got.header("content-range"), "bytes */100000");
}

#[tokio::test]
async fn directories_redirect_list_serve_index_html_and_name_missing_paths() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], FAST).await;
    let dir = root("dir");

    let got = get(&o, &format!("/ipfs/{dir}"), &[]).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.header("location"), format!("/ipfs/{dir}/"));
    let got = get(&o, &format!("/ipfs/{dir}/site"), &[]).await;
    assert_eq!(got.status, 301);
    assert_eq!(got.header("location"), format!("/ipfs/{dir}/site/"));

    let got = get(&o, &format!("/ipfs/{dir}/"), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), "text/html; charset=utf-8");
    let html = String::from_utf8_lossy(&got.body);
    for name in ["a.txt", "sub", "site", "pixel"] {
        assert!(
            html.contains(&format!("href=\"{name}\"")),
            "{name} in {html}"
        );
    }

    let got = get(&o, &format!("/ipfs/{dir}/site/"), &[]).await;
    assert_exact(
        &got,
        &original("dir", "site/index.html"),
        "site/ is its index.html",
    );
    assert_eq!(got.header("content-type"), "text/html; charset=utf-8");

    let got = get(&o, &format!("/ipfs/{}/", root("hamt")), &[]).await;
    assert_eq!(got.status, 200);
    let html = String::from_utf8_lossy(&got.body);
    for i in 0..40 {
        assert!(
            html.contains(&format!(">f{i:02}.txt<")),
            "f{i:02}.txt in the HAMT listing"
        );
    }

    for (path, says) in [
        (format!("{dir}/nope"), "no `nope` in the directory"),
        (
            format!("{dir}/sub/nope.txt"),
            "no `nope.txt` in the directory",
        ),
        (format!("{dir}/a.txt/x"), "no `x` in a file"),
        (format!("{}/f99.txt", root("hamt")), "no `f99.txt`"),
    ] {
        let got = get(&o, &format!("/ipfs/{path}"), &[]).await;
        assert_eq!(got.status, 404, "{path}");
        let error = got.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{path}: {error}");
    }
}

#[tokio::test]
async fn content_once_fetched_is_served_while_every_gateway_is_down() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], FAST).await;
    let files = [
        (root("big"), "big", "big.bin"),
        (format!("{}/sub/b.bin", root("dir")), "dir", "sub/b.bin"),
    ];
    for (path, name, file) in &files {
        let got = get(&o, &format!("/ipfs/{path}"), &[]).await;
        assert_exact(&got, &original(name, file), path);
    }
    g.set(Mode::Missing);
    let before = g.requests();
    for (path, name, file) in &files {
        let got = get(&o, &format!("/ipfs/{path}"), &[]).await;
        assert_exact(
            &got,
            &original(name, file),
            &format!("{path} from the cache"),
        );
        assert_eq!(got.header("x-outlast-upstream"), "cache");
    }
    assert_eq!(g.requests(), before, "no gateway was needed");
}

#[tokio::test]
async fn if_none_match_gets_304_and_identity_cids_need_no_gateway() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], FAST).await;
    let small = root("small");
    let got = get(
        &o,
        &format!("/ipfs/{small}"),
        &[("if-none-match", &format!("\"{small}\""))],
    )
    .await;
    assert_eq!(got.status, 304);
    assert_eq!(got.header("etag"), format!("\"{small}\""));
    assert!(got.body.is_empty());

    let got = get(&o, "/ipfs/bafkqaaa", &[]).await;
    assert_exact(&got, b"", "the empty identity CID");
    assert_eq!(g.requests(), 0);

    let head = reqwest::Client::new()
        .head(o.url(&format!("/ipfs/{small}")))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        original("small", "small.txt").len().to_string().as_str()
    );
    assert_eq!(head.headers()["etag"], format!("\"{small}\"").as_str());
}
