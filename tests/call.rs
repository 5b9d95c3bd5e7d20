//! Verified `eth_call` in the default mode (proofs, quorum 2): a token on three identical
//! Anvil nodes, and providers that lie about `eth_call` while their headers and proofs stay
//! honest — the zero-balance failure for tokens. Outlast executes the call itself on
//! proven state, so the lie never reaches the client: not from one liar, not from a lying
//! majority, not through a lying access list. Reverts read as nodes give them; a provider
//! fleet without `eth_getProof` falls back to a quorum.

mod testbed;

use axum::{Router, body::Bytes, routing::post};
use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, ACCOUNT1_ADDRESS, Fleet,
    gateway::{Outlast, relay, serve},
    rpc_result,
};

/// Token.sol's init code (tests/fixtures/build-token.sh rebuilds it).
const TOKEN: &str = include_str!("fixtures/token.hex");
const BALANCE_OF: &str = "0x70a08231";
const FAIL: &str = "0xa9cc4718";
const SUM_OF: &str = "0x8cd4897e";
/// Init code that never ends on its own: `JUMPDEST PUSH1 0 JUMP`.
const ENDLESS: &str = "0x5b600056";

fn word(hex: &str) -> String {
    format!("{:0>64}", hex.trim_start_matches("0x"))
}

fn uint(n: u64) -> String {
    format!("0x{}", word(&format!("{n:x}")))
}

/// Deploys Token(supply) from account 0 with `nonce` on every node (the same
/// transaction, so the same address everywhere), mines it, returns the address.
async fn deploy(fleet: &mut Fleet, nonce: u64, supply: u64) -> String {
    let data = format!("0x{}{}", TOKEN.trim(), word(&format!("{supply:x}")));
    let tx = json!({"from": ACCOUNT0_ADDRESS, "data": data, "nonce": format!("{nonce:#x}"),
        "gas": "0x200000", "gasPrice": "0x77359400"});
    let mut hashes = Vec::new();
    for url in fleet.urls() {
        hashes.push(rpc_result(&url, "eth_sendTransaction", json!([tx.clone()])).await);
    }
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    fleet.mine(1).await;
    let receipt = rpc_result(
        &fleet.url(0),
        "eth_getTransactionReceipt",
        json!([hashes[0]]),
    )
    .await;
    assert_eq!(receipt["status"], "0x1", "{receipt}");
    receipt["contractAddress"]
        .as_str()
        .expect("a contract")
        .to_owned()
}

/// A provider that relays everything to `target` but answers every `eth_call` with a
/// zero word and every `eth_createAccessList` with an empty list: its headers and proofs
/// stay honest, so only executing the call catches it.
async fn call_liar(target: String) -> String {
    rewriting(target, |req, r| match req["method"].as_str() {
        Some("eth_call") => r["result"] = json!(uint(0)),
        Some("eth_createAccessList") => {
            r["result"] = json!({"accessList": [], "gasUsed": "0x5208"});
        }
        _ => {}
    })
    .await
}

/// A provider that relays everything to `target` but predicts that every call reads
/// 2,000 storage slots of the contract it calls: proving them all is the work it asks for.
async fn slot_flooder(target: String) -> String {
    rewriting(target, |req, r| {
        if req["method"] == "eth_createAccessList" {
            let keys: Vec<String> = (0..2000u64).map(uint).collect();
            r["result"] = json!({"accessList": [{"address": req["params"][0]["to"],
                "storageKeys": keys}], "gasUsed": "0x5208"});
        }
    })
    .await
}

/// A provider that relays everything to `target`, then rewrites each reply with
/// `edit(request, reply)`.
async fn rewriting(target: String, edit: fn(&Value, &mut Value)) -> String {
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
                match (&asked, &mut v) {
                    (Value::Array(reqs), Value::Array(replies)) => {
                        for r in replies.iter_mut() {
                            if let Some(req) = reqs.iter().find(|q| q["id"] == r["id"]) {
                                edit(req, r);
                            }
                        }
                    }
                    (req, one) => edit(req, one),
                }
                v.to_string()
            }
        }),
    );
    serve(app).await
}

