//! The chaos scenario runner: three Anvil nodes, each behind its own [`FaultProxy`],
//! Outlast in front of the three proxies (upstreams `u0`, `u1`, `u2` of distinct
//! operators, [`FAST_ROUTING`]), a bounded client load checked call by call, and one
//! fault applied after a warm-up and lifted before the end.
//!
//! ```text
//! 0 ── warm-up ──▶ fault ── fault window ──▶ lift ── tail ──▶ end
//!      mining one block every 300 ms, on every node not dead or lagging, throughout
//!      CLIENTS loops: call, check, THINK, call, check …
//! ```
//!
//! Every answer is checked against an honest node at the same block ([`ORACLE`]: node
//! 2 asked directly, not through its proxy; no scenario touches its process). Reads
//! name an explicit block N that every honest node has (N ≤ the fleet's height when
//! the call is issued), so the honest answer cannot change; `eth_blockNumber` and
//! `eth_getBlockByNumber("latest")` must never go back within one client loop and never
//! exceed the newest block mined so far, and the latest block must be the honest block
//! at its number. A call **failed** when it got a JSON-RPC error, no JSON or no answer;
//! it is **wrong** when its result differs from the honest one (or breaks the head rules).
//!
//! Measured per scenario: calls, failed, wrong, p50/p99/max latency of the calls started
//! during the fault window, and the time Outlast took to **route around** the fault:
//! from the fault's start to the end of the last call (started before the lift) that
//! failed, was wrong, or took longer than the slow threshold — 3× the pre-fault p99,
//! at least [`SLOW_FLOOR`]. Timings are printed and written to
//! `target/reliability-report.md`, never asserted.
//!
//! Durations: about 5 s per scenario by default; `OUTLAST_CHAOS_SECONDS=N` makes each
//! scenario last N seconds (warm-up N/5, tail N/4, the rest under the fault).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::faultproxy::{Fault, FaultProxy};
use super::gateway::{FAST_ROUTING, Outlast, config};
use super::{ACCOUNT0_ADDRESS, ACCOUNT1_ADDRESS, Fleet};

/// Concurrent client loops.
pub const CLIENTS: usize = 4;
/// Pause between two calls of one client loop: bounds the load (≤ ~100 calls/s each).
pub const THINK: Duration = Duration::from_millis(10);
/// One block on every running, non-lagging node this often.
pub const BLOCK_EVERY: Duration = Duration::from_millis(300);
/// The node asked directly for honest answers; scenarios never touch its process.
pub const ORACLE: usize = 2;
/// Explicit-block reads pick N among the newest this many blocks (and the head itself).
pub const RECENT_BLOCKS: u64 = 8;
/// A client gives up on a call after this (far above Outlast's own attempt limits).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The slow threshold is never below this, so scheduler noise is not a "slow call".
pub const SLOW_FLOOR: Duration = Duration::from_millis(50);
/// The env var that sets each scenario's duration, in seconds.
pub const SECONDS_VAR: &str = "OUTLAST_CHAOS_SECONDS";
const DEFAULT_SECONDS: f64 = 5.0;
/// Evidence kept per scenario (failed and wrong calls, first ones).
const EVIDENCE: usize = 12;
/// Slowest affected calls shown per scenario.
const SLOWEST: usize = 3;
const UPSTREAMS: usize = 3;

/// What goes wrong in a scenario.
#[derive(Clone, Debug)]
pub enum Chaos {
    /// These proxy faults at the fault start; `Fault::None` again at the lift.
    Proxies(Vec<(usize, Fault)>),
    /// The same, set before Outlast starts (it never sees these upstreams healthy);
    /// the fault window starts at once, with no warm-up.
    ProxiesFromStart(Vec<(usize, Fault)>),
    /// SIGKILL the node (its proxy then resets every connection); restarted at the lift.
    Kill(usize),
    /// Stop mining the node and mine `blocks` at once on the others (then keep mining
    /// them); the node catches up at the lift.
    Lag { node: usize, blocks: u64 },
    /// Toggle the node's proxy between `Refuse` and `None` every `period`, starting
    /// with `Refuse`; `None` at the lift.
    Flap { node: usize, period: Duration },
    /// The zero-balance lie: `anvil_setBalance(account 0, 0)` on the node, at every
    /// head while the fault is on. Before each block it mines, the honest balance is
    /// set back, so its blocks stay the others' (same hashes and state roots) and only
    /// its newest state lies, as a provider would; restarted (honest) at the lift.
    Lie(usize),
}

