//! `[auth]` on the real server: keys in the path, `x-api-key` and `Authorization:
//! Bearer` (and over WebSocket), 401/-32001 without a valid one, per-key budgets with
//! 429 + `Retry-After` + -32005, method and chain allow-lists, per-address limits for
//! callers without a key (trusted proxies' `X-Forwarded-For` believed), metrics by key
//! name and never the key — and budgets shared by two instances through one real Redis.

mod testbed;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Outlast, config},
};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

const WALLET: &str = "wallet-key-0123456789abcdef";
const INDEXER: &str = "indexer-key-0123456789abcdef";

fn auth_toml(fleet: &Fleet, auth: &str) -> String {
    let extra = format!(
        "{FAST_ROUTING}\n[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n{auth}\n\
         [[auth.keys]]\nname = \"wallet\"\nkey = \"{WALLET}\"\nrps = 1\nburst = 3\n\
         [[auth.keys]]\nname = \"indexer\"\nkey = \"{INDEXER}\"\nrps = 1000\n\
         methods = [\"eth_get*\", \"net_version\"]\nchains = [\"local\"]\n"
    );
    config(&fleet.urls(), &extra)
}

async fn post(url: &str, headers: &[(&str, &str)], body: Value) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let body = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON body");
    (status, retry, body)
}

