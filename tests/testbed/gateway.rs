//! Outlast itself in the test bed: started in-process on port 0 from a TOML config, and
//! a few tiny misbehaving HTTP upstreams (5xx, garbage, 429, a recorder) for the faults
//! a real node cannot be made to show.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, http::StatusCode, response::IntoResponse, routing::post};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// A running Outlast, in this process (`start`) or as its own `outlast serve` process
/// (`start_process`); stopped (gracefully) by `stop`, and when dropped.
pub struct Outlast {
    pub base: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), outlast::RunError>>>,
    /// `outlast serve`, when started as a process.
    child: Option<tokio::process::Child>,
    /// The incident-history directory made for this run (when the config named none),
    /// removed when it stops.
    scratch: Option<std::path::PathBuf>,
}

/// What one HTTP call to Outlast returned.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub upstream: Option<String>,
    /// `x-outlast-verified`.
    pub verified: Option<String>,
    pub text: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }
}

impl Outlast {
    /// Starts Outlast on 127.0.0.1:0 with `toml` (its `[server] listen` is ignored) and
    /// waits until `/readyz` says it is ready, every upstream had its first check and
    /// each chain's consensus head is known.
    pub async fn start(toml: &str) -> Outlast {
        let o = Outlast::start_unready(toml).await;
        o.wait_ready().await;
        o
    }

