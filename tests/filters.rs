//! HTTP filters held by Outlast, on three identical Anvil nodes in the default mode
//! (proofs, quorum 2): every poll is answered, whichever upstream routing would have
//! picked — before, 70–80% of polls reached a node that never made the filter (-32000
//! filter not found) — and an upstream dying between polls costs nothing. With a real
//! `redis-server`, two instances share block and log filters: made on one, polled on
//! both in turn (and at once), each change comes once and in order; an entry forged or
//! edited in Redis is refused. Filters are bounded per client and in total. Also: a
//! receipt for block N means `latest` is at least N, even while one node runs ahead.

mod testbed;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, ACCOUNT1_ADDRESS, BLOCK_TIME, Fleet, block_timestamp,
    gateway::{FAST_ROUTING, Outlast},
    quantity,
    redis_server::RedisServer,
    rpc, rpc_result,
};

/// Token.sol's init code (tests/fixtures/build-token.sh rebuilds it).
const TOKEN: &str = include_str!("fixtures/token.hex");
const TRANSFER: &str = "0xa9059cbb";
const TRANSFER_TOPIC: &str = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef";
/// Generous bound for anything that waits on the feed (2 shared cores).
const WAIT: Duration = Duration::from_secs(30);

/// The default mode (proofs, quorum 2, cache on) with the tests' short timeouts.
fn default_mode(fleet: &Fleet, extra: &str) -> String {
    let mut s = format!("{FAST_ROUTING}{extra}\n[[chains]]\nname = \"local\"\nchain_id = 31337\n");
    for (i, url) in fleet.urls().iter().enumerate() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    s
}

fn word(hex: &str) -> String {
    format!("{:0>64}", hex.trim_start_matches("0x"))
}

