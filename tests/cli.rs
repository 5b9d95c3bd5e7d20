//! The `outlast` binary as an operator meets it: `check`, `default-config`, `serve` on
//! the embedded default with no network, and graceful shutdown on SIGTERM.

mod testbed;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::json;
use testbed::{ACCOUNT0_ADDRESS, Fleet, faultproxy::FaultProxy, free_port, rpc};

const BIN: &str = env!("CARGO_BIN_EXE_outlast");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run outlast");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(text: &str) -> tempfile_path::TempPath {
    tempfile_path::TempPath::with(text)
}

/// A file in the system temp dir, removed on drop.
mod tempfile_path {
    pub struct TempPath(pub std::path::PathBuf);
    impl TempPath {
        pub fn with(text: &str) -> Self {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path =
                std::env::temp_dir().join(format!("outlast-cli-{}-{n}.toml", std::process::id()));
            std::fs::write(&path, text).expect("write temp config");
            TempPath(path)
        }
        pub fn as_str(&self) -> &str {
            self.0.to_str().expect("utf-8 temp path")
        }
    }
    impl Drop for TempPath {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[test]
fn check_accepts_a_good_config_and_redacts_secrets() {
    let file = write_config(
        "[[chains]]\nname = \"eth\"\nchain_id = 1\n[[chains.upstreams]]\nname = \"infura\"\nurl = \"https://mainnet.infura.io/v3/${OUTLAST_CLI_TEST_KEY}\"\noperator = \"infura\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config", file.as_str()])
        .env("OUTLAST_CLI_TEST_KEY", "9aa3d95b3bc440fa88ea12eaa4456161")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("chain eth (id 1): 1 upstreams, 1 operators"),
        "{stdout}"
    );
    assert!(
        stdout.contains("https://mainnet.infura.io/v3/${OUTLAST_CLI_TEST_KEY}"),
        "{stdout}"
    );
    assert!(!stdout.contains("9aa3d95b"), "secret leaked: {stdout}");
}

/// The summary is built from the file as written: a variable is shown by its name
/// however short its value, and a literal key is hidden whether percent-encoded or made
/// of letters only.
#[test]
fn check_never_shows_a_secret_however_short_or_written() {
    let file = write_config(concat!(
        "[[chains]]\nname = \"eth\"\nchain_id = 1\n",
        "[[chains.upstreams]]\nname = \"short\"\noperator = \"a\"\n",
        "url = \"https://rpc.example/eth/${OUTLAST_CLI_SHORT}\"\n",
        "ws_url = \"wss://rpc.example/ws?key=${OUTLAST_CLI_SHORT}\"\n",
        "[[chains.upstreams]]\nname = \"encoded\"\noperator = \"b\"\n",
        "url = \"https://rpc.example/v3/%39aa3d95b%33bc440fa88ea12eaa4456161\"\n",
        "[[chains.upstreams]]\nname = \"letters\"\noperator = \"c\"\n",
        "url = \"https://eth-mainnet.example/v2/hGzTqWbKxLmNpRsVyJcDfAeUoIkQwErT\"\n",
        "[redis]\nurl = \"redis://:${OUTLAST_CLI_SHORT}@127.0.0.1:6379/\"\n",
        "secret = \"${OUTLAST_CLI_REDIS_SECRET}\"\n",
        "[[webhooks]]\nurl = \"https://hooks.example/services/${OUTLAST_CLI_SHORT}/TdKwQpLmZxNcVbRt\"\n",
    ));
    let out = Command::new(BIN)
        .args(["check", "--config", file.as_str()])
        .env("OUTLAST_CLI_SHORT", "k3y")
        .env("OUTLAST_CLI_REDIS_SECRET", "0123456789abcdef-redis")
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    for shown in [
        "https://rpc.example/eth/${OUTLAST_CLI_SHORT}",
        "wss://rpc.example/ws?key=${OUTLAST_CLI_SHORT}",
        "https://rpc.example/v3/***",
        "https://eth-mainnet.example/v2/***",
        "redis://:${OUTLAST_CLI_SHORT}@127.0.0.1:6379/",
        "secret ${OUTLAST_CLI_REDIS_SECRET}",
        "https://hooks.example/services/${OUTLAST_CLI_SHORT}/***",
    ] {
        assert!(stdout.contains(shown), "missing {shown:?} in:\n{stdout}");
    }
    for secret in [
        "k3y",
        "%39aa3d95b",
        "9aa3d95b",
        "bc440fa88ea12eaa4456161",
        "hGzTqWbKxLmNpRsVyJcDfAeUoIkQwErT",
        "TdKwQpLmZxNcVbRt",
        "0123456789abcdef",
    ] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked:\n{stdout}{stderr}"
        );
    }
}

#[test]
fn check_requires_a_redis_secret_with_a_redis_url() {
    let file = write_config(
        "[[chains]]\nname = \"eth\"\nchain_id = 1\n[[chains.upstreams]]\nname = \"a\"\nurl = \"https://1rpc.io/eth\"\noperator = \"a\"\n[redis]\nurl = \"redis://127.0.0.1:6379/\"\n",
    );
    let (ok, _, stderr) = run(&["check", "--config", file.as_str()]);
    assert!(!ok);
    let path = file.as_str();
    assert!(
        stderr.contains(&format!("{path}:8:1: redis.secret: required with `url`")),
        "{stderr}"
    );
    assert!(
        stderr.contains("secret = \"${OUTLAST_REDIS_SECRET}\""),
        "{stderr}"
    );
}

