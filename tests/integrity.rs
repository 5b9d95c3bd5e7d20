//! Integrity on real Anvil nodes: the zero-balance lie of the outage Outlast was born
//! from (a node whose headers match everyone's but whose state says 0) is never served;
//! liars are banned; when nothing can be verified the client gets -33091, never the lie.

mod testbed;

use serde_json::{Value, json};
use testbed::{
    ACCOUNT1_ADDRESS, Fleet,
    gateway::{
        FAST_ROUTING, Outlast, forging_upstream, header_forging_upstream, proofless_upstream,
    },
    rpc, rpc_result,
};

const GENESIS_HEX: &str = "0x21e19e0c9bab2400000";

/// Chain `local` over `urls` (u0 first in tier 1, the rest tier 2, so u0 is asked
/// first), each its own operator, in `mode`. No cache: every call reaches upstreams.
fn verified(urls: &[String], mode: &str) -> String {
    let mut s = format!(
        "{FAST_ROUTING}\n[cache]\nsize_bytes = 0\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"{mode}\"\nquorum = 2\n"
    );
    for (i, url) in urls.iter().enumerate() {
        let tier = if i == 0 { 1 } else { 2 };
        s.push_str(&format!("\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\ntier = {tier}\n"));
    }
    s
}

/// Makes node `i` lie: account 1's balance becomes 0 there, with no new block, so its
/// headers still match the others'.
async fn lie(fleet: &Fleet, i: usize) {
    rpc_result(
        &fleet.url(i),
        "anvil_setBalance",
        json!([ACCOUNT1_ADDRESS, "0x0"]),
    )
    .await;
    let lied = rpc_result(
        &fleet.url(i),
        "eth_getBalance",
        json!([ACCOUNT1_ADDRESS, "latest"]),
    )
    .await;
    assert_eq!(lied, "0x0", "node {i} now lies");
}

