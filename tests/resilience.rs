//! The resilience engine's behaviours, each pinned on real Anvil nodes behind the test
//! bed's fault proxy: hedging, the circuit breaker, 429 back-off, the retry budget,
//! tiers, and the per-upstream limits.

mod testbed;

use serde_json::json;
use testbed::{
    ACCOUNT0_ADDRESS, Fleet,
    faultproxy::{Fault, FaultProxy},
    gateway::{Outlast, config},
};

/// No hedging, so a hung upstream would hold each call for the whole request timeout.
const NO_HEDGE: &str = "[routing]\nrequest_timeout_ms = 30000\nhedge = false\nhead_poll_ms = 100\n";
/// Hedging on, with the same long timeout: only a hedge can answer fast.
const HEDGE: &str =
    "[routing]\nrequest_timeout_ms = 30000\nhedge_min_ms = 50\nhead_poll_ms = 100\n";

async fn proxied(n: usize) -> (Fleet, Vec<FaultProxy>) {
    let mut fleet = Fleet::start(n).await;
    fleet.mine(2).await;
    let mut proxies = Vec::new();
    for i in 0..n {
        proxies.push(FaultProxy::start(fleet.url(i)).await);
    }
    (fleet, proxies)
}

fn urls(proxies: &[FaultProxy]) -> Vec<String> {
    proxies.iter().map(FaultProxy::url).collect()
}

/// `config`, with `u0` alone in tier 1: every call is asked there first.
fn u0_first(proxies: &[FaultProxy], extra: &str) -> String {
    let toml = config(&urls(proxies), extra);
    (1..proxies.len()).fold(toml, |t, i| {
        t.replace(
            &format!("operator = \"op{i}\"\n"),
            &format!("operator = \"op{i}\"\ntier = 2\n"),
        )
    })
}

