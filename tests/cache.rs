//! The finality-aware cache on real Anvil nodes: finalized answers survive every
//! upstream dying, `latest` answers end with their head, stale serving only when
//! configured, and identical calls in flight go upstream once.

mod testbed;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, body::Bytes, routing::post};
use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, Fleet,
    gateway::{FAST_ROUTING, Outlast, config},
};

/// The cache on, with its defaults (the test bed turns it off for routing tests).
const CACHE: &str = "\n[cache]\nttl_secs = 60\n";

/// Anvil finalizes 64 blocks behind its head: mine past that so block 3 is final.
const HEIGHT: u64 = 70;

async fn started(fleet: &Fleet, extra: &str) -> Outlast {
    let outlast = Outlast::start(&config(
        &fleet.urls(),
        &format!("{FAST_ROUTING}{CACHE}{extra}"),
    ))
    .await;
    outlast.wait_for_head("/local", fleet.height()).await;
    // The finalized block is learned from head polls; wait until Outlast pins to it.
    for _ in 0..200 {
        let (r, _) = outlast
            .call(
                "/local",
                "eth_getBlockByNumber",
                json!(["finalized", false]),
            )
            .await;
        if r["result"]["number"].as_str().is_some_and(|n| n != "0x0") {
            return outlast;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Outlast never learned the finalized block");
}

/// Waits until `/readyz` says no upstream of the chain is ready.
async fn wait_all_down(outlast: &Outlast) {
    for _ in 0..200 {
        let r = reqwest::get(outlast.url("/readyz")).await.expect("readyz");
        if r.status() == 503 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Outlast never noticed that every upstream is down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finalized_block_is_served_from_cache_with_every_upstream_killed() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(HEIGHT).await;
    let outlast = started(&fleet, "").await;
    let (first, up) = outlast
        .call("/local", "eth_getBlockByNumber", json!(["0x3", false]))
        .await;
    assert_ne!(up.as_deref(), Some("cache"), "the first read goes upstream");
    assert_eq!(first["result"]["number"], "0x3");

    fleet.kill(0);
    fleet.kill(1);
    let (again, up) = outlast
        .call("/local", "eth_getBlockByNumber", json!(["0x3", false]))
        .await;
    assert_eq!(up.as_deref(), Some("cache"), "{again}");
    assert_eq!(again["result"], first["result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_answer_is_not_served_after_the_head_moves() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&config(&fleet.urls(), &format!("{FAST_ROUTING}{CACHE}"))).await;
    outlast.wait_for_head("/local", 3).await;
    let balance = json!([ACCOUNT0_ADDRESS, "latest"]);
    let (_, up) = outlast
        .call("/local", "eth_getBalance", balance.clone())
        .await;
    assert_ne!(up.as_deref(), Some("cache"));
    let (_, up) = outlast
        .call("/local", "eth_getBalance", balance.clone())
        .await;
    assert_eq!(up.as_deref(), Some("cache"), "same head: cached");

    fleet.mine(1).await;
    outlast.wait_for_head("/local", 4).await;
    let (r, up) = outlast.call("/local", "eth_getBalance", balance).await;
    assert_ne!(up.as_deref(), Some("cache"), "new head, new answer: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_answer_is_not_served_stale_by_default() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&config(&fleet.urls(), &format!("{FAST_ROUTING}{CACHE}"))).await;
    outlast.wait_for_head("/local", 3).await;
    let balance = json!([ACCOUNT0_ADDRESS, "latest"]);
    let (r, _) = outlast
        .call("/local", "eth_getBalance", balance.clone())
        .await;
    assert!(r["result"].is_string(), "{r}");

    fleet.kill(0);
    fleet.kill(1);
    wait_all_down(&outlast).await;
    let (r, up) = outlast.call("/local", "eth_getBalance", balance).await;
    assert_eq!(r["error"]["code"], -32002, "{r}");
    assert_ne!(up.as_deref(), Some("cache"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_answer_is_served_stale_and_marked_when_configured() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&config(
        &fleet.urls(),
        &format!("{FAST_ROUTING}\n[cache]\nserve_stale = true\n"),
    ))
    .await;
    outlast.wait_for_head("/local", 3).await;
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance",
        "params": [ACCOUNT0_ADDRESS, "latest"]})
    .to_string();
    let fresh = outlast.post("/local", body.clone()).await.json();

    fleet.kill(0);
    fleet.kill(1);
    wait_all_down(&outlast).await;
    let r = reqwest::Client::new()
        .post(outlast.url("/local"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    assert_eq!(header("x-outlast-upstream").as_deref(), Some("cache"));
    let age: u64 = header("x-outlast-stale-seconds")
        .expect("x-outlast-stale-seconds")
        .parse()
        .expect("seconds");
    assert!(age < 60, "{age}");
    let stale: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(stale["result"], fresh["result"]);
    assert_eq!(stale["id"], 7);
}

/// Relays to `target`, holding each `eth_getBalance` 300 ms, and counts them.
async fn counting_relay(target: String) -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let (seen, client, target) = (seen.clone(), client.clone(), target.clone());
            async move {
                if String::from_utf8_lossy(&body).contains("eth_getBalance") {
                    seen.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                match client
                    .post(&target)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r.text().await.unwrap_or_default(),
                    Err(e) => format!("relay failed: {e}"),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_calls_go_upstream_once() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(3).await;
    let (relay, count) = counting_relay(fleet.url(0)).await;
    let outlast = Outlast::start(&config(&[relay], &format!("{FAST_ROUTING}{CACHE}"))).await;
    outlast.wait_for_head("/local", 3).await;
    let calls =
        (0..10).map(|_| outlast.call("/local", "eth_getBalance", json!([ACCOUNT0_ADDRESS, "0x2"])));
    let replies = futures_util::future::join_all(calls).await;
    for (r, _) in &replies {
        assert_eq!(r["result"], replies[0].0["result"], "{r}");
        assert!(r["result"].is_string(), "{r}");
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "10 identical calls, one upstream call"
    );
}