impl Chaos {
    fn describe(&self) -> String {
        let up = |faults: &[(usize, Fault)]| {
            faults
                .iter()
                .map(|(i, f)| format!("u{i} {}", short_fault(f)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Chaos::Proxies(f) => up(f),
            Chaos::ProxiesFromStart(f) => format!("{} from the start", up(f)),
            Chaos::Kill(i) => format!("u{i} node killed"),
            Chaos::Lag { node, blocks } => format!("u{node} lags {blocks}+ blocks"),
            Chaos::Flap { node, period } => {
                format!("u{node} Refuse/None every {} ms", period.as_millis())
            }
            Chaos::Lie(node) => format!("u{node} says account 0 has balance 0"),
        }
    }

    fn touches_process(&self, node: usize) -> bool {
        match self {
            Chaos::Kill(i) | Chaos::Lag { node: i, .. } | Chaos::Lie(i) => *i == node,
            _ => false,
        }
    }
}

fn short_fault(f: &Fault) -> String {
    match f {
        Fault::Latency(d) => format!("Latency {} ms", d.as_millis()),
        Fault::SlowBody(d) => format!("SlowBody {} ms", d.as_millis()),
        Fault::Http(status, _) => format!("HTTP {status}"),
        Fault::RateLimit { retry_after_secs } => format!("429 retry-after {retry_after_secs}"),
        other => format!("{other:?}"),
    }
}

/// One scenario: its name (the table's first column) and its fault.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub chaos: Chaos,
    /// The tail after the lift lasts at least this long (for scenarios that check
    /// that upstreams come back).
    pub min_tail: Duration,
    /// The chain's `verify` mode; `None`: the default users get (proofs, quorum 2).
    pub verify: Option<&'static str>,
}

impl Scenario {
    pub fn new(name: &'static str, chaos: Chaos) -> Scenario {
        Scenario {
            name,
            chaos,
            min_tail: Duration::ZERO,
            verify: None,
        }
    }

    pub fn verified(mut self, mode: &'static str) -> Scenario {
        self.verify = Some(mode);
        self
    }

    pub fn with_min_tail(mut self, tail: Duration) -> Scenario {
        self.min_tail = tail;
        self
    }
}

/// How long each phase lasts.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub warm: Duration,
    pub fault: Duration,
    pub tail: Duration,
}

impl Timing {
    /// From `OUTLAST_CHAOS_SECONDS` (at least 3), else about 5 s.
    pub fn from_env() -> Timing {
        let total = std::env::var(SECONDS_VAR)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite())
            .unwrap_or(DEFAULT_SECONDS)
            .max(3.0);
        let total = Duration::from_secs_f64(total);
        let warm = (total / 5).max(Duration::from_secs(1));
        let tail = (total / 4).max(Duration::from_millis(1500));
        let fault = total
            .saturating_sub(warm + tail)
            .max(Duration::from_secs(1));
        Timing { warm, fault, tail }
    }
}

/// What one scenario measured.
#[derive(Debug)]
pub struct Report {
    pub name: &'static str,
    pub chaos: String,
    pub calls: usize,
    pub failed: usize,
    pub wrong: usize,
    /// Latency of the calls started during the fault window.
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// Pre-fault p99 (None when the fault was there from the start).
    pub baseline_p99: Option<Duration>,
    /// Calls over `slow_threshold`, failed or wrong, that overlapped the fault window.
    pub affected: usize,
    pub slow_threshold: Duration,
    /// From the fault's start to the end of the last affected call; zero when none.
    pub route_around: Duration,
    /// Upstreams (`x-outlast-upstream`) that answered client calls started after the lift.
    pub back: BTreeSet<String>,
    /// Client calls answered by u0, u1, u2 (`x-outlast-upstream`, each upstream it
    /// names), by phase: started before the fault was applied, while it was on, after
    /// the lift.
    pub shares: [[usize; UPSTREAMS]; 3],
    /// The calls answered correctly while the fault was on: who answered and what.
    pub during: Vec<Answered>,
    /// Each upstream's `state` in `/api/v1/status` at the end of the tail, before the
    /// stop (`ready`, `banned`, …); empty when the status could not be read.
    pub states_at_end: Vec<String>,
    /// The fleet's height when the fault came (a lagging node stays there).
    pub height_at_fault: u64,
    /// Each proxy's `forwarded()` growth from the lift to the end (client calls and
    /// Outlast's own head polls and probes alike).
    pub forwarded_after_lift: Vec<usize>,
    /// The first failed and wrong calls, with what came back and who answered.
    pub evidence: Vec<String>,
    /// Anything else worth telling (e.g. a slow graceful stop).
    pub notes: Vec<String>,
    pub timing: Timing,
    pub wall: Duration,
}

