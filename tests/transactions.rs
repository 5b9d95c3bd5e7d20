//! `eth_sendRawTransaction` through Outlast on real Anvil nodes: broadcast to every
//! operator, the right hash, duplicates as success, the upstreams' own reason for a bad
//! transaction, and read-your-writes from a node that never saw the transaction.

mod testbed;

use std::time::Duration;

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, ACCOUNT0_KEY, ACCOUNT1_ADDRESS, Fleet, cast_bin,
    gateway::{FAST_ROUTING, Outlast, config},
    rpc,
};

/// A signed transfer from account 0, made offline by `cast mktx`.
async fn signed_transfer(nonce: u64, chain_id: u64) -> String {
    let (nonce, chain) = (nonce.to_string(), chain_id.to_string());
    let args = [
        "mktx",
        "--private-key",
        ACCOUNT0_KEY,
        "--chain",
        &chain,
        "--nonce",
        &nonce,
        "--gas-limit",
        "21000",
        "--gas-price",
        "2000000000",
        "--priority-gas-price",
        "1000000000",
        "--value",
        "1ether",
        ACCOUNT1_ADDRESS,
    ];
    let out = tokio::process::Command::new(cast_bin())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run cast");
    assert!(
        out.status.success(),
        "cast mktx: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn keccak_hex(raw: &str) -> String {
    let bytes = alloy_primitives::hex::decode(raw).expect("hex");
    format!("{:#x}", alloy_primitives::keccak256(bytes))
}

/// Waits until node `url` has transaction `hash` (pending or mined).
async fn wait_known(url: &str, hash: &str) {
    for _ in 0..200 {
        if !rpc(url, "eth_getTransactionByHash", json!([hash])).await["result"].is_null() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{url} never received {hash}");
}

async fn send(outlast: &Outlast, raw: &str) -> (Value, Option<String>) {
    outlast
        .call("/local", "eth_sendRawTransaction", json!([raw]))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_transaction_reaches_every_node_and_is_mined_identically() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    let raw = signed_transfer(0, fleet.chain_id()).await;
    let (r, _) = send(&outlast, &raw).await;
    let hash = keccak_hex(&raw);
    assert_eq!(r["result"], hash, "{r}");
    for i in 0..3 {
        wait_known(&fleet.url(i), &hash).await;
    }
    fleet.mine(1).await;
    let mut blocks = Vec::new();
    for i in 0..3 {
        blocks.push(rpc(&fleet.url(i), "eth_getBlockByNumber", json!(["0x2", false])).await);
    }
    for b in &blocks {
        assert_eq!(b["result"]["hash"], blocks[0]["result"]["hash"]);
        assert_eq!(b["result"]["transactions"], json!([hash]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sending_the_same_transaction_twice_is_success() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    let raw = signed_transfer(0, fleet.chain_id()).await;
    let hash = keccak_hex(&raw);
    let (first, _) = send(&outlast, &raw).await;
    assert_eq!(first["result"], hash, "{first}");
    for i in 0..2 {
        wait_known(&fleet.url(i), &hash).await;
    }
    let (again, _) = send(&outlast, &raw).await;
    assert_eq!(
        again["result"], hash,
        "a duplicate is an acceptance: {again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transaction_gets_the_upstreams_reason() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    // Signed for chain 1: every node refuses it.
    let raw = signed_transfer(0, 1).await;
    let (r, _) = send(&outlast, &raw).await;
    let message = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("chain id"), "{r}");
    assert_ne!(
        r["error"]["code"], -32002,
        "a reason, not 'unavailable': {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_transaction_is_visible_through_a_node_that_never_saw_it() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(
        &fleet.urls(),
        &format!("{FAST_ROUTING}\n[tx]\nbroadcast_to = 1\n"),
    ))
    .await;
    let raw = signed_transfer(0, fleet.chain_id()).await;
    let hash = keccak_hex(&raw);
    let (r, _) = send(&outlast, &raw).await;
    assert_eq!(r["result"], hash, "{r}");
    // The node that accepted it has it; the other never will (no one else sends it).
    let known = |i: usize| {
        let url = fleet.url(i);
        let hash = hash.clone();
        async move { !rpc(&url, "eth_getTransactionByHash", json!([hash])).await["result"].is_null() }
    };
    let mut holders = Vec::new();
    for _ in 0..200 {
        holders = Vec::new();
        for i in 0..2 {
            if known(i).await {
                holders.push(i);
            }
        }
        if !holders.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        holders.len(),
        1,
        "broadcast_to = 1 leaves one node without the transaction: held by {holders:?}"
    );
    let lacking = format!("u{}", 1 - holders[0]);
    // Only the node that never saw the transaction is left to answer.
    let holder = if lacking == "u0" { 1 } else { 0 };
    fleet.kill(holder);

    let (mut nonce_from_lacking, mut tx_from_lacking) = (false, false);
    for _ in 0..20 {
        let (n, up) = outlast
            .call(
                "/local",
                "eth_getTransactionCount",
                json!([ACCOUNT0_ADDRESS, "pending"]),
            )
            .await;
        if up.as_deref() == Some(lacking.as_str()) {
            assert_eq!(n["result"], "0x1", "pending nonce from {up:?}: {n}");
            nonce_from_lacking = true;
        }
        let (t, up) = outlast
            .call("/local", "eth_getTransactionByHash", json!([hash]))
            .await;
        if up.as_deref() == Some(lacking.as_str()) {
            assert_eq!(t["result"]["hash"], hash, "tx by hash from {up:?}: {t}");
            assert_eq!(t["result"]["nonce"], "0x0");
            tx_from_lacking = true;
        }
        if nonce_from_lacking && tx_from_lacking {
            return;
        }
    }
    panic!(
        "{lacking} (without the transaction) never answered: nonce {nonce_from_lacking}, tx {tx_from_lacking}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_reaches_the_chain_when_the_first_upstream_chosen_is_down() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    // u0 is the preferred tier and dies just before the send, before any check notices.
    let toml = config(&fleet.urls(), FAST_ROUTING)
        .replacen("operator = \"op0\"", "operator = \"op0\"\ntier = 1", 1)
        .replacen("operator = \"op1\"", "operator = \"op1\"\ntier = 2", 1)
        .replacen("operator = \"op2\"", "operator = \"op2\"\ntier = 2", 1);
    let outlast = Outlast::start(&toml).await;
    fleet.kill(0);
    let raw = signed_transfer(0, fleet.chain_id()).await;
    let (r, _) = send(&outlast, &raw).await;
    let hash = keccak_hex(&raw);
    assert_eq!(r["result"], hash, "{r}");
    for i in 1..3 {
        wait_known(&fleet.url(i), &hash).await;
    }
    fleet.mine(1).await;
    let receipt = rpc(&fleet.url(1), "eth_getTransactionReceipt", json!([hash])).await;
    assert_eq!(receipt["result"]["status"], "0x1", "mined: {receipt}");
}

/// `[tx]` settings that keep every accepted transaction in `store` and check it every
/// second; `broadcast_to = 1` so only re-sending can bring it to another node.
fn rebroadcast_config(url: &str, store: &std::path::Path) -> String {
    config(
        &[url.to_owned()],
        &format!(
            "{FAST_ROUTING}\n[tx]\nrebroadcast = true\nbroadcast_to = 1\nrebroadcast_secs = 1\nstore = \"{}\"\n",
            store.display()
        ),
    )
}

/// Whether the store file at `path` lists transaction `hash`.
fn stored(path: &std::path::Path, hash: &str) -> bool {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("store {} unreadable: {e}", path.display()));
    let store: Value = serde_json::from_str(&text).expect("the store is JSON");
    store["transactions"]
        .as_array()
        .expect("a list of transactions")
        .iter()
        .any(|t| t["hash"] == hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_only_node_died_is_resent_after_a_restart_and_mined() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let dir = testbed::gateway::scratch_dir();
    let store = dir.join("transactions.json");

    // Outlast knows only node 0: the transaction reaches it and nobody else.
    let outlast = Outlast::start(&rebroadcast_config(&fleet.url(0), &store)).await;
    let raw = signed_transfer(0, fleet.chain_id()).await;
    let hash = keccak_hex(&raw);
    let (r, _) = send(&outlast, &raw).await;
    assert_eq!(r["result"], hash, "{r}");
    assert!(
        stored(&store, &hash),
        "kept in the store before the client was answered"
    );
    outlast.stop().await;
    // Node 0 dies, its mempool with it; node 1 never heard of the transaction.
    fleet.kill(0);
    let on_1 = rpc(&fleet.url(1), "eth_getTransactionByHash", json!([hash])).await;
    assert!(on_1["result"].is_null(), "node 1 has it already: {on_1}");

    // A new Outlast with the same store, and only node 1.
    let outlast = Outlast::start(&rebroadcast_config(&fleet.url(1), &store)).await;
    let mut known = false;
    for _ in 0..100 {
        if !rpc(&fleet.url(1), "eth_getTransactionByHash", json!([hash])).await["result"].is_null()
        {
            known = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(known, "the stored transaction was never re-sent to node 1");
    fleet.mine(1).await;
    let mut receipt = Value::Null;
    for _ in 0..100 {
        receipt = rpc(&fleet.url(1), "eth_getTransactionReceipt", json!([hash])).await;
        if !receipt["result"].is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        receipt["result"]["status"], "0x1",
        "mined on node 1: {receipt}"
    );
    let mut forgotten = false;
    for _ in 0..100 {
        if !stored(&store, &hash) {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(forgotten, "a mined transaction leaves the store");
    outlast.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_rebroadcast_no_store_is_written() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let dir = testbed::gateway::scratch_dir();
    let store = dir.join("transactions.json");
    let outlast = Outlast::start(&config(
        &fleet.urls(),
        &format!("{FAST_ROUTING}\n[tx]\nstore = \"{}\"\n", store.display()),
    ))
    .await;
    let raw = signed_transfer(0, fleet.chain_id()).await;
    let (r, _) = send(&outlast, &raw).await;
    assert_eq!(r["result"], keccak_hex(&raw), "{r}");
    outlast.stop().await;
    assert!(
        !dir.exists(),
        "rebroadcast is off by default: nothing on disk"
    );
}
