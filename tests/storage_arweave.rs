//! `GET /ar/{id}` end to end: Outlast in front of local Arweave gateways
//! (tests/testbed/arweave_gateway.rs) serving transactions that arweave-js made and
//! signed with a generated RSA-4096 key (tests/fixtures/storage/arweave.json). Headers
//! must verify (id and RSA-PSS signature), chunks must prove their place under the
//! signed `data_root`; liars are banned and the client gets exactly the original bytes.

#[path = "testbed/arweave_gateway.rs"]
mod arweave_gateway;
#[path = "testbed/storage_gateway.rs"]
mod storage_gateway;
mod testbed;

use std::sync::Arc;

use arweave_gateway::{ArweaveGateway, Mode, Weave};
use serde_json::Value;
use testbed::gateway::{Outlast, config, recording_upstream};

const FAST: &str = "connect_timeout_ms = 500\nfirst_block_timeout_ms = 2000\nstall_timeout_ms = 500\nhedge_min_ms = 200\nrace = 1\n";

fn weave() -> Arc<Weave> {
    static WEAVE: std::sync::OnceLock<Arc<Weave>> = std::sync::OnceLock::new();
    WEAVE.get_or_init(Weave::fixtures).clone()
}

async fn gateway(mode: Mode) -> ArweaveGateway {
    ArweaveGateway::start(weave(), mode).await
}

async fn outlast(gateways: &[&ArweaveGateway], settings: &str) -> Outlast {
    let (chain, _) = recording_upstream().await;
    let mut toml = format!("[storage]\n{settings}\n");
    for (i, g) in gateways.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[storage.arweave]]\nname = \"a{i}\"\nurl = \"{}\"\noperator = \"op{i}\"\n",
            g.url
        ));
    }
    Outlast::start(&config(&[chain], &toml)).await
}

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

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn get(o: &Outlast, path: &str, headers: &[(&str, &str)]) -> Got {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
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

fn assert_exact(got: &Got, want: &[u8], what: &str) {
    assert_eq!(
        got.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&got.body[..got.body.len().min(500)])
    );
    assert_eq!(got.body.len(), want.len(), "{what}: length");
    assert!(got.body == want, "{what}: bytes differ");
}

const ALL: [&str; 5] = ["meta", "600k", "540k", "512k", "v1"];

#[tokio::test]
async fn every_fixture_transaction_is_served_byte_exact_with_its_signed_type() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], FAST).await;
    let w = weave();
    for name in ALL {
        let id = w.id(name);
        let got = get(&o, &format!("/ar/{id}"), &[]).await;
        assert_exact(&got, &w.data(name), name);
        assert_eq!(got.header("etag"), format!("\"{id}\""), "{name}");
        assert_eq!(
            got.header("cache-control"),
            "public, max-age=29030400, immutable"
        );
        assert_eq!(got.header("x-outlast-verified"), "proof");
    }
    let ty = |name: &str| {
        let o = &o;
        let id = w.id(name);
        async move {
            get(o, &format!("/ar/{id}"), &[])
                .await
                .header("content-type")
                .to_owned()
        }
    };
    assert_eq!(ty("meta").await, "application/json", "from the signed tag");
    assert_eq!(ty("v1").await, "text/plain", "from the signed tag");
    assert_eq!(ty("600k").await, "application/octet-stream");
}

#[tokio::test]
async fn a_gateway_serving_flipped_chunks_is_banned_and_the_data_comes_exact() {
    let liar = gateway(Mode::FlipChunks).await;
    let honest = gateway(Mode::Honest).await;
    let o = outlast(&[&liar, &honest], FAST).await;
    let w = weave();
    let got = get(&o, &format!("/ar/{}", w.id("600k")), &[]).await;
    assert_exact(&got, &w.data("600k"), "600k past a liar");
    let asked = liar.requests();
    for name in ["540k", "512k", "meta"] {
        let got = get(&o, &format!("/ar/{}", w.id(name)), &[]).await;
        assert_exact(&got, &w.data(name), name);
    }
    assert_eq!(
        liar.requests(),
        asked,
        "a banned gateway is not asked again"
    );
}

#[tokio::test]
async fn forged_and_foreign_headers_are_refused_and_their_gateways_banned() {
    let forger = gateway(Mode::ForgeHeader).await;
    let swapper = gateway(Mode::WrongHeader).await;
    let honest = gateway(Mode::Honest).await;
    let o = outlast(&[&forger, &swapper, &honest], FAST).await;
    let w = weave();
    let got = get(&o, &format!("/ar/{}", w.id("meta")), &[]).await;
    assert_exact(&got, &w.data("meta"), "meta past two liars");
    assert_eq!(
        got.header("content-type"),
        "application/json",
        "the signed type, not the forged one"
    );
    let (f, s) = (forger.requests(), swapper.requests());
    let got = get(&o, &format!("/ar/{}", w.id("600k")), &[]).await;
    assert_exact(&got, &w.data("600k"), "600k");
    assert_eq!(
        (forger.requests(), swapper.requests()),
        (f, s),
        "both banned"
    );
}