/// A call answered correctly while the fault was on.
#[derive(Clone, Debug)]
pub struct Answered {
    /// Upstreams named by `x-outlast-upstream`.
    pub upstreams: Vec<String>,
    pub method: &'static str,
    /// The block it asked about: `Some(n)` for an explicit block, `None` for `latest`
    /// or calls about no block.
    pub block: Option<u64>,
    /// It asked about the newest block (`latest`).
    pub latest: bool,
}

impl Report {
    /// Upstream `u{i}` answered client calls before the fault: the fault hit an upstream
    /// that was in use (a router that never picked it would pass the bar vacuously).
    pub fn assert_served_before(&self, upstreams: &[usize]) {
        for &i in upstreams {
            assert!(
                self.shares[0][i] > 0,
                "{}: u{i} answered no call before the fault (answered by u0/u1/u2: {:?})",
                self.name,
                self.shares
            );
        }
    }

    /// Upstream `u{i}` answered no client call started while the fault was on.
    pub fn assert_none_during(&self, upstreams: &[usize]) {
        for &i in upstreams {
            assert_eq!(
                self.shares[1][i], 0,
                "{}: u{i} answered calls during its fault (answered by u0/u1/u2: {:?})",
                self.name, self.shares
            );
        }
    }

    /// Upstream `u{i}` answered client calls again after the lift.
    pub fn assert_back_after(&self, upstreams: &[usize]) {
        for &i in upstreams {
            assert!(
                self.shares[2][i] > 0,
                "{}: u{i} answered no call after the lift (answered by u0/u1/u2: {:?})",
                self.name,
                self.shares
            );
        }
    }

    /// The calls `u{i}` answered while the fault was on.
    pub fn answered_during_by(&self, i: usize) -> Vec<&Answered> {
        let name = format!("u{i}");
        self.during
            .iter()
            .filter(|a| a.upstreams.contains(&name))
            .collect()
    }

    /// The bar: no failed and no wrong call while one healthy, caught-up upstream is left.
    pub fn assert_no_failed_or_wrong(&self) {
        assert!(
            self.failed == 0 && self.wrong == 0,
            "{}: {} of {} calls failed, {} wrong ({}):\n{}",
            self.name,
            self.failed,
            self.calls,
            self.wrong,
            self.chaos,
            self.evidence.join("\n")
        );
    }

    /// Every upstream answered client calls again after the lift, and each proxy
    /// forwarded requests again.
    pub fn assert_every_upstream_back(&self) {
        let all: BTreeSet<String> = (0..UPSTREAMS).map(|i| format!("u{i}")).collect();
        assert_eq!(
            self.back, all,
            "{}: upstreams answering client calls after the lift",
            self.name
        );
        assert!(
            self.forwarded_after_lift.iter().all(|&n| n > 0),
            "{}: requests forwarded by each proxy after the lift: {:?}",
            self.name,
            self.forwarded_after_lift
        );
    }

    fn row(&self) -> String {
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
        let around = if self.affected == 0 {
            "0".to_owned()
        } else {
            ms(self.route_around)
        };
        let shares = self
            .shares
            .iter()
            .map(|phase| {
                phase
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect::<Vec<_>>()
            .join(" · ");
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} |",
            self.name,
            self.chaos,
            self.calls,
            self.failed,
            self.wrong,
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.baseline_p99.map_or("-".to_owned(), ms),
            around,
            self.affected,
            shares
        )
    }
}

const TABLE_HEAD: &str = "| scenario | fault | calls | failed | wrong | p50 ms | p99 ms | max ms | pre-fault p99 ms | routed around after ms (affected calls) | answered by u0/u1/u2: before · during · after |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |";

/// Rows of the scenarios finished in this test process, for the report file.
static ROWS: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

fn report_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("reliability-report.md")
}

/// Prints the scenario's row (with the table head, in one `println!`, so parallel
/// tests do not interleave) and rewrites `target/reliability-report.md` with every
/// row finished so far in this run.
pub fn publish(report: &Report) {
    let row = report.row();
    let mut text = format!("\n{TABLE_HEAD}\n{row}\n");
    for line in report.evidence.iter().chain(&report.notes) {
        text.push_str(&format!("  {}: {line}\n", report.name));
    }
    println!("{text}");

    let mut rows = ROWS.lock().unwrap_or_else(|p| p.into_inner());
    rows.retain(|(name, _)| *name != report.name);
    rows.push((report.name, row));
    rows.sort();
    let t = report.timing;
    let mut file = format!(
        "# Outlast reliability report\n\n3 Anvil nodes, each behind a fault proxy; Outlast ([routing] as the tests' FAST_ROUTING) in front; {CLIENTS} client loops ({} ms pause between calls), one block every {} ms. Per scenario: warm-up {:.1} s, fault {:.1} s, tail {:.1} s ({SECONDS_VAR}). Latencies: calls started during the fault. Routed around after: from the fault's start to the end of the last call that failed, was wrong, or took over 3x the pre-fault p99 (at least {} ms).\n\n{TABLE_HEAD}\n",
        THINK.as_millis(),
        BLOCK_EVERY.as_millis(),
        t.warm.as_secs_f64(),
        t.fault.as_secs_f64(),
        t.tail.as_secs_f64(),
        SLOW_FLOOR.as_millis(),
    );
    for (_, row) in rows.iter() {
        file.push_str(row);
        file.push('\n');
    }
    let path = report_path();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = std::fs::write(&path, file) {
        println!("could not write {}: {e}", path.display());
    }
}

