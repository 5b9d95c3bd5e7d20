//! The test bed itself: identical chains, and each fault doing what e2e tests rely on.

mod testbed;

use std::time::Duration;

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, Fleet, GENESIS_BALANCE_WEI, block_timestamp, quantity, rpc_result, try_rpc,
    try_rpc_within,
};

/// (hash, stateRoot, timestamp) of block `n` at `url`.
async fn block(url: &str, n: u64) -> (String, String, u64) {
    let b = rpc_result(
        url,
        "eth_getBlockByNumber",
        json!([format!("{n:#x}"), false]),
    )
    .await;
    assert!(!b.is_null(), "{url} has no block {n}");
    let field = |k: &str| {
        b[k].as_str()
            .unwrap_or_else(|| panic!("block {n} has no {k}: {b}"))
            .to_owned()
    };
    (field("hash"), field("stateRoot"), quantity(&b["timestamp"]))
}

async fn block_number(url: &str) -> u64 {
    quantity(&rpc_result(url, "eth_blockNumber", json!([])).await)
}

/// Asserts that nodes `nodes` hold the same blocks 0..=height.
async fn assert_same_chain(fleet: &Fleet, nodes: &[usize], height: u64) {
    for n in 0..=height {
        let first = block(&fleet.url(nodes[0]), n).await;
        assert_eq!(first.2, block_timestamp(n), "timestamp of block {n}");
        for &i in &nodes[1..] {
            assert_eq!(
                block(&fleet.url(i), n).await,
                first,
                "block {n}: node {i} differs from node {}",
                nodes[0]
            );
        }
    }
}

#[tokio::test]
async fn lockstep_nodes_have_identical_block_hashes() {
    let mut fleet = Fleet::start(3).await;
    // A transaction sent to every node lands in the same block everywhere.
    let tx = json!([{"from": ACCOUNT0_ADDRESS, "to": testbed::ACCOUNT1_ADDRESS, "value": "0xde0b6b3a7640000"}]);
    for i in 0..3 {
        rpc_result(&fleet.url(i), "eth_sendTransaction", tx.clone()).await;
    }
    fleet.mine(5).await;
    for i in 0..3 {
        assert_eq!(block_number(&fleet.url(i)).await, 5);
        assert_eq!(fleet.mined(i), 5);
    }
    assert_same_chain(&fleet, &[0, 1, 2], 5).await;
    let txs = |b: Value| b["transactions"].as_array().map(Vec::len);
    let b1 = rpc_result(&fleet.url(2), "eth_getBlockByNumber", json!(["0x1", false])).await;
    assert_eq!(txs(b1), Some(1), "the transaction is in block 1");
}

#[tokio::test]
async fn killed_node_refuses_connections() {
    let mut fleet = Fleet::start(2).await;
    fleet.kill(1);
    let err = try_rpc(&fleet.url(1), "eth_blockNumber", json!([]))
        .await
        .expect_err("a killed node answered");
    assert!(err.is_connect(), "expected connection refused, got {err}");
    // The rest of the fleet mines on without it.
    fleet.mine(2).await;
    assert_eq!(block_number(&fleet.url(0)).await, 2);
    assert_eq!(fleet.pid(1), None);
}

#[tokio::test]
async fn paused_node_answers_after_resume() {
    let mut fleet = Fleet::start(2).await;
    fleet.pause(1);
    let short = try_rpc_within(
        &fleet.url(1),
        "eth_blockNumber",
        json!([]),
        Duration::from_millis(300),
    )
    .await;
    assert!(
        short.as_ref().is_err_and(|e| e.is_timeout()),
        "a paused node answered: {short:?}"
    );

    // A call made while paused is held, then answered at SIGCONT. Through a proxy, to
    // see it reach the node.
    let proxy = testbed::faultproxy::FaultProxy::start(fleet.url(1)).await;
    let url = proxy.url();
    let held = tokio::spawn(async move { try_rpc(&url, "eth_chainId", json!([])).await });
    fleet.mine(2).await; // skips the paused node
    for _ in 0..400 {
        if proxy.forwarded() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(proxy.forwarded(), 1, "the call reached the paused node");
    assert!(
        !held.is_finished(),
        "the paused node answered before resume"
    );
    fleet.resume(1);
    let answer = held.await.expect("task").expect("answer after resume");
    assert_eq!(answer["result"], "0x7a69");

    assert_eq!(
        block_number(&fleet.url(1)).await,
        0,
        "nothing was mined on it while paused"
    );
    fleet.mine(1).await; // brings the resumed node up to the fleet first
    assert_same_chain(&fleet, &[0, 1], 3).await;
}

#[tokio::test]
async fn restarted_node_catches_up_with_same_hashes() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let (port, pid) = (fleet.port(1), fleet.pid(1));
    fleet.kill(1);
    fleet.mine(4).await;
    fleet.restart(1).await;
    assert_eq!(fleet.port(1), port, "same port after restart");
    assert_ne!(fleet.pid(1), pid, "a new process");
    assert_eq!(fleet.mined(1), 7);
    assert_same_chain(&fleet, &[0, 1], 7).await;
    fleet.mine(1).await;
    assert_same_chain(&fleet, &[0, 1], 8).await;
}

#[tokio::test]
async fn lagging_node_falls_behind_then_catches_up() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(2).await;
    fleet.lag(1);
    fleet.mine(5).await;
    assert_eq!(block_number(&fleet.url(0)).await, 7);
    assert_eq!(block_number(&fleet.url(1)).await, 2);
    assert_eq!(fleet.mined(1), 2);
    fleet.catch_up(1).await;
    assert_eq!(block_number(&fleet.url(1)).await, 7);
    assert_same_chain(&fleet, &[0, 1], 7).await;
}

#[tokio::test]
async fn fleet_answers_with_the_chain_id_it_was_given() {
    let fleet = Fleet::start_with(2, 1337).await;
    for i in 0..2 {
        assert_eq!(
            quantity(&rpc_result(&fleet.url(i), "eth_chainId", json!([])).await),
            1337
        );
    }
}

#[tokio::test]
async fn ethers_client_reads_block_number_and_balance() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(3).await;
    let out = testbed::node_client("ethers_read.cjs", &[&fleet.url(0), ACCOUNT0_ADDRESS]).await;
    let read: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(
        read,
        json!({"blockNumber": 3, "balance": GENESIS_BALANCE_WEI})
    );
}