#[tokio::test]
async fn only_liars_give_a_502_that_says_why_and_no_data() {
    let forger = gateway(Mode::ForgeHeader).await;
    let flipper = gateway(Mode::FlipChunks).await;
    let o = outlast(&[&forger], FAST).await;
    let got = get(&o, &format!("/ar/{}", weave().id("600k")), &[]).await;
    assert_eq!(got.status, 502);
    let body = got.json();
    assert!(
        body["tried"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("signature does not verify"),
        "{body}"
    );
    let o = outlast(&[&flipper], FAST).await;
    let got = get(&o, &format!("/ar/{}", weave().id("600k")), &[]).await;
    assert_eq!(got.status, 502, "{}", String::from_utf8_lossy(&got.body));
    let text = got.json().to_string();
    assert!(text.contains("does not match its proof; banned"), "{text}");
}

#[tokio::test]
async fn ranges_across_chunk_bounds_are_206_with_exact_bytes() {
    let g = gateway(Mode::Honest).await;
    let o = outlast(&[&g], &format!("{FAST}cache_bytes = 0\n")).await;
    let w = weave();
    for (name, range, from, to) in [
        ("600k", "bytes=262140-262150", 262140usize, 262150usize),
        ("600k", "bytes=-10", 614390, 614399),
        ("540k", "bytes=400000-410000", 400000, 410000),
        ("512k", "bytes=524287-", 524287, 524287),
        ("v1", "bytes=0-5", 0, 5),
    ] {
        let data = w.data(name);
        let got = get(&o, &format!("/ar/{}", w.id(name)), &[("range", range)]).await;
        assert_eq!(got.status, 206, "{name} {range}");
        assert_eq!(
            got.header("content-range"),
            format!("bytes {from}-{to}/{}", data.len())
        );
        assert!(got.body[..] == data[from..=to], "{name} {range}");
    }
    let got = get(
        &o,
        &format!("/ar/{}", w.id("meta")),
        &[("range", "bytes=99-")],
    )
    .await;
    assert_eq!(got.status, 416);
    // Positions past every u64: clamped to the end, or unsatisfiable.
    let data = w.data("600k");
    let n = data.len();
    let id = w.id("600k");
    let got = get(
        &o,
        &format!("/ar/{id}"),
        &[("range", "bytes=1-18446744073709551615")],
    )
    .await;
    assert_eq!(got.status, 206);
    assert_eq!(
        got.header("content-range"),
        format!("bytes 1-{}/{n}", n - 1)
    );
    assert!(got.body[..] == data[1..]);
    let got = get(
        &o,
        &format!("/ar/{id}"),
        &[("range", "bytes=18446744073709551615-")],
    )
    .await;
    assert_eq!(got.status, 416);
    assert_eq!(got.header("content-range"), format!("bytes */{n}"));
}

#[tokio::test]
async fn without_chunk_storage_small_data_is_checked_whole_against_data_root() {
    let g = gateway(Mode::NoChunks).await;
    let o = outlast(&[&g], FAST).await;
    let w = weave();
    for name in ["600k", "512k"] {
        let got = get(&o, &format!("/ar/{}", w.id(name)), &[]).await;
        assert_exact(&got, &w.data(name), name);
    }
}

#[tokio::test]
async fn a_hung_gateway_is_hedged_and_cached_data_outlives_every_gateway() {
    let hung = gateway(Mode::Hang).await;
    let honest = gateway(Mode::Honest).await;
    let o = outlast(
        &[&hung, &honest],
        &FAST.replace(
            "first_block_timeout_ms = 2000",
            "first_block_timeout_ms = 20000",
        ),
    )
    .await;
    let w = weave();
    let started = std::time::Instant::now();
    let got = get(&o, &format!("/ar/{}", w.id("540k")), &[]).await;
    let took = started.elapsed();
    assert_exact(&got, &w.data("540k"), "540k past a hung gateway");
    assert!(hung.requests() > 0, "the hung gateway was never asked");
    // Without a hedge this cannot take less than the hung gateway's first-block timeout.
    assert!(
        took < std::time::Duration::from_secs(20),
        "took {took:?}: the hung gateway's first-block timeout (20 s) was waited out"
    );
    honest.set(Mode::Missing);
    hung.set(Mode::Missing);
    let got = get(&o, &format!("/ar/{}", w.id("540k")), &[]).await;
    assert_exact(&got, &w.data("540k"), "540k from the cache");
    assert_eq!(got.header("x-outlast-upstream"), "cache");
}

#[tokio::test]
async fn bad_ids_are_400_and_unknown_ones_404_listing_the_gateways_tried() {
    let a = gateway(Mode::Honest).await;
    let b = gateway(Mode::Missing).await;
    let o = outlast(&[&a, &b], FAST).await;
    for (id, says) in [
        ("short", "43 base64url characters"),
        (
            "ZBZGgUChxp9JGDEwkC04ovxyFVnwCx9uLykmR6sBF$M",
            "not base64url",
        ),
    ] {
        let got = get(&o, &format!("/ar/{id}"), &[]).await;
        assert_eq!(got.status, 400, "{id}");
        let error = got.json()["error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains(says), "{id}: {error}");
    }
    let got = get(&o, &format!("/ar/{}/index.html", weave().id("meta")), &[]).await;
    assert_eq!(got.status, 501, "{}", String::from_utf8_lossy(&got.body));
    assert!(got.json()["error"].to_string().contains("path manifests"));
    let got = get(&o, "/ar/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", &[]).await;
    assert_eq!(got.status, 404, "{}", String::from_utf8_lossy(&got.body));
    let body = got.json();
    assert_eq!(body["tried"].as_array().map(Vec::len), Some(2), "{body}");
    let got = get(
        &o,
        &format!("/ar/{}", weave().id("meta")),
        &[("if-none-match", &format!("\"{}\"", weave().id("meta")))],
    )
    .await;
    assert_eq!(got.status, 304);
}
