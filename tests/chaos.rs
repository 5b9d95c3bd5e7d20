//! Chaos: Outlast in front of three real Anvil nodes, each behind a fault proxy, under
//! a steady client load, while one fault at a time hits the upstreams. Every answer is
//! checked against an honest node at the same block (see `testbed::chaos`).
//!
//! Every scenario runs in the mode users get (`verify = "proofs"`, `quorum = 2`), with
//! the answer cache off (so every call reaches the upstreams under the fault) and the
//! tests' fast timeouts (`FAST_ROUTING`).
//!
//! The bar: no failed and no wrong call while at least one healthy, caught-up upstream
//! is left. Timings are printed (`-- --nocapture`) and written to
//! `target/reliability-report.md`, never asserted. Longer runs for the full report:
//! `OUTLAST_CHAOS_SECONDS=20 cargo test --release --test chaos -- --nocapture --test-threads=1`.

mod testbed;

use std::time::Duration;

use testbed::chaos::{Chaos, Scenario, run_and_publish};
use testbed::faultproxy::Fault;

async fn bar(name: &'static str, chaos: Chaos) {
    run_and_publish(Scenario::new(name, chaos))
        .await
        .assert_no_failed_or_wrong();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_dead_upstream_costs_no_failed_or_wrong_calls() {
    bar("one dead (node killed)", Chaos::Kill(0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hung_upstream_costs_no_failed_or_wrong_calls() {
    bar(
        "one hung (blackhole)",
        Chaos::Proxies(vec![(0, Fault::Blackhole)]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_slow_upstream_costs_no_failed_or_wrong_calls() {
    bar(
        "one slow (2 s latency)",
        Chaos::Proxies(vec![(0, Fault::Latency(Duration::from_secs(2)))]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lagging_upstream_serves_no_missing_or_stale_blocks() {
    bar("one lagging (5+ blocks)", Chaos::Lag { node: 0, blocks: 5 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_on_one_upstream_costs_no_failed_or_wrong_calls() {
    bar(
        "429 storm on one",
        Chaos::Proxies(vec![(
            0,
            Fault::RateLimit {
                retry_after_secs: 1,
            },
        )]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_502_burst_on_one_upstream_costs_no_failed_or_wrong_calls() {
    bar(
        "502 burst on one",
        Chaos::Proxies(vec![(
            0,
            Fault::Http(502, "<html>502 Bad Gateway</html>".to_owned()),
        )]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_bodies_cost_no_failed_or_wrong_calls() {
    bar(
        "garbage + truncated bodies",
        Chaos::Proxies(vec![(0, Fault::Garbage), (1, Fault::Truncate)]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_upstream_costs_no_failed_or_wrong_calls() {
    bar(
        "flapping (1 s refuse / 1 s up)",
        Chaos::Flap {
            node: 0,
            period: Duration::from_secs(1),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_down_costs_no_failed_or_wrong_calls() {
    bar(
        "two of three down",
        Chaos::Proxies(vec![(0, Fault::Refuse), (1, Fault::Blackhole)]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_from_the_start_costs_no_failed_or_wrong_calls() {
    bar(
        "never answers, from the start",
        Chaos::ProxiesFromStart(vec![(0, Fault::Blackhole)]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_returns_to_rotation_when_faults_lift() {
    let report = run_and_publish(
        Scenario::new(
            "recovery of all",
            Chaos::Proxies(vec![
                (0, Fault::Reset),
                (1, Fault::Http(503, "<html>503</html>".to_owned())),
            ]),
        )
        // Cool-downs last up to FAST_ROUTING's max_cooldown_ms (1 s); give them time.
        .with_min_tail(Duration::from_secs(3)),
    )
    .await;
    report.assert_no_failed_or_wrong();
    report.assert_every_upstream_back();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lying_upstream_is_never_believed_in_proofs_mode() {
    run_and_publish(Scenario::new("one liar (zero balance)", Chaos::Lie(0)))
        .await
        .assert_no_failed_or_wrong();
}