/// Sends the same transaction from account 0 to every node (same hash everywhere).
async fn send_everywhere(fleet: &Fleet, tx: Value) -> String {
    let mut hashes = Vec::new();
    for url in fleet.urls() {
        hashes.push(rpc_result(&url, "eth_sendTransaction", json!([tx.clone()])).await);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    hashes[0].as_str().expect("hash").to_owned()
}

async fn deploy(fleet: &mut Fleet, nonce: u64) -> String {
    let data = format!("0x{}{}", TOKEN.trim(), word("3e8"));
    let hash = send_everywhere(
        fleet,
        json!({"from": ACCOUNT0_ADDRESS, "data": data, "nonce": format!("{nonce:#x}"),
            "gas": "0x200000", "gasPrice": "0x77359400"}),
    )
    .await;
    fleet.mine(1).await;
    let receipt = rpc_result(&fleet.url(0), "eth_getTransactionReceipt", json!([hash])).await;
    receipt["contractAddress"]
        .as_str()
        .expect("a contract")
        .to_owned()
}

async fn transfer(fleet: &Fleet, token: &str, nonce: u64, amount: u64) -> String {
    let data = format!(
        "{TRANSFER}{}{}",
        word(ACCOUNT1_ADDRESS),
        word(&format!("{amount:x}"))
    );
    send_everywhere(
        fleet,
        json!({"from": ACCOUNT0_ADDRESS, "to": token, "data": data,
            "nonce": format!("{nonce:#x}"), "gas": "0x100000", "gasPrice": "0x77359400"}),
    )
    .await
}

/// Polls `id` until `want` items came (or `WAIT`); every poll must succeed.
async fn collect(url: &str, id: &str, want: usize, polls: &mut usize) -> Vec<Value> {
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < want && start.elapsed() < WAIT {
        let reply = rpc(url, "eth_getFilterChanges", json!([id])).await;
        *polls += 1;
        let changes = reply["result"].as_array();
        let changes = changes.unwrap_or_else(|| panic!("poll {polls} of {id} failed: {reply}"));
        got.extend(changes.iter().cloned());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_filters_answer_every_poll_and_survive_an_upstream_dying() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&default_mode(&fleet, "")).await;
    let url = outlast.url("/local");
    outlast.wait_for_head("/local", 2).await;
    let id = rpc_result(&url, "eth_newBlockFilter", json!([])).await;
    let id = id.as_str().expect("an id");
    assert!(id.starts_with("0x") && id.len() == 34, "{id}");
    let mut polls = 0;
    // Each poll may reach any upstream's turn in routing: none of them has this filter.
    for _ in 0..20 {
        let reply = rpc(&url, "eth_getFilterChanges", json!([id])).await;
        assert_eq!(reply["result"], json!([]), "{reply}");
        polls += 1;
    }
    fleet.mine(3).await;
    let first = collect(&url, id, 3, &mut polls).await;
    fleet.kill(0);
    fleet.mine(2).await;
    let second = collect(&url, id, 2, &mut polls).await;
    let hashes: Vec<Value> = first.into_iter().chain(second).collect();
    let mut expected = Vec::new();
    for n in 3..=7u64 {
        let b = rpc_result(
            &fleet.url(1),
            "eth_getBlockByNumber",
            json!([format!("{n:#x}"), false]),
        )
        .await;
        expected.push(b["hash"].clone());
    }
    assert_eq!(
        hashes, expected,
        "each new block once, in order, across the failover"
    );
    println!("block filter: {polls} polls, 0 failed");
    assert_eq!(
        rpc_result(&url, "eth_uninstallFilter", json!([id])).await,
        json!(true)
    );
    let gone = rpc(&url, "eth_getFilterChanges", json!([id])).await;
    assert_eq!(gone["error"]["code"], -32000, "{gone}");
    assert_eq!(gone["error"]["message"], "filter not found", "{gone}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_filters_return_matching_logs_and_filter_logs_runs_get_logs() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let token = deploy(&mut fleet, 0).await;
    let outlast = Outlast::start(&default_mode(&fleet, "")).await;
    let url = outlast.url("/local");
    outlast.wait_for_head("/local", 2).await;
    let criteria = json!({"fromBlock": "0x1", "address": token, "topics": [TRANSFER_TOPIC]});
    let id = rpc_result(&url, "eth_newFilter", json!([criteria])).await;
    let id = id.as_str().expect("an id").to_owned();
    let other = rpc_result(
        &url,
        "eth_newFilter",
        json!([{"address": "0x0000000000000000000000000000000000000001"}]),
    )
    .await;
    let mut polls = 0;
    for (nonce, amount) in [(1u64, 5u64), (2, 7)] {
        let hash = transfer(&fleet, &token, nonce, amount).await;
        fleet.mine(1).await;
        let logs = collect(&url, &id, 1, &mut polls).await;
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0]["transactionHash"], json!(hash));
        assert_eq!(logs[0]["removed"], json!(false));
        assert_eq!(quantity(&logs[0]["data"]), amount);
    }
    fleet.kill(2);
    let none = rpc_result(&url, "eth_getFilterChanges", json!([other])).await;
    assert_eq!(none, json!([]), "a filter on another address sees nothing");
    // The whole range: the constructor's mint and both transfers.
    let all = rpc_result(&url, "eth_getFilterLogs", json!([id])).await;
    let direct = rpc_result(&fleet.url(0), "eth_getLogs", json!([criteria])).await;
    assert_eq!(all.as_array().map(Vec::len), Some(3), "{all}");
    assert_eq!(all, direct);
    println!("log filter: {polls} polls, 0 failed");
    let unknown = rpc(&url, "eth_getFilterLogs", json!(["0x1234"])).await;
    assert_eq!(unknown["error"]["code"], -32000, "{unknown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_are_capped_with_a_clear_error() {
    let fleet = Fleet::start(2).await;
    let outlast = Outlast::start(&default_mode(&fleet, "[limits]\nmax_filters = 2\n")).await;
    let url = outlast.url("/local");
    outlast.wait_for_head("/local", 0).await;
    rpc_result(&url, "eth_newBlockFilter", json!([])).await;
    rpc_result(&url, "eth_newPendingTransactionFilter", json!([])).await;
    let third = rpc(&url, "eth_newBlockFilter", json!([])).await;
    assert_eq!(third["error"]["code"], -32005, "{third}");
    let message = third["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_filters"), "{third}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_for_block_n_means_latest_is_at_least_n() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&default_mode(&fleet, "")).await;
    let url = outlast.url("/local");
    outlast.wait_for_head("/local", 2).await;
    let mut ahead = 0;
    for nonce in 0..3u64 {
        let hash = fleet.transfer_on_every_node(nonce).await;
        // Node 0 mines the block first; the others only after a while.
        fleet.lag(1);
        fleet.lag(2);
        fleet.mine(1).await;
        let n = fleet.height();
        let start = Instant::now();
        loop {
            let reply = rpc(&url, "eth_getTransactionReceipt", json!([hash])).await;
            let latest = quantity(&rpc_result(&url, "eth_blockNumber", json!([])).await);
            let receipt = &reply["result"];
            if !reply["error"].is_null() {
                panic!("a receipt whose block few nodes have yet is null, not an error: {reply}");
            } else if receipt.is_null() {
                ahead += 1;
            } else {
                let at = quantity(&receipt["blockNumber"]);
                assert_eq!(at, n);
                assert!(
                    latest >= at,
                    "receipt in block {at}, then eth_blockNumber {latest}"
                );
                let balance =
                    rpc_result(&url, "eth_getBalance", json!([ACCOUNT1_ADDRESS, "latest"])).await;
                assert!(!balance.is_null());
                break;
            }
            if start.elapsed() > Duration::from_secs(2) {
                fleet.catch_up(1).await;
            }
            assert!(start.elapsed() < WAIT, "no receipt for block {n}");
        }
        fleet.catch_up(1).await;
        fleet.catch_up(2).await;
    }
    println!("receipts from a block above the consensus head: null {ahead} times");
}

/// `[redis] secret` of the instances that share filters.
const SECRET: &str = "filters-test-secret-0123456789abcdef";

/// The default mode with `[redis]`: block and log filters live in Redis.
fn shared_mode(fleet: &Fleet, redis: &RedisServer, extra: &str) -> String {
    default_mode(
        fleet,
        &format!(
            "\n[redis]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{extra}",
            redis.url
        ),
    )
}

/// Two instances on one Redis (each with its own filters, heads and health), both
/// caught up with the fleet.
async fn two_instances(fleet: &Fleet, toml: &str, path: &str) -> (Outlast, Outlast) {
    let a = Outlast::start(toml).await;
    let b = Outlast::start(toml).await;
    a.wait_for_head(path, fleet.height()).await;
    b.wait_for_head(path, fleet.height()).await;
    (a, b)
}

/// One poll; its changes, or a panic naming the poll that failed.
async fn changes(url: &str, id: &str) -> Vec<Value> {
    let reply = rpc(url, "eth_getFilterChanges", json!([id])).await;
    match reply["result"].as_array() {
        Some(items) => items.clone(),
        None => panic!("a poll of {id} at {url} failed: {reply}"),
    }
}

/// Six polls at once, three on each instance: what they returned together.
async fn at_once(urls: &[String; 2], id: &str) -> Vec<Value> {
    futures_util::future::join_all((0..6).map(|i| changes(&urls[i % 2], id)))
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn id_of(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("not a filter id: {v}"))
        .to_owned()
}

/// The canonical hashes of blocks `from..=to`, from a node.
async fn block_hashes(fleet: &Fleet, from: u64, to: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for n in from..=to {
        let b = rpc_result(
            &fleet.url(0),
            "eth_getBlockByNumber",
            json!([format!("{n:#x}"), false]),
        )
        .await;
        out.push(b["hash"].clone());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_made_on_one_instance_are_answered_by_another_through_redis() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let token = deploy(&mut fleet, 0).await;
    let (a, b) = two_instances(&fleet, &shared_mode(&fleet, &redis, ""), "/local").await;
    let urls = [a.url("/local"), b.url("/local")];
    let criteria = json!({"fromBlock": "0x1", "address": token, "topics": [TRANSFER_TOPIC]});
    let logs = id_of(&rpc_result(&urls[0], "eth_newFilter", json!([criteria])).await);
    let blocks = id_of(&rpc_result(&urls[0], "eth_newBlockFilter", json!([])).await);
    let made_at = fleet.height();
    // Held in Redis: the other instance, which never saw them made, answers them.
    assert_eq!(changes(&urls[1], &blocks).await, Vec::<Value>::new());
    assert_eq!(changes(&urls[1], &logs).await, Vec::<Value>::new());

    let (mut sent, mut got_logs, mut got_blocks, mut polls) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for k in 0..4u64 {
        sent.push(json!(transfer(&fleet, &token, k + 1, 10 + k).await));
        fleet.mine(1).await;
        // Polled on A and B in turn until this block's log and hash came.
        let start = Instant::now();
        while (got_logs.len() < sent.len() || got_blocks.len() < sent.len())
            && start.elapsed() < WAIT
        {
            let url = &urls[polls % 2];
            got_logs.extend(changes(url, &logs).await);
            got_blocks.extend(changes(url, &blocks).await);
            polls += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // One more block, once both instances' heads have it, polled on both at the same
    // moment, several times each: exactly one poll delivers it.
    sent.push(json!(transfer(&fleet, &token, 5, 99).await));
    fleet.mine(1).await;
    a.wait_for_head("/local", fleet.height()).await;
    b.wait_for_head("/local", fleet.height()).await;
    let (l, bl) = tokio::join!(at_once(&urls, &logs), at_once(&urls, &blocks));
    polls += 12;
    assert_eq!(
        (l.len(), bl.len()),
        (1, 1),
        "one delivery each: {l:?} {bl:?}"
    );
    got_logs.extend(l);
    got_blocks.extend(bl);
    // Nothing more comes, on either.
    for url in &urls {
        got_logs.extend(changes(url, &logs).await);
        got_blocks.extend(changes(url, &blocks).await);
    }
    let tx_hashes: Vec<Value> = got_logs
        .iter()
        .map(|l| l["transactionHash"].clone())
        .collect();
    assert_eq!(tx_hashes, sent, "each transfer's log once, in order");
    assert!(
        got_logs.iter().all(|l| l["removed"] == json!(false)),
        "{got_logs:?}"
    );
    assert_eq!(
        got_blocks,
        block_hashes(&fleet, made_at + 1, fleet.height()).await,
        "each new block's hash once, in order"
    );
    println!("shared filters: {polls} polls over two instances, 0 failed");

    // eth_getFilterLogs of A's filter, on B (once B's head, which `latest` is pinned
    // to, has the last block): the mint and the five transfers.
    b.wait_for_head("/local", fleet.height()).await;
    let all = rpc_result(&urls[1], "eth_getFilterLogs", json!([logs])).await;
    let direct = rpc_result(&fleet.url(0), "eth_getLogs", json!([criteria])).await;
    assert_eq!(all.as_array().map(Vec::len), Some(6), "{all}");
    assert_eq!(all, direct);

    // Uninstalled on B: gone for A too.
    assert_eq!(
        rpc_result(&urls[1], "eth_uninstallFilter", json!([logs])).await,
        json!(true)
    );
    let gone = rpc(&urls[0], "eth_getFilterChanges", json!([logs])).await;
    assert_eq!(gone["error"]["code"], -32000, "{gone}");
    assert_eq!(gone["error"]["message"], "filter not found", "{gone}");
    assert_eq!(
        rpc_result(&urls[0], "eth_uninstallFilter", json!([logs])).await,
        json!(false)
    );
    assert_eq!(
        rpc_result(&urls[0], "eth_uninstallFilter", json!([blocks])).await,
        json!(true)
    );
    let gone = rpc(&urls[1], "eth_getFilterChanges", json!([blocks])).await;
    assert_eq!(gone["error"]["code"], -32000, "{gone}");
}

/// Polls `ids` on A and B in turn until each has `want` items (or `WAIT`).
async fn poll_in_turn(urls: &[String; 2], ids: &[&str], want: &[usize]) -> Vec<Vec<Value>> {
    let mut got = vec![Vec::new(); ids.len()];
    let start = Instant::now();
    let mut turn = 0;
    while got.iter().zip(want).any(|(g, w)| g.len() < *w) && start.elapsed() < WAIT {
        for (id, sink) in ids.iter().zip(&mut got) {
            sink.extend(changes(&urls[turn % 2], id).await);
        }
        turn += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_filter_tells_a_reorg_as_removed_logs_then_the_new_branch() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let token = deploy(&mut fleet, 0).await;
    let (a, b) = two_instances(&fleet, &shared_mode(&fleet, &redis, ""), "/local").await;
    let urls = [a.url("/local"), b.url("/local")];
    let logs = id_of(&rpc_result(&urls[0], "eth_newFilter", json!([{"address": token}])).await);
    let blocks = id_of(&rpc_result(&urls[0], "eth_newBlockFilter", json!([])).await);
    for nonce in 1..=3u64 {
        transfer(&fleet, &token, nonce, nonce).await;
        fleet.mine(1).await;
    }
    let top = fleet.height();
    let old = poll_in_turn(&urls, &[&logs, &blocks], &[3, 3]).await;
    assert_eq!((old[0].len(), old[1].len()), (3, 3), "{old:?}");

    // Both nodes drop their last two blocks (Anvil forgets them at once) and mine three
    // others, with transfers in the first and the third: blocks top-1 and top change
    // hash, top+1 is new.
    let fork = top - 1;
    for i in 0..2 {
        rpc_result(&fleet.url(i), "anvil_rollback", json!([2])).await;
    }
    let mut new_txs = Vec::new();
    for (k, n) in (fork..=top + 1).enumerate() {
        if k != 1 {
            new_txs.push(json!(
                transfer(&fleet, &token, 2 + new_txs.len() as u64, 50 + n).await
            ));
        }
        for i in 0..2 {
            // Another timestamp than before, so even an empty block differs.
            rpc_result(
                &fleet.url(i),
                "evm_mine",
                json!([block_timestamp(n) + BLOCK_TIME / 2]),
            )
            .await;
        }
    }
    let new = poll_in_turn(&urls, &[&logs, &blocks], &[4, 3]).await;
    let summary: Vec<(u64, bool)> = new[0]
        .iter()
        .map(|l| (quantity(&l["blockNumber"]), l["removed"] == json!(true)))
        .collect();
    assert_eq!(
        summary,
        vec![(fork, true), (top, true), (fork, false), (top + 1, false)],
        "first the orphaned logs, removed, oldest first; then the new branch's: {:?}",
        new[0]
    );
    assert_eq!(new[0][0]["transactionHash"], old[0][1]["transactionHash"]);
    assert_eq!(new[0][1]["transactionHash"], old[0][2]["transactionHash"]);
    let tx_hashes: Vec<Value> = new[0][2..]
        .iter()
        .map(|l| l["transactionHash"].clone())
        .collect();
    assert_eq!(tx_hashes, new_txs);
    let mut branch = Vec::new();
    for n in fork..=top + 1 {
        let block = rpc_result(
            &fleet.url(0),
            "eth_getBlockByNumber",
            json!([format!("{n:#x}"), false]),
        )
        .await;
        branch.push(block["hash"].clone());
    }
    assert_eq!(new[1], branch, "the new branch's hashes, in order");
    for url in &urls {
        assert_eq!(
            changes(url, &logs).await,
            Vec::<Value>::new(),
            "nothing twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_entry_forged_moved_or_edited_in_redis_is_refused() {
    let redis = RedisServer::start().await;
    let mut fleet = Fleet::start(2).await;
    fleet.mine(2).await;
    let (a, b) = two_instances(&fleet, &shared_mode(&fleet, &redis, ""), "/local").await;
    let (ua, ub) = (a.url("/local"), b.url("/local"));
    let id = id_of(&rpc_result(&ua, "eth_newBlockFilter", json!([])).await);
    assert_eq!(
        changes(&ub, &id).await,
        Vec::<Value>::new(),
        "the real one works"
    );
    let key = |id: &str| format!("outlast:filter:31337:{id}");
    let mut conn = redis.connection().await;
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(key(&id))
        .query_async(&mut conn)
        .await
        .expect("the filter is in Redis");
    let json_at = stored
        .windows(8)
        .position(|w| w == b"{\"kind\":")
        .expect("a JSON note after the tag");
    let set = |k: String, v: Vec<u8>| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("SET")
                .arg(k)
                .arg(v)
                .query_async::<()>(&mut conn)
                .await
                .expect("SET");
        }
    };
    // Written by someone without the secret: the note alone, no tag.
    let forged = format!("0x{}", "ab".repeat(16));
    set(key(&forged), stored[json_at..].to_vec()).await;
    // A real entry copied under another id: its tag is for the key it was made for.
    let moved = format!("0x{}", "cd".repeat(16));
    set(key(&moved), stored.clone()).await;
    for (what, id, url) in [("unsigned", &forged, &ua), ("moved", &moved, &ub)] {
        let reply = rpc(url, "eth_getFilterChanges", json!([id])).await;
        assert_eq!(reply["error"]["code"], -32000, "{what}: {reply}");
    }
    // The real entry with its cursor edited back to genesis, the tag kept: it would
    // deliver every block again.
    let text = String::from_utf8_lossy(&stored[json_at..]).into_owned();
    let cursor = format!("\"number\":{}", fleet.height());
    assert!(text.contains(&cursor), "{text}");
    let mut edited = stored[..json_at].to_vec();
    edited.extend_from_slice(text.replace(&cursor, "\"number\":0").as_bytes());
    set(key(&id), edited).await;
    let reply = rpc(&ub, "eth_getFilterChanges", json!([id])).await;
    assert_eq!(reply["error"]["code"], -32000, "edited: {reply}");
    let metrics = a.metrics().await;
    assert!(
        metrics.contains("outlast_cache_redis_rejected_total{reason=\"tag\"}"),
        "refusals are counted"
    );
}

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef";

/// Two keys, each its own client for `max_filters_per_client`.
fn with_keys(extra: &str) -> String {
    format!(
        "[auth]\nanonymous_rps = 0\n\
         [[auth.keys]]\nname = \"alice\"\nkey = \"{ALICE}\"\nrps = 1000\n\
         [[auth.keys]]\nname = \"bob\"\nkey = \"{BOB}\"\nrps = 1000\n\
         [limits]\nmax_filters_per_client = 2\n{extra}"
    )
}

fn assert_refused_per_client(reply: &Value) {
    assert_eq!(reply["error"]["code"], -32005, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_filters_per_client"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_holds_at_most_max_filters_per_client() {
    let fleet = Fleet::start(2).await;
    let o = Outlast::start(&default_mode(&fleet, &with_keys(""))).await;
    let (alice, bob) = (
        o.url(&format!("/local/{ALICE}")),
        o.url(&format!("/local/{BOB}")),
    );
    o.wait_for_head(&format!("/local/{ALICE}"), 0).await;
    rpc_result(&alice, "eth_newBlockFilter", json!([])).await;
    let pending = id_of(&rpc_result(&alice, "eth_newPendingTransactionFilter", json!([])).await);
    assert_refused_per_client(&rpc(&alice, "eth_newFilter", json!([{}])).await);
    // Another client is not held back by Alice's filters.
    rpc_result(&bob, "eth_newBlockFilter", json!([])).await;
    // One uninstalled: Alice may make one again.
    assert_eq!(
        rpc_result(&alice, "eth_uninstallFilter", json!([pending])).await,
        json!(true)
    );
    rpc_result(&alice, "eth_newFilter", json!([{}])).await;
    let metrics = o.metrics().await;
    assert!(
        metrics.contains("outlast_limits_exceeded_total{limit=\"filters\"}"),
        "refusals are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_client_bound_holds_across_instances_sharing_redis() {
    let redis = RedisServer::start().await;
    let fleet = Fleet::start(2).await;
    let toml = shared_mode(&fleet, &redis, &with_keys(""));
    let (a, b) = two_instances(&fleet, &toml, &format!("/local/{ALICE}")).await;
    let alice = [
        a.url(&format!("/local/{ALICE}")),
        b.url(&format!("/local/{ALICE}")),
    ];
    let first = id_of(&rpc_result(&alice[0], "eth_newBlockFilter", json!([])).await);
    rpc_result(&alice[1], "eth_newFilter", json!([{}])).await;
    // Two made, one on each instance: the third is refused on either.
    for url in &alice {
        assert_refused_per_client(&rpc(url, "eth_newBlockFilter", json!([])).await);
    }
    rpc_result(
        &b.url(&format!("/local/{BOB}")),
        "eth_newBlockFilter",
        json!([]),
    )
    .await;
    // Uninstalled through the other instance: the place is free on both.
    assert_eq!(
        rpc_result(&alice[1], "eth_uninstallFilter", json!([first])).await,
        json!(true)
    );
    rpc_result(&alice[0], "eth_newBlockFilter", json!([])).await;
}
