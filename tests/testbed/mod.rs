//! The test bed: a fleet of real Anvil nodes with identical chains, the faults an
//! end-to-end test inflicts on them (kill, hang, lag, restart), and client helpers.
//!
//! Each e2e test file includes it with `mod testbed;`. It talks only to 127.0.0.1 and
//! needs `scripts/setup-testbed.sh` to have installed `testbed/node_modules`.
//!
//! Identical chains: every node starts with the same chain id, genesis timestamp and
//! default mnemonic, and block `b` is mined on every node with `evm_mine [T]` at
//! `T = 1700000000 + 12 * b`, so equal transactions give equal block hashes and state
//! roots. A test that sends transactions sends them to every node before mining
//! (and again after `restart`, whose node starts from genesis).
//!
//! Cleanup: `Fleet`'s `Drop` kills every node (also while a test unwinds from a
//! panic), and each child carries `PR_SET_PDEATHSIG = SIGKILL`, so none outlives a
//! killed test binary. Linux ties that signal to the *thread* that spawned the child:
//! start a `Fleet` on the test's own thread or a runtime worker, never inside
//! `spawn_blocking`.
#![allow(dead_code)]

pub mod chaos;
pub mod faultproxy;
pub mod gateway;
pub mod incidents;
pub mod receiver;
pub mod redis_server;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The chain id `Fleet::start` uses.
pub const CHAIN_ID: u64 = 31337;
/// Genesis timestamp of every node (`--timestamp`).
pub const GENESIS_TIMESTAMP: u64 = 1_700_000_000;
/// Seconds between the fixed timestamps of consecutive blocks.
pub const BLOCK_TIME: u64 = 12;

/// First default Anvil account (mnemonic "test test … junk"): 10 000 ETH at genesis.
pub const ACCOUNT0_ADDRESS: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
pub const ACCOUNT0_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// Second default Anvil account: 10 000 ETH at genesis.
pub const ACCOUNT1_ADDRESS: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
pub const ACCOUNT1_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
/// Balance of each default account at genesis, in wei (10 000 ETH).
pub const GENESIS_BALANCE_WEI: &str = "10000000000000000000000";

/// Default timeout of `rpc` and `try_rpc`.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a starting node may take to answer `eth_chainId` (it takes ~55 ms).
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting one node (a free port can be taken between probe and bind).
const START_ATTEMPTS: usize = 5;
/// Bytes of a node's stderr kept for failure messages.
const LOG_KEEP: usize = 16 * 1024;
/// How long a `node_client` script may run.
const NODE_CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Fixed timestamp of block `b` on every node.
pub fn block_timestamp(b: u64) -> u64 {
    GENESIS_TIMESTAMP + BLOCK_TIME * b
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn testbed_bin(name: &str) -> PathBuf {
    let path = manifest_dir().join("testbed/node_modules/.bin").join(name);
    if !path.exists() {
        panic!(
            "{} is missing: run scripts/setup-testbed.sh (installs Anvil, cast and ethers from testbed/package-lock.json)",
            path.display()
        );
    }
    path
}

/// `testbed/node_modules/.bin/anvil`; panics with the fix when it is not installed.
pub fn anvil_bin() -> PathBuf {
    testbed_bin("anvil")
}

/// `testbed/node_modules/.bin/cast`; panics with the fix when it is not installed.
pub fn cast_bin() -> PathBuf {
    testbed_bin("cast")
}

/// Makes `cmd`'s child die with SIGKILL when the spawning thread dies.
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and calls only prctl, getppid and
    // _exit, which are async-signal-safe; it touches no memory of the parent.
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then nobody would ever signal us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain syscall; `pid` is our own unreaped child, so it is not reused.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(
        rc,
        0,
        "kill({pid}, {sig}): {}",
        std::io::Error::last_os_error()
    );
}

/// The state letter of a process from /proc/PID/stat (R, S, T, Z…).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S …": comm may hold spaces and parentheses, so split at the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Raises this process's soft limit on open files to at least `need` (up to the hard
/// limit), for tests that hold many sockets at once; panics, saying what to raise,
/// when the hard limit is lower.
pub fn raise_fd_limit(need: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed to them.
    unsafe {
        assert_eq!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit),
            0,
            "getrlimit: {}",
            std::io::Error::last_os_error()
        );
        if limit.rlim_cur >= need as libc::rlim_t {
            return;
        }
        assert!(
            limit.rlim_max >= need as libc::rlim_t,
            "this test needs {need} open files; the hard limit is {} (ulimit -Hn)",
            limit.rlim_max
        );
        let raised = libc::rlimit {
            rlim_cur: need as libc::rlim_t,
            rlim_max: limit.rlim_max,
        };
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised),
            0,
            "setrlimit: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A free 127.0.0.1 port: bind port 0, read it, let it go. Someone else may take it
