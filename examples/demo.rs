//! See Outlast at work in two minutes, with no internet: six local Anvil nodes labelled as
//! providers in clouds and regions, Outlast in front (status page, feed, webhooks), a
//! client reading a balance ten times a second, and a fault schedule — a whole cloud
//! region goes dark, a provider falls behind, one starts lying, and all recover — told
//! as it happens, with the incidents Outlast opens and resolves by itself.
//!
//! `scripts/demo.sh [--port 8545] [--once]` installs what it needs and runs this.
//! Without `--once` it keeps serving after the schedule, so the page can be looked at.
//! Talks only to 127.0.0.1.

#[path = "../tests/testbed/mod.rs"]
mod testbed;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, routing::post};
use serde_json::{Value, json};
use testbed::{ACCOUNT1_ADDRESS, Fleet, rpc_result};
use tokio::net::TcpListener;

/// Account 1's balance at genesis; nothing in the demo changes it.
const TRUE_BALANCE: &str = "0x21e19e0c9bab2400000";

/// (name, operator, cloud/region, tier)
const UPSTREAMS: [(&str, &str, &str, u8); 6] = [
    ("infura-east", "infura", "aws/us-east-1", 1),
    ("alchemy-east", "alchemy", "aws/us-east-1", 1),
    ("quicknode-east", "quicknode", "aws/us-east-1", 1),
    ("publicnode-eu", "publicnode", "gcp/europe-west1", 1),
    ("drpc-fsn", "drpc", "hetzner/fsn1", 2),
    ("home-node", "self", "self/home", 2),
];
const AWS: [usize; 3] = [0, 1, 2];
const LAGGARD: usize = 4;
const LIAR: usize = 3;

/// What happens when, in seconds from the start.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Step {
    AwsDark,
    AwsBack,
    Lag,
    CatchUp,
    Lie,
    Truth,
    Done,
}

const SCHEDULE: [(u64, Step); 7] = [
    (12, Step::AwsDark),
    (35, Step::AwsBack),
    (45, Step::Lag),
    (60, Step::CatchUp),
    (68, Step::Lie),
    (80, Step::Truth),
    (100, Step::Done),
];

