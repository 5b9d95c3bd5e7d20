//! `eth_getLogs` over more blocks than a provider accepts: split into ranges it takes,
//! learned from its refusal, merged in order — the client sees one complete answer.

mod testbed;

use serde_json::json;
use testbed::{
    ACCOUNT0_ADDRESS, Fleet,
    gateway::{FAST_ROUTING, Outlast, config, range_limited_upstream},
    rpc, rpc_result,
};

/// Init code of a contract whose every call emits one anonymous log (LOG0).
const EMITTER: &str = "0x600680600b6000396000f360006000a000";

/// Deploys the emitter and calls it once in each of `blocks` blocks (one node).
async fn blocks_with_logs(fleet: &mut Fleet, blocks: u64) -> String {
    let url = fleet.url(0);
    rpc_result(
        &url,
        "eth_sendTransaction",
        json!([{"from": ACCOUNT0_ADDRESS, "data": EMITTER}]),
    )
    .await;
    fleet.mine(1).await;
    let receipt = rpc(
        &url,
        "eth_getTransactionReceipt",
        json!([
            rpc_result(&url, "eth_getBlockByNumber", json!(["0x1", false])).await["transactions"]
                [0]
        ]),
    )
    .await;
    let contract = receipt["result"]["contractAddress"]
        .as_str()
        .expect("deployed")
        .to_owned();
    for _ in 0..blocks {
        rpc_result(
            &url,
            "eth_sendTransaction",
            json!([{"from": ACCOUNT0_ADDRESS, "to": contract}]),
        )
        .await;
        fleet.mine(1).await;
    }
    contract
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_range_too_big_for_the_provider_is_split_and_merged_in_order() {
    let mut fleet = Fleet::start(1).await;
    let contract = blocks_with_logs(&mut fleet, 23).await;
    let (limited, refused) = range_limited_upstream(fleet.url(0), 5).await;
    let outlast = Outlast::start(&config(&[limited], FAST_ROUTING)).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    let filter = json!([{"address": contract, "fromBlock": "0x0", "toBlock": "latest"}]);
    let direct = rpc(&fleet.url(0), "eth_getLogs", filter.clone()).await;
    assert_eq!(
        direct["result"].as_array().map(Vec::len),
        Some(23),
        "{direct}"
    );

    let (first, _) = outlast.call("/local", "eth_getLogs", filter.clone()).await;
    assert_eq!(
        first["result"], direct["result"],
        "every log, once, in order"
    );
    assert_eq!(
        *refused.lock().expect("lock"),
        1,
        "one refusal taught the limit"
    );

    // Learned: the next query is split up front, never refused again.
    let (again, _) = outlast.call("/local", "eth_getLogs", filter).await;
    assert_eq!(again["result"], direct["result"]);
    assert_eq!(*refused.lock().expect("lock"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_log_range_limit_splits_without_a_refusal() {
    let mut fleet = Fleet::start(1).await;
    let contract = blocks_with_logs(&mut fleet, 9).await;
    let (limited, refused) = range_limited_upstream(fleet.url(0), 3).await;
    let toml = config(&[limited], FAST_ROUTING).replace(
        "operator = \"op0\"",
        "operator = \"op0\"\nmax_logs_range = 3",
    );
    let outlast = Outlast::start(&toml).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    let filter = json!([{"address": contract, "fromBlock": "0x1"}]);
    let direct = rpc(&fleet.url(0), "eth_getLogs", filter.clone()).await;
    let (through, _) = outlast.call("/local", "eth_getLogs", filter).await;
    assert_eq!(through["result"], direct["result"]);
    assert_eq!(direct["result"].as_array().map(Vec::len), Some(9));
    assert_eq!(*refused.lock().expect("lock"), 0);
}