/// A provider that relays everything but refuses `eth_getProof`, as some providers do.
async fn no_proofs(target: String) -> String {
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let asked: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let refuse = |req: &Value| {
                    json!({"jsonrpc": "2.0", "id": req["id"], "error":
                        {"code": -32601, "message": "the method eth_getProof does not exist/is not available"}})
                };
                match &asked {
                    Value::Array(reqs) if reqs.iter().any(|r| r["method"] == "eth_getProof") => {
                        Value::Array(reqs.iter().map(refuse).collect()).to_string()
                    }
                    req if req["method"] == "eth_getProof" => refuse(req).to_string(),
                    _ => relay(&client, &target, body).await,
                }
            }
        }),
    );
    serve(app).await
}

/// The default mode: no `verify`, no `quorum`, the cache as users get it.
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

async fn eth_call(outlast: &Outlast, to: &str, data: &str) -> (Value, Option<String>) {
    let (reply, verified, _) = eth_call_by(outlast, to, data).await;
    (reply, verified)
}

/// The reply, `x-outlast-verified` and `x-outlast-upstream`.
async fn eth_call_by(
    outlast: &Outlast,
    to: &str,
    data: &str,
) -> (Value, Option<String>, Option<String>) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_call",
        "params": [{"to": to, "data": data}, "latest"]});
    let r = outlast.post("/local", body.to_string()).await;
    (r.json(), r.verified, r.upstream)
}

/// The liar really lies: asked directly, it says the holder has nothing.
async fn assert_lies(liar: &str, token: &str) {
    let said = rpc_result(
        liar,
        "eth_call",
        json!([{"to": token, "data": balance_of(ACCOUNT0_ADDRESS)}, "latest"]),
    )
    .await;
    assert_eq!(said, uint(0), "the fake provider should lie");
}

fn balance_of(holder: &str) -> String {
    format!("{BALANCE_OF}{}", word(holder))
}

struct Bed {
    fleet: Fleet,
    token: String,
    other: String,
}

async fn bed() -> Bed {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let token = deploy(&mut fleet, 0, 42).await;
    let other = deploy(&mut fleet, 1, 7).await;
    fleet.mine(1).await;
    Bed {
        fleet,
        token,
        other,
    }
}