/// Runs `scenario` and publishes its row.
pub async fn run_and_publish(scenario: Scenario) -> Report {
    let report = run(scenario).await;
    publish(&report);
    report
}

/// What every task of a running scenario shares.
struct Bed {
    fleet: tokio::sync::Mutex<Fleet>,
    /// Blocks every running, non-lagging node has: reads pick N at or below it.
    height: AtomicU64,
    /// The newest block being mined (set before mining starts): no head may exceed it.
    target: AtomicU64,
    oracle: String,
    gateway: String,
    http: reqwest::Client,
    /// Honest answers, by "method params": at an explicit block they never change.
    honest: Mutex<HashMap<String, Value>>,
    /// The node that says account 0 has balance 0 at its head (`Chaos::Lie`), while the
    /// fault is on; read and written with `fleet` held.
    liar: Mutex<Option<usize>>,
}

impl Bed {
    async fn mine(&self, k: u64) {
        let mut fleet = self.fleet.lock().await;
        let liar = *self.liar.lock().expect("lock");
        if let Some(node) = liar {
            // Honest for the blocks it mines, so they stay the others' blocks.
            let honest = super::rpc_result(
                &self.oracle,
                "eth_getBalance",
                json!([ACCOUNT0_ADDRESS, "latest"]),
            )
            .await;
            super::rpc(
                &fleet.url(node),
                "anvil_setBalance",
                json!([ACCOUNT0_ADDRESS, honest]),
            )
            .await;
        }
        self.target.store(fleet.height() + k, Ordering::SeqCst);
        fleet.mine(k).await;
        self.height.store(fleet.height(), Ordering::SeqCst);
        if let Some(node) = liar {
            lie(&fleet.url(node)).await;
        }
    }

    /// The honest node's result for this call; panics when the honest node fails
    /// (that is the test bed's fault, not Outlast's).
    async fn honest(&self, method: &str, params: &Value) -> Value {
        let key = format!("{method} {params}");
        if let Some(v) = self.honest.lock().expect("lock").get(&key) {
            return v.clone();
        }
        let (reply, _) = post(&self.http, &self.oracle, method, params)
            .await
            .unwrap_or_else(|e| panic!("honest node failed {method} {params}: {e}"));
        let result = match (reply.get("error"), reply.get("result")) {
            (None, Some(r)) => r.clone(),
            _ => panic!("honest node answered {method} {params} with {reply}"),
        };
        self.honest
            .lock()
            .expect("lock")
            .insert(key, result.clone());
        result
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    method: &str,
    params: &Value,
) -> Result<(Value, Option<String>), String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| chain(&e))?;
    let status = resp.status().as_u16();
    let upstream = resp
        .headers()
        .get("x-outlast-upstream")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = resp.bytes().await.map_err(|e| chain(&e))?;
    let value = serde_json::from_slice(&bytes).map_err(|_| {
        format!(
            "HTTP {status}, not JSON: {}",
            clip(&String::from_utf8_lossy(&bytes))
        )
    })?;
    Ok((value, upstream))
}

/// An error with its sources, `{:#}`-style.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    s
}

fn clip(s: &str) -> String {
    const MAX: usize = 240;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    ChainId,
    BlockNumber,
    Balance,
    Block,
    Nonce,
    Call,
    LatestBlock,
}

const KINDS: [Kind; 7] = [
    Kind::Block,
    Kind::BlockNumber,
    Kind::Balance,
    Kind::LatestBlock,
    Kind::Nonce,
    Kind::ChainId,
    Kind::Call,
];