#[derive(Default)]
struct Reads {
    ok: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let once = args.iter().any(|a| a == "--once");
    let port: u16 = args
        .iter()
        .position(|a| a == "--port")
        .and_then(|i| args.get(i + 1))
        .and_then(|p| p.parse().ok())
        .unwrap_or(8545);
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("demo: cannot listen on 127.0.0.1:{port} ({e}); try --port 8546");
            std::process::exit(1);
        }
    };
    let base = format!("http://127.0.0.1:{port}");

    say(
        0,
        &format!(
            "starting {} Anvil nodes with identical chains…",
            UPSTREAMS.len()
        ),
    );
    let mut fleet = Fleet::start(UPSTREAMS.len()).await;
    fleet.mine(3).await;

    let hook = webhook_receiver().await;
    let data = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/demo-state");
    let _ = std::fs::remove_dir_all(&data);
    let config = config(&fleet, &hook, &data, &base);
    let config = outlast::config::load_str(&config).unwrap_or_else(|e| panic!("demo config: {e}"));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(outlast::run(config, listener, async {
        let _ = stop_rx.await;
    }));
    wait_ready(&base).await;

    println!();
    println!("  Status page:  {base}/status");
    println!(
        "  JSON-RPC:     curl -s {base}/devnet -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_blockNumber\"}}'"
    );
    println!("  Also:         {base}/api/v1/incidents · {base}/feed.atom · {base}/metrics");
    println!();
    for (name, operator, place, tier) in UPSTREAMS {
        println!("  upstream {name:<15} operator {operator:<11} {place:<17} tier {tier}");
    }
    println!();

    let reads = Arc::new(Reads::default());
    let client = tokio::spawn(read_balances(base.clone(), reads.clone()));
    let started = Instant::now();
    let mut lying = false;
    let mut next = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut seen: BTreeSet<(u64, String)> = BTreeSet::new();
    loop {
        tick.tick().await;
        let t = started.elapsed().as_secs();
        // One block a second on every node that runs and keeps up; the liar keeps its
        // headers honest (so only its state lies): truth, mine, lie again.
        if lying {
            set_balance(&fleet, LIAR, TRUE_BALANCE).await;
        }
        fleet.mine(1).await;
        if lying {
            set_balance(&fleet, LIAR, "0x0").await;
        }
        while next < SCHEDULE.len() && SCHEDULE[next].0 <= t {
            let step = SCHEDULE[next].1;
            next += 1;
            match step {
                Step::AwsDark => {
                    say(
                        t,
                        "FAULT  aws/us-east-1 goes dark: infura-east, alchemy-east and quicknode-east are killed",
                    );
                    for i in AWS {
                        fleet.kill(i);
                    }
                }
                Step::AwsBack => {
                    say(
                        t,
                        "RECOVER aws/us-east-1 is back: the three nodes restart and catch up",
                    );
                    for i in AWS {
                        fleet.restart(i).await;
                    }
                }
                Step::Lag => {
                    say(
                        t,
                        "FAULT  drpc-fsn stops following the chain (it will fall behind)",
                    );
                    fleet.lag(LAGGARD);
                }
                Step::CatchUp => {
                    say(t, "RECOVER drpc-fsn catches up");
                    fleet.catch_up(LAGGARD).await;
                }
                Step::Lie => {
                    say(
                        t,
                        "FAULT  publicnode-eu starts lying: account 1's balance is 0 there (headers still match)",
                    );
                    lying = true;
                    set_balance(&fleet, LIAR, "0x0").await;
                }
                Step::Truth => {
                    say(
                        t,
                        "RECOVER publicnode-eu tells the truth again (back in rotation when its ban ends)",
                    );
                    lying = false;
                    set_balance(&fleet, LIAR, TRUE_BALANCE).await;
                }
                Step::Done => {}
            }
        }
        // Tell each incident change once, as Outlast records it.
        for i in get_json(&format!("{base}/api/v1/incidents")).await["incidents"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .rev()
        {
            for u in i["updates"].as_array().cloned().unwrap_or_default() {
                let key = (
                    i["id"].as_u64().unwrap_or(0),
                    format!("{}{}", u["at"], u["event"]),
                );
                if seen.insert(key) {
                    say(
                        t,
                        &format!(
                            "  incident #{} {} [{}] {}",
                            i["id"],
                            u["event"].as_str().unwrap_or(""),
                            i["severity"].as_str().unwrap_or(""),
                            i["title"].as_str().unwrap_or("")
                        ),
                    );
                }
            }
        }
        if t.is_multiple_of(5) {
            say(
                t,
                &format!(
                    "  client: {} balance reads ok, {} failed, {} wrong",
                    reads.ok.load(Ordering::Relaxed),
                    reads.failed.load(Ordering::Relaxed),
                    reads.wrong.load(Ordering::Relaxed)
                ),
            );
        }
        if next == SCHEDULE.len() {
            break;
        }
    }
    client.abort();
    let (ok, failed, wrong) = (
        reads.ok.load(Ordering::Relaxed),
        reads.failed.load(Ordering::Relaxed),
        reads.wrong.load(Ordering::Relaxed),
    );
    println!();
    println!("  The client read its balance {ok} times correctly, {failed} failed, {wrong} wrong,");
    println!("  while a cloud region died, a provider fell behind and another lied.");
    println!("  Status page: {base}/status");
    if once {
        let _ = stop_tx.send(());
        let _ = server.await;
        return;
    }
    println!("  Outlast keeps serving the devnet; Ctrl-C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop_tx.send(());
    let _ = server.await;
    drop(fleet);
}

fn say(t: u64, what: &str) {
    println!("[{t:>3}s] {what}");
}

fn config(fleet: &Fleet, hook: &str, data: &std::path::Path, base: &str) -> String {
    let mut s = format!(
        r#"[routing]
connect_timeout_ms = 500
request_timeout_ms = 1000
failures_before_cooldown = 2
cooldown_ms = 500
max_cooldown_ms = 2000
head_poll_ms = 250
liar_ban_secs = 15

[status]
title = "Outlast demo"
public_url = "{base}"
data_dir = "{data}"
refresh_secs = 3
evaluate_ms = 250
open_after_ms = 2000
resolve_after_ms = 5000
lag_blocks = 3

[[webhooks]]
name = "demo-terminal"
url = "{hook}"

[[chains]]
name = "devnet"
chain_id = {chain_id}
verify = "proofs"
quorum = 2
"#,
        data = data.display(),
        chain_id = fleet.chain_id(),
    );
    for (i, (name, operator, place, tier)) in UPSTREAMS.iter().enumerate() {
        let (cloud, region) = place.split_once('/').unwrap_or((place, ""));
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"{name}\"\nurl = \"{}\"\noperator = \"{operator}\"\ncloud = \"{cloud}\"\nregion = \"{region}\"\ntier = {tier}\n",
            fleet.url(i)
        ));
    }
    s
}

async fn set_balance(fleet: &Fleet, i: usize, wei: &str) {
    rpc_result(
        &fleet.url(i),
        "anvil_setBalance",
        json!([ACCOUNT1_ADDRESS, wei]),
    )
    .await;
}

async fn get_json(url: &str) -> Value {
    match reqwest::get(url).await {
        Ok(r) => serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

async fn wait_ready(base: &str) {
    for _ in 0..400 {
        if reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Outlast never became ready");
}

/// The client: `eth_getBalance` of account 1 at `latest`, ten times a second.
async fn read_balances(base: String, reads: Arc<Reads>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let body = json!({"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[ACCOUNT1_ADDRESS, "latest"]}).to_string();
    loop {
        let reply = client
            .post(format!("{base}/devnet"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let v: Option<Value> = match reply {
            Ok(r) => serde_json::from_slice(&r.bytes().await.unwrap_or_default()).ok(),
            Err(_) => None,
        };
        let counter = match v.as_ref().map(|v| &v["result"]) {
            Some(Value::String(s)) if s == TRUE_BALANCE => &reads.ok,
            Some(Value::String(_)) => &reads.wrong,
            _ => &reads.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A webhook receiver that prints what Outlast posts (Outlast's generic JSON format).
async fn webhook_receiver() -> String {
    let started = Instant::now();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| async move {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            say(
                started.elapsed().as_secs(),
                &format!(
                    "  webhook received: {} #{} {}",
                    v["event"].as_str().unwrap_or("?"),
                    v["incident"]["id"],
                    v["incident"]["title"].as_str().unwrap_or("")
                ),
            );
            "ok"
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}
