//! Bad input gets a precise EIP-1474 error and loses nothing: each malformed request
//! below is answered exactly, and the gateway keeps answering afterwards. Also the
//! JSON-RPC envelope rules: ids echoed exactly, notifications unanswered, batches in
//! order, params forwarded byte for byte.

mod testbed;

use serde_json::{Value, json};
use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Outlast, config, recording_upstream},
};

const LIMITS: &str = "[limits]\nmax_body_bytes = 4096\nmax_batch = 5\nmax_depth = 10\n";

async fn gateway(fleet: &Fleet) -> Outlast {
    Outlast::start(&config(&fleet.urls(), &format!("{FAST_ROUTING}\n{LIMITS}"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_request_gets_its_exact_error_and_the_server_keeps_answering() {
    let fleet = Fleet::start(1).await;
    let outlast = gateway(&fleet).await;
    let deep = format!("{}{}", "[".repeat(11), "]".repeat(11));
    let big_batch = format!(
        "[{}]",
        [r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#; 6].join(",")
    );
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["{}"]}}"#,
        "a".repeat(5000)
    );
    // (path, body, HTTP status, code, message fragment)
    let cases: Vec<(&str, String, u16, i64, &str)> = vec![
        (
            "/local",
            "{".into(),
            200,
            -32700,
            "parse error: body is not valid JSON",
        ),
        ("/local", "not json".into(), 200, -32700, "parse error"),
        (
            "/local",
            "\"text\"".into(),
            200,
            -32600,
            "must be a JSON object or an array",
        ),
        (
            "/local",
            r#"{"jsonrpc":"1.0","id":1,"method":"eth_chainId"}"#.into(),
            200,
            -32600,
            "`jsonrpc` must be \"2.0\"",
        ),
        (
            "/local",
            r#"{"id":1,"method":"eth_chainId"}"#.into(),
            200,
            -32600,
            "`jsonrpc` is missing",
        ),
        (
            "/local",
            r#"{"jsonrpc":"2.0","id":1}"#.into(),
            200,
            -32600,
            "`method` is missing",
        ),
        (
            "/local",
            r#"{"jsonrpc":"2.0","id":1,"method":42}"#.into(),
            200,
            -32600,
            "`method` must be a string",
        ),
        (
            "/local",
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":7}"#.into(),
            200,
            -32602,
            "`params` must be an array or an object",
        ),
        (
            "/local",
            r#"{"jsonrpc":"2.0","id":{},"method":"eth_chainId"}"#.into(),
            200,
            -32600,
            "`id` must be a string, a number or null",
        ),
        ("/local", "[]".into(), 200, -32600, "empty batch"),
        (
            "/local",
            big_batch,
            200,
            -32005,
            "batch of more than 5 calls; the limit is 5",
        ),
        (
            "/local",
            deep,
            200,
            -32005,
            "nested 11 levels deep; the limit is 10",
        ),
        (
            "/local",
            huge,
            413,
            -32005,
            "request body exceeds 4096 bytes",
        ),
        (
            "/local",
            r#"{"jsonrpc":"2.0","id":1,"method":"anvil_setBalance","params":[]}"#.into(),
            200,
            -32004,
            "`anvil_setBalance` is not available",
        ),
        (
            "/local",
            r#"{"jsonrpc":"2.0","id":1,"method":"debug_traceTransaction","params":[]}"#.into(),
            200,
            -32004,
            "denied",
        ),
        (
            "/local",
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#.into(),
            200,
            -32004,
            "`eth_subscribe` needs a WebSocket: open ws:// (or wss://) on this same path",
        ),
        (
            "/nowhere",
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#.into(),
            404,
            -32600,
            "unknown chain `nowhere`; this gateway serves local (31337)",
        ),
    ];
    for (path, body, status, code, fragment) in cases {
        let r = outlast.post(path, body.clone()).await;
        let shown: String = body.chars().take(60).collect();
        assert_eq!(r.status, status, "{shown}: {}", r.text);
        let reply = r.json();
        assert_eq!(reply["error"]["code"], code, "{shown}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(fragment),
            "{shown}: {message:?} lacks {fragment:?}"
        );
        let (ok, _) = outlast.call("/local", "eth_chainId", json!([])).await;
        assert_eq!(
            ok["result"], "0x7a69",
            "server stopped answering after {shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_mixing_good_and_bad_calls_answers_each_in_order() {
    let fleet = Fleet::start(1).await;
    let outlast = gateway(&fleet).await;
    let body = r#"[
        {"jsonrpc":"2.0","id":"first","method":"eth_chainId"},
        {"jsonrpc":"2.0","id":2,"method":"admin_peers"},
        17,
        {"jsonrpc":"2.0","method":"eth_blockNumber"},
        {"jsonrpc":"2.0","id":null,"method":"eth_getTransactionCount","params":["0x0000000000000000000000000000000000000001","0x0"]}
    ]"#;
    let r = outlast.post("/local", body).await;
    let replies = r.json();
    let replies = replies.as_array().expect("a batch gets an array");
    assert_eq!(
        replies.len(),
        4,
        "the notification gets no reply: {replies:#?}"
    );
    assert_eq!(
        replies[0],
        json!({"jsonrpc":"2.0","id":"first","result":"0x7a69"})
    );
    assert_eq!(replies[1]["id"], 2);
    assert_eq!(replies[1]["error"]["code"], -32004);
    assert_eq!(replies[2]["id"], Value::Null);
    assert_eq!(replies[2]["error"]["code"], -32600);
    assert_eq!(
        replies[3],
        json!({"jsonrpc":"2.0","id":null,"result":"0x0"})
    );
    // In call order, without repeats; the notification eth_blockNumber came from the head.
    assert_eq!(r.upstream.as_deref(), Some("u0,consensus"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_every_json_type_are_echoed_exactly() {
    let fleet = Fleet::start(1).await;
    let outlast = gateway(&fleet).await;
    for id in [
        "1",
        "0",
        "-7",
        "1.50",
        "1e3",
        "18446744073709551616",
        "\"abc\"",
        "\"\\u00e9\\\"x\"",
        "\"\"",
        "null",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#);
        let r = outlast.post("/local", body).await;
        assert_eq!(
            r.text,
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x7a69"}}"#)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_get_no_reply_but_are_still_sent() {
    let (recorder, seen) = recording_upstream().await;
    let outlast = Outlast::start(&config(&[recorder], FAST_ROUTING)).await;
    let single = outlast
        .post(
            "/",
            r#"{"jsonrpc":"2.0","method":"eth_sendRawTransaction","params":["0x01"]}"#,
        )
        .await;
    assert_eq!((single.status, single.text.as_str()), (204, ""));
    let batch = outlast
        .post("/local", r#"[{"jsonrpc":"2.0","method":"eth_getCode","params":["0x01","0x0"]},{"jsonrpc":"2.0","method":"eth_gasPrice"}]"#)
        .await;
    assert_eq!((batch.status, batch.text.as_str()), (204, ""));
    let seen = seen.lock().expect("lock").join("\n");
    for method in ["eth_sendRawTransaction", "eth_getCode", "eth_gasPrice"] {
        assert!(
            seen.contains(method),
            "{method} never reached the upstream:\n{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_reach_the_upstream_byte_for_byte() {
    let (recorder, seen) = recording_upstream().await;
    let outlast = Outlast::start(&config(&[recorder], FAST_ROUTING)).await;
    let params =
        r#"[ {"to":"0x00000000000000000000000000000000000000AA" , "data":"0x"},  "0x0", 1.50e0 ]"#;
    let r = outlast
        .post(
            "/31337",
            format!(r#"{{"jsonrpc":"2.0","id":9,"method":"eth_call","params":{params}}}"#),
        )
        .await;
    assert_eq!(r.text, r#"{"jsonrpc":"2.0","id":9,"result":"0x7a69"}"#);
    let seen = seen.lock().expect("lock").clone();
    let forwarded = seen
        .iter()
        .find(|b| b.contains("eth_call"))
        .expect("eth_call forwarded");
    assert!(
        forwarded.ends_with(&format!(r#""params":{params}}}"#)),
        "{forwarded}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_is_pinned_to_the_consensus_block_and_the_rest_kept() {
    let (recorder, seen) = recording_upstream().await;
    // The recorder reports head 0, so the consensus head is block 0.
    let outlast = Outlast::start(&config(&[recorder], FAST_ROUTING)).await;
    let r = outlast
        .post(
            "/local",
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[ "0x00000000000000000000000000000000000000aA" , "latest"]}"#,
        )
        .await;
    assert_eq!(r.json()["result"], "0x7a69");
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.iter()
            .any(|b| b
                .ends_with(r#""params":["0x00000000000000000000000000000000000000aA","0x0"]}"#)),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_root_needs_exactly_one_chain() {
    let a = Fleet::start(1).await;
    let b = Fleet::start_with(1, 31338).await;
    let toml = format!(
        "{}\n[[chains]]\nname = \"other\"\nchain_id = 31338\n[[chains.upstreams]]\nname = \"b\"\nurl = \"{}\"\noperator = \"b\"\n",
        config(&a.urls(), FAST_ROUTING),
        b.url(0)
    );
    let outlast = Outlast::start(&toml).await;
    let r = outlast
        .post("/", r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#)
        .await;
    assert_eq!(r.status, 404);
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("serves several chains (local (31337), other (31338))"),
        "{message}"
    );
    let (by_id, _) = outlast.call("/31338", "eth_chainId", json!([])).await;
    assert_eq!(by_id["result"], "0x7a6a");
    let (by_name, _) = outlast.call("/other", "eth_chainId", json!([])).await;
    assert_eq!(by_name["result"], "0x7a6a");
}

/// `POST /{chain}` is served by its own lane, not the router; everything beside it
/// still reaches the router and is answered as the router answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_beside_the_json_rpc_lane_are_answered_as_the_router_answers_them() {
    let fleet = Fleet::start(1).await;
    let outlast = gateway(&fleet).await;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}"#;
    // The chain by name, by id, and percent-encoded (which only the router decodes).
    for path in ["/local", "/31337", "/lo%63al", "/"] {
        let r = outlast.post(path, call).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.json()["result"], "0x7a69", "{path}");
    }
    // An empty segment, a third segment, and a page's path: not JSON-RPC routes.
    for (path, status) in [("/local/", 404), ("/local/a/b", 404), ("/healthz", 405)] {
        let r = outlast.post(path, call).await;
        assert_eq!(r.status, status, "{path}: {}", r.text);
    }
}