async fn balance(outlast: &Outlast) -> (Value, Option<String>, String) {
    let r = outlast
        .post("/local", json!({"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[ACCOUNT1_ADDRESS, "latest"]}).to_string())
        .await;
    let verified = r.verified.clone().unwrap_or_default();
    (r.json(), r.upstream, verified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_zero_balance_lie_is_never_served_and_the_liar_is_banned() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&verified(&fleet.urls(), "proofs")).await;
    lie(&fleet, 0).await;
    for _ in 0..20 {
        let (reply, _, verified) = balance(&outlast).await;
        assert_eq!(reply["result"], GENESIS_HEX, "{reply}");
        assert_eq!(verified, "proof");
    }
    let s = outlast.status().await;
    let liar = &s["chains"][0]["upstreams"][0];
    assert_eq!(liar["state"], "banned", "{liar}");
    assert!(
        liar["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("banned") && e.contains("false proof")),
        "{liar}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_liars_of_three_get_the_truth_or_an_honest_error_never_the_lie() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&verified(&fleet.urls(), "proofs")).await;
    lie(&fleet, 0).await;
    lie(&fleet, 1).await;
    for _ in 0..10 {
        let (reply, _, _) = balance(&outlast).await;
        match (reply.get("result"), reply.get("error")) {
            (Some(r), None) => assert_eq!(r, GENESIS_HEX, "{reply}"),
            (None, Some(e)) => assert_eq!(e["code"], -33091, "{reply}"),
            _ => panic!("{reply}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_outvotes_a_liar() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&verified(&fleet.urls(), "quorum")).await;
    lie(&fleet, 0).await;
    for _ in 0..10 {
        let (reply, _, verified) = balance(&outlast).await;
        assert_eq!(reply["result"], GENESIS_HEX, "{reply}");
        assert_eq!(verified, "quorum");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_majority_in_quorum_mode_is_an_error_not_an_answer() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&verified(&fleet.urls(), "quorum")).await;
    lie(&fleet, 0).await;
    let (reply, _, _) = balance(&outlast).await;
    assert_eq!(reply["error"]["code"], -33091, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("disagree"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_header_is_detected_and_its_provider_banned() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let forger = header_forging_upstream(fleet.url(0)).await;
    let urls = vec![forger, fleet.url(1), fleet.url(2)];
    let outlast = Outlast::start(&verified(&urls, "proofs")).await;
    // Every answer is honest; the forger is caught as soon as its header is asked for
    // (it is in tier 1, but a busy machine may let the others answer the vote first,
    // and an agreed header is then reused for 2 s: keep reading until it is asked).
    let mut forger = Value::Null;
    for _ in 0..400 {
        let (reply, _, verified) = balance(&outlast).await;
        assert_eq!(reply["result"], GENESIS_HEX, "{reply}");
        assert_eq!(verified, "proof");
        forger = outlast.status().await["chains"][0]["upstreams"][0].clone();
        if last_error_says(&forger, "forged header") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(last_error_says(&forger, "forged header"), "{forger}");
    // Blocks are checked too: the honest header, by number and by hash.
    let honest = rpc(&fleet.url(1), "eth_getBlockByNumber", json!(["0x2", false])).await;
    honest_block_2(&outlast, &honest["result"], false).await;
}

/// Block 2 (`full` or not) through Outlast, by number and by hash: each answer must be
/// `honest` and none may come from u0, the forger. Returns each `x-outlast-verified`.
async fn honest_block_2(outlast: &Outlast, honest: &Value, full: bool) -> Vec<Option<String>> {
    let mut levels = Vec::new();
    for (method, params) in [
        ("eth_getBlockByNumber", json!(["0x2", full])),
        ("eth_getBlockByHash", json!([honest["hash"], full])),
    ] {
        let r = outlast
            .post(
                "/local",
                json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}).to_string(),
            )
            .await;
        assert_eq!(r.json()["result"], *honest, "{method}");
        assert_ne!(
            r.upstream.as_deref(),
            Some("u0"),
            "{method}: from the forger"
        );
        levels.push(r.verified);
    }
    levels
}

/// Whether upstream `u` (from `/api/v1/status`) was last failed for `words`.
fn last_error_says(u: &Value, words: &str) -> bool {
    u["last_error"].as_str().is_some_and(|e| e.contains(words))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_transaction_in_a_full_block_is_detected_and_its_provider_banned() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(1).await;
    fleet.transfer_on_every_node(0).await;
    fleet.mine(2).await;
    // Its header is honest; only the transfer's value is changed, as a liar would.
    let forger = forging_upstream(fleet.url(0), |block| {
        if let Some(value) = block
            .get_mut("transactions")
            .and_then(|t| t.get_mut(0))
            .and_then(|t| t.get_mut("value"))
            .filter(|v| v.is_string())
        {
            *value = Value::from("0xde0b6b3a7640000");
        }
    })
    .await;
    let urls = vec![forger, fleet.url(1), fleet.url(2)];
    let outlast = Outlast::start(&verified(&urls, "proofs")).await;
    let honest = rpc(&fleet.url(1), "eth_getBlockByNumber", json!(["0x2", true])).await;
    assert_eq!(honest["result"]["transactions"][0]["value"], "0x1");
    let mut forger = Value::Null;
    for _ in 0..20 {
        for level in honest_block_2(&outlast, &honest["result"], true).await {
            assert_ne!(level.as_deref(), Some("none"), "the body was verified");
        }
        forger = outlast.status().await["chains"][0]["upstreams"][0].clone();
        if last_error_says(&forger, "forged body") {
            break;
        }
    }
    assert!(last_error_says(&forger, "forged body"), "{forger}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_storage_nonce_and_absent_accounts_are_proven() {
    let mut fleet = Fleet::start(3).await;
    let contract = "0x00000000000000000000000000000000000c0de0";
    for i in 0..3 {
        rpc_result(
            &fleet.url(i),
            "anvil_setCode",
            json!([contract, "0x60006000a000"]),
        )
        .await;
        rpc_result(
            &fleet.url(i),
            "anvil_setStorageAt",
            json!([contract, "0x0", format!("0x{:064x}", 42)]),
        )
        .await;
    }
    fleet.mine(2).await;
    let outlast = Outlast::start(&verified(&fleet.urls(), "proofs")).await;
    let cases = [
        ("eth_getCode", json!([contract, "latest"])),
        ("eth_getStorageAt", json!([contract, "0x0", "latest"])),
        ("eth_getStorageAt", json!([contract, "0x1", "latest"])),
        (
            "eth_getTransactionCount",
            json!([ACCOUNT1_ADDRESS, "latest"]),
        ),
        (
            "eth_getBalance",
            json!(["0x000000000000000000000000000000000000dEaD", "latest"]),
        ),
        ("eth_getBalance", json!([ACCOUNT1_ADDRESS, "0x1"])),
    ];
    for (method, params) in cases {
        let direct = rpc(&fleet.url(2), method, params.clone()).await;
        let r = outlast
            .post(
                "/local",
                json!({"jsonrpc":"2.0","id":1,"method":method,"params":params}).to_string(),
            )
            .await;
        assert_eq!(
            r.json()["result"],
            direct["result"],
            "{method} {params}: {}",
            r.text
        );
        assert_eq!(r.verified.as_deref(), Some("proof"), "{method} {params}");
    }
}

/// State older than full nodes keep: no upstream can give a proof (`eth_getProof`
/// refused as geth refuses it), so the read is answered when a quorum of operators
/// agree, marked `quorum`; and when they disagree, it is an error, never an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_nobody_can_prove_falls_back_to_a_quorum() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let pruned =
        json!({"code": -32000, "message": "distance to target block exceeds maximum proof window"});
    let mut urls = Vec::new();
    let mut refusals = Vec::new();
    for i in 0..3 {
        let (url, refused) = proofless_upstream(fleet.url(i), pruned.clone()).await;
        urls.push(url);
        refusals.push(refused);
    }
    let outlast = Outlast::start(&verified(&urls, "proofs")).await;
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
        "params": [ACCOUNT1_ADDRESS, "0x2"]})
    .to_string();
    let r = outlast.post("/local", body.clone()).await;
    assert_eq!(r.json()["result"], GENESIS_HEX, "{}", r.text);
    assert_eq!(r.verified.as_deref(), Some("quorum"), "{}", r.text);
    let asked: usize = refusals.iter().map(|n| *n.lock().expect("lock")).sum();
    assert!(asked > 0, "no proof was asked for");

    // Node 2 gone, node 1 lying about the latest state (its proofs refused too): the
    // two left disagree, so nothing is answered.
    fleet.kill(2);
    lie(&fleet, 1).await;
    let latest = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getBalance",
        "params": [ACCOUNT1_ADDRESS, "latest"]})
    .to_string();
    let r = outlast.post("/local", latest).await;
    assert_eq!(r.json()["error"]["code"], -33091, "{}", r.text);
}