    /// Starts without waiting for readiness (for tests where nothing is reachable).
    pub async fn start_unready(toml: &str) -> Outlast {
        let mut config = outlast::config::load_str(toml)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n{toml}"));
        // Tests never touch the user's state directory: without `[status] data_dir`,
        // each Outlast keeps its incident history in a fresh temporary directory.
        let scratch = config.status.data_dir.is_none().then(scratch_dir);
        if let Some(dir) = &scratch {
            config.status.data_dir = Some(dir.display().to_string());
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(outlast::run(config, listener, async {
            let _ = rx.await;
        }));
        Outlast {
            base,
            stop: Some(tx),
            task: Some(task),
            child: None,
            scratch,
        }
    }

    /// Starts `outlast serve` as its own process (its memory and its connections are
    /// its own) on a free port, with its incident history in a fresh directory, and
    /// waits as `start` does. `toml` must not have `[server]` or `[status]` sections.
    pub async fn start_process(toml: &str) -> Outlast {
        Outlast::start_process_with_server("", toml).await
    }

    /// As `start_process`, with further `[server]` keys (`server`, one per line).
    pub async fn start_process_with_server(server: &str, toml: &str) -> Outlast {
        let o = Outlast::spawn_process(server, "warn", toml, &[]).await;
        o.wait_ready().await;
        o
    }

    /// As `start_process`, with extra environment variables (`OTEL_*` and the like).
    pub async fn start_process_with_env(toml: &str, env: &[(&str, String)]) -> Outlast {
        let o = Outlast::spawn_process("", "warn", toml, env).await;
        o.wait_ready().await;
        o
    }

    /// As `start_process`, logging at `rust_log` (e.g. `debug`) into a file that `log`
    /// reads.
    pub async fn start_process_logging(rust_log: &str, toml: &str) -> Outlast {
        let o = Outlast::spawn_process("", rust_log, toml, &[]).await;
        o.wait_ready().await;
        o
    }

    /// What the process logged so far (`start_process*`); empty in-process.
    pub fn log(&self) -> String {
        self.scratch
            .as_ref()
            .and_then(|dir| std::fs::read_to_string(dir.join("outlast.log")).ok())
            .unwrap_or_default()
    }

    /// Starts `outlast serve` on a free port; another one when the port was taken
    /// between the probe and the bind (the process then exits at once).
    async fn spawn_process(
        server: &str,
        rust_log: &str,
        toml: &str,
        env: &[(&str, String)],
    ) -> Outlast {
        let mut exits = Vec::new();
        for _ in 0..5 {
            let mut o = Outlast::spawn_process_once(server, rust_log, toml, env);
            // Listening, or exited.
            let mut exited = None;
            for _ in 0..400 {
                if reqwest::get(o.url("/healthz")).await.is_ok() {
                    return o;
                }
                exited = o.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                if exited.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            match exited {
                Some(status) => exits.push(format!("{status}: {}", o.log())),
                None => panic!("outlast serve at {} never listened: {}", o.base, o.log()),
            }
        }
        panic!("outlast serve did not start: {exits:#?}");
    }

    fn spawn_process_once(
        server: &str,
        rust_log: &str,
        toml: &str,
        env: &[(&str, String)],
    ) -> Outlast {
        let scratch = scratch_dir();
        std::fs::create_dir_all(&scratch).expect("scratch dir");
        let port = super::free_port();
        let path = scratch.join("outlast.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{server}\n[status]\ndata_dir = \"{}\"\n{toml}",
            scratch.join("history").display()
        );
        std::fs::write(&path, text).expect("write config");
        // Set by cargo for integration tests; this file is also built into an example,
        // which never starts a process (the fallback is where a debug build puts it).
        let bin = option_env!("CARGO_BIN_EXE_outlast")
            .unwrap_or(concat!(env!("CARGO_MANIFEST_DIR"), "/target/debug/outlast"));
        let log = std::fs::File::create(scratch.join("outlast.log")).expect("log file");
        let child = tokio::process::Command::new(bin)
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", rust_log)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn outlast serve");
        Outlast {
            base: format!("http://127.0.0.1:{port}"),
            stop: None,
            task: None,
            child: Some(child),
            scratch: Some(scratch),
        }
    }

    /// The config file `outlast serve` reads (`start_process*`): a test may rewrite it
    /// and send SIGHUP.
    pub fn config_path(&self) -> Option<std::path::PathBuf> {
        self.child.as_ref()?;
        self.scratch.as_ref().map(|dir| dir.join("outlast.toml"))
    }

    /// The process id, when started as a process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.base);
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(&url).await {
                let ready = r.status().is_success();
                let body: Value = serde_json::from_slice(&r.bytes().await.unwrap_or_default())
                    .unwrap_or_default();
                let checked = body["chains"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .all(|c| c["unchecked_upstreams"] == 0 && !c["head"].is_null())
                });
                if ready && checked {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("Outlast at {} never became ready", self.base);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The `/metrics` scrape, as text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of one series of `/metrics` (its name and labels, as exposed), or
    /// `None` when it is not there.
    pub async fn counter(&self, series: &str) -> Option<f64> {
        let metrics = self.metrics().await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|n| n.trim().parse().ok())
    }

    /// `GET /api/v1/status`, as JSON.
    pub async fn status(&self) -> Value {
        let text = reqwest::get(self.url("/api/v1/status"))
            .await
            .expect("GET /api/v1/status")
            .text()
            .await
            .expect("body");
        serde_json::from_str(&text).expect("JSON")
    }

    /// Upstream `name` of the first chain, as `GET /api/v1/status` shows it.
    pub async fn upstream_status(&self, name: &str) -> Value {
        let status = self.status().await;
        status["chains"][0]["upstreams"]
            .as_array()
            .and_then(|ups| ups.iter().find(|u| u["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no upstream {name}: {status}"))
    }

    /// Waits (up to 10 s) until upstream `name` of the first chain is `ready` with a
    /// known head. For a test about which upstream is tried first: readiness waits for
    /// the chain's consensus head, not each upstream's own first poll, and an upstream
    /// whose head is not known yet is tried after those whose head is (a loaded CI run
    /// once sent a call past a tier-1 upstream that way).
    pub async fn wait_in_rotation(&self, name: &str) {
        let mut state = Value::Null;
        for _ in 0..400 {
            state = self.upstream_status(name).await;
            if state["state"] == "ready" && !state["head"].is_null() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("upstream {name} never came into rotation: {state}");
    }

    /// POSTs `body` as is to `path` (e.g. `/local`).
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Response {
        let r = client()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path} failed: {e}"));
        let status = r.status().as_u16();
        let upstream = r
            .headers()
            .get("x-outlast-upstream")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let verified = r
            .headers()
            .get("x-outlast-verified")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let text = r.text().await.expect("body");
        Response {
            status,
            upstream,
            verified,
            text,
        }
    }

    /// Waits until `eth_blockNumber` through Outlast (the consensus head) reaches `n`.
    pub async fn wait_for_head(&self, path: &str, n: u64) {
        for _ in 0..400 {
            let (reply, _) = self
                .call(path, "eth_blockNumber", serde_json::json!([]))
                .await;
            let head = reply["result"]
                .as_str()
                .and_then(|h| u64::from_str_radix(h.trim_start_matches("0x"), 16).ok());
            if head.is_some_and(|h| h >= n) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("Outlast's head never reached {n}");
    }

    /// Waits until Outlast knows a finalized block above genesis (learned from head
    /// polls): from then on, reads at or below it are immutable and cached for good.
    pub async fn wait_for_finalized(&self, path: &str) {
        for _ in 0..200 {
            let (r, _) = self
                .call(
                    path,
                    "eth_getBlockByNumber",
                    serde_json::json!(["finalized", false]),
                )
                .await;
            if r["result"]["number"].as_str().is_some_and(|n| n != "0x0") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("Outlast never learned the finalized block");
    }

    /// One call; returns the whole reply object.
    pub async fn call(&self, path: &str, method: &str, params: Value) -> (Value, Option<String>) {
        let body =
            serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let r = self.post(path, body.to_string()).await;
        (r.json(), r.upstream)
    }

    /// Graceful stop: in-flight calls finish, background tasks end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("Outlast task panicked")
                .expect("Outlast returned an error");
        }
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                super::signal(pid, libc::SIGTERM);
            }
            let stopped = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
            assert!(
                stopped.is_ok_and(|s| s.is_ok_and(|s| s.success())),
                "outlast serve did not stop cleanly on SIGTERM"
            );
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Drop for Outlast {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(dir) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new, unique directory under the system's temporary directory.
pub fn scratch_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("outlast-test-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn client() -> reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client")
        })
        .clone()
}

/// A config for chain `local` (31337) with one upstream per URL, named `u0`, `u1`, …,
/// each its own operator. `extra` is appended verbatim (e.g. `[routing]` settings).
/// The answer cache is off unless `extra` has a `[cache]` section: routing tests repeat
/// identical calls and must see each one reach an upstream.
pub fn config(urls: &[String], extra: &str) -> String {
    let cache = if extra.contains("[cache]") {
        ""
    } else {
        "\n[cache]\nsize_bytes = 0\n"
    };
    let mut s = format!(
        "{extra}{cache}\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n"
    );
    for (i, url) in urls.iter().enumerate() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    s
}

/// Routing settings that make faults cost little time in tests.
pub const FAST_ROUTING: &str = "[routing]\nconnect_timeout_ms = 500\nrequest_timeout_ms = 1000\nfailures_before_cooldown = 2\ncooldown_ms = 300\nmax_cooldown_ms = 1000\nhead_poll_ms = 100\n";

/// How a fake upstream misbehaves once it has passed its `eth_chainId` check.
#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// HTTP 502 with an HTML body.
    BadGateway,
    /// HTTP 200 with a body that is not JSON.
    Garbage,
    /// HTTP 429 with `Retry-After: 1`.
    RateLimited,
    /// A JSON-RPC error that is the upstream's fault (`-32005 limit exceeded`).
    RpcLimit,
    /// A well-formed result of 2 MiB: more than a gateway with a 1 MiB
    /// `max_reply_bytes` reads.
    Oversized,
}

