//! Client compatibility: real libraries run a dapp's day through Outlast in its default
//! mode (proofs, quorum 2, cache on, default routing) in front of three identical Anvil
//! nodes — viem, ethers v6, web3.py and cast. Each script checks every step itself
//! (tests/clients/dapp_*.cjs, dapp_web3py.py): reads, fee data, an ETH transfer and its
//! receipt followed at once by the balance, deploying Token, transfer and `balanceOf`
//! right after its receipt, `estimateGas`, `eth_getLogs`, every HTTP filter API the
//! library offers, and blocks and logs over WebSocket. The `_while_an_upstream_dies`
//! variants kill one node part-way through.
//!
//! Blocks are mined here while a script runs, in lockstep on every node, each only once
//! every running node holds the same pending transactions (Outlast broadcasts each raw
//! transaction to every operator; a node a send reached late would fork).

mod testbed;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, Fleet, cast_bin,
    gateway::{Outlast, scratch_dir},
    node_client, rpc_result,
};

/// A block this often while a client runs.
const BLOCK_EVERY: Duration = Duration::from_millis(700);
/// Kill node 2 after this many blocks in the `_while_an_upstream_dies` variants.
const KILL_AFTER_BLOCKS: u32 = 3;
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// The default config (nothing set but the chain and its upstreams).
fn default_config(fleet: &Fleet) -> String {
    let dir = scratch_dir();
    let mut s = format!(
        "[status]\ndata_dir = \"{}\"\n\n[[chains]]\nname = \"local\"\nchain_id = 31337\n",
        dir.display()
    );
    for (i, url) in fleet.urls().iter().enumerate() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    s
}

/// Waits (bounded) until every running node has the same number of pending
/// transactions, so the next block is the same everywhere.
async fn pools_agree(urls: &[String]) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let mut counts = Vec::new();
        for url in urls {
            let status = rpc_result(url, "txpool_status", json!([])).await;
            counts.push(status["pending"].clone());
        }
        if counts.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Mines a block every `BLOCK_EVERY` until `client` finishes; with `kill`, node 2 dies
/// after `KILL_AFTER_BLOCKS`. Returns the client's output.
async fn mining_while<F: Future<Output = String>>(
    fleet: &mut Fleet,
    kill: bool,
    client: F,
) -> String {
    tokio::pin!(client);
    let mut blocks = 0;
    let mut alive: Vec<String> = fleet.urls();
    loop {
        tokio::select! {
            out = &mut client => {
                println!("client done after {blocks} blocks{}", if kill { format!(" (node 2 killed after block {KILL_AFTER_BLOCKS})") } else { String::new() });
                assert!(!kill || blocks > KILL_AFTER_BLOCKS, "the client finished before the kill");
                return out;
            }
            _ = tokio::time::sleep(BLOCK_EVERY) => {
                pools_agree(&alive).await;
                fleet.mine(1).await;
                blocks += 1;
                if kill && blocks == KILL_AFTER_BLOCKS {
                    fleet.kill(2);
                    alive.truncate(2);
                }
            }
        }
    }
}

struct Setup {
    fleet: Fleet,
    outlast: Outlast,
    http: String,
    ws: String,
}

async fn setup() -> Setup {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&default_config(&fleet)).await;
    outlast.wait_for_head("/local", 1).await;
    let http = outlast.url("/local");
    let ws = http.replacen("http://", "ws://", 1);
    Setup {
        fleet,
        outlast,
        http,
        ws,
    }
}

fn report(library: &str, out: &str) -> Value {
    let line = out.lines().last().unwrap_or_default();
    let got: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{library}: {e}: {out}"));
    println!("{library}: {got}");
    got
}

async fn node_dapp(script: &str, kill: bool) {
    let mut s = setup().await;
    let out = mining_while(&mut s.fleet, kill, node_client(script, &[&s.http, &s.ws])).await;
    let got = report(script, &out);
    assert!(
        got["steps"].as_array().is_some_and(|a| a.len() > 20),
        "{got}"
    );
    drop(s.outlast);
}

async fn python(script: &str, args: &[&str]) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let child = tokio::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3 (scripts/test.sh installs it and web3)");
    let out = tokio::time::timeout(PYTHON_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{script} ran over {PYTHON_TIMEOUT:?}"))
        .expect("wait for python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

async fn web3py_dapp(kill: bool) {
    let mut s = setup().await;
    let out = mining_while(
        &mut s.fleet,
        kill,
        python("dapp_web3py.py", &[&s.http, &s.ws]),
    )
    .await;
    let got = report("web3.py", &out);
    assert!(
        got["steps"].as_array().is_some_and(|a| a.len() > 20),
        "{got}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viem_runs_a_dapps_day_through_outlast() {
    node_dapp("dapp_viem.cjs", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viem_runs_a_dapps_day_while_an_upstream_dies() {
    node_dapp("dapp_viem.cjs", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethers_runs_a_dapps_day_through_outlast() {
    node_dapp("dapp_ethers.cjs", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethers_runs_a_dapps_day_while_an_upstream_dies() {
    node_dapp("dapp_ethers.cjs", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web3py_runs_a_dapps_day_through_outlast() {
    web3py_dapp(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web3py_runs_a_dapps_day_while_an_upstream_dies() {
    web3py_dapp(true).await;
}

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
async fn cast_sends_and_reads_through_outlast() {
    const KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
    const TO: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
    let mut s = setup().await;
    let url = s.http.clone();
    let before: u128 = cast(&["balance", TO, "--rpc-url", &url])
        .await
        .parse()
        .expect("wei");
    let flow = async {
        let sent = cast(&[
            "send",
            "--rpc-url",
            &url,
            "--private-key",
            KEY,
            TO,
            "--value",
            "1ether",
            "--json",
        ])
        .await;
        let receipt: Value = serde_json::from_str(&sent).expect("cast send --json");
        let after: u128 = cast(&["balance", TO, "--rpc-url", &url])
            .await
            .parse()
            .expect("wei");
        let number: u64 = cast(&["block-number", "--rpc-url", &url])
            .await
            .parse()
            .expect("number");
        let nonce = cast(&["nonce", ACCOUNT0_ADDRESS, "--rpc-url", &url]).await;
        format!(
            "{}",
            json!({"status": receipt["status"], "block": receipt["blockNumber"], "after": after.to_string(), "number": number, "nonce": nonce})
        )
    };
    let out = mining_while(&mut s.fleet, false, flow).await;
    let got = report("cast", &out);
    assert_eq!(got["status"], "0x1", "{got}");
    assert_eq!(got["after"], (before + 10u128.pow(18)).to_string(), "{got}");
    let block = testbed::quantity(&got["block"]);
    assert!(got["number"].as_u64().is_some_and(|n| n >= block), "{got}");
    assert_eq!(got["nonce"], "1");
}
