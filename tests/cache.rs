//! The finality-aware cache on real Anvil nodes: finalized answers (blocks, mined
//! transactions, receipts, proven balances) survive every upstream dying, `latest`
//! answers end with their head and with a reorg, stale serving only when configured,
//! and identical calls in flight go upstream once.

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
    ACCOUNT0_ADDRESS, BLOCK_TIME, Fleet, block_timestamp,
    gateway::{FAST_ROUTING, Outlast, config, relay, serve},
    rpc, rpc_result,
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
    outlast.wait_for_finalized("/local").await;
    outlast
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
                relay(&client, &target, body).await
            }
        }),
    );
    (serve(app).await, count)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mined_transaction_and_receipt_are_served_with_every_upstream_killed() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(2).await;
    let hash = fleet.transfer_on_every_node(0).await;
    fleet.mine(HEIGHT - 2).await;
    let outlast = started(&fleet, "").await;
    let asks = [
        ("eth_getTransactionReceipt", json!([hash])),
        ("eth_getTransactionByHash", json!([hash])),
    ];
    let mut first = Vec::new();
    for (method, params) in &asks {
        let (r, up) = outlast.call("/local", method, params.clone()).await;
        assert_ne!(
            up.as_deref(),
            Some("cache"),
            "{method}: the first read goes upstream"
        );
        assert_eq!(r["result"]["blockNumber"], "0x3", "{method}: {r}");
        first.push(r["result"].clone());
    }
    let block_hash = first[0]["blockHash"].clone();
    let (block, _) = outlast
        .call("/local", "eth_getBlockByHash", json!([block_hash, false]))
        .await;
    assert_eq!(block["result"]["transactions"][0], hash.as_str());

    fleet.kill(0);
    fleet.kill(1);
    wait_all_down(&outlast).await;
    for ((method, params), before) in asks.iter().zip(&first) {
        let (r, up) = outlast.call("/local", method, params.clone()).await;
        assert_eq!(up.as_deref(), Some("cache"), "{method}: {r}");
        assert_eq!(r["result"], *before, "{method}");
    }
    let (again, up) = outlast
        .call("/local", "eth_getBlockByHash", json!([block_hash, false]))
        .await;
    assert_eq!(up.as_deref(), Some("cache"), "{again}");
    assert_eq!(again["result"], block["result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_answer_is_cached_with_its_level_and_outlives_the_upstreams() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(HEIGHT).await;
    let toml = config(&fleet.urls(), &format!("{FAST_ROUTING}{CACHE}"))
        .replace("verify = \"off\"", "verify = \"proofs\"\nquorum = 2");
    let outlast = Outlast::start(&toml).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
        "params": [ACCOUNT0_ADDRESS, "0x3"]})
    .to_string();
    let first = outlast.post("/local", body.clone()).await;
    assert_eq!(first.verified.as_deref(), Some("proof"), "{}", first.text);
    assert_ne!(first.upstream.as_deref(), Some("cache"));
    let balance = first.json()["result"].clone();
    assert_eq!(
        balance,
        rpc_result(
            &fleet.url(0),
            "eth_getBalance",
            json!([ACCOUNT0_ADDRESS, "0x3"])
        )
        .await
    );

    for i in 0..3 {
        fleet.kill(i);
    }
    wait_all_down(&outlast).await;
    let again = outlast.post("/local", body).await;
    assert_eq!(again.upstream.as_deref(), Some("cache"), "{}", again.text);
    assert_eq!(
        again.verified.as_deref(),
        Some("proof"),
        "the level is kept"
    );
    assert_eq!(again.json()["result"], balance);
}