/// A fake upstream: answers `eth_chainId` with 31337 (so it passes the check) and every
/// other call as `how` says. Returns its URL and how many non-probe calls it received.
pub async fn misbehaving_upstream(how: Misbehaviour) -> (String, Arc<Mutex<usize>>) {
    let hits = Arc::new(Mutex::new(0usize));
    let counter = hits.clone();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let counter = counter.clone();
            async move {
                if let Some(reply) = background_reply(&body) {
                    return (StatusCode::OK, reply).into_response();
                }
                *counter.lock().expect("lock") += 1;
                let id = id_of(&body);
                match how {
                    Misbehaviour::BadGateway => (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response(),
                    Misbehaviour::Garbage => (StatusCode::OK, "{\"jsonrpc\":\"2.0\",\"id\":0,\"resu").into_response(),
                    Misbehaviour::RateLimited => {
                        (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response()
                    }
                    Misbehaviour::RpcLimit => (
                        StatusCode::OK,
                        format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32005,"message":"limit exceeded"}}}}"#),
                    )
                        .into_response(),
                    Misbehaviour::Oversized => (
                        StatusCode::OK,
                        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x{}"}}"#, "0".repeat(2 << 20)),
                    )
                        .into_response(),
                }
            }
        }),
    );
    (serve(app).await, hits)
}