impl Kind {
    fn request(self, n: u64) -> (&'static str, Value) {
        let block = format!("{n:#x}");
        match self {
            Kind::ChainId => ("eth_chainId", json!([])),
            Kind::BlockNumber => ("eth_blockNumber", json!([])),
            Kind::Balance => ("eth_getBalance", json!([ACCOUNT0_ADDRESS, block])),
            Kind::Block => ("eth_getBlockByNumber", json!([block, false])),
            Kind::Nonce => ("eth_getTransactionCount", json!([ACCOUNT0_ADDRESS, block])),
            Kind::Call => (
                "eth_call",
                json!([{"from": ACCOUNT0_ADDRESS, "to": ACCOUNT1_ADDRESS, "data": "0x"}, block]),
            ),
            Kind::LatestBlock => ("eth_getBlockByNumber", json!(["latest", false])),
        }
    }
}

#[derive(Debug)]
enum Verdict {
    Ok,
    Failed(String),
    Wrong(String),
}

#[derive(Debug)]
struct Sample {
    client: usize,
    /// Since the scenario's start.
    start: Duration,
    took: Duration,
    method: &'static str,
    params: Value,
    kind: Kind,
    /// The explicit block asked about, if any.
    block: Option<u64>,
    upstream: Option<String>,
    verdict: Verdict,
}

impl Sample {
    /// The upstreams `x-outlast-upstream` names ("u0,u2" for a call several answered).
    fn upstreams(&self) -> Vec<String> {
        self.upstream
            .as_deref()
            .map(|u| u.split(',').map(|s| s.trim().to_owned()).collect())
            .unwrap_or_default()
    }
}

impl Sample {
    fn end(&self) -> Duration {
        self.start + self.took
    }

    fn evidence(&self) -> String {
        let (what, why) = match &self.verdict {
            Verdict::Ok => ("ok", "answered correctly".to_owned()),
            Verdict::Failed(e) => ("FAILED", e.clone()),
            Verdict::Wrong(e) => ("WRONG", e.clone()),
        };
        format!(
            "{what} at {:.3}s (took {} ms, client {}) {} {} via {}: {}",
            self.start.as_secs_f64(),
            self.took.as_millis(),
            self.client,
            self.method,
            self.params,
            self.upstream.as_deref().unwrap_or("-"),
            why
        )
    }
}

fn parse_quantity(v: &Value) -> Option<u64> {
    u64::from_str_radix(v.as_str()?.strip_prefix("0x")?, 16).ok()
}

/// A small xorshift: no `rand` dependency, and runs differ by seed only.
fn next_random(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// One client: calls until `end`, each checked; returns what it saw.
async fn client_loop(bed: Arc<Bed>, client: usize, t0: Instant, end: Instant) -> Vec<Sample> {
    let mut samples = Vec::new();
    let nanos = t0.elapsed().subsec_nanos() as u64;
    let mut rng = (0x9E37_79B9_7F4A_7C15u64 ^ ((client as u64 + 1) << 32) ^ nanos) | 1;
    // The highest head this client has been told of: `latest` must never go below it.
    let mut head_seen = 0u64;
    let mut i = client;
    while Instant::now() < end {
        let kind = KINDS[i % KINDS.len()];
        i += 1;
        let height = bed.height.load(Ordering::SeqCst);
        let n = height - next_random(&mut rng) % (height.min(RECENT_BLOCKS) + 1);
        let (method, params) = kind.request(n);
        let started = Instant::now();
        let got = post(&bed.http, &bed.gateway, method, &params).await;
        let took = started.elapsed();
        let newest = bed.target.load(Ordering::SeqCst);
        let (verdict, upstream) = match got {
            Err(e) => (Verdict::Failed(e), None),
            Ok((reply, upstream)) => {
                let verdict = match (reply.get("error"), reply.get("result")) {
                    (Some(e), _) => Verdict::Failed(format!("error {}", clip(&e.to_string()))),
                    (None, None) => {
                        Verdict::Failed(format!("no result: {}", clip(&reply.to_string())))
                    }
                    (None, Some(r)) => {
                        check(&bed, kind, method, &params, r, newest, &mut head_seen).await
                    }
                };
                (verdict, upstream)
            }
        };
        let block = match kind {
            Kind::Balance | Kind::Block | Kind::Nonce | Kind::Call => Some(n),
            _ => None,
        };
        samples.push(Sample {
            client,
            start: started.duration_since(t0),
            took,
            method,
            params,
            kind,
            block,
            upstream,
            verdict,
        });
        tokio::time::sleep(THINK).await;
    }
    samples
}

/// Is `result` what an honest node says, and does it keep the head rules?
async fn check(
    bed: &Bed,
    kind: Kind,
    method: &str,
    params: &Value,
    result: &Value,
    newest: u64,
    head_seen: &mut u64,
) -> Verdict {
    let mut head = |m: u64, what: &str| -> Option<Verdict> {
        if m > newest {
            return Some(Verdict::Wrong(format!(
                "{what} {m} is above the newest block mined, {newest}"
            )));
        }
        if m < *head_seen {
            return Some(Verdict::Wrong(format!(
                "{what} went back from {} to {m}",
                *head_seen
            )));
        }
        *head_seen = m;
        None
    };
    match kind {
        Kind::ChainId => {
            if result == "0x7a69" {
                Verdict::Ok
            } else {
                Verdict::Wrong(format!("chain id {result}, not 0x7a69"))
            }
        }
        Kind::BlockNumber => match parse_quantity(result) {
            None => Verdict::Wrong(format!("not a quantity: {result}")),
            Some(m) => head(m, "eth_blockNumber").unwrap_or(Verdict::Ok),
        },
        Kind::LatestBlock => {
            let Some(m) = parse_quantity(&result["number"]) else {
                return Verdict::Wrong(format!(
                    "latest block without a number: {}",
                    clip(&result.to_string())
                ));
            };
            if let Some(bad) = head(m, "latest block") {
                return bad;
            }
            let honest = bed
                .honest("eth_getBlockByNumber", &json!([format!("{m:#x}"), false]))
                .await;
            if *result == honest {
                Verdict::Ok
            } else {
                Verdict::Wrong(format!(
                    "latest block {m} hash {} != honest {}",
                    result["hash"], honest["hash"]
                ))
            }
        }
        Kind::Balance | Kind::Block | Kind::Nonce | Kind::Call => {
            let honest = bed.honest(method, params).await;
            if *result == honest {
                Verdict::Ok
            } else {
                Verdict::Wrong(format!(
                    "{} != honest {}",
                    clip(&result.to_string()),
                    clip(&honest.to_string())
                ))
            }
        }
    }
}

fn sleep_until(t: Instant) -> tokio::time::Sleep {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t))
}

