//! Verified receipts in the default mode (proofs, quorum 2): a token transfer's receipt is
//! built from the block's proven transactions and receipts (receipts root), so providers
//! that flip a status or drop a log — in the receipt and in the block's receipts alike,
//! even two of three — are caught and never believed, and the client gets the receipt
//! the chain holds.

mod testbed;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Router, body::Bytes, routing::post};
use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, ACCOUNT1_ADDRESS, Fleet,
    gateway::{Outlast, relay, serve},
    rpc_result,
};

const TOKEN: &str = include_str!("fixtures/token.hex");
const TRANSFER: &str = "0xa9059cbb";

fn word(hex: &str) -> String {
    format!("{:0>64}", hex.trim_start_matches("0x"))
}

/// The same transaction on every node; mined; its hash.
async fn everywhere(fleet: &mut Fleet, tx: Value) -> String {
    let mut hashes = Vec::new();
    for url in fleet.urls() {
        hashes.push(rpc_result(&url, "eth_sendTransaction", json!([tx.clone()])).await);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    fleet.mine(1).await;
    hashes[0].as_str().expect("hash").to_owned()
}

/// A provider whose receipts say the transfer failed and emitted nothing — in
/// `eth_getTransactionReceipt` and in `eth_getBlockReceipts` alike — and whose
/// `eth_getLogs` finds nothing.
async fn receipt_liar(target: String) -> String {
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let reply = relay(&client, &target, body).await;
                let Ok(mut v) = serde_json::from_str::<Value>(&reply) else {
                    return reply;
                };
                let forge = |r: &mut Value| {
                    if r.is_object() && r.get("status").is_some() {
                        r["status"] = json!("0x0");
                        r["logs"] = json!([]);
                    }
                };
                let lie = |req: &Value, r: &mut Value| match req["method"].as_str() {
                    Some("eth_getTransactionReceipt") => forge(&mut r["result"]),
                    Some("eth_getLogs") => r["result"] = json!([]),
                    Some("eth_getBlockReceipts") => {
                        if let Some(list) = r["result"].as_array_mut() {
                            list.iter_mut().for_each(forge);
                        }
                    }
                    _ => {}
                };
                match (&asked, &mut v) {
                    (Value::Array(reqs), Value::Array(replies)) => {
                        for r in replies.iter_mut() {
                            if let Some(req) = reqs.iter().find(|q| q["id"] == r["id"]) {
                                lie(req, r);
                            }
                        }
                    }
                    (req, one) => lie(req, one),
                }
                v.to_string()
            }
        }),
    );
    serve(app).await
}

/// The answer was built from proven receipts (or is that answer, cached). Its level is
/// `proof` while a quorum of operators vouches for the header, `none` once the two liars
/// are banned and one operator is left (the documented degraded answer) — never a lie.
fn built_from_proofs(r: &testbed::gateway::Response) {
    assert!(
        matches!(r.upstream.as_deref(), Some("proven" | "cache")),
        "answered by {:?}: {}",
        r.upstream,
        r.text
    );
    assert!(
        matches!(r.verified.as_deref(), Some("proof" | "none")),
        "{:?}",
        r.verified
    );
}

fn config(urls: &[String]) -> String {
    let mut s = String::from(
        "[routing]\nconnect_timeout_ms = 500\nrequest_timeout_ms = 2000\nhead_poll_ms = 100\n\n[[chains]]\nname = \"local\"\nchain_id = 31337\n",
    );
    for (i, url) in urls.iter().enumerate() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    s
}