/// Polls Outlast's `latest` block until its hash is no longer `old`.
async fn wait_for_new_latest(outlast: &Outlast, old: &Value) -> (Value, Option<String>) {
    for _ in 0..400 {
        let reply = outlast
            .call("/local", "eth_getBlockByNumber", json!(["latest", false]))
            .await;
        if reply.0["result"]["hash"] != *old {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Outlast never saw the reorg");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_at_the_head_is_never_answered_from_the_cache() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let hash = fleet.transfer_on_every_node(0).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet.urls(), &format!("{FAST_ROUTING}{CACHE}"))).await;
    outlast.wait_for_head("/local", 4).await;
    let latest = json!(["latest", false]);
    let (before, _) = outlast
        .call("/local", "eth_getBlockByNumber", latest.clone())
        .await;
    let (cached, up) = outlast
        .call("/local", "eth_getBlockByNumber", latest.clone())
        .await;
    assert_eq!(up.as_deref(), Some("cache"), "same head: cached");
    assert_eq!(cached["result"], before["result"]);
    let (receipt, _) = outlast
        .call("/local", "eth_getTransactionReceipt", json!([hash]))
        .await;
    assert_eq!(receipt["result"]["blockHash"], before["result"]["hash"]);
    let (_, up) = outlast
        .call("/local", "eth_getTransactionReceipt", json!([hash]))
        .await;
    assert_eq!(up.as_deref(), Some("cache"));

    // Every node replaces block 4 by another one at the same height, without the
    // transfer: its hash changes and the transfer is no longer mined.
    for url in fleet.urls() {
        rpc_result(&url, "anvil_rollback", json!([1])).await;
        rpc(&url, "anvil_dropAllTransactions", json!([])).await;
        rpc_result(
            &url,
            "evm_mine",
            json!([block_timestamp(4) + BLOCK_TIME / 2]),
        )
        .await;
    }
    let node_block = rpc_result(&fleet.url(0), "eth_getBlockByNumber", latest.clone()).await;
    assert_eq!(node_block["number"], "0x4");
    assert_ne!(node_block["hash"], before["result"]["hash"]);

    let (after, up) = wait_for_new_latest(&outlast, &before["result"]["hash"]).await;
    assert_ne!(up.as_deref(), Some("cache"), "{after}");
    assert_eq!(after["result"]["hash"], node_block["hash"]);
    let (receipt, up) = outlast
        .call("/local", "eth_getTransactionReceipt", json!([hash]))
        .await;
    assert_ne!(up.as_deref(), Some("cache"), "{receipt}");
    assert_eq!(
        receipt["result"],
        rpc_result(&fleet.url(0), "eth_getTransactionReceipt", json!([hash])).await,
        "the receipt as the nodes now have it, not the orphaned one"
    );
}

/// One call with its response headers: (reply, x-outlast-upstream, x-outlast-stale-seconds).
async fn call_with_headers(outlast: &Outlast, body: &str) -> (Value, Option<String>, Option<u64>) {
    let r = reqwest::Client::new()
        .post(outlast.url("/local"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("post");
    let header = |name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
    };
    let upstream = header("x-outlast-upstream");
    let age = header("x-outlast-stale-seconds").map(|a| a.parse().expect("seconds"));
    let reply = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    (reply, upstream, age)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_latest_answer_ends_after_ttl_secs_though_the_head_stands_still() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let ttl = Duration::from_secs(1);
    let outlast = Outlast::start(&config(
        &fleet.urls(),
        &format!("{FAST_ROUTING}\n[cache]\nttl_secs = {}\n", ttl.as_secs()),
    ))
    .await;
    outlast.wait_for_head("/local", 3).await;
    let balance = json!([ACCOUNT0_ADDRESS, "latest"]);
    let asked = std::time::Instant::now();
    let (_, up) = outlast
        .call("/local", "eth_getBalance", balance.clone())
        .await;
    assert_ne!(up.as_deref(), Some("cache"), "the first read goes upstream");
    let (_, up) = outlast
        .call("/local", "eth_getBalance", balance.clone())
        .await;
    // Kept since after `asked`: younger than the TTL, it must come from the cache.
    if asked.elapsed() < ttl {
        assert_eq!(up.as_deref(), Some("cache"), "a fresh answer is cached");
    }
    // No block is mined: only its age can end it.
    let mut missed = None;
    for _ in 0..400 {
        let (r, up) = outlast
            .call("/local", "eth_getBalance", balance.clone())
            .await;
        assert!(r["result"].is_string(), "{r}");
        if up.as_deref() != Some("cache") {
            missed = Some(asked.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missed = missed.expect("the answer was still served from the cache after 20 s");
    assert!(missed >= ttl, "ended after {missed:?}, before its TTL");
    let (head, _) = outlast.call("/local", "eth_blockNumber", json!([])).await;
    assert_eq!(head["result"], "0x3", "the head stood still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_answer_is_served_up_to_max_stale_secs_then_refused() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    // max_stale_secs below ttl_secs: the stale limit holds by itself.
    let max_stale = Duration::from_secs(2);
    let outlast = Outlast::start(&config(
        &fleet.urls(),
        &format!(
            "{FAST_ROUTING}\n[cache]\nttl_secs = 60\nserve_stale = true\nmax_stale_secs = {}\n",
            max_stale.as_secs()
        ),
    ))
    .await;
    outlast.wait_for_head("/local", 3).await;
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance",
        "params": [ACCOUNT0_ADDRESS, "latest"]})
    .to_string();
    let asked = std::time::Instant::now();
    let (fresh, _, _) = call_with_headers(&outlast, &body).await;
    assert!(fresh["result"].is_string(), "{fresh}");

    fleet.kill(0);
    fleet.kill(1);
    wait_all_down(&outlast).await;
    let mut ages = Vec::new();
    let mut refused = None;
    for _ in 0..400 {
        let (r, up, age) = call_with_headers(&outlast, &body).await;
        if up.as_deref() == Some("cache") {
            assert_eq!(r["result"], fresh["result"]);
            ages.push(age.expect("a stale answer says its age"));
        } else {
            assert_eq!(r["error"]["code"], -32002, "{r}");
            refused = Some(asked.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = refused.expect("a stale answer was still served after 20 s");
    assert!(
        ages.iter().all(|&a| a < max_stale.as_secs()),
        "served older than max_stale_secs: ages {ages:?}"
    );
    assert!(
        refused >= max_stale,
        "refused after {refused:?}, before max_stale_secs"
    );
}