fn set_faults(proxies: &[FaultProxy], faults: &[(usize, Fault)]) {
    for (i, f) in faults {
        proxies[*i].set(f.clone());
    }
}

fn lift_faults(proxies: &[FaultProxy], faults: &[(usize, Fault)]) {
    for (i, _) in faults {
        proxies[*i].set(Fault::None);
    }
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn rethrow<T>(joined: Result<T, tokio::task::JoinError>) -> T {
    match joined {
        Ok(v) => v,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("task failed: {e}"),
    }
}

/// Runs one scenario end to end and measures it. Panics only when the test bed itself
/// breaks; Outlast's failures are counted in the report.
pub async fn run(scenario: Scenario) -> Report {
    assert!(
        !scenario.chaos.touches_process(ORACLE),
        "{}: node {ORACLE} is the honest reference; fault another",
        scenario.name
    );
    let mut timing = Timing::from_env();
    timing.tail = timing.tail.max(scenario.min_tail);
    let wall = Instant::now();

    let mut fleet = Fleet::start(UPSTREAMS).await;
    fleet.mine(2).await;
    let mut proxies = Vec::with_capacity(UPSTREAMS);
    for i in 0..UPSTREAMS {
        proxies.push(FaultProxy::start(fleet.url(i)).await);
    }
    let from_start = matches!(scenario.chaos, Chaos::ProxiesFromStart(_));
    if let Chaos::ProxiesFromStart(faults) = &scenario.chaos {
        set_faults(&proxies, faults);
    }
    let urls: Vec<String> = proxies.iter().map(FaultProxy::url).collect();
    // The chain's verify mode as users get it unless the scenario names one.
    let verify = scenario
        .verify
        .map_or(String::new(), |mode| format!("verify = \"{mode}\""));
    let toml = config(&urls, FAST_ROUTING).replace("verify = \"off\"", &verify);
    let outlast = Outlast::start(&toml).await;
    outlast.wait_for_head("/local", fleet.height()).await;

    let height = fleet.height();
    let bed = Arc::new(Bed {
        oracle: fleet.url(ORACLE),
        fleet: tokio::sync::Mutex::new(fleet),
        height: AtomicU64::new(height),
        target: AtomicU64::new(height),
        gateway: outlast.url("/local"),
        http: reqwest::Client::builder()
            .no_proxy()
            .timeout(CALL_TIMEOUT)
            .build()
            .expect("a plain reqwest client builds"),
        honest: Mutex::new(HashMap::new()),
        liar: Mutex::new(None),
    });

    let t0 = Instant::now();
    let (fault_at, lift_at) = if from_start {
        (t0, t0 + timing.warm + timing.fault)
    } else {
        (t0 + timing.warm, t0 + timing.warm + timing.fault)
    };
    let end = lift_at + timing.tail;

    let miner = {
        let bed = Arc::clone(&bed);
        tokio::spawn(async move {
            let mut next = Instant::now() + BLOCK_EVERY;
            while next < end {
                sleep_until(next).await;
                bed.mine(1).await;
                next += BLOCK_EVERY;
            }
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(client_loop(Arc::clone(&bed), c, t0, end)))
        .collect();

    // The fault, then the lift.
    sleep_until(fault_at).await;
    let height_at_fault = bed.height.load(Ordering::SeqCst);
    // When the fault is fully on: calls started from then on meet it.
    let mut faulted = Instant::now();
    match &scenario.chaos {
        Chaos::Proxies(faults) => set_faults(&proxies, faults),
        Chaos::ProxiesFromStart(_) => faulted = t0,
        Chaos::Kill(i) => bed.fleet.lock().await.kill(*i),
        Chaos::Lag { node, blocks } => {
            bed.fleet.lock().await.lag(*node);
            bed.mine(*blocks).await;
        }
        Chaos::Lie(node) => {
            let fleet = bed.fleet.lock().await;
            lie(&fleet.url(*node)).await;
            *bed.liar.lock().expect("lock") = Some(*node);
        }
        Chaos::Flap { node, .. } => proxies[*node].set(Fault::Refuse),
    }
    if !from_start {
        faulted = Instant::now();
    }
    if let Chaos::Flap { node, period } = &scenario.chaos {
        let mut down = true;
        let mut at = fault_at;
        loop {
            at += *period;
            if at >= lift_at {
                break;
            }
            sleep_until(at).await;
            down = !down;
            proxies[*node].set(if down { Fault::Refuse } else { Fault::None });
        }
    }
    sleep_until(lift_at).await;
    match &scenario.chaos {
        Chaos::Proxies(faults) | Chaos::ProxiesFromStart(faults) => lift_faults(&proxies, faults),
        Chaos::Kill(i) => bed.fleet.lock().await.restart(*i).await,
        Chaos::Lie(i) => {
            let mut fleet = bed.fleet.lock().await;
            *bed.liar.lock().expect("lock") = None;
            fleet.restart(*i).await;
        }
        Chaos::Lag { node, .. } => bed.fleet.lock().await.catch_up(*node).await,
        Chaos::Flap { node, .. } => proxies[*node].set(Fault::None),
    }
    let lifted = Instant::now();
    let forwarded_at_lift: Vec<usize> = proxies.iter().map(FaultProxy::forwarded).collect();

    let mut samples = Vec::new();
    for c in clients {
        samples.extend(rethrow(c.await));
    }
    rethrow(miner.await);
    let forwarded_after_lift = proxies
        .iter()
        .zip(&forwarded_at_lift)
        .map(|(p, before)| p.forwarded() - before)
        .collect();

    let states_at_end = upstream_states(&bed.http, &outlast.url("/api/v1/status")).await;
    let mut notes = Vec::new();
    let stopping = Instant::now();
    if tokio::time::timeout(Duration::from_secs(10), outlast.stop())
        .await
        .is_err()
    {
        notes.push("graceful stop took over 10 s".to_owned());
    } else if stopping.elapsed() > Duration::from_secs(2) {
        notes.push(format!(
            "graceful stop took {} ms",
            stopping.elapsed().as_millis()
        ));
    }
    drop(proxies);

    let mut report = measure(
        &scenario,
        samples,
        fault_at.duration_since(t0),
        faulted.duration_since(t0),
        lift_at.duration_since(t0),
        lifted.duration_since(t0),
        from_start,
    );
    report.forwarded_after_lift = forwarded_after_lift;
    report.notes = notes;
    if !states_at_end.is_empty() {
        let states: Vec<&str> = states_at_end.iter().map(|(s, _)| s.as_str()).collect();
        report
            .notes
            .push(format!("upstream states at the end: {}", states.join(", ")));
    }
    // Why an upstream is out at the end (a ban's evidence): a ban of an honest
    // upstream is a false verdict, and this is what tells which check gave it.
    for (i, (state, last_error)) in states_at_end.iter().enumerate() {
        if let (false, Some(why)) = (state == "ready", last_error) {
            report
                .notes
                .push(format!("u{i} {state}, last error: {why}"));
        }
    }
    report.states_at_end = states_at_end.into_iter().map(|(s, _)| s).collect();
    report.height_at_fault = height_at_fault;
    report.timing = timing;
    report.wall = wall.elapsed();
    report
}

/// The zero-balance lie on the node at `url`, at its newest block (no block is mined).
async fn lie(url: &str) {
    super::rpc(url, "anvil_setBalance", json!([ACCOUNT0_ADDRESS, "0x0"])).await;
}

/// Each upstream's state (u0, u1, u2 in order) in `/api/v1/status`, and its last error
/// (a ban's evidence) when it has one; empty when the status cannot be read.
async fn upstream_states(http: &reqwest::Client, url: &str) -> Vec<(String, Option<String>)> {
    let Ok(resp) = http.get(url).send().await else {
        return Vec::new();
    };
    let bytes = resp.bytes().await.unwrap_or_default();
    let status: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let ups = status["chains"][0]["upstreams"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    (0..UPSTREAMS)
        .map(|i| {
            let up = ups.iter().find(|u| u["name"] == format!("u{i}").as_str());
            let field = |name: &str| up.and_then(|u| u[name].as_str()).map(str::to_owned);
            (
                field("state").unwrap_or_else(|| "?".to_owned()),
                field("last_error"),
            )
        })
        .collect()
}

/// Turns a scenario's samples into its report. `fault_at`: when the fault was due (the
/// latency and route-around clock); `faulted`: when it was fully on (the phases).
fn measure(
    scenario: &Scenario,
    samples: Vec<Sample>,
    fault_at: Duration,
    faulted: Duration,
    lift_at: Duration,
    lifted: Duration,
    from_start: bool,
) -> Report {
    let failed = samples
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::Failed(_)))
        .count();
    let wrong = samples
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::Wrong(_)))
        .count();
    let sorted = |it: &mut dyn Iterator<Item = &Sample>| {
        let mut v: Vec<Duration> = it.map(|s| s.took).collect();
        v.sort();
        v
    };
    let before = sorted(&mut samples.iter().filter(|s| s.start < fault_at));
    let during = sorted(
        &mut samples
            .iter()
            .filter(|s| s.start >= fault_at && s.start < lift_at),
    );
    let baseline_p99 = (!from_start && !before.is_empty()).then(|| percentile(&before, 99.0));
    // Without a pre-fault baseline: 3x the median under the fault.
    let slow_threshold =
        (3 * baseline_p99.unwrap_or_else(|| percentile(&during, 50.0))).max(SLOW_FLOOR);
    let affected: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.end() > fault_at && s.start < lift_at)
        .filter(|s| !matches!(s.verdict, Verdict::Ok) || s.took > slow_threshold)
        .collect();
    let route_around = affected
        .iter()
        .map(|s| s.end().saturating_sub(fault_at))
        .max()
        .unwrap_or_default();
    let back = samples
        .iter()
        .filter(|s| s.start >= lifted && matches!(s.verdict, Verdict::Ok))
        .flat_map(Sample::upstreams)
        .filter(|u| u.starts_with('u'))
        .collect();
    let mut shares = [[0; UPSTREAMS]; 3];
    let mut answered_during = Vec::new();
    for s in samples.iter().filter(|s| matches!(s.verdict, Verdict::Ok)) {
        let phase = if s.start < faulted {
            0
        } else if s.start < lifted {
            1
        } else {
            2
        };
        let upstreams = s.upstreams();
        for u in &upstreams {
            if let Some(i) = u.strip_prefix('u').and_then(|i| i.parse::<usize>().ok())
                && i < UPSTREAMS
            {
                shares[phase][i] += 1;
            }
        }
        if phase == 1 {
            answered_during.push(Answered {
                upstreams,
                method: s.method,
                block: s.block,
                latest: s.kind == Kind::LatestBlock,
            });
        }
    }
    let mut evidence: Vec<String> = samples
        .iter()
        .filter(|s| !matches!(s.verdict, Verdict::Ok))
        .take(EVIDENCE)
        .map(Sample::evidence)
        .collect();
    // The slowest calls the fault cost, to tell a hedge delay from a timeout.
    let mut slowest: Vec<&&Sample> = affected
        .iter()
        .filter(|s| matches!(s.verdict, Verdict::Ok))
        .collect();
    slowest.sort_by_key(|s| std::cmp::Reverse(s.took));
    evidence.extend(
        slowest
            .iter()
            .take(SLOWEST)
            .map(|s| format!("slow: {}", s.evidence())),
    );
    Report {
        name: scenario.name,
        chaos: scenario.chaos.describe(),
        calls: samples.len(),
        failed,
        wrong,
        p50: percentile(&during, 50.0),
        p99: percentile(&during, 99.0),
        max: during.last().copied().unwrap_or_default(),
        baseline_p99,
        affected: affected.len(),
        slow_threshold,
        route_around,
        back,
        shares,
        during: answered_during,
        states_at_end: Vec::new(),
        height_at_fault: 0,
        forwarded_after_lift: Vec::new(),
        evidence,
        notes: Vec::new(),
        timing: Timing::from_env(),
        wall: Duration::ZERO,
    }
}
