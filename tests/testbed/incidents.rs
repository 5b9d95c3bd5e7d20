//! Helpers for the incident, status page, feed and metrics tests: configs whose
//! upstreams carry operator, cloud and region labels and fast incident thresholds, and
//! waiting on `/api/v1/incidents`.

use std::time::Duration;

use serde_json::Value;

use super::gateway::{FAST_ROUTING, Outlast};

/// One upstream's labels: operator, and `cloud/region` (or `""` for none).
pub type Labels<'a> = (&'a str, &'a str);

/// The five upstreams of the correlated-failure story: two on aws/us-east-1.
pub const FIVE_PLACES: [Labels<'static>; 5] = [
    ("infura", "aws/us-east-1"),
    ("alchemy", "aws/us-east-1"),
    ("publicnode", "gcp/europe-west1"),
    ("drpc", "hetzner/fsn1"),
    ("self", "self/home"),
];

/// Incident thresholds that make a test take seconds: evaluated every 100 ms, opened
/// after 500 ms, resolved after 1.5 s quiet, lagging from 3 blocks; no stall incidents
/// (tests mine only when they mean to).
pub const FAST_STATUS: &str = "evaluate_ms = 100\nopen_after_ms = 500\nresolve_after_ms = 1500\nlag_blocks = 3\nhead_stall_min_secs = 3600\nrefresh_secs = 5\n";

/// Chain `local` (31337, quorum 2, verify off) with upstreams `u0`, `u1`… over `urls`,
/// labelled by `labels`; `[status]` is `status` and `extra` follows it (webhooks…).
pub fn labelled_config(
    urls: &[String],
    labels: &[Labels<'_>],
    status: &str,
    extra: &str,
) -> String {
    assert_eq!(urls.len(), labels.len(), "one label set per upstream");
    let mut s = format!(
        "{FAST_ROUTING}\n[status]\ntitle = \"Outlast test bed\"\n{status}\n{extra}\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\nquorum = 2\n"
    );
    for (i, (url, (operator, place))) in urls.iter().zip(labels).enumerate() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"{operator}\"\n"
        ));
        if let Some((cloud, region)) = place.split_once('/') {
            s.push_str(&format!("cloud = \"{cloud}\"\nregion = \"{region}\"\n"));
        }
    }
    s
}

/// Each upstream its own operator, no cloud labels.
pub fn independent(n: usize) -> Vec<Labels<'static>> {
    const OPS: [&str; 6] = ["op0", "op1", "op2", "op3", "op4", "op5"];
    OPS[..n].iter().map(|op| (*op, "")).collect()
}

pub async fn get_text(outlast: &Outlast, path: &str) -> String {
    reqwest::get(outlast.url(path))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .text()
        .await
        .expect("body")
}

/// `GET /api/v1/incidents`: every incident, newest first.
pub async fn incidents(outlast: &Outlast) -> Vec<Value> {
    let text = get_text(outlast, "/api/v1/incidents").await;
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    v["incidents"].as_array().cloned().unwrap_or_default()
}

/// Waits (up to `within`) until the incident list satisfies `f`; returns that list.
pub async fn wait_incidents(
    outlast: &Outlast,
    what: &str,
    within: Duration,
    f: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let list = incidents(outlast).await;
        if f(&list) {
            return list;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("{what}: not within {within:?}; incidents: {list:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The incidents of `kind` in `list`.
pub fn of_kind<'a>(list: &'a [Value], kind: &str) -> Vec<&'a Value> {
    list.iter().filter(|i| i["kind"] == kind).collect()
}

pub fn is_open(incident: &Value) -> bool {
    incident["resolved"].is_null()
}

/// Runs `python3 tests/clients/<script> ARGS…`; returns stdout, panics with stderr.
pub async fn python(script: &str, args: &[&str]) -> String {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("python3")
        .arg(root.join("tests/clients").join(script))
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("python3 {script}: {e} (run scripts/test.sh to install it)"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until the incident evaluator has run at least `n` more times, read off the
/// uptime of upstream `name` of the first chain, which must be down meanwhile: every
/// evaluation adds observed time it was not up, so its `uptime_24h` falls each time. A
/// window counted in evaluations, not in wall-clock time: on a busy machine it lasts
/// longer, never less.
pub async fn evaluations_pass(outlast: &Outlast, name: &str, n: usize, within: Duration) {
    let uptime = || async {
        let text = get_text(outlast, "/api/v1/status").await;
        let status: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        status["chains"][0]["upstreams"]
            .as_array()
            .and_then(|ups| ups.iter().find(|u| u["name"] == name))
            .and_then(|u| u["uptime_24h"].as_f64())
    };
    let deadline = tokio::time::Instant::now() + within;
    let mut last = uptime().await;
    let mut seen = 0;
    while seen < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{seen} of {n} evaluations seen within {within:?} (uptime of {name}: {last:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = uptime().await;
        if let (Some(a), Some(b)) = (last, now) {
            assert!(
                b <= a,
                "the uptime of {name} rose from {a} to {b}: it is not down"
            );
            if b < a {
                seen += 1;
            }
        }
        last = now.or(last);
    }
}
