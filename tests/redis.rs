//! Redis as the shared second cache tier: Outlast instances, also in separate
//! processes, share answers (a proven one keeps its level; an unproven one is not served
//! where answers must be proven), an entry edited or forged in Redis is never served,
//! and Redis dying mid-run never takes Outlast down.
//! Runs a real `redis-server` (scripts/test.sh installs it) on a free port, without
//! persistence, stopped when the test ends.

mod testbed;

use std::time::Duration;

use serde_json::json;
use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Outlast, config},
};

use testbed::redis_server::RedisServer as Redis;

/// Anvil finalizes 64 blocks behind its head: mine past that so block 3 is final.
const HEIGHT: u64 = 70;

async fn outlast(fleet: &Fleet, redis: &Redis) -> Outlast {
    outlast_verifying(fleet, redis, "off").await
}

/// An instance whose chain verifies in `mode` (`off`, `proofs`), quorum 2.
async fn outlast_verifying(fleet: &Fleet, redis: &Redis, mode: &str) -> Outlast {
    let o = Outlast::start(&toml(fleet, redis, mode)).await;
    o.wait_for_head("/local", fleet.height()).await;
    o
}

/// `[redis] secret` of every instance in these tests: they share entries.
const SECRET: &str = "test-secret-of-the-instances-0123456789";

/// The config of an instance using `redis`, verifying in `mode`, quorum 2.
fn toml(fleet: &Fleet, redis: &Redis, mode: &str) -> String {
    let extra = format!(
        "{FAST_ROUTING}\n[cache]\nttl_secs = 60\n[redis]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        redis.url
    );
    config(&fleet.urls(), &extra).replace(
        "verify = \"off\"",
        &format!("verify = \"{mode}\"\nquorum = 2"),
    )
}

/// `/readyz`'s word on Redis, and its HTTP status.
async fn readyz_redis(o: &Outlast) -> (u16, serde_json::Value) {
    let r = reqwest::get(o.url("/readyz")).await.expect("readyz");
    let status = r.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    (status, body["redis"].clone())
}

