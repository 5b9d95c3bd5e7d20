//! JSON-RPC over WebSocket on real Anvil nodes: calls work as over HTTP; `newHeads` and
//! `logs` subscriptions deliver every block and log exactly once, in order, while the
//! nodes behind them are killed, paused and restarted; reorgs remove logs; slow
//! consumers are cut off alone; 1,000 subscribers on one process; ethers and viem
//! receive blocks. The fan-out benchmark (`bench/ws.sh`) is the last test here.

mod testbed;

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, protocol::frame::coding::CloseCode},
};

use testbed::{
    ACCOUNT0_ADDRESS, BLOCK_TIME, Fleet, block_timestamp,
    faultproxy::{Fault, FaultProxy},
    gateway::{FAST_ROUTING, Outlast},
    node_client, quantity, rpc, rpc_result,
};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any one expected message.
const WAIT: Duration = Duration::from_secs(10);

/// A config for chain `local` with one upstream per node; those with `ws[i]` also get
/// the node's `ws_url` (their heads are pushed, the others' polled). `verify` is left
/// at its default (`proofs`), so the feed checks every header's hash too.
fn config(fleet: &Fleet, ws: &[bool], extra: &str) -> String {
    let mut s = format!("{FAST_ROUTING}{extra}\n[[chains]]\nname = \"local\"\nchain_id = 31337\n");
    for i in 0..fleet.len() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{}\"\noperator = \"op{i}\"\n",
            fleet.url(i)
        ));
        if ws.get(i).copied().unwrap_or(false) {
            s.push_str(&format!("ws_url = \"{}\"\n", fleet.ws_url(i)));
        }
    }
    s
}

fn ws_url(outlast: &Outlast, path: &str) -> String {
    outlast.url(path).replacen("http://", "ws://", 1)
}

/// A WebSocket JSON-RPC client that keeps notifications apart from replies.
struct Ws {
    socket: Socket,
    next_id: u64,
    notes: VecDeque<(String, Value)>,
}

impl Ws {
    async fn connect(url: &str) -> Ws {
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        Ws {
            socket,
            next_id: 0,
            notes: VecDeque::new(),
        }
    }

    async fn send_text(&mut self, text: String) {
        self.socket
            .send(Message::text(text))
            .await
            .expect("send a message");
    }