/// A fake upstream that records every body it receives (but Outlast's background calls)
/// and answers `0x7a69` to all.
pub async fn recording_upstream() -> (String, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let log = log.clone();
            async move {
                if let Some(reply) = background_reply(&body) {
                    return reply;
                }
                log.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&body).into_owned());
                format!(
                    r#"{{"jsonrpc":"2.0","id":{},"result":"0x7a69"}}"#,
                    id_of(&body)
                )
            }
        }),
    );
    (serve(app).await, seen)
}

/// The id of a single call in `body`, as JSON text (`null` when it has none): what a
/// fake upstream's reply must carry, since Outlast refuses an answer to another call.
pub fn id_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null)
        .to_string()
}

/// Honest answers to Outlast's own background calls (the chain-id check and head polls,
/// single or batched), so a fake upstream stays in rotation and only test calls see
/// its misbehaviour. `None` for any other call.
fn background_reply(body: &[u8]) -> Option<String> {
    let answer = |call: &Value| -> Option<Value> {
        let result = match call["method"].as_str()? {
            "eth_chainId" => serde_json::json!("0x7a69"),
            "eth_getBlockByNumber" => serde_json::json!({"number": "0x0", "hash": "0x00"}),
            _ => return None,
        };
        Some(serde_json::json!({"jsonrpc": "2.0", "id": call["id"], "result": result}))
    };
    match serde_json::from_slice::<Value>(body).ok()? {
        Value::Array(calls) => {
            let replies: Option<Vec<Value>> = calls.iter().map(answer).collect();
            Some(Value::Array(replies?).to_string())
        }
        call => answer(&call).map(|r| r.to_string()),
    }
}

pub async fn serve(app: Router) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// A provider with a block-range limit on `eth_getLogs`: relays every call to `target`
/// (a real node) but refuses, like public providers do, a log query over more than
/// `max` blocks. Returns its URL and how many queries it refused.
pub async fn range_limited_upstream(target: String, max: u64) -> (String, Arc<Mutex<usize>>) {
    let refused = Arc::new(Mutex::new(0usize));
    let count = refused.clone();
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let (count, client, target) = (count.clone(), client.clone(), target.clone());
            async move {
                if let Some(span) = logs_span(&body)
                    && span > max
                {
                    *count.lock().expect("lock") += 1;
                    return format!(
                        r#"{{"jsonrpc":"2.0","id":{},"error":{{"code":-32005,"message":"block range too large: max {max} blocks"}}}}"#,
                        id_of(&body)
                    );
                }
                relay(&client, &target, body).await
            }
        }),
    );
    (serve(app).await, refused)
}

/// Posts `body` to `target` and returns its reply as text (or why it failed): the
/// honest half of every relaying fake provider.
pub async fn relay(client: &reqwest::Client, target: &str, body: Bytes) -> String {
    match client
        .post(target)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(e) => format!("relay failed: {e}"),
    }
}

