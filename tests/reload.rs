//! Hot reload on the real server (`outlast serve` as its own process, real Anvil nodes):
//! under steady load over HTTP and one WebSocket `newHeads` subscription, the config
//! file is rewritten (an upstream removed, one added, one relabelled, a limit lowered,
//! a key added) and SIGHUP sent. Not one call fails, the subscription goes on with no
//! gap, and the change shows (status, the new key, the new limit, a cordon kept). Then
//! an invalid file is refused, by SIGHUP and by the admin API, with every problem, and
//! the running config keeps serving.

mod testbed;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use testbed::{ACCOUNT0_ADDRESS, Fleet, gateway::Outlast};
use tokio_tungstenite::tungstenite::Message;

const TOKEN: &str = "admin-token-0123456789abcdef";
const LOAD_KEY: &str = "load-key-0123456789abcdef";
const LATE_KEY: &str = "late-key-0123456789abcdef";
/// Every wait in this test is bounded by this.
const WITHIN: Duration = Duration::from_secs(20);

/// The config before the reload: `u0` and `u1` serve, `keeper` (cordoned by the test)
/// stays through the reload with new labels; batches of up to 10; one key.
fn before(fleet: &Fleet) -> String {
    format!(
        "[routing]\nconnect_timeout_ms = 500\nrequest_timeout_ms = 2000\nhead_poll_ms = 100\n\n\
         [limits]\nmax_batch = 10\n\n\
         [admin]\ntoken = \"{TOKEN}\"\n\n\
         [cache]\nsize_bytes = 0\n\n\
         [auth]\n\
         [[auth.keys]]\nname = \"load\"\nkey = \"{LOAD_KEY}\"\nrps = 100000\n\n\
         [[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\n\
         [[chains.upstreams]]\nname = \"u0\"\nurl = \"{}\"\noperator = \"op0\"\n\n\
         [[chains.upstreams]]\nname = \"u1\"\nurl = \"{}\"\noperator = \"op1\"\n\n\
         [[chains.upstreams]]\nname = \"keeper\"\nurl = \"{}\"\noperator = \"op2\"\n",
        fleet.url(0),
        fleet.url(1),
        fleet.url(2)
    )
}

/// After: `u1` removed, `u3` added (on node 1), `keeper` relabelled, batches of 2,
/// a second key.
fn after(fleet: &Fleet) -> String {
    before(fleet)
        .replace("max_batch = 10", "max_batch = 2")
        .replace(
            "rps = 100000\n",
            &format!("rps = 100000\n\n[[auth.keys]]\nname = \"late\"\nkey = \"{LATE_KEY}\"\nrps = 100000\n"),
        )
        .replace(
            &format!("name = \"u1\"\nurl = \"{}\"\noperator = \"op1\"", fleet.url(1)),
            &format!("name = \"u3\"\nurl = \"{}\"\noperator = \"op3\"", fleet.url(1)),
        )
        .replace("operator = \"op2\"", "operator = \"op2\"\nregion = \"home\"\ntier = 2")
}