/// Reads block 3 until Outlast has learned it is final (then the answer is cached).
async fn read_final_block(o: &Outlast) -> serde_json::Value {
    o.wait_for_finalized("/local").await;
    let (r, _) = o
        .call("/local", "eth_getBlockByNumber", json!(["0x3", false]))
        .await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_outlast_process_answers_from_redis_with_every_upstream_killed() {
    let redis = Redis::start().await;
    let mut fleet = Fleet::start(2).await;
    fleet.mine(HEIGHT).await;
    let a = outlast(&fleet, &redis).await;
    // Its own process: nothing shared with `a` but Redis.
    let b = Outlast::start_process(&toml(&fleet, &redis, "off")).await;
    b.wait_for_head("/local", fleet.height()).await;
    let first = read_final_block(&a).await;
    assert_eq!(first["result"]["number"], "0x3", "{first}");
    // Redis is written in the background.
    written(
        &mut connect(&redis).await,
        "outlast:31337:eth_getBlockByNumber:[\"0x3\",false]",
    )
    .await;

    fleet.kill(0);
    fleet.kill(1);
    let (shared, up) = b
        .call("/local", "eth_getBlockByNumber", json!(["0x3", false]))
        .await;
    assert_eq!(up.as_deref(), Some("cache"), "{shared}");
    assert_eq!(shared["result"], first["result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlast_keeps_answering_while_redis_dies_and_comes_back() {
    let mut redis = Redis::start().await;
    let mut fleet = Fleet::start(2).await;
    fleet.mine(HEIGHT).await;
    let o = outlast(&fleet, &redis).await;
    read_final_block(&o).await;
    assert_eq!(readyz_redis(&o).await, (200, json!("up")));

    // A client keeps reading: blocks (cached in memory after their first read) and
    // balances of accounts never read before (which miss memory, so Redis is asked).
    // Redis is killed a third of the way through.
    let mut failed = Vec::new();
    for k in 0..120u64 {
        if k == 40 {
            redis.kill().await;
        }
        let n = format!("{:#x}", k % 40 + 1);
        let (r, _) = o
            .call("/local", "eth_getBlockByNumber", json!([n, false]))
            .await;
        if r["result"]["number"] != n.as_str() {
            failed.push(r);
        }
        let account = format!("0x{:040x}", 0xdead_0000 + k);
        let (r, _) = o
            .call("/local", "eth_getBalance", json!([account, "0x3"]))
            .await;
        if r["result"] != "0x0" {
            failed.push(r);
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
    let (status, said) = readyz_redis(&o).await;
    assert_eq!(status, 200, "Redis down never makes Outlast unready");
    assert_eq!(
        said,
        json!("down: caching in memory only"),
        "80 reads that asked Redis since it died"
    );
    let (r, up) = o
        .call("/local", "eth_getBlockByNumber", json!(["0x3", false]))
        .await;
    assert_eq!(r["result"]["number"], "0x3", "{r}");
    assert_eq!(
        up.as_deref(),
        Some("cache"),
        "the memory tier still answers"
    );

    // Redis back on the same port: the shared tier is used again.
    let _back = Redis::start_on(redis.port()).await;
    for k in 0..200u64 {
        // An account not read before, so the memory tier misses and Redis is asked.
        let account = format!("0x{k:040x}");
        o.call("/local", "eth_getBalance", json!([account, "0x3"]))
            .await;
        if readyz_redis(&o).await.1 == json!("up") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("Outlast never used Redis again after it came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_shared_answer_is_not_served_where_answers_are_proven() {
    let redis = Redis::start().await;
    let mut fleet = Fleet::start(3).await;
    fleet.mine(HEIGHT).await;
    let trusting = outlast_verifying(&fleet, &redis, "off").await;
    let proving = outlast_verifying(&fleet, &redis, "proofs").await;
    read_final_block(&trusting).await;
    read_final_block(&proving).await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
        "params": [testbed::ACCOUNT0_ADDRESS, "0x3"]})
    .to_string();
    let unverified = trusting.post("/local", body.clone()).await;
    assert_eq!(unverified.verified.as_deref(), Some("none"));
    // Redis is written in the background.
    let mut conn = connect(&redis).await;
    let key = balance_key("0x3");
    written(&mut conn, &key).await;

    let proven = proving.post("/local", body.clone()).await;
    assert_ne!(proven.upstream.as_deref(), Some("cache"), "{}", proven.text);
    assert_eq!(proven.verified.as_deref(), Some("proof"));
    assert_eq!(proven.json()["result"], unverified.json()["result"]);
    // The proven answer replaces the unproven one.
    written_as(&mut conn, &key, |v| v.get(LEVEL) == Some(&b'p')).await;

    // The proven answer is shared: a third instance takes it from Redis, level and all,
    // with every node gone.
    let third = outlast_verifying(&fleet, &redis, "proofs").await;
    for i in 0..3 {
        fleet.kill(i);
    }
    let shared = third.post("/local", body).await;
    assert_eq!(shared.upstream.as_deref(), Some("cache"), "{}", shared.text);
    assert_eq!(shared.verified.as_deref(), Some("proof"));
    assert_eq!(shared.json()["result"], proven.json()["result"]);
}

/// Our own connection to the test's Redis, as anyone who can reach it has.
async fn connect(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url.as_str())
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's redis-server")
}

/// The Redis key of `eth_getBalance(ACCOUNT0, block)` on the test chain.
fn balance_key(block: &str) -> String {
    format!(
        "outlast:31337:eth_getBalance:[\"{}\",\"{block}\"]",
        testbed::ACCOUNT0_ADDRESS.to_ascii_lowercase()
    )
}

/// Waits until Outlast's background write of `key` reached Redis; returns the value.
async fn written(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<u8> {
    written_as(conn, key, |_| true).await
}

/// Waits until `key` holds a value that `wanted`; returns it.
async fn written_as(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
    wanted: impl Fn(&[u8]) -> bool,
) -> Vec<u8> {
    use redis::AsyncCommands;
    for _ in 0..500 {
        let got: Option<Vec<u8>> = conn.get(key).await.expect("GET");
        if let Some(v) = got.filter(|v| wanted(v)) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let keys: Vec<String> = conn.keys("outlast:*").await.expect("KEYS");
    panic!("{key} never written as expected; Redis holds {keys:#?}");
}

/// An entry is a 32-byte tag, then lifetime, level and 8 bytes of time, then the answer.
const TAG: usize = 32;
const LEVEL: usize = TAG + 1;
const ANSWER: usize = TAG + 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_edited_or_forged_in_redis_is_never_served() {
    use redis::AsyncCommands;
    let redis = Redis::start().await;
    let mut fleet = Fleet::start(3).await;
    fleet.mine(HEIGHT).await;
    let proving = outlast_verifying(&fleet, &redis, "proofs").await;
    let trusting = outlast_verifying(&fleet, &redis, "off").await;
    read_final_block(&proving).await;
    read_final_block(&trusting).await;
    let mut conn = connect(&redis).await;
    let balance = |block: &str| {
        json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
            "params": [testbed::ACCOUNT0_ADDRESS, block]})
        .to_string()
    };

    // Proven balances at blocks 2 to 4, an unproven one at block 5, all final.
    let mut truth = Vec::new();
    for (o, block, level) in [
        (&proving, "0x2", "proof"),
        (&proving, "0x3", "proof"),
        (&proving, "0x4", "proof"),
        (&trusting, "0x5", "none"),
    ] {
        let r = o.post("/local", balance(block)).await;
        assert_eq!(r.verified.as_deref(), Some(level), "{}", r.text);
        let value = written(&mut conn, &balance_key(block)).await;
        assert_eq!(value[LEVEL], level.as_bytes()[0], "level {level} stored");
        truth.push((block, r.json()["result"].clone(), value));
    }

    // What someone with access to Redis might write: the zero-balance lie.
    let lie = b"\"0x0\"";
    for (block, _, value) in &truth {
        let forged: Vec<u8> = match *block {
            // The answer edited, the tag kept.
            "0x2" => [&value[..ANSWER], lie].concat(),
            // The answer edited, a tag made up.
            "0x3" => [&[0xab; TAG][..], &value[TAG..ANSWER], lie].concat(),
            // No tag at all: the format before entries were authenticated.
            "0x4" => [&value[TAG..ANSWER], lie].concat(),
            // The level raised from none to proof, the tag kept.
            _ => {
                let mut raised = value.clone();
                raised[LEVEL] = b'p';
                raised
            }
        };
        let () = conn.set(balance_key(block), forged).await.expect("SET");
    }

    // A second proving instance sharing the Redis, with nothing in memory: each read
    // goes upstream, is proven, and is the truth.
    let second = outlast_verifying(&fleet, &redis, "proofs").await;
    for (block, answer, _) in &truth {
        let r = second.post("/local", balance(block)).await;
        assert_ne!(r.upstream.as_deref(), Some("cache"), "{block}: {}", r.text);
        assert_eq!(r.verified.as_deref(), Some("proof"), "{block}: {}", r.text);
        assert_eq!(&r.json()["result"], answer, "{block}");
        assert_ne!(r.json()["result"], "0x0", "{block}: the lie was served");
    }
    let refused = second
        .counter("outlast_cache_redis_rejected_total{reason=\"tag\"}")
        .await;
    assert!(
        refused.is_some_and(|n| n >= 4.0),
        "refusals counted: {refused:?}"
    );
}

/// A value under a cache key longer than any Outlast writes (someone else's, or a
/// hostile writer's) is not read whole on every request for that key: refused after
/// the longest an entry can be, and the call goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_longer_than_any_entry_is_refused_unread() {
    use redis::AsyncCommands;
    let redis = Redis::start().await;
    let mut fleet = Fleet::start(3).await;
    fleet.mine(HEIGHT).await;
    let outlast = outlast_verifying(&fleet, &redis, "proofs").await;
    read_final_block(&outlast).await;
    let mut conn = connect(&redis).await;
    // Longer than the longest entry (an 8 MiB answer, its tag and header).
    let huge = vec![b'x'; (8 << 20) + ANSWER + 1];
    let () = conn.set(balance_key("0x2"), huge).await.expect("SET");
    let r = outlast
        .post(
            "/local",
            json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
                "params": [testbed::ACCOUNT0_ADDRESS, "0x2"]})
            .to_string(),
        )
        .await;
    assert_ne!(r.upstream.as_deref(), Some("cache"), "{}", r.text);
    assert_eq!(r.verified.as_deref(), Some("proof"), "{}", r.text);
    let metrics = outlast.metrics().await;
    assert!(
        metrics.contains("outlast_cache_redis_rejected_total{reason=\"too_large\"} 1"),
        "{metrics}"
    );
}

/// One judgement everywhere: a provider caught lying by one instance (a false proof
/// of a zero balance) is banned on a second instance that never asked it anything, with
/// the evidence, through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_caught_on_one_instance_is_banned_on_every_instance() {
    let redis = Redis::start().await;
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let catcher = outlast_verifying(&fleet, &redis, "proofs").await;
    let other = outlast_verifying(&fleet, &redis, "proofs").await;
    assert_eq!(other.upstream_status("u0").await["state"], "ready");

    testbed::rpc_result(
        &fleet.url(0),
        "anvil_setBalance",
        json!([testbed::ACCOUNT1_ADDRESS, "0x0"]),
    )
    .await;
    // Balance reads through the first instance until it has asked u0 for a proof: of a
    // new address each time, so no cached answer stands in (u0's state no longer
    // matches the agreed header, so any proof of it is false).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0u64;
    while catcher.upstream_status("u0").await["state"] != "banned" {
        assert!(tokio::time::Instant::now() < deadline, "u0 never caught");
        i += 1;
        let (r, _) = catcher
            .call(
                "/local",
                "eth_getBalance",
                json!([format!("0x{i:040x}"), "latest"]),
            )
            .await;
        assert_eq!(r["result"], "0x0", "{r}");
    }
    // The second instance hears of it by itself.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let u0 = other.upstream_status("u0").await;
        if u0["state"] == "banned" {
            let why = u0["last_error"].as_str().unwrap_or_default();
            assert!(
                why.contains("on another instance") && why.contains("false proof"),
                "{u0}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "u0 not banned on the other: {u0}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        other.upstream_status("u1").await["state"],
        "ready",
        "only the liar"
    );
}