fn call(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": []})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_in_the_path_or_a_header_lets_in_and_none_or_a_wrong_one_gets_401() {
    let fleet = Fleet::start(1).await;
    let o = Outlast::start(&auth_toml(&fleet, "[auth]\nanonymous_rps = 0\n")).await;
    let url = o.url("/local");
    for (what, url, headers) in [
        ("path", o.url(&format!("/local/{INDEXER}")), vec![]),
        ("x-api-key", url.clone(), vec![("x-api-key", INDEXER)]),
        (
            "bearer",
            url.clone(),
            vec![("authorization", &*format!("Bearer {INDEXER}").leak())],
        ),
    ] {
        let (status, _, body) = post(&url, &headers, call("eth_getBlockByNumber")).await;
        let _ = body;
        assert_eq!(status, 200, "key in the {what}");
    }
    let (status, _, body) = post(&url, &[], call("eth_blockNumber")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], -32001, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("x-api-key"),
        "says how to send a key: {body}"
    );
    let (status, _, body) = post(
        &o.url("/local/not-a-key-0123456789"),
        &[],
        call("eth_blockNumber"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!(-32001))
    );
    let (status, _, _) = post(
        &url,
        &[("x-api-key", "wallet-key-0123456789abcdeX")],
        call("eth_blockNumber"),
    )
    .await;
    assert_eq!(status, 401, "one character off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_budget_gets_429_with_retry_after_and_minus_32005() {
    let fleet = Fleet::start(1).await;
    let o = Outlast::start(&auth_toml(&fleet, "[auth]\n")).await;
    let url = o.url(&format!("/local/{WALLET}"));
    // A batch of three is the whole burst; the next call, at once, is over budget.
    let batch = json!([
        call("eth_chainId"),
        call("net_version"),
        call("eth_chainId")
    ]);
    let (status, _, body) = post(&url, &[], batch).await;
    assert_eq!(status, 200, "{body}");
    let (status, retry, body) = post(&url, &[], call("eth_chainId")).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"]["code"], -32005, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("key `wallet`"),
        "{body}"
    );
    // A batch larger than the burst can never pass: told to send smaller ones.
    let big = json!([
        call("eth_chainId"),
        call("eth_chainId"),
        call("eth_chainId"),
        call("eth_chainId")
    ]);
    let (status, _, body) = post(&url, &[], big).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("smaller batches"),
        "{body}"
    );
    // Another key's budget is its own.
    let (status, _, _) = post(
        &o.url("/local"),
        &[("x-api-key", INDEXER)],
        call("eth_getBalance"),
    )
    .await;
    assert_eq!(status, 200);
    // The budget refills at its pace.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _, body) = post(&url, &[], call("eth_chainId")).await;
    assert_eq!(status, 200, "{body}");

    let metrics = o.metrics().await;
    assert!(
        metrics.contains(r#"outlast_auth_calls_total{key="wallet",outcome="limited"}"#),
        "per key name"
    );
    assert!(metrics.contains(r#"outlast_auth_calls_total{key="wallet",outcome="allowed"}"#));
    assert!(
        !metrics.contains(WALLET) && !metrics.contains(INDEXER),
        "never the key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_chains_outside_a_keys_lists_are_refused() {
    let fleet = Fleet::start(1).await;
    let toml = auth_toml(&fleet, "[auth]\n")
        + "\n[[chains]]\nname = \"other\"\nchain_id = 31337\nverify = \"off\"\n"
        + &format!(
            "[[chains.upstreams]]\nname = \"o0\"\nurl = \"{}\"\noperator = \"x\"\n",
            fleet.urls()[0]
        );
    // Two chains may not share an id: give the second its own.
    let toml = toml.replacen(
        "name = \"other\"\nchain_id = 31337",
        "name = \"other\"\nchain_id = 31338",
        1,
    );
    let o = Outlast::start_unready(&toml).await;
    let url = o.url(&format!("/local/{INDEXER}"));
    for _ in 0..200 {
        let (_, _, b) = post(&url, &[], call("eth_getBlockByNumber")).await;
        if b.get("error").is_none() || b["error"]["code"] != -32002 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let batch = json!([
        {"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance", "params": ["0x0000000000000000000000000000000000000000", "latest"]},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_sendRawTransaction", "params": ["0x00"]},
        {"jsonrpc": "2.0", "id": 3, "method": "net_version", "params": []},
    ]);
    let (status, _, body) = post(&url, &[], batch).await;
    assert_eq!(status, 200, "{body}");
    let replies = body.as_array().expect("batch reply");
    assert!(replies[0]["result"].is_string(), "{body}");
    assert_eq!(replies[1]["error"]["code"], -32004, "{body}");
    assert!(
        replies[1]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("indexer"),
        "names the key: {body}"
    );
    assert!(replies[2]["result"].is_string(), "{body}");
    // Denied methods stay denied whatever the key allows.
    let (_, _, body) = post(&url, &[], call("eth_getAnything")).await;
    assert_ne!(body["error"]["code"], -32001, "{body}");
    let (status, _, body) = post(
        &o.url(&format!("/other/{INDEXER}")),
        &[],
        call("eth_getBalance"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!(-32001)),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_a_key_are_limited_per_address_behind_a_trusted_proxy() {
    let fleet = Fleet::start(1).await;
    let o = Outlast::start(&auth_toml(
        &fleet,
        "[auth]\nanonymous_rps = 1\nanonymous_burst = 2\n",
    ))
    .await;
    let url = o.url("/local");
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    for _ in 0..2 {
        let (status, _, b) = post(&url, &from("203.0.113.1"), call("eth_chainId")).await;
        assert_eq!(status, 200, "{b}");
    }
    let (status, retry, body) = post(&url, &from("203.0.113.1"), call("eth_chainId")).await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")), "{body}");
    assert_eq!(body["error"]["code"], -32005);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("without a key"),
        "{body}"
    );
    let (status, _, _) = post(&url, &from("203.0.113.2"), call("eth_chainId")).await;
    assert_eq!(status, 200, "another address has its own budget");
    let (status, _, _) = post(
        &url,
        &[("x-forwarded-for", "203.0.113.1"), ("x-api-key", INDEXER)],
        call("net_version"),
    )
    .await;
    assert_eq!(status, 200, "a key is charged to the key, not the address");
}

fn ws_request(
    url: &str,
    headers: &[(&'static str, &str)],
) -> tungstenite::handshake::client::Request {
    let mut req = url.into_client_request().expect("request");
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().expect("header"));
    }
    req
}

async fn ws_call(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    body: Value,
) -> Value {
    ws.send(Message::Text(body.to_string().into()))
        .await
        .expect("send");
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply within 10 s")
            .expect("open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_need_a_key_too_and_each_message_is_charged_and_checked() {
    let fleet = Fleet::start(1).await;
    let o = Outlast::start(&auth_toml(&fleet, "[auth]\n")).await;
    let ws = o.base.replace("http://", "ws://");
    let refused = tokio_tungstenite::connect_async(format!("{ws}/local")).await;
    match refused {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    let (mut indexer, _) = tokio_tungstenite::connect_async(format!("{ws}/local/{INDEXER}"))
        .await
        .expect("key in the path");
    let r = ws_call(&mut indexer, call("net_version")).await;
    assert!(r["result"].is_string(), "{r}");
    let r = ws_call(
        &mut indexer,
        json!({"jsonrpc": "2.0", "id": 2, "method": "eth_subscribe", "params": ["newHeads"]}),
    )
    .await;
    assert_eq!(
        r["error"]["code"], -32004,
        "subscriptions are methods too: {r}"
    );
    let (mut wallet, _) = tokio_tungstenite::connect_async(ws_request(
        &format!("{ws}/local"),
        &[("x-api-key", WALLET)],
    ))
    .await
    .expect("key in a header");
    for _ in 0..3 {
        let r = ws_call(&mut wallet, call("eth_chainId")).await;
        assert!(r["result"].is_string(), "{r}");
    }
    let r = ws_call(&mut wallet, call("eth_chainId")).await;
    assert_eq!(r["error"]["code"], -32005, "over budget: {r}");
}

use testbed::redis_server::RedisServer as Redis;

async fn readyz_limits(o: &Outlast) -> Value {
    let r = reqwest::get(o.url("/readyz")).await.expect("readyz");
    let body: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    body["rate_limits"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_enforce_one_budget_and_fall_back_when_it_dies() {
    let mut redis = Redis::start().await;
    let fleet = Fleet::start(1).await;
    let toml = auth_toml(&fleet, "[auth]\n")
        + &format!(
            "\n[redis]\nurl = \"{}\"\nsecret = \"test-secret-of-the-instances-0123456789\"\n",
            redis.url
        );
    let a = Outlast::start(&toml).await;
    // Its own process: nothing shared with `a` but Redis.
    let b = Outlast::start_process(
        &toml.replace("[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n", ""),
    )
    .await;
    let on = |o: &Outlast| o.url(&format!("/local/{WALLET}"));
    // The wallet's burst is 3 in all: two calls on one, one on the other…
    for url in [on(&a), on(&b), on(&a)] {
        let (status, _, body) = post(&url, &[], call("eth_chainId")).await;
        assert_eq!(status, 200, "{body}");
    }
    // …and the fourth is refused on either.
    let (status, retry, body) = post(&on(&b), &[], call("eth_chainId")).await;
    assert_eq!((status, retry.as_deref()), (429, Some("1")), "{body}");
    assert_eq!(readyz_limits(&a).await, "shared (Redis)");

    redis.kill().await;
    // Each instance now keeps its own budget: calls go on, and it says so.
    let (status, _, body) = post(&on(&a), &[], call("net_version")).await;
    assert!(status == 200 || status == 429, "{status} {body}");
    let said = readyz_limits(&a).await;
    assert!(
        said.as_str().unwrap_or("").contains("Redis unavailable"),
        "{said}"
    );
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("outlast_rate_limits_shared 0"),
        "visible in metrics"
    );
    b.stop().await;
}
