//! `outlast probe` against real Anvil nodes: the binary with a temp config, its table
//! read column by column, and its exit code.

mod testbed;

use std::collections::HashMap;

use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Misbehaviour, config, misbehaving_upstream, switchable_upstream},
};

const BIN: &str = env!("CARGO_BIN_EXE_outlast");

struct Probed {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Probed {
    /// The cells of `upstream`'s row, by column header. Columns start where a header
    /// word starts (headers are single words; cells may hold spaces, like "1.2 ms").
    fn row(&self, upstream: &str) -> HashMap<String, String> {
        let lines: Vec<Vec<char>> = self.stdout.lines().map(|l| l.chars().collect()).collect();
        let words = |l: &[char]| l.iter().collect::<String>();
        let header = lines
            .iter()
            .find(|l| words(l).trim_start().starts_with("upstream "))
            .unwrap_or_else(|| panic!("no table header in:\n{}", self.stdout));
        let row = lines
            .iter()
            .find(|l| words(l).split_whitespace().next() == Some(upstream))
            .unwrap_or_else(|| panic!("no row for {upstream} in:\n{}", self.stdout));
        let starts: Vec<usize> = (0..header.len())
            .filter(|&i| header[i] != ' ' && (i == 0 || header[i - 1] == ' '))
            .collect();
        let cut = |line: &[char], k: usize| {
            let from = starts[k].min(line.len());
            let to = starts.get(k + 1).map_or(line.len(), |&e| e.min(line.len()));
            words(&line[from..to]).trim().to_owned()
        };
        (0..starts.len())
            .map(|k| (cut(header, k), cut(row, k)))
            .collect()
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or("")
    }
}

/// Runs `outlast probe --config FILE` with `toml` as the file.
async fn probe(toml: &str) -> Probed {
    let path = std::env::temp_dir().join(format!(
        "outlast-probe-{}-{}.toml",
        std::process::id(),
        testbed::free_port()
    ));
    std::fs::write(&path, toml).expect("write temp config");
    let out = tokio::process::Command::new(BIN)
        .arg("probe")
        .arg("--config")
        .arg(&path)
        .output()
        .await
        .expect("run outlast probe");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code().is_some(),
        "outlast probe was killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Probed {
        ok: out.status.success(),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_node_is_listed_as_ok_with_its_head() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(3).await;
    let probed = probe(&config(&fleet.urls(), FAST_ROUTING)).await;
    let row = probed.row("u0");
    assert_eq!(row["operator"], "op0", "{}", probed.stdout);
    assert_eq!(row["chain"], "✓", "{}", probed.stdout);
    assert_eq!(row["head"], "3", "{}", probed.stdout);
    assert_eq!(row["lag"], "0", "{}", probed.stdout);
    assert!(row["latency"].ends_with(" ms"), "{}", probed.stdout);
    assert_eq!(row["why"], "ok", "{}", probed.stdout);
    assert!(probed.ok, "{}", probed.stdout);
    assert_eq!(
        probed.last_line(),
        "ok: every chain has at least one usable upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_is_unreachable_and_ranked_last() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    fleet.kill(0);
    let probed = probe(&config(&fleet.urls(), FAST_ROUTING)).await;
    let row = probed.row("u0");
    assert_eq!(
        row["why"], "unreachable: connection refused",
        "{}",
        probed.stdout
    );
    assert_eq!(row["head"], "-", "{}", probed.stdout);
    let u1 = probed.stdout.find("\n  u1 ").expect("u1 row");
    let u0 = probed.stdout.find("\n  u0 ").expect("u0 row");
    assert!(u1 < u0, "the live node comes first:\n{}", probed.stdout);
    assert!(probed.ok, "u1 still serves:\n{}", probed.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_chain_node_shows_the_id_it_serves() {
    let mut right = Fleet::start(1).await;
    let mut wrong = Fleet::start_with(1, 5).await;
    right.mine(1).await;
    wrong.mine(1).await;
    let urls = [right.url(0), wrong.url(0)];
    let probed = probe(&config(&urls, FAST_ROUTING)).await;
    let row = probed.row("u1");
    assert_eq!(row["chain"], "5", "{}", probed.stdout);
    assert_eq!(row["why"], "wrong chain 5", "{}", probed.stdout);
    assert_eq!(probed.row("u0")["chain"], "✓", "{}", probed.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_shows_how_many_blocks_it_is_behind() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    fleet.lag(2);
    fleet.mine(5).await;
    // Quorum 2 (the default): u0 and u1, two operators, agree on block 7.
    let probed = probe(&config(&fleet.urls(), FAST_ROUTING)).await;
    assert!(
        probed
            .stdout
            .contains("head 7, reached by 2 operators (quorum 2)"),
        "{}",
        probed.stdout
    );
    let row = probed.row("u2");
    assert_eq!(row["head"], "2", "{}", probed.stdout);
    assert_eq!(row["lag"], "5", "{}", probed.stdout);
    assert_eq!(row["why"], "lagging 5 blocks", "{}", probed.stdout);
    assert_eq!(probed.row("u0")["lag"], "0", "{}", probed.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anvil_has_archive_state_proofs_and_websocket() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(2).await;
    let toml = format!(
        "{FAST_ROUTING}\n[[chains]]\nname = \"local\"\nchain_id = 31337\n\n[[chains.upstreams]]\nname = \"anvil\"\nurl = \"{}\"\nws_url = \"{}\"\noperator = \"self\"\n",
        fleet.url(0),
        fleet.ws_url(0)
    );
    let probed = probe(&toml).await;
    let row = probed.row("anvil");
    assert_eq!(row["archive"], "yes", "{}", probed.stdout);
    assert_eq!(row["getProof"], "yes", "{}", probed.stdout);
    assert_eq!(row["ws"], "yes", "{}", probed.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_is_no_where_nothing_listens() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let toml = format!(
        "{FAST_ROUTING}\n[[chains]]\nname = \"local\"\nchain_id = 31337\n\n[[chains.upstreams]]\nname = \"anvil\"\nurl = \"{}\"\nws_url = \"ws://127.0.0.1:{}\"\noperator = \"self\"\n",
        fleet.url(0),
        testbed::free_port()
    );
    let probed = probe(&toml).await;
    assert_eq!(probed.row("anvil")["ws"], "no", "{}", probed.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_1_when_a_chain_has_no_usable_upstream() {
    let mut fleet = Fleet::start(1).await;
    fleet.kill(0);
    let probed = probe(&config(&fleet.urls(), FAST_ROUTING)).await;
    assert!(!probed.ok, "{}", probed.stdout);
    assert!(
        probed
            .stdout
            .contains("local (chain id 31337): no upstream told its head"),
        "{}",
        probed.stdout
    );
    assert_eq!(
        probed.last_line(),
        "FAIL: no usable upstream for local; calls there get -32002 until one answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_node_is_unreachable_after_the_request_timeout() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    fleet.pause(1);
    let probed = probe(&config(&fleet.urls(), FAST_ROUTING)).await;
    assert_eq!(
        probed.row("u1")["why"],
        "unreachable: no answer within 1000 ms",
        "{}",
        probed.stdout
    );
    assert!(probed.ok, "u0 still serves:\n{}", probed.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failing_after_its_chain_id_is_failing_not_unreachable() {
    let (url, _) = misbehaving_upstream(Misbehaviour::BadGateway).await;
    let probed = probe(&config(&[url], FAST_ROUTING)).await;
    let row = probed.row("u0");
    assert_eq!(row["chain"], "✓", "{}", probed.stdout);
    assert_eq!(
        row["why"], "failing: eth_blockNumber: HTTP status 502",
        "{}",
        probed.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_upstream_urls_never_show_in_the_output() {
    const SECRETS: [&str; 3] = ["PASS-s3cr3t-1", "KEY-s3cr3t-2", "QUERY-s3cr3t-3"];
    let mut fleet = Fleet::start(1).await;
    fleet.mine(2).await;
    let keyed = |hostport: &str| {
        format!(
            "http://user:{}@{hostport}/v3/{}?apikey={}",
            SECRETS[0], SECRETS[1], SECRETS[2]
        )
    };
    // A relay that takes any path, so the key in it reaches a real node.
    let (relay, _) = switchable_upstream(fleet.url(0)).await;
    let relay = relay
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let dead = format!("127.0.0.1:{}", testbed::free_port());
    let probed = probe(&config(&[keyed(&relay), keyed(&dead)], FAST_ROUTING)).await;
    assert_eq!(probed.row("u0")["why"], "ok", "{}", probed.stdout);
    assert!(
        probed.row("u1")["why"].starts_with("unreachable"),
        "{}",
        probed.stdout
    );
    for secret in SECRETS.iter().chain([&relay.as_str(), &dead.as_str()]) {
        assert!(
            !probed.stdout.contains(secret) && !probed.stderr.contains(secret),
            "{secret} shown:\n{}\n{}",
            probed.stdout,
            probed.stderr
        );
    }
}