async fn assert_truth(outlast: &Outlast, bed: &Bed, rounds: usize) {
    for _ in 0..rounds {
        let (reply, verified, by) =
            eth_call_by(outlast, &bed.token, &balance_of(ACCOUNT0_ADDRESS)).await;
        assert_eq!(reply["result"], uint(42), "{reply}");
        assert_eq!(verified.as_deref(), Some("proof"), "{reply}");
        // Executed here (or the cached execution), never a provider's word.
        assert!(
            matches!(by.as_deref(), Some("executed" | "cache")),
            "answered by {by:?}"
        );
    }
    // A call touching two contracts: both tokens' state proven and executed.
    let data = format!(
        "{SUM_OF}{}{}{}{}{}",
        word("40"),
        word(ACCOUNT0_ADDRESS),
        word("2"),
        word(&bed.token),
        word(&bed.other)
    );
    let (reply, verified) = eth_call(outlast, &bed.token, &data).await;
    assert_eq!(reply["result"], uint(49), "{reply}");
    assert_eq!(verified.as_deref(), Some("proof"));
    // An account that holds nothing: proven zero, not a lie's zero.
    let (reply, _) = eth_call(outlast, &bed.token, &balance_of(ACCOUNT1_ADDRESS)).await;
    assert_eq!(reply["result"], uint(0), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_provider_lying_about_eth_call_is_never_believed() {
    let bed = bed().await;
    let urls = vec![
        call_liar(bed.fleet.url(0)).await,
        bed.fleet.url(1),
        bed.fleet.url(2),
    ];
    assert_lies(&urls[0], &bed.token).await;
    let outlast = Outlast::start(&config(&urls)).await;
    assert_truth(&outlast, &bed, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_majority_with_a_lying_access_list_is_never_believed() {
    let bed = bed().await;
    let urls = vec![
        call_liar(bed.fleet.url(0)).await,
        call_liar(bed.fleet.url(1)).await,
        bed.fleet.url(2),
    ];
    assert_lies(&urls[0], &bed.token).await;
    assert_lies(&urls[1], &bed.token).await;
    let outlast = Outlast::start(&config(&urls)).await;
    assert_truth(&outlast, &bed, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revert_reads_exactly_as_nodes_give_it() {
    let bed = bed().await;
    let outlast = Outlast::start(&config(&bed.fleet.urls())).await;
    let (reply, _) = eth_call(&outlast, &bed.token, FAIL).await;
    let direct = testbed::rpc(
        &bed.fleet.url(0),
        "eth_call",
        json!([{"to": bed.token, "data": FAIL}, "latest"]),
    )
    .await;
    assert_eq!(reply["error"]["code"], 3, "{reply}");
    assert_eq!(
        reply["error"]["data"], direct["error"]["data"],
        "{reply} vs {direct}"
    );
    assert_eq!(
        reply["error"]["message"], "execution reverted: nope",
        "{reply}"
    );
    assert!(
        direct["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("execution reverted")),
        "{direct}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_eth_get_proof_a_quorum_answers_instead() {
    let bed = bed().await;
    let mut urls = Vec::new();
    for i in 0..3 {
        urls.push(no_proofs(bed.fleet.url(i)).await);
    }
    let outlast = Outlast::start(&config(&urls)).await;
    let (reply, verified) = eth_call(&outlast, &bed.token, &balance_of(ACCOUNT0_ADDRESS)).await;
    assert_eq!(reply["result"], uint(42), "{reply}");
    assert_eq!(verified.as_deref(), Some("quorum"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eth_call_is_executed_here_with_at_most_max_call_gas() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    let toml = format!(
        "[limits]\nmax_call_gas = 1000000\n\n{}",
        config(&fleet.urls())
    );
    let outlast = Outlast::start(&toml).await;
    // Twice the limit: run here with the limit, it runs out of gas, answered as geth
    // answers it (with its gas cap): retrying elsewhere cannot help, so no "retry
    // shortly". Without the limit a `gas` of 2^64-1 ran here for ever, on a serving
    // thread.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_call",
        "params": [{"data": ENDLESS, "gas": "0x1e8480"}, "latest"]});
    let r = outlast.post("/local", body.to_string()).await;
    let (upstream, verified, reply) = (r.upstream.clone(), r.verified.clone(), r.json());
    assert_eq!(reply["error"]["code"], -32000, "{reply}");
    assert_eq!(reply["error"]["message"], "out of gas", "{reply}");
    assert_eq!(upstream.as_deref(), Some("executed"), "{reply}");
    assert_eq!(verified.as_deref(), Some("proof"), "{reply}");
    let metrics = outlast.metrics().await;
    assert!(
        metrics.contains("outlast_limits_exceeded_total{limit=\"call_gas\"} 1"),
        "the capped call is counted: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_said_to_read_thousands_of_slots_is_agreed_not_proven_slot_by_slot() {
    let bed = bed().await;
    let mut urls = Vec::new();
    for i in 0..3 {
        urls.push(slot_flooder(bed.fleet.url(i)).await);
    }
    let outlast = Outlast::start(&config(&urls)).await;
    // Past the slots one call may have proven, a quorum answers: the right answer, never
    // 2,000 proofs fetched and checked because a provider named them.
    let (reply, verified) = eth_call(&outlast, &bed.token, &balance_of(ACCOUNT0_ADDRESS)).await;
    assert_eq!(reply["result"], uint(42), "{reply}");
    assert_eq!(verified.as_deref(), Some("quorum"), "{reply}");
}