/// Params of a read every node answers the same: account 0's balance at block 1.
fn balance_at_1() -> serde_json::Value {
    json!([ACCOUNT0_ADDRESS, "0x1"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_is_hedged_instead_of_waited_for() {
    let (_fleet, proxies) = proxied(2).await;
    // The hung upstream is tier 1: calls are asked there first.
    let outlast = Outlast::start(&u0_first(&proxies, HEDGE)).await;
    proxies[0].set(Fault::Blackhole);
    // Each call must be answered well inside the client's 5 s limit, though the hung
    // upstream would hold it 30 s: only a hedge to the other upstream can do that.
    for _ in 0..10 {
        let r = testbed::try_rpc(&outlast.url("/local"), "eth_getBalance", balance_at_1())
            .await
            .expect("answered before the client's timeout");
        assert_eq!(r["result"], "0x21e19e0c9bab2400000", "{r}");
    }
    assert!(
        proxies[0].requests_of("eth_getBalance") > 0,
        "no call was asked of the hung upstream: nothing was hedged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hedging_a_hung_upstream_holds_the_call() {
    // The counterpart of the test above: it shows that test would fail without hedging.
    let (_fleet, proxies) = proxied(2).await;
    let outlast = Outlast::start(&u0_first(&proxies, NO_HEDGE)).await;
    proxies[0].set(Fault::Blackhole);
    let mut timed_out = 0;
    for _ in 0..6 {
        let r = testbed::try_rpc_within(
            &outlast.url("/local"),
            "eth_getBalance",
            balance_at_1(),
            std::time::Duration::from_secs(2),
        )
        .await;
        timed_out += usize::from(r.is_err_and(|e| e.is_timeout()));
    }
    assert!(
        timed_out > 0,
        "some call went to the hung upstream and waited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_failures_and_closes_when_the_upstream_recovers() {
    let (_fleet, proxies) = proxied(2).await;
    let toml = config(
        &urls(&proxies),
        "[routing]\nfailures_before_cooldown = 2\ncooldown_ms = 300\nmax_cooldown_ms = 300\nhead_poll_ms = 100\n",
    );
    let outlast = Outlast::start(&toml).await;
    proxies[0].set(Fault::Http(502, "bad gateway".into()));
    for _ in 0..10 {
        let (r, _) = outlast
            .call("/local", "eth_getBalance", balance_at_1())
            .await;
        assert_eq!(r["result"], "0x21e19e0c9bab2400000", "{r}");
    }
    // Open: the failing upstream gets no more calls; only the breaker's own probes
    // (`eth_chainId`) and head polls still go there.
    let mut state = serde_json::Value::Null;
    for _ in 0..200 {
        state = outlast.upstream_status("u0").await;
        if state["breaker"] != "closed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_ne!(
        state["breaker"], "closed",
        "the breaker never opened: {state}"
    );
    let before = proxies[0].requests_of("eth_getBalance");
    for _ in 0..10 {
        let (r, upstream) = outlast
            .call("/local", "eth_getBalance", balance_at_1())
            .await;
        assert_eq!(r["result"], "0x21e19e0c9bab2400000", "{r}");
        assert_eq!(upstream.as_deref(), Some("u1"));
    }
    assert_eq!(
        proxies[0].requests_of("eth_getBalance"),
        before,
        "calls went to an open breaker"
    );
    assert!(
        proxies[0].requests_of("eth_chainId") > 0,
        "the breaker probes the upstream"
    );
    // Closed again once it answers: it serves calls again.
    proxies[0].set(Fault::None);
    let mut served = false;
    for _ in 0..200 {
        let (_, upstream) = outlast
            .call("/local", "eth_getBalance", balance_at_1())
            .await;
        if upstream.as_deref() == Some("u0") {
            served = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(served, "the recovered upstream never served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_backs_the_upstream_off_for_its_retry_after() {
    let (_fleet, proxies) = proxied(2).await;
    let outlast = Outlast::start(&config(&urls(&proxies), "[routing]\nhead_poll_ms = 100\n")).await;
    let asked = proxies[0].requests();
    proxies[0].set(Fault::RateLimit {
        retry_after_secs: 30,
    });
    // Calls go on until the upstream was asked (by a call or a head poll) and said 429.
    for _ in 0..400 {
        let (r, _) = outlast
            .call("/local", "eth_getBalance", balance_at_1())
            .await;
        assert_eq!(
            r["result"], "0x21e19e0c9bab2400000",
            "no client saw the 429: {r}"
        );
        if proxies[0].requests() > asked {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        proxies[0].requests() > asked,
        "the rate-limited upstream was never asked"
    );
    // Once Outlast has its 429, it backs off: 30 s of silence follow.
    let mut state = serde_json::Value::Null;
    for _ in 0..400 {
        state = outlast.upstream_status("u0").await;
        if state["state"] != "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_ne!(state["state"], "ready", "{state}");
    let first = proxies[0].requests();
    for _ in 0..20 {
        outlast
            .call("/local", "eth_getBalance", balance_at_1())
            .await;
    }
    assert_eq!(
        proxies[0].requests(),
        first,
        "the rate-limited upstream was asked again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_retries_in_a_total_outage() {
    let (_fleet, proxies) = proxied(3).await;
    let toml = config(
        &urls(&proxies),
        "[routing]\nretry_budget_ratio = 0.0\nretry_budget_per_sec = 0.0\nfailures_before_cooldown = 1000\nhedge = false\nhead_poll_ms = 100\n",
    );
    let outlast = Outlast::start(&toml).await;
    for p in &proxies {
        p.set(Fault::Http(503, "down".into()));
    }
    let mut spent = 0;
    for _ in 0..20 {
        let (r, _) = outlast
            .call("/local", "eth_getBalance", balance_at_1())
            .await;
        assert_eq!(r["error"]["code"], -32002, "{r}");
        spent += usize::from(
            r["error"]["data"]
                .to_string()
                .contains("retry budget is spent"),
        );
    }
    // The budget starts with 10 retries and earns none: later calls get one attempt each.
    assert!(
        spent >= 10,
        "retries were not capped: {spent} of 20 calls stopped by the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_two_answers_in_the_same_request_when_tier_one_is_dead() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let toml = format!(
        "[routing]\nhead_poll_ms = 100\n[cache]\nsize_bytes = 0\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\
         [[chains.upstreams]]\nname = \"own-node\"\nurl = \"{}\"\noperator = \"self\"\ntier = 1\n\
         [[chains.upstreams]]\nname = \"paid\"\nurl = \"{}\"\noperator = \"paid\"\ntier = 2\n",
        fleet.url(0),
        fleet.url(1)
    );
    let outlast = Outlast::start(&toml).await;
    outlast.wait_in_rotation("own-node").await;
    for _ in 0..5 {
        let (_, upstream) = outlast
            .call("/local", "eth_getBalance", balance_at_1())
            .await;
        assert_eq!(
            upstream.as_deref(),
            Some("own-node"),
            "tier 1 serves while it can"
        );
    }
    fleet.kill(0);
    let (r, upstream) = outlast
        .call("/local", "eth_getBalance", balance_at_1())
        .await;
    assert_eq!(r["result"], "0x21e19e0c9bab2400000", "{r}");
    assert_eq!(
        upstream.as_deref(),
        Some("paid"),
        "the very first call after the death"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_rps_sends_the_excess_elsewhere() {
    let (_fleet, proxies) = proxied(2).await;
    let toml = format!(
        "[routing]\nhead_poll_ms = 100\n[cache]\nsize_bytes = 0\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\
         [[chains.upstreams]]\nname = \"capped\"\nurl = \"{}\"\noperator = \"a\"\ntier = 1\nmax_rps = 2\n\
         [[chains.upstreams]]\nname = \"spare\"\nurl = \"{}\"\noperator = \"b\"\ntier = 2\n",
        proxies[0].url(),
        proxies[1].url()
    );
    let outlast = Outlast::start(&toml).await;
    let mut by = std::collections::BTreeMap::<String, usize>::new();
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let (r, upstream) = outlast
            .call("/local", "eth_getBalance", json!([ACCOUNT0_ADDRESS, "0x1"]))
            .await;
        assert_eq!(r["result"], "0x21e19e0c9bab2400000", "{r}");
        *by.entry(upstream.unwrap_or_default()).or_default() += 1;
    }
    assert!(
        by.get("spare").copied().unwrap_or(0) > 0,
        "nothing overflowed to tier 2: {by:?}"
    );
    // 2 a second, with a burst of 2: over however long the calls took.
    let allowed = 2 + 2 * started.elapsed().as_secs_f64().ceil() as usize;
    let capped = by.get("capped").copied().unwrap_or(0);
    assert!(capped > 0, "the capped upstream was never used: {by:?}");
    assert!(
        capped <= allowed,
        "max_rps = 2 exceeded: {by:?} in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_sends_the_excess_elsewhere() {
    let (_fleet, proxies) = proxied(2).await;
    // The capped upstream answers slowly, so concurrent calls overlap there. No hedging:
    // a hedged call abandoned at the proxy would still look in flight there.
    let toml = format!(
        "[routing]\nhead_poll_ms = 100\nhedge = false\n[cache]\nsize_bytes = 0\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\
         [[chains.upstreams]]\nname = \"capped\"\nurl = \"{}\"\noperator = \"a\"\ntier = 1\nmax_concurrency = 1\n\
         [[chains.upstreams]]\nname = \"spare\"\nurl = \"{}\"\noperator = \"b\"\ntier = 2\n",
        proxies[0].url(),
        proxies[1].url()
    );
    let outlast = std::sync::Arc::new(Outlast::start(&toml).await);
    proxies[0].set(Fault::Latency(std::time::Duration::from_millis(300)));
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let o = outlast.clone();
            tokio::spawn(async move { o.call("/local", "eth_getBalance", balance_at_1()).await })
        })
        .collect();
    let mut by = std::collections::BTreeMap::<String, usize>::new();
    for c in calls {
        let (r, upstream) = c.await.expect("call");
        assert_eq!(r["result"], "0x21e19e0c9bab2400000", "{r}");
        *by.entry(upstream.unwrap_or_default()).or_default() += 1;
    }
    assert_eq!(
        proxies[0].peak_in_flight("eth_getBalance"),
        1,
        "more than max_concurrency = 1 calls at once at the capped upstream: {by:?}"
    );
    assert!(by.get("capped").is_some_and(|&n| n > 0), "{by:?}");
    assert!(
        by.get("spare").is_some_and(|&n| n > 0),
        "nothing overflowed to tier 2: {by:?}"
    );
}