/// Blocks covered by a single `eth_getLogs` call with numeric bounds.
fn logs_span(body: &[u8]) -> Option<u64> {
    let call: Value = serde_json::from_slice(body).ok()?;
    if call["method"] != "eth_getLogs" {
        return None;
    }
    let num = |v: &Value| u64::from_str_radix(v.as_str()?.strip_prefix("0x")?, 16).ok();
    let filter = &call["params"][0];
    Some(num(&filter["toBlock"])? - num(&filter["fromBlock"])? + 1)
}

/// A provider that forges block headers: relays every call to `target` (a real node)
/// but replaces the `stateRoot` of every block it returns, keeping the claimed `hash` —
/// so the header no longer hashes to itself.
pub async fn header_forging_upstream(target: String) -> String {
    forging_upstream(target, |block| {
        if let Some(root) = block.get_mut("stateRoot") {
            *root = Value::from(format!("0x{}", "11".repeat(32)));
        }
    })
    .await
}

/// A provider that relays every call to `target` (a real node) and passes each
/// `result` it returns through `forge` first.
pub async fn forging_upstream(target: String, forge: fn(&mut Value)) -> String {
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let (client, target) = (client.clone(), target.clone());
            async move {
                let reply = relay(&client, &target, body).await;
                let Ok(mut v) = serde_json::from_str::<Value>(&reply) else {
                    return reply;
                };
                let forge_result = |r: &mut Value| {
                    if let Some(result) = r.get_mut("result") {
                        forge(result);
                    }
                };
                match &mut v {
                    Value::Array(items) => items.iter_mut().for_each(forge_result),
                    one => forge_result(one),
                }
                v.to_string()
            }
        }),
    );
    serve(app).await
}

/// A provider whose backend can be switched while it runs (a provider re-pointing its
/// endpoint at another network, or going away): relays every call, whatever its path,
/// to the URL in the returned cell (a dead URL makes it answer "relay failed", not
/// JSON).
pub async fn switchable_upstream(target: String) -> (String, Arc<Mutex<String>>) {
    let cell = Arc::new(Mutex::new(target));
    let current = cell.clone();
    let client = reqwest::Client::new();
    let handler = post(move |body: Bytes| {
        let (client, current) = (client.clone(), current.clone());
        async move {
            let target = current.lock().expect("lock").clone();
            relay(&client, &target, body).await
        }
    });
    // Any path: a provider's URL often carries a key in it.
    let app = Router::new()
        .route("/", handler.clone())
        .route("/{*path}", handler);
    (serve(app).await, cell)
}

/// A provider that relays every call to `target` (a real node) but answers every
/// `eth_getProof` with `error` (a JSON-RPC error object), as a full node does for state
/// it no longer keeps. Returns its URL and how many proofs it refused.
pub async fn proofless_upstream(target: String, error: Value) -> (String, Arc<Mutex<usize>>) {
    let refused = Arc::new(Mutex::new(0usize));
    let count = refused.clone();
    let client = reqwest::Client::new();
    let app = Router::new().route(
        "/",
        post(move |body: Bytes| {
            let (client, target, count, error) =
                (client.clone(), target.clone(), count.clone(), error.clone());
            async move {
                let refuse = |call: &Value| {
                    serde_json::json!({"jsonrpc": "2.0", "id": call["id"], "error": error})
                };
                match serde_json::from_slice::<Value>(&body) {
                    Ok(call) if call["method"] == "eth_getProof" => {
                        *count.lock().expect("lock") += 1;
                        refuse(&call).to_string()
                    }
                    Ok(Value::Array(calls))
                        if calls.iter().any(|c| c["method"] == "eth_getProof") =>
                    {
                        // A batch with proofs: each answered alone, in order.
                        let mut replies = Vec::new();
                        for call in calls {
                            if call["method"] == "eth_getProof" {
                                *count.lock().expect("lock") += 1;
                                replies.push(refuse(&call));
                            } else {
                                let reply =
                                    relay(&client, &target, Bytes::from(call.to_string())).await;
                                replies.push(serde_json::from_str(&reply).unwrap_or(Value::Null));
                            }
                        }
                        Value::Array(replies).to_string()
                    }
                    _ => relay(&client, &target, body).await,
                }
            }
        }),
    );
    (serve(app).await, refused)
}
