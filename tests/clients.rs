//! Real clients through Outlast: `cast` (Foundry) and ethers v6 read the block number and
//! a balance, and get the same answers as from a node directly — also after the first
//! upstream has died.

mod testbed;

use serde_json::Value;
use testbed::{
    ACCOUNT0_ADDRESS, Fleet, GENESIS_BALANCE_WEI, cast_bin,
    gateway::{FAST_ROUTING, Outlast, config},
    node_client,
};

async fn cast(args: &[&str]) -> String {
    let out = tokio::process::Command::new(cast_bin())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run cast");
    assert!(
        out.status.success(),
        "cast {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cast_reads_block_number_and_balance_through_outlast() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(4).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    let url = outlast.url("/local");
    fleet.kill(0);
    for _ in 0..2 {
        assert_eq!(cast(&["block-number", "--rpc-url", &url]).await, "4");
        assert_eq!(
            cast(&["balance", ACCOUNT0_ADDRESS, "--rpc-url", &url]).await,
            GENESIS_BALANCE_WEI
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethers_reads_block_number_and_balance_through_outlast() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    let url = outlast.url("/local");
    fleet.kill(1);
    for _ in 0..2 {
        let out = node_client("ethers_read.cjs", &[&url, ACCOUNT0_ADDRESS]).await;
        let got: Value = serde_json::from_str(out.trim()).expect("ethers_read prints JSON");
        assert_eq!(got["blockNumber"], 3, "{got}");
        assert_eq!(got["balance"], GENESIS_BALANCE_WEI, "{got}");
    }
}
