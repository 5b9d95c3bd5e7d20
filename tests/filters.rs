//! HTTP filters held by Outlast, on three identical Anvil nodes in the default mode
//! (proofs, quorum 2): every poll is answered, whichever upstream routing would have
//! picked — before, 70–80% of polls reached a node that never made the filter (-32000
//! filter not found) — and an upstream dying between polls costs nothing. Also: a
//! receipt for block N means `latest` is at least N, even while one node runs ahead.

mod testbed;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, ACCOUNT1_ADDRESS, Fleet,
    gateway::{FAST_ROUTING, Outlast},
    quantity, rpc, rpc_result,
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