/// Clients that call without pause (with the load key) and count every call that got
/// no proper answer.
struct Load {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(url: String, clients: usize) -> Load {
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..clients)
            .map(|c| {
                let (url, ok, failed, stop) = (url.clone(), ok.clone(), failed.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(10))
                        .build()
                        .expect("client");
                    let calls = [
                        json!({"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[ACCOUNT0_ADDRESS,"latest"]}),
                        json!({"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}),
                        json!({"jsonrpc":"2.0","id":3,"method":"eth_getBlockByNumber","params":["latest",false]}),
                    ];
                    let mut errors = Vec::new();
                    let mut i = c;
                    while !stop.load(Ordering::Relaxed) {
                        let call = &calls[i % calls.len()];
                        i += 1;
                        let answer = client
                            .post(&url)
                            .header("x-api-key", LOAD_KEY)
                            .header("content-type", "application/json")
.body(call.to_string())
                            .send()
                            .await;
                        let good = match answer {
                            Ok(r) if r.status().is_success() => {
                                let v: Value = json_of(r).await;
                                if v.get("result").is_some_and(|r| !r.is_null()) {
                                    Ok(())
                                } else {
                                    Err(format!("{call}: {v}"))
                                }
                            }
                            Ok(r) => Err(format!("{call}: HTTP {}", r.status())),
                            Err(e) => Err(format!("{call}: {e}")),
                        };
                        match good {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                errors.push(e);
                                failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    errors
                })
            })
            .collect();
        Load {
            ok,
            failed,
            stop,
            tasks,
        }
    }

    /// Stops the clients: (calls answered, calls failed, the failures' first words).
    async fn stop(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.expect("load client"));
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

/// Reads `newHeads` until told to stop; returns the block numbers in order.
async fn heads(url: String, stop: Arc<AtomicBool>) -> Vec<u64> {
    let (mut socket, _) = tokio::time::timeout(WITHIN, tokio_tungstenite::connect_async(url))
        .await
        .expect("WebSocket connect in time")
        .expect("WebSocket connect");
    let sub = json!({"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]});
    socket
        .send(Message::text(sub.to_string()))
        .await
        .expect("subscribe");
    let mut numbers = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok(msg) = tokio::time::timeout(Duration::from_millis(200), socket.next()).await else {
            continue;
        };
        let Some(Ok(Message::Text(text))) = msg else {
            panic!("the subscription's socket ended: {msg:?}");
        };
        let v: Value = serde_json::from_str(text.as_str()).expect("JSON");
        if v["method"] == "eth_subscription" {
            let hex = v["params"]["result"]["number"]
                .as_str()
                .expect("a head number");
            numbers.push(u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex"));
        } else {
            assert!(v["result"].is_string(), "eth_subscribe answered: {v}");
        }
    }
    numbers
}

async fn post(o: &Outlast, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(o.url(path))
        .header("x-api-key", key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(WITHIN)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, json_of(r).await)
}

async fn admin_get(o: &Outlast, path: &str) -> Value {
    let r = reqwest::Client::new()
        .get(o.url(path))
        .bearer_auth(TOKEN)
        .timeout(WITHIN)
        .send()
        .await
        .expect("GET");
    json_of(r).await
}

/// Upstream names of chain `local` in `/api/v1/status`.
async fn listed(o: &Outlast) -> Vec<String> {
    let status = admin_get(o, "/api/v1/status").await;
    status["chains"][0]["upstreams"]
        .as_array()
        .map(|us| {
            us.iter()
                .filter_map(|u| u["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn eventually(what: &str, o: &Outlast, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} not within {WITHIN:?}; log:\n{}",
            o.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn batch(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"jsonrpc":"2.0","id":i,"method":"eth_chainId"}))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_changes_upstreams_limits_and_keys_without_a_failed_call() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let (old_toml, new_toml) = (before(&fleet), after(&fleet));
    assert_ne!(old_toml, new_toml);
    let outlast = Outlast::start_process_logging("info", &old_toml).await;
    let pid = outlast.pid().expect("a process");
    let path = outlast.config_path().expect("a config file");
    let file = std::fs::read_to_string(&path).expect("config file");
    assert!(
        file.ends_with(&old_toml),
        "the test's config is the file's tail"
    );

    // Before: the late key is unknown, a batch of 3 is fine; keeper is cordoned by hand.
    let (status, _) = post(&outlast, "/local", LATE_KEY, &batch(1)).await;
    assert_eq!(status, 401, "the late key is not configured yet");
    let (status, v) = post(&outlast, "/local", LOAD_KEY, &batch(3)).await;
    assert!(
        status == 200
            && v.as_array()
                .is_some_and(|a| a.len() == 3 && a.iter().all(|c| c["result"].is_string())),
        "a batch of 3 before: {v}"
    );
    let cordon = reqwest::Client::new()
        .post(outlast.url("/api/v1/admin/upstreams/local/keeper/cordon"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(json!({"reason": "kept across the reload"}).to_string())
        .send()
        .await
        .expect("cordon");
    assert_eq!(cordon.status().as_u16(), 200);

    // Blocks keep coming; a subscription and three clients keep calling.
    let mining = Arc::new(AtomicBool::new(true));
    let miner = {
        let mining = mining.clone();
        tokio::spawn(async move {
            while mining.load(Ordering::Relaxed) {
                fleet.mine(1).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            fleet
        })
    };
    let stop_heads = Arc::new(AtomicBool::new(false));
    let subscription = tokio::spawn(heads(
        outlast
            .url(&format!("/local/{LOAD_KEY}"))
            .replacen("http://", "ws://", 1),
        stop_heads.clone(),
    ));
    let load = Load::start(outlast.url("/local"), 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(load.ok.load(Ordering::Relaxed) > 0, "the load is running");

    // The reload: u1 out, u3 in, keeper relabelled, batches of 2, the late key.
    std::fs::write(&path, file.replace(&old_toml, &new_toml)).expect("rewrite config");
    testbed::signal(pid, libc::SIGHUP);
    eventually(
        "u3 listed and u1 gone in /api/v1/status",
        &outlast,
        async || {
            let names = listed(&outlast).await;
            names.contains(&"u3".to_owned()) && !names.contains(&"u1".to_owned())
        },
    )
    .await;
    eventually("the late key accepted", &outlast, async || {
        post(&outlast, "/local", LATE_KEY, &batch(1)).await.0 == 200
    })
    .await;
    let (status, v) = post(&outlast, "/local", LOAD_KEY, &batch(3)).await;
    assert!(
        status != 200 || v["error"]["code"] == -32005 || v[0]["error"]["code"] == -32005,
        "a batch of 3 is over the new max_batch = 2: HTTP {status} {v}"
    );
    let (status, v) = post(&outlast, "/local", LOAD_KEY, &batch(2)).await;
    assert!(
        status == 200 && v.as_array().is_some_and(|a| a.len() == 2),
        "{v}"
    );
    let ups = admin_get(&outlast, "/api/v1/admin/upstreams").await;
    let keeper = ups["upstreams"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["name"] == "keeper"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        keeper["cordoned"], "kept across the reload",
        "a relabelled upstream keeps its state: {ups}"
    );
    let status = admin_get(&outlast, "/api/v1/status").await;
    let keeper = status["chains"][0]["upstreams"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["name"] == "keeper"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(keeper["tier"], 2, "keeper's new label shows: {status}");
    eventually("u3 serving", &outlast, async || {
        let status = admin_get(&outlast, "/api/v1/status").await;
        status["chains"][0]["upstreams"]
            .as_array()
            .is_some_and(|us| {
                us.iter()
                    .any(|u| u["name"] == "u3" && u["state"] == "ready")
            })
    })
    .await;
    let log = outlast.log();
    for said in [
        "upstream `u3` added",
        "upstream `u1` removed",
        "upstream `keeper` relabelled (region, tier)",
        "[limits] max_batch changed",
        "[auth] key `late` added",
    ] {
        assert!(log.contains(said), "the log says {said:?}:\n{log}");
    }
    // Heads keep coming after the reload.
    let head_at_reload = quantity_of(
        &post(
            &outlast,
            "/local",
            LOAD_KEY,
            &json!({"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}),
        )
        .await
        .1,
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // An invalid file: refused with every problem, by SIGHUP and by the admin API.
    let broken = file
        .replace(&old_toml, &new_toml)
        .replace("max_batch = 2", "max_batch = \"two\"")
        .replace("region = \"home\"", "region = \"home\"\nmax_rsp = 5");
    std::fs::write(&path, &broken).expect("write the broken config");
    testbed::signal(pid, libc::SIGHUP);
    eventually("the refusal logged", &outlast, async || {
        outlast.log().contains("reload refused")
    })
    .await;
    let log = outlast.log();
    let refusal = &log[log.find("reload refused").unwrap_or(0)..];
    for key in ["max_batch", "max_rsp"] {
        assert!(
            refusal.contains(key),
            "the refusal names `{key}`:\n{refusal}"
        );
    }
    let r = reqwest::Client::new()
        .post(outlast.url("/api/v1/admin/reload"))
        .bearer_auth(TOKEN)
        .timeout(WITHIN)
        .send()
        .await
        .expect("POST reload");
    assert_eq!(r.status().as_u16(), 422, "an invalid file is refused");
    let report: Value = json_of(r).await;
    let problems = report["problems"].as_array().cloned().unwrap_or_default();
    assert_eq!(report["applied"], false, "{report}");
    assert!(
        problems.len() >= 2
            && problems
                .iter()
                .any(|p| p.as_str().is_some_and(|p| p.contains("max_batch")))
            && problems
                .iter()
                .any(|p| p.as_str().is_some_and(|p| p.contains("max_rsp"))),
        "every problem, each with its line: {report}"
    );
    // The running config still serves: the late key, batches of 2 and no more, u3.
    assert_eq!(post(&outlast, "/local", LATE_KEY, &batch(1)).await.0, 200);
    let (status, v) = post(&outlast, "/local", LOAD_KEY, &batch(3)).await;
    assert!(
        status != 200 || v.to_string().contains("-32005"),
        "max_batch is still 2: HTTP {status} {v}"
    );
    assert!(listed(&outlast).await.contains(&"u3".to_owned()));

    // A valid file through the admin API: 200 with what changed.
    std::fs::write(
        &path,
        file.replace(&old_toml, &new_toml)
            .replace("max_batch = 2", "max_batch = 4"),
    )
    .expect("write config");
    let r = reqwest::Client::new()
        .post(outlast.url("/api/v1/admin/reload"))
        .bearer_auth(TOKEN)
        .timeout(WITHIN)
        .send()
        .await
        .expect("POST reload");
    assert_eq!(r.status().as_u16(), 200);
    let report: Value = json_of(r).await;
    assert_eq!(
        report["changes"],
        json!(["[limits] max_batch changed"]),
        "{report}"
    );
    let (status, v) = post(&outlast, "/local", LOAD_KEY, &batch(3)).await;
    assert!(
        status == 200 && v.as_array().is_some_and(|a| a.len() == 3),
        "{v}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Not one call failed; the subscription went on without a gap.
    let (ok, failed, errors) = load.stop().await;
    stop_heads.store(true, Ordering::Relaxed);
    let numbers = subscription.await.expect("the subscription");
    mining.store(false, Ordering::Relaxed);
    let _fleet = miner.await.expect("the miner");
    assert!(
        failed == 0 && errors.is_empty(),
        "{failed} of {} calls failed: {:?}",
        ok + failed,
        &errors[..errors.len().min(5)]
    );
    assert!(ok > 100, "the load was steady: {ok} calls");
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "newHeads with no gap and no duplicate: {numbers:?}"
    );
    assert!(
        numbers.last().is_some_and(|&n| n >= head_at_reload + 3),
        "heads kept coming after the reload (at {head_at_reload}): {numbers:?}"
    );
    assert!(
        outlast.log().matches("config reloaded").count() >= 2,
        "{}",
        outlast.log()
    );
}

fn quantity_of(v: &Value) -> u64 {
    let hex = v["result"]
        .as_str()
        .unwrap_or_else(|| panic!("a quantity: {v}"));
    u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("hex")
}

/// The body as JSON (`null` when it is not).
async fn json_of(r: reqwest::Response) -> Value {
    serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or_default()
}
