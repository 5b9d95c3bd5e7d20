//! Transparency: each standard `eth_`/`net_`/`web3_` method Anvil serves, sent through
//! Outlast (the default mode: proofs, quorum 2) and to a node directly, on three
//! identical nodes. The answers must be the same — or differ exactly as README's
//! "What Outlast answers differently" lists (`Differs` below), each checked.

mod testbed;

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, ACCOUNT1_ADDRESS, Fleet,
    gateway::{FAST_ROUTING, Outlast},
    rpc, rpc_result,
};

const TOKEN: &str = include_str!("fixtures/token.hex");

fn config(fleet: &Fleet) -> String {
    let mut s = format!("{FAST_ROUTING}\n[[chains]]\nname = \"local\"\nchain_id = 31337\n");
    for (i, url) in fleet.urls().iter().enumerate() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    s
}

/// How Outlast's answer may differ from the node's, by design.
#[derive(Debug, Clone, Copy)]
enum Differs {
    /// Not at all.
    No,
    /// Refused by `[limits] denied_methods` (-32004): node control and signing.
    Denied,
    /// A filter id Outlast issued (its own, not the node's): a 0x-hex string.
    FilterId,
    /// A receipt built from proven values: every field Outlast gives equals the node's;
    /// fields outside the receipts root it cannot derive are left out (Anvil's
    /// `blockTimestamp` as a number, `blobGasPrice` on a transaction without blobs).
    ProvenReceipt,
}

/// Receipt fields a node may add that a proven receipt leaves out.
const UNPROVEN_RECEIPT_FIELDS: [&str; 3] = ["blockTimestamp", "blobGasPrice", "blobGasUsed"];

/// The same transaction on every node, mined; its hash.
async fn everywhere(fleet: &mut Fleet, tx: Value) -> String {
    let mut hashes = Vec::new();
    for url in fleet.urls() {
        hashes.push(rpc_result(&url, "eth_sendTransaction", json!([tx.clone()])).await);
    }
    fleet.mine(1).await;
    hashes[0].as_str().expect("hash").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_standard_method_answers_as_the_node_does_or_as_documented() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let deploy = everywhere(
        &mut fleet,
        json!({"from": ACCOUNT0_ADDRESS, "nonce": "0x0", "gas": "0x200000",
            "gasPrice": "0x77359400", "data": format!("0x{}{:0>64}", TOKEN.trim(), "2a")}),
    )
    .await;
    let transfer = fleet.transfer_on_every_node(1).await;
    fleet.mine(1).await;
    let direct = fleet.url(0);
    let receipt = rpc_result(&direct, "eth_getTransactionReceipt", json!([deploy])).await;
    let token = receipt["contractAddress"].clone();
    let block = receipt["blockHash"].clone();
    let outlast = Outlast::start(&config(&fleet)).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    let via = outlast.url("/local");

    let balance_of = format!(
        "0x70a08231{:0>64}",
        ACCOUNT0_ADDRESS.trim_start_matches("0x")
    );
    let call = json!({"to": token, "data": balance_of});
    use Differs::*;
    let table: Vec<(&str, Value, Differs)> = vec![
        ("web3_clientVersion", json!([]), No),
        ("web3_sha3", json!(["0x68656c6c6f"]), No),
        ("net_version", json!([]), No),
        ("net_listening", json!([]), No),
        ("net_peerCount", json!([]), No),
        ("eth_chainId", json!([]), No),
        ("eth_protocolVersion", json!([]), No),
        ("eth_syncing", json!([]), No),
        ("eth_mining", json!([]), No),
        ("eth_hashrate", json!([]), No),
        ("eth_coinbase", json!([]), No),
        ("eth_accounts", json!([]), No),
        ("eth_blockNumber", json!([]), No),
        ("eth_gasPrice", json!([]), No),
        ("eth_maxPriorityFeePerGas", json!([]), No),
        ("eth_blobBaseFee", json!([]), No),
        ("eth_feeHistory", json!(["0x2", "latest", [25, 75]]), No),
        ("eth_getBalance", json!([ACCOUNT1_ADDRESS, "latest"]), No),
        ("eth_getBalance", json!([ACCOUNT1_ADDRESS, "0x1"]), No),
        (
            "eth_getTransactionCount",
            json!([ACCOUNT0_ADDRESS, "latest"]),
            No,
        ),
        ("eth_getCode", json!([token, "latest"]), No),
        ("eth_getStorageAt", json!([token, "0x0", "latest"]), No),
        ("eth_getProof", json!([ACCOUNT0_ADDRESS, [], "latest"]), No),
        ("eth_call", json!([call, "latest"]), No),
        ("eth_estimateGas", json!([call, "latest"]), No),
        ("eth_createAccessList", json!([call, "latest"]), No),
        ("eth_getBlockByNumber", json!(["latest", false]), No),
        ("eth_getBlockByNumber", json!(["0x2", true]), No),
        ("eth_getBlockByHash", json!([block, true]), No),
        ("eth_getBlockTransactionCountByNumber", json!(["0x2"]), No),
        ("eth_getBlockTransactionCountByHash", json!([block]), No),
        ("eth_getUncleCountByBlockNumber", json!(["0x2"]), No),
        ("eth_getUncleCountByBlockHash", json!([block]), No),
        ("eth_getTransactionByHash", json!([transfer]), No),
        (
            "eth_getTransactionByBlockNumberAndIndex",
            json!(["0x2", "0x0"]),
            No,
        ),
        (
            "eth_getTransactionByBlockHashAndIndex",
            json!([block, "0x0"]),
            No,
        ),
        ("eth_getTransactionReceipt", json!([deploy]), ProvenReceipt),
        ("eth_getBlockReceipts", json!(["0x2"]), No),
        (
            "eth_getLogs",
            json!([{"fromBlock": "0x1", "toBlock": "latest", "address": token}]),
            No,
        ),
        (
            "eth_sendTransaction",
            json!([{"from": ACCOUNT0_ADDRESS, "to": ACCOUNT1_ADDRESS}]),
            Denied,
        ),
        ("eth_sign", json!([ACCOUNT0_ADDRESS, "0x00"]), Denied),
        (
            "eth_signTransaction",
            json!([{"from": ACCOUNT0_ADDRESS}]),
            Denied,
        ),
        ("eth_newBlockFilter", json!([]), FilterId),
        ("eth_newFilter", json!([{"address": token}]), FilterId),
        ("eth_newPendingTransactionFilter", json!([]), FilterId),
    ];
    let mut differences = Vec::new();
    for (method, params, differs) in &table {
        let ours = rpc(&via, method, params.clone()).await;
        let node = rpc(&direct, method, params.clone()).await;
        let same = match differs {
            No => {
                ours.get("result") == node.get("result")
                    && ours["error"]["code"] == node["error"]["code"]
            }
            Denied => ours["error"]["code"] == -32004,
            FilterId => ours["result"]
                .as_str()
                .is_some_and(|id| id.starts_with("0x") && id.len() > 2),
            ProvenReceipt => match (ours["result"].as_object(), node["result"].as_object()) {
                (Some(o), Some(n)) => {
                    o.iter().all(|(k, v)| n.get(k) == Some(v))
                        && n.keys()
                            .filter(|k| !o.contains_key(*k))
                            .all(|k| UNPROVEN_RECEIPT_FIELDS.contains(&k.as_str()))
                }
                _ => false,
            },
        };
        if !same {
            differences.push(format!(
                "{method} {params} ({differs:?}):\n  outlast {ours}\n  node    {node}"
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} methods differ:\n{}",
        differences.len(),
        table.len(),
        differences.join("\n")
    );
}