/// before it is used: callers retry with another.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener
        .local_addr()
        .expect("local_addr of a bound socket")
        .port()
}

/// What went wrong with one JSON-RPC call in `try_rpc`.
#[derive(Debug)]
pub enum RpcError {
    /// Nothing came back: connection refused, reset, timed out…
    Transport(reqwest::Error),
    /// An HTTP answer whose body is not JSON.
    NotJson { status: u16, body: String },
}

impl RpcError {
    /// The connection was refused or could not be made.
    pub fn is_connect(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_connect())
    }
    /// No answer within the timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_timeout())
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // `{:#}`-style chain: reqwest's top message alone hides the cause.
            Self::Transport(e) => {
                write!(f, "{e}")?;
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    write!(f, ": {s}")?;
                    source = s.source();
                }
                Ok(())
            }
            Self::NotJson { status, body } => write!(f, "HTTP {status}, not JSON: {body}"),
        }
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        // No kept-alive connections: a node may be killed and restarted on its port.
        .pool_max_idle_per_host(0)
        .build()
        .expect("a reqwest client with no TLS settings builds")
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Result<Value, RpcError> {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(RpcError::Transport)?;
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.map_err(RpcError::Transport)?;
    serde_json::from_slice(&bytes).map_err(|_| RpcError::NotJson {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

fn request(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
}

/// One JSON-RPC call; the whole response object (`result` or `error`), whatever the
/// HTTP status. Panics when no JSON comes back within 5 s.
pub async fn rpc(url: &str, method: &str, params: Value) -> Value {
    match try_rpc(url, method, params).await {
        Ok(v) => v,
        Err(e) => panic!("{method} to {url}: {e}"),
    }
}

/// `rpc`, returning transport failures instead of panicking (5 s timeout).
pub async fn try_rpc(url: &str, method: &str, params: Value) -> Result<Value, RpcError> {
    try_rpc_within(url, method, params, RPC_TIMEOUT).await
}

/// `try_rpc` with its own timeout.
pub async fn try_rpc_within(
    url: &str,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, RpcError> {
    post(&client(timeout), url, &request(method, params)).await
}

/// `rpc`'s `result`; panics on a JSON-RPC error.
pub async fn rpc_result(url: &str, method: &str, params: Value) -> Value {
    let resp = rpc(url, method, params).await;
    match resp.get("result") {
        Some(result) if resp.get("error").is_none() => result.clone(),
        _ => panic!("{method} to {url} answered no result: {resp}"),
    }
}

/// Parses a JSON-RPC quantity ("0x1a").
pub fn quantity(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("quantity: not a string: {v}"));
    let hex = s
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("quantity: no 0x: {s}"));
    u64::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("quantity {s}: {e}"))
}

/// Runs `node tests/clients/<script> ARGS…` with NODE_PATH=testbed/node_modules and
/// returns its stdout. Panics with its stderr when it fails or runs over 60 s.
/// Async, so a gateway served by the same runtime keeps answering meanwhile.
pub async fn node_client(script: &str, args: &[&str]) -> String {
    let root = manifest_dir();
    let path = root.join("tests/clients").join(script);
    assert!(path.exists(), "{} is missing", path.display());
    let modules = root.join("testbed/node_modules");
    assert!(
        modules.join("ethers").exists(),
        "{} has no ethers: run scripts/setup-testbed.sh",
        modules.display()
    );
    let mut cmd = Command::new("node");
    cmd.arg(&path)
        .args(args)
        .env("NODE_PATH", &modules)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn node {script}: {e} (is Node.js installed?)"));
    let pid = child.id();
    let wait = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(NODE_CLIENT_TIMEOUT, wait).await {
        Ok(joined) => joined
            .expect("wait_with_output does not panic")
            .expect("wait for node"),
        Err(_) => {
            // Not yet reaped (wait_with_output still runs), so the pid is still ours.
            signal(pid, libc::SIGKILL);
            panic!("node {script} {args:?} ran over {NODE_CLIENT_TIMEOUT:?}");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        panic!(
            "node {script} {args:?} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    stdout
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Running,
    Paused,
    Killed,
}

struct Node {
    port: u16,
    child: Option<Child>,
    state: State,
    /// Skipped by `mine` until `catch_up`.
    lagging: bool,
    /// Blocks mined on this node since it (re)started: its height.
    mined: u64,
    /// The tail of its stderr, for failure messages.
    log: Arc<Mutex<Vec<u8>>>,
}

impl Node {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Spawns Anvil on `port` and waits until it answers `eth_chainId` with `chain_id`.
async fn start_node(port: u16, chain_id: u64) -> Result<(Child, Arc<Mutex<Vec<u8>>>), String> {
    let mut cmd = Command::new(anvil_bin());
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--chain-id", &chain_id.to_string()])
        .args(["--timestamp", &GENESIS_TIMESTAMP.to_string()])
        .args(["--no-mining", "--silent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| format!("spawn anvil: {e}"))?;

    // Drain stderr on a thread so a chatty node never blocks on a full pipe.
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let sink = Arc::clone(&log);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stderr.read(&mut buf) {
            let mut log = sink.lock().unwrap_or_else(|p| p.into_inner());
            log.extend_from_slice(&buf[..n]);
            if log.len() > LOG_KEEP {
                let cut = log.len() - LOG_KEEP;
                log.drain(..cut);
            }
        }
    });
    let tail = |log: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&log.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    };

    let url = format!("http://127.0.0.1:{port}");
    let probe = client(Duration::from_millis(500));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("try_wait: {e}"))? {
            // Give the drain thread a moment to collect the last words.
            tokio::time::sleep(Duration::from_millis(20)).await;
            return Err(format!(
                "anvil on port {port} exited with {status}: {}",
                tail(&log)
            ));
        }
        if let Ok(resp) = post(&probe, &url, &request("eth_chainId", json!([]))).await {
            // An Outlast of another test on this port (serving chain 31337 too) answers
            // eth_chainId alike, but denies anvil_*: only Anvil itself answers this.
            let anvil = post(&probe, &url, &request("anvil_nodeInfo", json!([])))
                .await
                .is_ok_and(|r| r.get("result").is_some());
            match resp.get("result") {
                Some(id) if quantity(id) == chain_id && anvil => {
                    // And it is ours: an Anvil of another test answers the same, while
                    // ours, unable to bind, exits within moments.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if child
                        .try_wait()
                        .map_err(|e| format!("try_wait: {e}"))?
                        .is_none()
                    {
                        return Ok((child, log));
                    }
                    continue;
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "port {port} answered eth_chainId with {resp}, not {chain_id}: another server holds it?"
                    ));
                }
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "anvil on port {port} did not answer eth_chainId within {START_TIMEOUT:?}: {}",
                tail(&log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Mines block `b` on the node at `url`, at its fixed timestamp.
async fn mine_block(client: &reqwest::Client, url: &str, b: u64) -> Result<(), String> {
    let resp = post(
        client,
        url,
        &request("evm_mine", json!([block_timestamp(b)])),
    )
    .await
    .map_err(|e| format!("evm_mine block {b} on {url}: {e}"))?;
    match resp.get("error") {
        None => Ok(()),
        Some(err) => Err(format!("evm_mine block {b} on {url}: {err}")),
    }
}

/// N Anvil nodes with identical chains, mined in lockstep, and the faults to break them.
pub struct Fleet {
    nodes: Vec<Node>,
    chain_id: u64,
    /// Blocks the fleet has mined: the height of every node that is not behind.
    height: u64,
    client: reqwest::Client,
}

impl Fleet {
    /// Starts `n` nodes on chain 31337 and waits until each answers.
    pub async fn start(n: usize) -> Fleet {
        Fleet::start_with(n, CHAIN_ID).await
    }

    /// Starts `n` nodes on chain `chain_id` and waits until each answers.
    pub async fn start_with(n: usize, chain_id: u64) -> Fleet {
        let mut fleet = Fleet {
            nodes: Vec::with_capacity(n),
            chain_id,
            height: 0,
            client: client(RPC_TIMEOUT),
        };
        for i in 0..n {
            let mut failures = Vec::new();
            loop {
                let port = free_port();
                match start_node(port, chain_id).await {
                    Ok((child, log)) => {
                        fleet.nodes.push(Node {
                            port,
                            child: Some(child),
                            state: State::Running,
                            lagging: false,
                            mined: 0,
                            log,
                        });
                        break;
                    }
                    Err(e) => failures.push(e),
                }
                if failures.len() == START_ATTEMPTS {
                    // `fleet` drops here and kills the nodes already started.
                    panic!(
                        "node {i} did not start in {START_ATTEMPTS} attempts:\n{}",
                        failures.join("\n")
                    );
                }
            }
        }
        fleet
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// `http://127.0.0.1:PORT` of node `i` (also its WebSocket endpoint as `ws://`).
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// `ws://127.0.0.1:PORT` of node `i`.
    pub fn ws_url(&self, i: usize) -> String {
        format!("ws://127.0.0.1:{}", self.nodes[i].port)
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// Sends the same transfer of 1 wei (account 0 → 1, nonce `nonce`) to every node,
    /// so each mines the same transaction into the same block; returns its hash.
    pub async fn transfer_on_every_node(&self, nonce: u64) -> String {
        let tx = json!({"from": ACCOUNT0_ADDRESS, "to": ACCOUNT1_ADDRESS, "value": "0x1",
            "nonce": format!("{nonce:#x}"), "gas": "0x5208", "gasPrice": "0x77359400"});
        let mut hashes = Vec::new();
        for url in self.urls() {
            hashes.push(rpc_result(&url, "eth_sendTransaction", json!([tx.clone()])).await);
        }
        assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
        hashes[0].as_str().expect("hash").to_owned()
    }

    pub fn port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// Process id of node `i`, while it has one.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// Blocks the fleet has mined: the height of every node that is not behind.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// Blocks mined on node `i` since it (re)started: its height.
    pub fn mined(&self, i: usize) -> u64 {
        self.nodes[i].mined
    }

    /// The tail of node `i`'s stderr (Anvil runs `--silent`, so mostly empty).
    pub fn log(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.nodes[i].log.lock().unwrap_or_else(|p| p.into_inner()))
            .into_owned()
    }

    /// Mines `k` blocks, in lockstep and at fixed timestamps, on every node that is
    /// running (not killed, not paused) and not lagging. Such a node that is behind
    /// (it was paused while the fleet mined) is first brought up to the fleet.
    pub async fn mine(&mut self, k: u64) {
        let target = self.height + k;
        let nodes: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].state == State::Running && !self.nodes[i].lagging)
            .collect();
        self.mine_to(&nodes, target).await;
        self.height = target;
    }

    /// Block by block, mines every node of `nodes` up to `target`; all nodes get
    /// block b before any gets b+1.
    async fn mine_to(&mut self, nodes: &[usize], target: u64) {
        let from = nodes
            .iter()
            .map(|&i| self.nodes[i].mined + 1)
            .min()
            .unwrap_or(target + 1);
        for b in from..=target {
            let mut set = tokio::task::JoinSet::new();
            for &i in nodes.iter().filter(|&&i| self.nodes[i].mined < b) {
                let (client, url) = (self.client.clone(), self.nodes[i].url());
                set.spawn(async move { (i, mine_block(&client, &url, b).await) });
            }
            let mut failures = Vec::new();
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((i, Ok(()))) => self.nodes[i].mined = b,
                    Ok((i, Err(e))) => failures.push(format!("node {i}: {e}")),
                    Err(e) => std::panic::resume_unwind(e.into_panic()),
                }
            }
            if !failures.is_empty() {
                panic!("mining block {b} failed:\n{}", failures.join("\n"));
            }
        }
    }

    fn child(&self, i: usize) -> &Child {
        self.nodes[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running (killed?)"))
    }

    /// SIGKILL: the node is gone at once (connections refused) until `restart`.
    pub fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.state = State::Killed;
    }

    /// SIGSTOP: the node hangs (TCP connects, nothing answers) until `resume`.
    /// `mine` skips it meanwhile. Returns once the process is stopped.
    pub fn pause(&mut self, i: usize) {
        let pid = self.child(i).id();
        signal(pid, libc::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(2);
        while proc_state(pid) != Some('T') {
            assert!(
                Instant::now() < deadline,
                "node {i} (pid {pid}) did not stop after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        self.nodes[i].state = State::Paused;
    }

    /// SIGCONT: the node answers again, including calls it held while paused. It mined
    /// nothing meanwhile: the next `mine` (or `catch_up`) brings it up to the fleet.
    pub fn resume(&mut self, i: usize) {
        signal(self.child(i).id(), libc::SIGCONT);
        self.nodes[i].state = State::Running;
    }

    /// Starts node `i` again on the same port (killing it first if it runs), from
    /// genesis, and re-mines the fleet's blocks at the same timestamps. Transactions
    /// it held are gone: a test that needs them sends them again before mining.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let port = self.nodes[i].port;
        let mut failures = Vec::new();
        loop {
            match start_node(port, self.chain_id).await {
                Ok((child, log)) => {
                    let node = &mut self.nodes[i];
                    node.child = Some(child);
                    node.log = log;
                    node.state = State::Running;
                    node.lagging = false;
                    node.mined = 0;
                    break;
                }
                Err(e) => failures.push(e),
            }
            if failures.len() == START_ATTEMPTS {
                panic!(
                    "node {i} did not restart on port {port}:\n{}",
                    failures.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let height = self.height;
        self.mine_to(&[i], height).await;
    }

    /// Stops mining node `i`: `mine` leaves it behind until `catch_up`.
    pub fn lag(&mut self, i: usize) {
        self.nodes[i].lagging = true;
    }

    /// Mines the blocks node `i` missed, at the same timestamps, and lets `mine`
    /// include it again.
    pub async fn catch_up(&mut self, i: usize) {
        assert_eq!(
            self.nodes[i].state,
            State::Running,
            "node {i} must run to catch up"
        );
        self.nodes[i].lagging = false;
        let height = self.height;
        self.mine_to(&[i], height).await;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // SAFETY: plain syscall on our own unreaped child.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