    /// The next JSON message, or `None` when the socket closed.
    async fn read(&mut self) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message within the wait")?;
            match msg {
                Ok(Message::Text(t)) => {
                    return Some(serde_json::from_str(t.as_str()).expect("JSON from Outlast"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends `body` as is and returns the next reply (notifications are kept aside).
    async fn raw(&mut self, body: &str) -> Value {
        let text = self.raw_text(body).await;
        serde_json::from_str(&text).expect("JSON from Outlast")
    }

    /// Sends `body` as is and returns the next reply as sent, byte for byte.
    async fn raw_text(&mut self, body: &str) -> String {
        self.send_text(body.to_owned()).await;
        loop {
            let msg = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("a message within the wait")
                .expect("a reply before the socket closed")
                .expect("a message");
            let Message::Text(t) = msg else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON from Outlast");
            if !self.keep_notification(&v) {
                return t.as_str().to_owned();
            }
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_text(body.to_string()).await;
        loop {
            let msg = self.read().await.expect("a reply before the socket closed");
            if self.keep_notification(&msg) {
                continue;
            }
            assert_eq!(msg["id"], id, "replies come for the call asked: {msg}");
            return msg;
        }
    }

    async fn subscribe(&mut self, params: Value) -> String {
        let reply = self.call("eth_subscribe", params).await;
        reply["result"]
            .as_str()
            .unwrap_or_else(|| panic!("eth_subscribe failed: {reply}"))
            .to_owned()
    }

    fn keep_notification(&mut self, msg: &Value) -> bool {
        if msg["method"] != "eth_subscription" {
            return false;
        }
        let sub = msg["params"]["subscription"]
            .as_str()
            .expect("a subscription id")
            .to_owned();
        self.notes.push_back((sub, msg["params"]["result"].clone()));
        true
    }

    /// The next notification (of any subscription), or `None` when none came in time.
    async fn notification(&mut self, within: Duration) -> Option<(String, Value)> {
        if let Some(n) = self.notes.pop_front() {
            return Some(n);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.socket.next())
                .await
                .ok()??;
            if let Ok(Message::Text(t)) = msg {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if self.keep_notification(&v) {
                    return self.notes.pop_front();
                }
            }
        }
    }
}

/// Init code of a contract whose every call emits LOG1 with the calldata's first word as
/// the topic: `PUSH1 0 CALLDATALOAD PUSH1 0 PUSH1 0 LOG1 STOP`.
const EMITTER: &str = "0x600980600b6000396000f360003560006000a100";

/// The transactions each block holds, to be sent again to a node that lost them.
#[derive(Default)]
struct Ledger {
    txs: BTreeMap<u64, Vec<Value>>,
    nonce: u64,
    contract: Option<String>,
}

impl Ledger {
    /// A transaction from account 0, with every field fixed so that each node signs
    /// the same bytes (same hash, same block).
    fn tx(&mut self, to: Option<&str>, data: &str) -> Value {
        let mut tx = json!({
            "from": ACCOUNT0_ADDRESS,
            "data": data,
            "gas": "0x30000",
            "gasPrice": "0x77359400",
            "nonce": format!("{:#x}", self.nonce),
        });
        if let Some(to) = to {
            tx["to"] = json!(to);
        }
        self.nonce += 1;
        tx
    }
}

async fn send_to(fleet: &Fleet, nodes: &[usize], tx: &Value) {
    for &i in nodes {
        rpc_result(&fleet.url(i), "eth_sendTransaction", json!([tx])).await;
    }
}

/// Deploys the emitter in the next block, on every node.
async fn deploy(fleet: &mut Fleet, ledger: &mut Ledger) -> String {
    let tx = ledger.tx(None, EMITTER);
    let all: Vec<usize> = (0..fleet.len()).collect();
    send_to(fleet, &all, &tx).await;
    fleet.mine(1).await;
    ledger.txs.insert(fleet.height(), vec![tx]);
    let block = rpc_result(
        &fleet.url(0),
        "eth_getBlockByNumber",
        json!([format!("{:#x}", fleet.height()), false]),
    )
    .await;
    let receipt = rpc_result(
        &fleet.url(0),
        "eth_getTransactionReceipt",
        json!([block["transactions"][0]]),
    )
    .await;
    let contract = receipt["contractAddress"]
        .as_str()
        .expect("deployed")
        .to_ascii_lowercase();
    ledger.contract = Some(contract.clone());
    contract
}

/// Mines one block whose one transaction makes the emitter log the block's number,
/// on `nodes` (the others are down or paused: `Fleet::mine` skips them too).
async fn emit_block(fleet: &mut Fleet, ledger: &mut Ledger, nodes: &[usize]) {
    let contract = ledger.contract.clone().expect("deployed first");
    let b = fleet.height() + 1;
    let tx = ledger.tx(Some(&contract), &format!("0x{b:064x}"));
    send_to(fleet, nodes, &tx).await;
    fleet.mine(1).await;
    ledger.txs.insert(b, vec![tx]);
}

/// Node `i` holds empty blocks from `from` on (it was restarted or caught up without
/// the transactions): rolls it back and mines them again with their transactions, at
/// the same timestamps, so it is on the fleet's chain again.
async fn resync(fleet: &Fleet, ledger: &Ledger, i: usize, from: u64) {
    let url = fleet.url(i);
    let height = fleet.height();
    let other = fleet.url((i + 1) % fleet.len());
    rpc_result(&url, "anvil_rollback", json!([height - from + 1])).await;
    // After a rollback Anvil computes the next base fee from the block it left, not from
    // the parent: set it to the fleet's, or the first block differs.
    let next = rpc_result(
        &other,
        "eth_getBlockByNumber",
        json!([format!("{from:#x}"), false]),
    )
    .await;
    rpc_result(
        &url,
        "anvil_setNextBlockBaseFeePerGas",
        json!([next["baseFeePerGas"]]),
    )
    .await;
    for b in from..=height {
        for tx in ledger.txs.get(&b).into_iter().flatten() {
            rpc_result(&url, "eth_sendTransaction", json!([tx])).await;
        }
        rpc_result(&url, "evm_mine", json!([block_timestamp(b)])).await;
    }
    let ours = rpc_result(&url, "eth_getBlockByNumber", json!(["latest", false])).await;
    let fleets = rpc_result(
        &other,
        "eth_getBlockByNumber",
        json!([format!("{height:#x}"), false]),
    )
    .await;
    assert_eq!(ours["hash"], fleets["hash"], "node {i} resynced");
}

/// Reads notifications until `heads` has a header numbered `last` and `logs` a log of
/// block `last` (when `want_logs`), then returns (header numbers and hashes, logs).
async fn collect(
    ws: &mut Ws,
    heads_id: &str,
    logs_id: Option<&str>,
    last: u64,
) -> (Vec<(u64, String)>, Vec<Value>) {
    let mut heads = Vec::new();
    let mut logs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let head_done = heads.last().is_some_and(|(n, _)| *n >= last);
        let logs_done = logs_id.is_none()
            || logs
                .last()
                .is_some_and(|l: &Value| quantity(&l["blockNumber"]) >= last);
        if head_done && logs_done {
            return (heads, logs);
        }
        assert!(
            Instant::now() < deadline,
            "waited 30 s for block {last}: heads {heads:?}, {} logs",
            logs.len()
        );
        let Some((sub, result)) = ws.notification(Duration::from_secs(1)).await else {
            continue;
        };
        if sub == heads_id {
            heads.push((
                quantity(&result["number"]),
                result["hash"].as_str().expect("a hash").to_owned(),
            ));
        } else if Some(sub.as_str()) == logs_id {
            logs.push(result);
        }
    }
}

/// Every block `first..=last` once, in order, with the hash node `honest` has.
async fn assert_every_block_once(heads: &[(u64, String)], first: u64, last: u64, url: &str) {
    let numbers: Vec<u64> = heads.iter().map(|(n, _)| *n).collect();
    let expected: Vec<u64> = (first..=last).collect();
    assert_eq!(numbers, expected, "every block once, in order");
    for (n, hash) in heads {
        let block = rpc_result(
            url,
            "eth_getBlockByNumber",
            json!([format!("{n:#x}"), false]),
        )
        .await;
        assert_eq!(block["hash"], *hash, "block {n} is the fleet's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_calls_work_over_websocket_as_over_http() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&config(&fleet, &[false, false], "")).await;
    outlast.wait_for_head("/local", 3).await;
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;

    let number = ws.call("eth_blockNumber", json!([])).await;
    assert_eq!(number["result"], "0x3", "{number}");
    let chain_id = ws.call("eth_chainId", json!([])).await;
    assert_eq!(chain_id["result"], "0x7a69");
    let balance = ws
        .call("eth_getBalance", json!([ACCOUNT0_ADDRESS, "latest"]))
        .await;
    let direct = rpc(
        &fleet.url(0),
        "eth_getBalance",
        json!([ACCOUNT0_ADDRESS, "0x3"]),
    )
    .await;
    assert_eq!(balance["result"], direct["result"]);

    // Ids of any type come back byte for byte (`1.50` stays `1.50`, not `1.5`); batches
    // keep their order.
    let reply = ws
        .raw_text(r#"[{"jsonrpc":"2.0","id":1.50,"method":"eth_chainId"},{"jsonrpc":"2.0","id":"x\u0041","method":"eth_blockNumber"},{"jsonrpc":"2.0","id":18446744073709551616,"method":"eth_chainId"}]"#)
        .await;
    assert_eq!(
        reply,
        r#"[{"jsonrpc":"2.0","id":1.50,"result":"0x7a69"},{"jsonrpc":"2.0","id":"x\u0041","result":"0x3"},{"jsonrpc":"2.0","id":18446744073709551616,"result":"0x7a69"}]"#
    );
    for id in ["-7", "1e3", "null", "\"\""] {
        let reply = ws
            .raw_text(&format!(
                r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#
            ))
            .await;
        assert_eq!(
            reply,
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x7a69"}}"#)
        );
    }
    // The same errors as over HTTP.
    let denied = ws.call("anvil_mine", json!([])).await;
    assert_eq!(denied["error"]["code"], -32004, "{denied}");
    let garbage = ws.raw("{not json").await;
    assert_eq!(garbage["error"]["code"], -32700, "{garbage}");
    let unknown = ws.call("eth_subscribe", json!(["syncing"])).await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    // A batch mixing a subscription and a call gets both answers, in order.
    let mixed = ws
        .raw(r#"[{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]},{"jsonrpc":"2.0","id":2,"method":"eth_chainId"}]"#)
        .await;
    assert!(mixed[0]["result"].is_string(), "{mixed}");
    assert_eq!(mixed[1]["result"], "0x7a69", "{mixed}");
    let gone = ws
        .call("eth_unsubscribe", json!([mixed[0]["result"]]))
        .await;
    assert_eq!(gone["result"], true);
    let again = ws
        .call("eth_unsubscribe", json!([mixed[0]["result"]]))
        .await;
    assert_eq!(again["result"], false);

    // An unknown chain is refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(ws_url(&outlast, "/nope")).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 404),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_heads_and_logs_arrive_once_in_order_while_nodes_die_hang_and_restart() {
    let mut fleet = Fleet::start(3).await;
    let mut ledger = Ledger::default();
    let contract = deploy(&mut fleet, &mut ledger).await;
    // Node 0 and 1 push their heads over WebSocket; node 2 is only polled.
    let outlast = Outlast::start(&config(&fleet, &[true, true, false], "")).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
    let heads_id = ws.subscribe(json!(["newHeads"])).await;
    let logs_id = ws.subscribe(json!(["logs", {"address": contract}])).await;
    let subscribed_at = fleet.height();
    let step = Duration::from_millis(150);
    let all = [0, 1, 2];

    for _ in 0..3 {
        emit_block(&mut fleet, &mut ledger, &all).await;
        tokio::time::sleep(step).await;
    }
    // Killed: mining goes on on the others.
    fleet.kill(0);
    for _ in 0..4 {
        emit_block(&mut fleet, &mut ledger, &[1, 2]).await;
        tokio::time::sleep(step).await;
    }
    // Restarted: it comes back from genesis with empty blocks, then gets the real ones.
    fleet.restart(0).await;
    resync(&fleet, &ledger, 0, 1).await;
    for _ in 0..2 {
        emit_block(&mut fleet, &mut ledger, &all).await;
        tokio::time::sleep(step).await;
    }
    // Paused (hangs, TCP still accepts): mining goes on on the others.
    let paused_from = fleet.height() + 1;
    fleet.pause(1);
    for _ in 0..4 {
        emit_block(&mut fleet, &mut ledger, &[0, 2]).await;
        tokio::time::sleep(step).await;
    }
    fleet.resume(1);
    fleet.mine(0).await; // catches node 1 up with empty blocks…
    resync(&fleet, &ledger, 1, paused_from).await; // …then with the real ones
    for _ in 0..3 {
        emit_block(&mut fleet, &mut ledger, &all).await;
        tokio::time::sleep(step).await;
    }
    // And the node that fed the last blocks dies too.
    fleet.kill(2);
    for _ in 0..2 {
        emit_block(&mut fleet, &mut ledger, &[0, 1]).await;
        tokio::time::sleep(step).await;
    }

    let last = fleet.height();
    let (heads, logs) = collect(&mut ws, &heads_id, Some(&logs_id), last).await;
    let first = heads.first().map(|(n, _)| *n).expect("some heads");
    assert!(
        first == subscribed_at + 1 || first == subscribed_at,
        "first head {first}, subscribed at {subscribed_at}"
    );
    assert_every_block_once(&heads, first, last, &fleet.url(0)).await;
    let log_blocks: Vec<u64> = logs.iter().map(|l| quantity(&l["blockNumber"])).collect();
    let expected: Vec<u64> = (subscribed_at + 1..=last).collect();
    assert_eq!(
        log_blocks, expected,
        "one log per block, once, in order: {logs:?}"
    );
    for log in &logs {
        let n = quantity(&log["blockNumber"]);
        assert_eq!(log["topics"][0], format!("0x{n:064x}"), "{log}");
        assert_eq!(log["removed"], false, "{log}");
        assert_eq!(
            log["address"].as_str().map(str::to_ascii_lowercase),
            Some(contract.clone())
        );
    }
    // Nothing more came: no duplicate arrived late.
    assert!(
        ws.notification(Duration::from_millis(500)).await.is_none(),
        "a late duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_mined_while_no_upstream_was_reachable_are_backfilled_in_order() {
    let mut fleet = Fleet::start(2).await;
    let mut ledger = Ledger::default();
    deploy(&mut fleet, &mut ledger).await;
    let proxies = [
        FaultProxy::start(fleet.url(0)).await,
        FaultProxy::start(fleet.url(1)).await,
    ];
    // Upstream 0 pushes its heads (through its proxy too); upstream 1 is polled.
    let toml = format!(
        "{FAST_ROUTING}\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\
         [[chains.upstreams]]\nname = \"u0\"\nurl = \"{}\"\nws_url = \"{}\"\noperator = \"op0\"\n\
         [[chains.upstreams]]\nname = \"u1\"\nurl = \"{}\"\noperator = \"op1\"\n",
        proxies[0].url(),
        proxies[0].ws_url(),
        proxies[1].url(),
    );
    let outlast = Outlast::start(&toml).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
    let heads_id = ws.subscribe(json!(["newHeads"])).await;
    // No address: every log of every block is fetched.
    let logs_id = ws.subscribe(json!(["logs", {"topics": [null]}])).await;
    let from = fleet.height() + 1;
    for _ in 0..2 {
        emit_block(&mut fleet, &mut ledger, &[0, 1]).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Every upstream gone (the feed's WebSocket too) while six blocks are mined.
    for p in &proxies {
        p.set(Fault::Refuse);
    }
    for _ in 0..6 {
        emit_block(&mut fleet, &mut ledger, &[0, 1]).await;
    }
    // Outlast sees it: with no upstream ready, /readyz says 503.
    let mut ready = 200;
    for _ in 0..400 {
        ready = reqwest::get(outlast.url("/readyz"))
            .await
            .expect("GET /readyz")
            .status()
            .as_u16();
        if ready == 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(ready, 503, "Outlast never saw every upstream gone");
    for p in &proxies {
        p.set(Fault::None);
    }
    emit_block(&mut fleet, &mut ledger, &[0, 1]).await;
    let last = fleet.height();
    let (heads, logs) = collect(&mut ws, &heads_id, Some(&logs_id), last).await;
    assert_every_block_once(&heads, from, last, &fleet.url(0)).await;
    let log_blocks: Vec<u64> = logs.iter().map(|l| quantity(&l["blockNumber"])).collect();
    assert_eq!(log_blocks, (from..=last).collect::<Vec<_>>(), "{logs:?}");
    assert!(ws.notification(Duration::from_millis(500)).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_sends_the_new_branch_and_removes_the_old_logs() {
    let mut fleet = Fleet::start(2).await;
    let mut ledger = Ledger::default();
    let contract = deploy(&mut fleet, &mut ledger).await;
    let outlast = Outlast::start(&config(&fleet, &[true, false], "")).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
    let heads_id = ws.subscribe(json!(["newHeads"])).await;
    let logs_id = ws.subscribe(json!(["logs", {"address": contract}])).await;
    for _ in 0..3 {
        emit_block(&mut fleet, &mut ledger, &[0, 1]).await;
    }
    let top = fleet.height();
    let (old_heads, old_logs) = collect(&mut ws, &heads_id, Some(&logs_id), top).await;
    assert_eq!(old_logs.len(), 3);

    // Every node drops its last two blocks and mines three others, without the logs of
    // the second: blocks top-1 and top change hash, and top+1 is new.
    let fork = top - 1;
    for i in 0..2 {
        rpc_result(&fleet.url(i), "anvil_rollback", json!([2])).await;
    }
    ledger.nonce -= 2; // the two transactions rolled back
    for (k, b) in (fork..=top + 1).enumerate() {
        if k != 1 {
            let tx = ledger.tx(Some(&contract), &format!("0x{:064x}", b + 1000));
            send_to(&fleet, &[0, 1], &tx).await;
        }
        for i in 0..2 {
            // A different timestamp than before, so even an empty block differs.
            rpc_result(
                &fleet.url(i),
                "evm_mine",
                json!([block_timestamp(b) + BLOCK_TIME / 2]),
            )
            .await;
        }
    }
    let node = fleet.url(0);
    let (new_heads, logs) = collect(&mut ws, &heads_id, Some(&logs_id), top + 1).await;
    let numbers: Vec<u64> = new_heads.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        vec![fork, top, top + 1],
        "the new branch, in order"
    );
    for (n, hash) in &new_heads {
        let block = rpc_result(
            &node,
            "eth_getBlockByNumber",
            json!([format!("{n:#x}"), false]),
        )
        .await;
        assert_eq!(block["hash"], *hash);
    }
    assert!(
        old_heads
            .iter()
            .all(|(_, h)| !new_heads.iter().any(|(_, n)| n == h))
    );
    // First the two orphaned logs, removed, oldest first; then the new branch's two.
    let summary: Vec<(u64, bool)> = logs
        .iter()
        .map(|l| (quantity(&l["blockNumber"]), l["removed"] == true))
        .collect();
    assert_eq!(
        summary,
        vec![(fork, true), (top, true), (fork, false), (top + 1, false)],
        "{logs:?}"
    );
    assert_eq!(logs[0]["transactionHash"], old_logs[1]["transactionHash"]);
    assert_eq!(logs[1]["transactionHash"], old_logs[2]["transactionHash"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_cleanly_and_subscriptions_are_capped() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let extra = "[limits]\nmax_subscriptions = 2\nmax_frame_bytes = 1024\n";
    let outlast = Outlast::start(&config(&fleet, &[false], extra)).await;
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
    ws.subscribe(json!(["newHeads"])).await;
    ws.subscribe(json!(["newPendingTransactions"])).await;
    let third = ws.call("eth_subscribe", json!(["newHeads"])).await;
    assert_eq!(third["error"]["code"], -32005, "{third}");
    assert!(
        third["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_subscriptions")),
        "{third}"
    );

    // A message over max_frame_bytes closes the connection with 1009 and says why.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":["{}"]}}"#,
        "x".repeat(2000)
    );
    ws.send_text(big).await;
    let close = loop {
        match tokio::time::timeout(WAIT, ws.socket.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("a close frame with a code");
    assert_eq!(frame.code, CloseCode::Size);
    assert!(frame.reason.contains("max_frame_bytes"), "{}", frame.reason);
    let metrics = outlast.metrics().await;
    for limit in ["ws_subscriptions", "ws_frame"] {
        assert!(
            metrics.contains(&format!(
                "outlast_limits_exceeded_total{{limit=\"{limit}\"}} 1"
            )),
            "{limit} counted: {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_and_closes_going_away_on_shutdown() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet, &[false], "[limits]\nws_ping_secs = 1\n")).await;
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
    let ping = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(Ok(Message::Ping(_))) = ws.socket.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "a ping within 3 s");
    outlast.stop().await;
    let close = loop {
        match tokio::time::timeout(WAIT, ws.socket.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.expect("a code").code, CloseCode::Away);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_transactions_arrive_once_from_a_polled_filter_and_a_pushed_feed() {
    for ws_feed in [false, true] {
        let mut fleet = Fleet::start(2).await;
        fleet.mine(1).await;
        let outlast = Outlast::start(&config(&fleet, &[ws_feed, ws_feed], "")).await;
        let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
        let sub = ws.subscribe(json!(["newPendingTransactions"])).await;
        // The feed has found its source once a transaction is heard of (from another
        // account, so the ledger's nonces are untouched).
        let mut warm_up = 0;
        send_until_heard(
            &fleet,
            &mut ws,
            &sub,
            0,
            testbed::ACCOUNT1_ADDRESS,
            &mut warm_up,
        )
        .await;
        let mut ledger = Ledger::default();
        let mut sent = Vec::new();
        for _ in 0..3 {
            let tx = ledger.tx(Some(ACCOUNT0_ADDRESS), "0x");
            // Sent to both nodes: both see it pending, the client hears of it once.
            let mut hash = Value::Null;
            for i in 0..2 {
                hash = rpc_result(&fleet.url(i), "eth_sendTransaction", json!([tx])).await;
            }
            sent.push(hash);
        }
        let mut got = Vec::new();
        while let Some((id, hash)) = ws.notification(Duration::from_secs(3)).await {
            assert_eq!(id, sub);
            got.push(hash);
        }
        assert_eq!(got, sent, "ws feed: {ws_feed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_off_and_the_others_miss_nothing() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(
        &fleet,
        &[true],
        "[limits]\nws_client_buffer = 64\n",
    ))
    .await;
    let url = ws_url(&outlast, "/local");
    let mut fast = Ws::connect(&url).await;
    let fast_id = fast.subscribe(json!(["newHeads"])).await;
    // The slow client reads nothing, through a small receive buffer, and makes each
    // block 50 notifications (50 subscriptions): its socket fills after a few blocks,
    // then its queue of 64 events.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("an address");
    let stream = socket.connect(addr).await.expect("connect");
    let (slow_socket, _) =
        tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
    let mut slow = Ws {
        socket: slow_socket,
        next_id: 0,
        notes: VecDeque::new(),
    };
    for _ in 0..50 {
        slow.subscribe(json!(["newHeads"])).await;
    }
    let from = fleet.height() + 1;

    // The fast client reads all along, up to the last block mined.
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(u64::MAX);
    let reader = tokio::spawn(async move {
        let mut heads: Vec<u64> = Vec::new();
        while heads
            .last()
            .is_none_or(|n| n < &*last_rx.borrow_and_update())
        {
            match fast.notification(Duration::from_secs(10)).await {
                Some((id, head)) => {
                    assert_eq!(id, fast_id);
                    heads.push(quantity(&head["number"]));
                }
                None => break,
            }
        }
        heads
    });
    for _ in 0..200 {
        fleet.mine(1).await;
    }
    let last = fleet.height();
    let _ = last_tx.send(last);

    // Reading at last, the slow one finds some blocks, then why it was closed.
    let mut got = 0;
    let close = loop {
        match tokio::time::timeout(WAIT, slow.socket.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Text(_))) => got += 1,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame after {got} messages, got {other:?}"),
        }
    };
    let frame = close.expect("a close code");
    assert_eq!(frame.code, CloseCode::Policy, "{}", frame.reason);
    assert!(frame.reason.contains("too slow"), "{}", frame.reason);
    let metrics = outlast.metrics().await;
    assert!(
        metrics.contains("outlast_limits_exceeded_total{limit=\"ws_client_buffer\"} 1"),
        "the cut-off is counted: {metrics}"
    );
    assert!(
        got < 50 * (last - from) as usize,
        "it was cut off early ({got} messages)"
    );
    let heads = reader.await.expect("reader");
    assert_eq!(
        heads,
        (from..=last).collect::<Vec<_>>(),
        "the fast client got every block"
    );
}

/// A WebSocket client that reads every frame as it comes and answers nothing, not even
/// pings (tungstenite answers them by itself, so it cannot be this client).
struct SilentWs {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl SilentWs {
    async fn connect(outlast: &Outlast, path: &str) -> SilentWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = outlast.base.trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).await.expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let blank = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("a handshake answer")
                .expect("read");
            assert!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..blank]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..blank + 4);
        SilentWs { stream, buf }
    }

    /// The next frame (opcode, payload), or `None` when the connection ended.
    async fn frame(&mut self, deadline: tokio::time::Instant) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            if self.buf.len() >= 2 {
                let opcode = self.buf[0] & 0x0f;
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().expect("8 bytes")) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .expect("a frame before the deadline")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed_with_1011_and_the_others_stay() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet, &[false], "[limits]\nws_ping_secs = 1\n")).await;
    // A client that answers pings (tungstenite does, as it reads) is connected alongside,
    // reading all the while.
    let alive = Ws::connect(&ws_url(&outlast, "/local")).await;
    let (done, mut stop) = tokio::sync::oneshot::channel::<()>();
    let reading = tokio::spawn(async move {
        let mut alive = alive;
        loop {
            tokio::select! {
                _ = &mut stop => return alive,
                msg = alive.socket.next() => match msg {
                    Some(Ok(Message::Close(frame))) => panic!("the live client was closed: {frame:?}"),
                    Some(Ok(_)) => {}
                    other => panic!("the live client's socket ended: {other:?}"),
                },
            }
        }
    });
    let mut silent = SilentWs::connect(&outlast, "/local").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut pings = 0;
    let code = loop {
        match silent.frame(deadline).await {
            Some((0x9, _)) => pings += 1,
            Some((0x8, payload)) => {
                assert!(payload.len() >= 2, "a close frame without a code");
                break u16::from_be_bytes([payload[0], payload[1]]);
            }
            Some(_) => {}
            None => panic!("closed without a close frame, after {pings} pings"),
        }
    };
    assert_eq!(code, 1011, "closed with {code} after {pings} pings");
    assert!(pings >= 1, "closed before any ping went unanswered");
    let metrics = outlast.metrics().await;
    assert!(
        metrics.contains("outlast_limits_exceeded_total{limit=\"ws_ping\"} 1"),
        "{metrics}"
    );
    // The client that answers its pings was pinged as long, and is still served.
    let _ = done.send(());
    let mut alive = reading.await.expect("the live client's reader");
    let reply = alive.call("eth_chainId", json!([])).await;
    assert_eq!(reply["result"], "0x7a69", "{reply}");
}

/// A transfer of 1 wei from `from` to itself with every field fixed.
fn self_transfer(from: &str, nonce: u64) -> Value {
    json!({"from": from, "to": from, "value": "0x1", "gas": "0x5208",
        "gasPrice": "0x77359400", "nonce": format!("{nonce:#x}")})
}

/// Sends transactions from `from` (nonces from `*nonce` on) to node `node` only, one at a
/// time, until the subscription `sub` tells of one; returns the hashes sent and heard.
async fn send_until_heard(
    fleet: &Fleet,
    ws: &mut Ws,
    sub: &str,
    node: usize,
    from: &str,
    nonce: &mut u64,
) -> (Vec<Value>, Vec<Value>) {
    let (mut sent, mut heard) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let hash = rpc_result(
            &fleet.url(node),
            "eth_sendTransaction",
            json!([self_transfer(from, *nonce)]),
        )
        .await;
        *nonce += 1;
        sent.push(hash);
        while let Some((id, hash)) = ws.notification(Duration::from_secs(1)).await {
            assert_eq!(id, sub);
            heard.push(hash);
        }
        if !heard.is_empty() {
            return (sent, heard);
        }
    }
    panic!(
        "none of {} transactions sent to node {node} was heard of",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_transactions_keep_coming_when_their_source_fails() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    // u0 (through a proxy, HTTP and WebSocket alike) is the first source: it has the
    // only WebSocket; u1 can be polled with a filter.
    let proxy = FaultProxy::start(fleet.url(0)).await;
    let toml = format!(
        "{FAST_ROUTING}\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\
         [[chains.upstreams]]\nname = \"u0\"\nurl = \"{}\"\nws_url = \"{}\"\noperator = \"op0\"\n\
         [[chains.upstreams]]\nname = \"u1\"\nurl = \"{}\"\noperator = \"op1\"\n",
        proxy.url(),
        proxy.ws_url(),
        fleet.url(1),
    );
    let outlast = Outlast::start(&toml).await;
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
    let sub = ws.subscribe(json!(["newPendingTransactions"])).await;
    let (mut nonce0, mut nonce1) = (0, 0);

    // Transactions only node 0 has are heard of: u0 is the source.
    let (sent0, heard0) =
        send_until_heard(&fleet, &mut ws, &sub, 0, ACCOUNT0_ADDRESS, &mut nonce0).await;
    // The source fails: u0 is gone, its WebSocket too.
    proxy.set(Fault::Refuse);
    // Transactions only node 1 has are heard of: u1 took over.
    let (sent1, mut heard1) = send_until_heard(
        &fleet,
        &mut ws,
        &sub,
        1,
        testbed::ACCOUNT1_ADDRESS,
        &mut nonce1,
    )
    .await;
    // From then on, each new one arrives, once, in order.
    let mut last = Vec::new();
    for _ in 0..3 {
        let hash = rpc_result(
            &fleet.url(1),
            "eth_sendTransaction",
            json!([self_transfer(testbed::ACCOUNT1_ADDRESS, nonce1)]),
        )
        .await;
        nonce1 += 1;
        last.push(hash);
    }
    while let Some((id, hash)) = ws.notification(Duration::from_secs(3)).await {
        assert_eq!(id, sub);
        heard1.push(hash);
    }
    assert!(
        heard1.ends_with(&last),
        "the last three, in order: heard {heard1:?}, sent {last:?}"
    );
    let all: Vec<&Value> = heard0.iter().chain(&heard1).collect();
    let unique: std::collections::HashSet<String> = all.iter().map(|h| h.to_string()).collect();
    assert_eq!(unique.len(), all.len(), "a hash was sent twice: {all:?}");
    assert!(
        heard0.iter().all(|h| sent0.contains(h)),
        "{heard0:?} {sent0:?}"
    );
    let sent1: Vec<&Value> = sent1.iter().chain(&last).collect();
    assert!(
        heard1.iter().all(|h| sent1.contains(&h)),
        "{heard1:?} {sent1:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_only_one_upstream_pushes_is_never_sent() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    // Every upstream pushes its heads; quorum 2 (the default).
    let outlast = Outlast::start(&config(&fleet, &[true, true, true], "")).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    // Every upstream has told its head, and a quorum agrees: they all vote. (Before an
    // upstream's first head, the head is the others' best guess, unconfirmed.)
    let mut status = Value::Null;
    for _ in 0..400 {
        status = outlast.status().await;
        let chain = &status["chains"][0];
        let all_told = chain["upstreams"]
            .as_array()
            .is_some_and(|ups| ups.iter().all(|u| u["head"] == fleet.height()));
        if all_told && chain["head"]["confirmed"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status["chains"][0]["head"]["confirmed"], true, "{status}");
    let told = Instant::now();
    let mut ws = Ws::connect(&ws_url(&outlast, "/local")).await;
    let heads_id = ws.subscribe(json!(["newHeads"])).await;
    let h = fleet.height();

    // Node 0 goes its own way: three blocks nobody else has (other timestamps), which it
    // pushes over its WebSocket.
    fleet.lag(0);
    let mut fork = Vec::new();
    for b in h + 1..=h + 3 {
        rpc_result(&fleet.url(0), "evm_mine", json!([block_timestamp(b) + 1])).await;
        let block = rpc_result(
            &fleet.url(0),
            "eth_getBlockByNumber",
            json!([format!("{b:#x}"), false]),
        )
        .await;
        fork.push(block["hash"].clone());
    }
    // Outlast has seen them (it is u0's head) and kept them out of the consensus.
    for _ in 0..400 {
        status = outlast.status().await;
        if status["chains"][0]["upstreams"][0]["head"] == h + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        status["chains"][0]["upstreams"][0]["head"],
        h + 3,
        "{status}"
    );
    assert_eq!(status["chains"][0]["head"]["number"], h, "{status}");
    // And still while the others, seeing no new block, count as stuck: a head unchanged
    // for three block times, at least a second, loses its vote to the ones moving on —
    // but a majority of operators is never outvoted by one.
    while told.elapsed() < Duration::from_secs(3) {
        let status = outlast.status().await;
        assert_eq!(status["chains"][0]["head"]["number"], h, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The others mine two blocks: agreed by two operators, and sent.
    fleet.mine(2).await;
    let (heads, _) = collect(&mut ws, &heads_id, None, h + 2).await;
    assert_every_block_once(&heads, h + 1, h + 2, &fleet.url(1)).await;
    for (n, hash) in &heads {
        assert!(
            !fork.contains(&json!(hash)),
            "block {n} {hash} only node 0 has was sent"
        );
    }
    // No block of node 0's arrives late either.
    let late = ws.notification(Duration::from_millis(500)).await;
    assert!(
        late.is_none(),
        "a late notification: {late:?}; fork {fork:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_costs_outlast_no_more_memory_than_its_queue() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let buffer = 64;
    let served = Outlast::start_process(&config(
        &fleet,
        &[true],
        &format!(
            "[limits]\nws_client_buffer = {buffer}\nmax_subscriptions = 200\n[cache]\nsize_bytes = 0\n"
        ),
    ))
    .await;
    let url = ws_url(&served, "/local");
    // The slow client reads nothing, through a small receive buffer, and turns each
    // block into 200 notifications.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let addr = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("an address");
    let stream = socket.connect(addr).await.expect("connect");
    let (socket, _) = tokio_tungstenite::client_async(url.as_str(), MaybeTlsStream::Plain(stream))
        .await
        .expect("handshake");
    let mut slow = Ws {
        socket,
        next_id: 0,
        notes: VecDeque::new(),
    };
    let subscriptions = 200;
    for _ in 0..subscriptions {
        slow.subscribe(json!(["newHeads"])).await;
    }
    let header = rpc_result(
        &fleet.url(0),
        "eth_getBlockByNumber",
        json!(["latest", false]),
    )
    .await
    .to_string()
    .len();
    let before = rss_kib(&served);
    let blocks = 300;
    for _ in 0..blocks {
        fleet.mine(1).await;
    }
    served.wait_for_head("/local", fleet.height()).await;
    let after = rss_kib(&served);
    // Kept for the slow client, the notifications would weigh this much.
    let unbounded_kib = (subscriptions * blocks * header / 1024) as u64;
    let grew = after.saturating_sub(before);
    println!(
        "slow client: RSS {before} KiB -> {after} KiB (+{grew} KiB); unbounded it would hold ~{unbounded_kib} KiB"
    );
    assert!(
        grew < unbounded_kib / 4,
        "Outlast grew {grew} KiB while a slow client fell {} notifications behind (~{unbounded_kib} KiB)",
        subscriptions * blocks
    );
    // It was cut off, and told why.
    let close = loop {
        match tokio::time::timeout(WAIT, slow.socket.next())
            .await
            .expect("an answer")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let frame = close.expect("a close code");
    assert_eq!(frame.code, CloseCode::Policy, "{}", frame.reason);
    assert!(frame.reason.contains("too slow"), "{}", frame.reason);
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ethers_and_viem_receive_every_block_through_outlast() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let outlast = Outlast::start(&config(&fleet, &[true, false], "")).await;
    let url = ws_url(&outlast, "/local");
    for lib in ["ethers", "viem"] {
        let args = [lib, url.as_str(), "6"];
        let client = node_client("ws_blocks.cjs", &args);
        let mine = async {
            // Mines until the client has its blocks (it subscribes after starting up).
            for _ in 0..120 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                fleet.mine(1).await;
            }
        };
        let out = tokio::select! {
            out = client => out,
            _ = mine => panic!("{lib} did not get 6 blocks in 120 blocks"),
        };
        let got: Value = serde_json::from_str(out.trim()).expect("ws_blocks prints JSON");
        let blocks = got["blocks"].as_array().expect("blocks");
        let first = blocks[0]["number"].as_u64().expect("a number");
        for (k, b) in blocks.iter().enumerate() {
            assert_eq!(b["number"].as_u64(), Some(first + k as u64), "{lib}: {got}");
            let direct = rpc_result(
                &fleet.url(1),
                "eth_getBlockByNumber",
                json!([format!("{:#x}", first + k as u64), false]),
            )
            .await;
            assert_eq!(b["hash"], direct["hash"], "{lib}: {got}");
        }
    }
}

// ---------------------------------------------------------------- scale and benchmark

/// Resident memory of `outlast` (started as a process) now, in KiB.
fn rss_kib(outlast: &Outlast) -> u64 {
    let pid = outlast.pid().expect("running as a process");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// What `fan_out` measured.
struct FanOut {
    subscribers: usize,
    blocks: u64,
    rss_idle_kib: u64,
    rss_subscribed_kib: u64,
    /// Block mined on every node → notification read by a client, every (client, block).
    latencies: Vec<Duration>,
    /// For one client subscribed to an Anvil node directly: from the start of the
    /// mining call (the node notifies before every node has mined).
    direct: Vec<Duration>,
}

impl FanOut {
    fn per_subscriber_kib(&self) -> f64 {
        self.rss_subscribed_kib.saturating_sub(self.rss_idle_kib) as f64 / self.subscribers as f64
    }

    fn print(&self) {
        let pct = |v: &[Duration], p: f64| -> f64 {
            let mut v = v.to_vec();
            v.sort();
            let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1000.0
        };
        println!(
            "ws fan-out: {} subscribers x {} blocks: latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms \
             (anvil direct, 1 subscriber, from the mining call: p50 {:.2} ms, p99 {:.2} ms); \
             Outlast RSS {} KiB idle, {} KiB subscribed: {:.1} KiB per subscriber",
            self.subscribers,
            self.blocks,
            pct(&self.latencies, 0.5),
            pct(&self.latencies, 0.99),
            pct(&self.latencies, 1.0),
            pct(&self.direct, 0.5),
            pct(&self.direct, 0.99),
            self.rss_idle_kib,
            self.rss_subscribed_kib,
            self.per_subscriber_kib(),
        );
    }
}

/// `subscribers` clients, each on its own connection, subscribe to `newHeads` on an
/// Outlast process in front of two Anvil nodes that push their heads; `blocks` blocks
/// are mined `gap` apart. Asserts each client got every block once, in order.
async fn fan_out(subscribers: usize, blocks: u64, gap: Duration) -> FanOut {
    // One socket per subscriber here, and as many in Outlast (it raises its own limit).
    testbed::raise_fd_limit(subscribers as u64 + 256);
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    // Every subscriber connects from 127.0.0.1: past the default per-address cap (256).
    let served = Outlast::start_process_with_server(
        "max_connections_per_ip = 5000",
        &config(&fleet, &[true, true], ""),
    )
    .await;
    let url = ws_url(&served, "/local");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle_kib = rss_kib(&served);

    // Connect and subscribe, 50 at a time, each within the wait.
    let mut clients = Vec::with_capacity(subscribers);
    for chunk in 0..subscribers.div_ceil(50) {
        let n = 50.min(subscribers - chunk * 50);
        let joined = futures_util::future::join_all((0..n).map(|_| async {
            let mut ws = Ws::connect(&url).await;
            let id = ws.subscribe(json!(["newHeads"])).await;
            (ws, id)
        }))
        .await;
        clients.extend(joined);
    }
    let (mut direct, _) = tokio_tungstenite::connect_async(fleet.ws_url(0))
        .await
        .expect("anvil ws");
    direct
        .send(Message::text(
            r#"{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}"#,
        ))
        .await
        .expect("subscribe at anvil");
    let _ = direct.next().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_subscribed_kib = rss_kib(&served);

    // Each client reads on its own task and stamps each head when it arrives.
    let start = fleet.height() + 1;
    let last = fleet.height() + blocks;
    let mut readers = tokio::task::JoinSet::new();
    for (mut ws, id) in clients {
        readers.spawn(async move {
            let mut got = Vec::new();
            while got.last().is_none_or(|(n, _)| *n < last) {
                match ws.notification(Duration::from_secs(20)).await {
                    Some((sub, head)) => {
                        assert_eq!(sub, id);
                        got.push((quantity(&head["number"]), Instant::now()));
                    }
                    None => panic!("a subscriber heard nothing for 20 s after {got:?}"),
                }
            }
            got
        });
    }
    let direct_reader = tokio::spawn(async move {
        let mut got = Vec::new();
        while got.last().is_none_or(|(n, _)| *n < last) {
            let Some(Ok(Message::Text(t))) = direct.next().await else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            got.push((quantity(&v["params"]["result"]["number"]), Instant::now()));
        }
        got
    });
    let mut mined_at = BTreeMap::new();
    let mut mining_at = BTreeMap::new();
    for _ in 0..blocks {
        let started = Instant::now();
        fleet.mine(1).await;
        mined_at.insert(fleet.height(), Instant::now());
        mining_at.insert(fleet.height(), started);
        tokio::time::sleep(gap).await;
    }
    let mut latencies = Vec::with_capacity(subscribers * blocks as usize);
    while let Some(done) = readers.join_next().await {
        let got = done.expect("a reader");
        let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            numbers,
            (start..=last).collect::<Vec<_>>(),
            "every block once, in order"
        );
        for (n, at) in got {
            latencies.push(at.saturating_duration_since(mined_at[&n]));
        }
    }
    let direct = direct_reader
        .await
        .expect("direct reader")
        .into_iter()
        .filter_map(|(n, at)| mining_at.get(&n).map(|m| at.saturating_duration_since(*m)))
        .collect();
    FanOut {
        subscribers,
        blocks,
        rss_idle_kib,
        rss_subscribed_kib,
        latencies,
        direct,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_each_get_every_block() {
    let report = fan_out(1_000, 5, Duration::from_millis(300)).await;
    report.print();
    assert_eq!(report.latencies.len(), 5_000);
    // Bounded: far less than tungstenite's default 128 KiB read buffer per connection.
    assert!(
        report.per_subscriber_kib() < 64.0,
        "{:.1} KiB per subscriber",
        report.per_subscriber_kib()
    );
}

/// The benchmark: `bench/ws.sh` runs it in release with more subscribers and blocks
/// (OUTLAST_WS_SUBSCRIBERS, OUTLAST_WS_BLOCKS, OUTLAST_WS_GAP_MS); by default it is a
/// quick run that only prints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_latency_and_memory_per_subscriber() {
    let env = |k: &str, default: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let report = fan_out(
        env("OUTLAST_WS_SUBSCRIBERS", 100) as usize,
        env("OUTLAST_WS_BLOCKS", 20),
        Duration::from_millis(env("OUTLAST_WS_GAP_MS", 100)),
    )
    .await;
    report.print();
}