#[test]
fn check_lists_every_problem_with_file_line_and_key() {
    let file = write_config(
        "[server]\nlisten = 8545\n\n[[chains]]\nname = \"Eth Main\"\nchain_id = 1\n[[chains.upstreams]]\nname = \"a\"\nurl = \"http://x\"\noperator = \"o\"\nmax_rsp = 3\n",
    );
    let (ok, _, stderr) = run(&["check", "--config", file.as_str()]);
    assert!(!ok);
    let path = file.as_str();
    for expected in [
        format!("{path}:2:10: server.listen: invalid type: integer `8545`"),
        format!("{path}:5:8: chains[0].name: `Eth Main`: use lowercase letters"),
        format!("{path}:11:1: chains[0].upstreams[0].max_rsp: unknown field `max_rsp`"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 problem(s)"), "{stderr}");
}

#[test]
fn default_config_prints_a_config_that_checks() {
    let (ok, stdout, _) = run(&["default-config"]);
    assert!(ok);
    let file = write_config(&stdout);
    let (ok, summary, stderr) = run(&["check", "--config", file.as_str()]);
    assert!(ok, "{stderr}");
    assert!(
        summary.contains("chain ethereum (id 1): 8 upstreams, 8 operators"),
        "{summary}"
    );
    assert!(
        summary.contains("chain base (id 8453): 7 upstreams, 7 operators"),
        "{summary}"
    );
}

/// The embedded default in a network namespace with only loopback: every public upstream
/// is unreachable. Outlast must start, say so in its log, and answer -32002 listing them.
#[test]
fn embedded_default_without_network_starts_and_answers_32002() {
    let script = format!(
        r#"set -e
ip link set lo up
{BIN} serve > "$LOG" 2>&1 &
pid=$!
for i in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:8545/healthz && break; sleep 0.05; done
for i in $(seq 1 200); do grep -q "none of 8 upstreams is reachable" "$LOG" && break; sleep 0.05; done
curl -s http://127.0.0.1:8545/ethereum -H 'content-type: application/json' -d '{{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}}'
echo
curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:8545/readyz
echo
kill -TERM $pid
wait $pid
"#
    );
    let log = std::env::temp_dir().join(format!("outlast-offline-{}.log", std::process::id()));
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .env("LOG", &log)
        .output()
        .expect("unshare (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let logs = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        out.status.success(),
        "script failed: {}\n{stdout}\n{logs}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    let reply: serde_json::Value =
        serde_json::from_str(lines.next().unwrap_or("")).expect("JSON reply");
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    let tried = reply["error"]["data"]["tried"]
        .as_array()
        .expect("tried list");
    assert_eq!(tried.len(), 8, "every ethereum upstream is listed: {reply}");
    assert_eq!(lines.next(), Some("503"), "not ready without upstreams");
    assert!(logs.contains("none of 8 upstreams is reachable"), "{logs}");
    assert!(logs.contains("stopped"), "clean exit on SIGTERM: {logs}");
}

/// SIGTERM while a call is held by a hung node: the call still gets its answer, then the
/// process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_calls_finish() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    // Through a proxy, so the test sees the call reach the upstream.
    let proxy = FaultProxy::start(fleet.url(0)).await;
    let (mut child, mut lines, port) = serve_until_serving(&proxy.url()).await;
    let url = format!("http://127.0.0.1:{port}/local");
    fleet.pause(0);
    let held =
        tokio::spawn(
            async move { rpc(&url, "eth_getBalance", json!([ACCOUNT0_ADDRESS, "0x1"])).await },
        );
    // The call is in flight: it reached the hung node.
    for _ in 0..400 {
        if proxy.requests_of("eth_getBalance") > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        proxy.requests_of("eth_getBalance") > 0,
        "the call never reached the upstream"
    );
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // Shutdown has begun while the call is still held.
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), lines.recv()).await {
            Ok(Some(line)) if line.contains("shutting down") => break,
            Ok(Some(line)) => seen.push(line),
            other => panic!("no shutdown line after SIGTERM ({other:?}): {seen:#?}"),
        }
    }
    assert!(
        !held.is_finished(),
        "the call was answered before the node resumed"
    );
    fleet.resume(0);
    let reply = held.await.expect("held call task");
    assert_eq!(
        reply["result"], "0x21e19e0c9bab2400000",
        "the in-flight call is answered: {reply}"
    );
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait outlast");
    assert!(status.success(), "{status}");
    let mut rest = Vec::new();
    while let Some(line) = lines.recv().await {
        rest.push(line);
    }
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:#?}");
}

/// `outlast serve` for chain `local` with one upstream at `upstream`, on a free port
/// (another one when the port was taken meanwhile), once the upstream passed its check.
/// Returns the process, its log lines as they come, and the port.
async fn serve_until_serving(
    upstream: &str,
) -> (
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    u16,
) {
    let mut attempts = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let file = write_config(&format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[routing]\nrequest_timeout_ms = 30000\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n[[chains.upstreams]]\nname = \"a\"\nurl = \"{upstream}\"\noperator = \"a\"\n",
        ));
        let mut child = Command::new(BIN)
            .args(["serve", "--config", file.as_str()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn outlast");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        // Until the upstream passed its check, or the process ended (the port taken).
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            if line.contains("upstream is serving") {
                drop(file);
                return (child, rx, port);
            }
            log.push(line);
        }
        let _ = child.kill();
        let _ = child.wait();
        attempts.push(log.join("\n"));
    }
    panic!("outlast serve never served: {attempts:#?}");
}
