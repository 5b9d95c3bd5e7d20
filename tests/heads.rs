//! Block-aware routing on real Anvil nodes: `latest` is the consensus head, so reads
//! never go backwards, and calls about block N never reach an upstream that lacks it.

mod testbed;

use serde_json::json;
use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Outlast, config},
    quantity,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_number_never_goes_backwards_while_upstreams_lag_and_recover() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    let mut last = 0;
    #[allow(unused_mut)]
    let mut seen = Vec::new();
    for round in 0..60 {
        match round {
            5 => fleet.lag(0),
            20 => fleet.kill(1),
            30 => fleet.catch_up(0).await,
            40 => fleet.restart(1).await,
            _ => {}
        }
        if round % 3 == 0 {
            fleet.mine(1).await;
        }
        let (reply, upstream) = outlast.call("/local", "eth_blockNumber", json!([])).await;
        let n = quantity(&reply["result"]);
        seen.push((n, upstream));
        assert!(n >= last, "went back from {last} to {n}: {seen:?}");
        last = n;
    }
    // After all the faults, the head catches up with the chain.
    outlast.wait_for_head("/local", fleet.height()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_reads_never_use_a_lagging_upstream() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    fleet.lag(0);
    fleet.mine(5).await;
    let height = fleet.height();
    outlast.wait_for_head("/local", height).await;
    for _ in 0..30 {
        let (reply, upstream) = outlast
            .call("/local", "eth_getBlockByNumber", json!(["latest", false]))
            .await;
        assert_eq!(quantity(&reply["result"]["number"]), height, "{reply}");
        assert_ne!(
            upstream.as_deref(),
            Some("u0"),
            "the lagging node answered latest"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_n_calls_skip_upstreams_without_block_n() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    fleet.lag(1);
    fleet.mine(3).await;
    let height = fleet.height();
    outlast.wait_for_head("/local", height).await;
    let block = format!("{height:#x}");
    for _ in 0..20 {
        let (reply, upstream) = outlast
            .call("/local", "eth_getBlockByNumber", json!([block, false]))
            .await;
        assert_eq!(reply["result"]["number"], block, "{reply}");
        assert_eq!(
            upstream.as_deref(),
            Some("u0"),
            "only u0 has block {height}"
        );
    }
    // Caught up again, it takes its share of the load.
    fleet.catch_up(1).await;
    let mut served_by = std::collections::BTreeSet::new();
    for _ in 0..200 {
        if served_by.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let (reply, upstream) = outlast
            .call("/local", "eth_getBlockByNumber", json!(["0x1", false]))
            .await;
        assert_eq!(reply["result"]["number"], "0x1", "{reply}");
        served_by.extend(upstream);
    }
    assert_eq!(served_by.len(), 2, "load spread over both: {served_by:?}");
}