/// The fields a receipt's reader relies on.
fn essentials(r: &Value) -> Value {
    let logs: Vec<Value> = r["logs"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|log| {
                    json!([
                        log["address"],
                        log["topics"],
                        log["data"],
                        log["logIndex"],
                        log["transactionHash"],
                        log["blockHash"]
                    ])
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "status": r["status"], "transactionHash": r["transactionHash"],
        "blockHash": r["blockHash"], "blockNumber": r["blockNumber"],
        "transactionIndex": r["transactionIndex"], "from": r["from"], "to": r["to"],
        "gasUsed": r["gasUsed"], "cumulativeGasUsed": r["cumulativeGasUsed"],
        "effectiveGasPrice": r["effectiveGasPrice"], "contractAddress": r["contractAddress"],
        "logsBloom": r["logsBloom"], "type": r["type"], "logs": logs,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_is_proven_and_a_forged_one_is_never_served() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let data = format!("0x{}{}", TOKEN.trim(), word("2a"));
    let deploy = everywhere(
        &mut fleet,
        json!({"from": ACCOUNT0_ADDRESS, "data": data, "nonce": "0x0", "gas": "0x200000",
            "gasPrice": "0x77359400"}),
    )
    .await;
    let deployed = rpc_result(&fleet.url(0), "eth_getTransactionReceipt", json!([deploy])).await;
    let token = deployed["contractAddress"]
        .as_str()
        .expect("token")
        .to_owned();
    let transfer = everywhere(
        &mut fleet,
        json!({"from": ACCOUNT0_ADDRESS, "to": token, "nonce": "0x1", "gas": "0x100000",
            "gasPrice": "0x77359400",
            "data": format!("{TRANSFER}{}{}", word(ACCOUNT1_ADDRESS), word("5"))}),
    )
    .await;
    fleet.mine(1).await;

    // A lying majority: two of three providers forge receipts.
    let liars = [
        receipt_liar(fleet.url(0)).await,
        receipt_liar(fleet.url(1)).await,
    ];
    for liar in &liars {
        let forged = rpc_result(liar, "eth_getTransactionReceipt", json!([transfer])).await;
        assert_eq!(
            forged["status"], "0x0",
            "the fake provider should lie: {forged}"
        );
    }
    let [l0, l1] = liars;
    let outlast = Outlast::start(&config(&[l0, l1, fleet.url(2)])).await;

    for hash in [&transfer, &deploy, &transfer, &transfer, &deploy, &transfer] {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt", "params": [hash]});
        let r = outlast.post("/local", body.to_string()).await;
        let got = r.json()["result"].clone();
        let truth = rpc_result(&fleet.url(2), "eth_getTransactionReceipt", json!([hash])).await;
        assert_eq!(
            essentials(&got),
            essentials(&truth),
            "{got:#}\nvs\n{truth:#}"
        );
        built_from_proofs(&r);
    }
    let transfer_receipt = rpc_result(
        &fleet.url(2),
        "eth_getTransactionReceipt",
        json!([transfer]),
    )
    .await;
    assert_eq!(
        transfer_receipt["logs"].as_array().map(Vec::len),
        Some(1),
        "a Transfer event"
    );

    // The token's logs over the range: every one, though two providers leave them out.
    let filter = json!([{"fromBlock": "0x1", "toBlock": "latest", "address": token}]);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": filter});
    let r = outlast.post("/local", body.to_string()).await;
    let got = r.json()["result"].clone();
    let truth = testbed::rpc(&fleet.url(2), "eth_getLogs", filter.clone()).await["result"].clone();
    let logs = |v: &Value| essentials(&json!({"logs": v}))["logs"].clone();
    assert_eq!(logs(&got), logs(&truth), "{got:#}\nvs\n{truth:#}");
    assert_eq!(
        truth.as_array().map(Vec::len),
        Some(2),
        "mint and transfer: {truth}"
    );
    built_from_proofs(&r);

    // A transaction nobody has: null, not an error.
    let unknown = format!("0x{}", "ab".repeat(32));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionReceipt", "params": [unknown]});
    let r = outlast.post("/local", body.to_string()).await;
    assert_eq!(r.json()["result"], Value::Null, "{}", r.text);
}

/// A provider relaying everything to `target`, counting the `eth_getBlockReceipts` calls
/// it is asked in `asked`.
async fn counting(target: String, asked: Arc<AtomicUsize>) -> String {
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let (client, target, asked) = (client.clone(), target.clone(), asked.clone());
            async move {
                let calls = String::from_utf8_lossy(&body)
                    .matches("eth_getBlockReceipts")
                    .count();
                asked.fetch_add(calls, Ordering::SeqCst);
                relay(&client, &target, body).await
            }
        }),
    );
    serve(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_from_one_block_in_a_batch_fetch_and_prove_it_once() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    // Five transfers, mined together in one block.
    let mut hashes = Vec::new();
    for nonce in 0..5u64 {
        hashes.push(fleet.transfer_on_every_node(nonce).await);
    }
    fleet.mine(1).await;
    let asked = Arc::new(AtomicUsize::new(0));
    let mut urls = Vec::new();
    for i in 0..3 {
        urls.push(counting(fleet.url(i), asked.clone()).await);
    }
    let outlast = Outlast::start(&config(&urls)).await;
    // Until its head is there, the block is not seen: each receipt `null`, as nodes say.
    outlast.wait_for_head("/local", 2).await;
    let batch: Vec<Value> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| json!({"jsonrpc": "2.0", "id": i, "method": "eth_getTransactionReceipt", "params": [h]}))
        .collect();
    let r = outlast
        .post("/local", Value::Array(batch).to_string())
        .await;
    let replies = r.json();
    let block = &replies[0]["result"]["blockHash"];
    for (i, hash) in hashes.iter().enumerate() {
        assert_eq!(
            replies[i]["result"]["transactionHash"],
            json!(hash),
            "{replies:#}"
        );
        assert_eq!(
            &replies[i]["result"]["blockHash"], block,
            "one block: {replies:#}"
        );
    }
    assert_eq!(r.verified.as_deref(), Some("proof"), "{replies:#}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "the block's receipts are fetched (and proven) once for the five"
    );
}
