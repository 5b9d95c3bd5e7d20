//! `/metrics` scraped and parsed by the Prometheus project's own Python parser, after
//! real traffic and a real fault: requests by chain, method, upstream and outcome,
//! latency histograms, upstream health, breaker and lag, and incidents open.
//! Events are counted in the process's one recorder: the first test's in-process
//! Outlast is the only one in this binary (its filters name its own chain and
//! upstreams), the dashboard test runs Outlast as a process of its own.

mod testbed;

use std::time::Duration;

use serde_json::{Value, json};
use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Outlast},
    incidents::{FAST_STATUS, independent, is_open, labelled_config, python, wait_incidents},
    receiver::Receiver,
};

/// The samples of family `name` whose labels include every pair of `labels`.
fn samples<'a>(m: &'a Value, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Value> {
    m["families"][name]["samples"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter(|s| labels.iter().all(|(k, v)| s[1][*k] == *v))
                .collect()
        })
        .unwrap_or_default()
}

fn value(sample: &Value) -> f64 {
    sample[2].as_f64().unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_and_parsed_by_the_prometheus_parser() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        "",
    ))
    .await;
    for _ in 0..5 {
        outlast
            .call(
                "/local",
                "eth_getBalance",
                json!([testbed::ACCOUNT0_ADDRESS, "0x1"]),
            )
            .await;
    }
    outlast.call("/local", "eth_chainId", json!([])).await;
    outlast
        .call("/local", "made_up_method_xyz", json!([]))
        .await;
    outlast.call("/local", "admin_peers", json!([])).await;
    fleet.kill(2);
    wait_incidents(&outlast, "u2 down", Duration::from_secs(20), |l| {
        l.iter().any(is_open)
    })
    .await;

    let out = python("metrics_check.py", &[&outlast.url("/metrics")]).await;
    let m: Value = serde_json::from_str(&out).expect("JSON from metrics_check.py");
    assert!(
        m["content_type"]
            .as_str()
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{}",
        m["content_type"]
    );

    let balance = samples(
        &m,
        "outlast_requests",
        &[
            ("chain", "local"),
            ("method", "eth_getBalance"),
            ("outcome", "result"),
        ],
    );
    let n: f64 = balance.iter().map(|s| value(s)).sum();
    assert_eq!(n, 5.0, "{balance:?}");
    assert_eq!(m["families"]["outlast_requests"]["type"], "counter");
    assert!(
        !samples(
            &m,
            "outlast_requests",
            &[("method", "other"), ("chain", "local")]
        )
        .is_empty(),
        "an unknown method is counted as `other`"
    );
    assert!(
        !samples(
            &m,
            "outlast_requests",
            &[("chain", "local"), ("outcome", "denied")]
        )
        .is_empty(),
        "a denied method is counted as denied"
    );

    let histogram = &m["families"]["outlast_http_request_duration_seconds"];
    assert_eq!(histogram["type"], "histogram", "{histogram}");
    let buckets = samples(
        &m,
        "outlast_http_request_duration_seconds",
        &[("chain", "local"), ("le", "+Inf")],
    );
    assert!(buckets.iter().any(|b| value(b) >= 8.0), "{buckets:?}");
    assert_eq!(
        m["families"]["outlast_upstream_request_duration_seconds"]["type"],
        "histogram"
    );

    let up = |name: &str| {
        samples(&m, "outlast_upstream_up", &[("upstream", name)])
            .first()
            .map(|s| value(s))
    };
    assert_eq!(up("u0"), Some(1.0));
    assert_eq!(up("u2"), Some(0.0));
    let open_breaker = samples(
        &m,
        "outlast_upstream_breaker_state",
        &[("upstream", "u2"), ("state", "closed")],
    );
    assert_eq!(open_breaker.first().map(|s| value(s)), Some(0.0));
    assert!(!samples(&m, "outlast_upstream_lag_blocks", &[("upstream", "u0")]).is_empty());
    assert_eq!(
        samples(&m, "outlast_upstream_bans", &[("upstream", "u0")])
            .first()
            .map(|s| value(s)),
        Some(0.0),
        "no lies, no bans"
    );
    assert_eq!(
        samples(&m, "outlast_chain_serving_operators", &[("chain", "local")])
            .first()
            .map(|s| value(s)),
        Some(2.0)
    );
    let open = samples(
        &m,
        "outlast_incidents_open",
        &[("kind", "upstream_down"), ("severity", "minor")],
    );
    assert_eq!(open.first().map(|s| value(s)), Some(1.0));
    assert!(!samples(&m, "outlast_incidents_opened", &[("kind", "upstream_down")]).is_empty());
    assert!(!samples(&m, "outlast_build_info", &[]).is_empty());
}

/// Every metric the Grafana dashboard queries is in a real scrape, after the traffic
/// that makes each appear: proven reads through the cache, a fault that opens an
/// incident, and the webhook delivery it causes. Outlast runs as its own process, so
/// the scrape holds its metrics only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_outlast_exposes() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/grafana-dashboard.json"))
        .expect("deploy/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut used = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or("");
            for (i, _) in expr.match_indices("outlast_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                used.insert(name);
            }
        }
    }
    assert!(used.len() > 10, "{used:?}");

    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let hooks = Receiver::start(0).await;
    // Leading keys land in the [status] section `start_process` writes.
    let mut toml = format!(
        "{FAST_STATUS}\n{FAST_ROUTING}\n[cache]\nsize_bytes = 1048576\n\n[[webhooks]]\nname = \"ops\"\nurl = \"{}\"\n\n[[chains]]\nname = \"local\"\nchain_id = 31337\nquorum = 2\n",
        hooks.url("ops")
    );
    for (i, url) in fleet.urls().iter().enumerate() {
        toml.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    let outlast = Outlast::start_process(&toml).await;
    // Proven reads (verification outcomes), the second from the cache (cache outcomes).
    for _ in 0..2 {
        let (r, _) = outlast
            .call(
                "/local",
                "eth_getBalance",
                json!([testbed::ACCOUNT0_ADDRESS, "0x1"]),
            )
            .await;
        assert!(r["result"].is_string(), "{r}");
    }
    // A fault: an incident opens and its webhook is delivered.
    fleet.kill(2);
    hooks
        .wait_for("ops", Duration::from_secs(20), |m| m["event"] == "opened")
        .await;

    let out = python("metrics_check.py", &[&outlast.url("/metrics")]).await;
    let m: Value = serde_json::from_str(&out).expect("JSON");
    let mut exposed = std::collections::BTreeSet::new();
    for family in m["families"].as_object().expect("families").values() {
        for s in family["samples"].as_array().into_iter().flatten() {
            exposed.insert(s[0].as_str().unwrap_or("").to_owned());
        }
    }
    let unknown: Vec<&String> = used.iter().filter(|n| !exposed.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the scrape does not have: {unknown:?}\nexposed: {exposed:?}"
    );
    outlast.stop().await;
}
