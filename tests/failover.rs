//! Failover on real Anvil nodes: a client keeps getting honest answers while upstreams
//! die, hang, serve the wrong chain or misbehave, and gets a precise `-32002` when
//! nothing is left.

mod testbed;

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, Fleet,
    faultproxy::{Fault, FaultProxy},
    free_port,
    gateway::{
        FAST_ROUTING, Misbehaviour, Outlast, config, misbehaving_upstream, recording_upstream,
        switchable_upstream,
    },
    rpc, rpc_result,
};

/// A mixed set of reads at the fleet's current height, as (method, params).
fn reads(height: u64) -> Vec<(&'static str, Value)> {
    let block = format!("{height:#x}");
    vec![
        ("eth_blockNumber", json!([])),
        ("eth_chainId", json!([])),
        ("eth_getBalance", json!([ACCOUNT0_ADDRESS, block])),
        ("eth_getBlockByNumber", json!([block, false])),
        (
            "eth_getTransactionCount",
            json!([ACCOUNT0_ADDRESS, "latest"]),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_reads_survive_one_killed_and_one_paused_upstream() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    let honest = fleet.url(2);
    let (mut calls, mut failed, mut wrong) = (0, Vec::new(), Vec::new());
    // Who answered, per round: the faulted upstreams must have been in use before.
    let mut answered_by: Vec<(usize, String)> = Vec::new();
    for round in 0..30 {
        match round {
            8 => fleet.kill(0),
            16 => fleet.pause(1),
            _ => {}
        }
        if round % 5 == 4 {
            fleet.mine(1).await;
            // Answers are compared at one block: let the consensus head see the new one.
            outlast.wait_for_head("/local", fleet.height()).await;
        }
        for (method, params) in reads(fleet.height()) {
            calls += 1;
            let (reply, upstream) = outlast.call("/local", method, params.clone()).await;
            let expected = rpc(&honest, method, params.clone()).await;
            for u in upstream.iter().flat_map(|u| u.split(',')) {
                answered_by.push((round, u.to_owned()));
            }
            match reply.get("result") {
                None => failed.push(format!("round {round} {method}: {reply}")),
                Some(r) if Some(r) != expected.get("result") => wrong.push(format!(
                    "round {round} {method} via {upstream:?}: {r} != {}",
                    expected["result"]
                )),
                Some(_) => {}
            }
        }
    }
    fleet.resume(1);
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {failed:#?}",
        failed.len()
    );
    assert!(
        wrong.is_empty(),
        "{} of {calls} answers differ from an honest node: {wrong:#?}",
        wrong.len()
    );
    let by = |name: &str, rounds: std::ops::Range<usize>| {
        answered_by
            .iter()
            .filter(|(r, u)| rounds.contains(r) && u == name)
            .count()
    };
    assert!(
        by("u0", 0..8) > 0,
        "u0 answered nothing before it was killed"
    );
    assert!(
        by("u1", 0..16) > 0,
        "u1 answered nothing before it was paused"
    );
    assert_eq!(by("u0", 8..30), 0, "a killed upstream answered");
    assert_eq!(by("u1", 16..30), 0, "a paused upstream answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_down_gives_32002_listing_what_was_tried() {
    let mut fleet = Fleet::start(2).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    fleet.kill(0);
    fleet.kill(1);
    let (reply, upstream) = outlast
        .call("/local", "eth_getBlockByNumber", json!(["0x0", false]))
        .await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    assert_eq!(upstream, None);
    let tried = reply["error"]["data"]["tried"]
        .as_array()
        .expect("data.tried is a list");
    let mut names: Vec<&str> = tried
        .iter()
        .filter_map(|t| t["upstream"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["u0", "u1"], "{reply}");
    for t in tried {
        assert!(
            t["error"]
                .as_str()
                .is_some_and(|e| e.contains("connection failed")),
            "{t}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_upstream_is_probed_back_in() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    fleet.kill(0);
    let (reply, _) = outlast
        .call("/local", "eth_getBlockByNumber", json!(["0x1", false]))
        .await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    fleet.restart(0).await;
    // No client call is needed to bring it back: the background probe does.
    outlast.wait_ready().await;
    let (reply, upstream) = outlast
        .call("/local", "eth_getBlockByNumber", json!(["0x2", false]))
        .await;
    assert_eq!(reply["result"]["number"], "0x2", "{reply}");
    assert_eq!(upstream.as_deref(), Some("u0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_chain_id_upstream_is_never_used() {
    let honest = Fleet::start(1).await;
    let other = Fleet::start_with(1, 5).await;
    // The wrong-chain node is listed first and in the preferred tier.
    let toml = format!(
        "{FAST_ROUTING}\n[[chains]]\nname = \"local\"\nchain_id = 31337\n\n[[chains.upstreams]]\nname = \"wrong\"\nurl = \"{}\"\noperator = \"a\"\ntier = 1\n\n[[chains.upstreams]]\nname = \"right\"\nurl = \"{}\"\noperator = \"b\"\ntier = 2\n",
        other.url(0),
        honest.url(0)
    );
    let outlast = Outlast::start(&toml).await;
    for _ in 0..10 {
        let (reply, upstream) = outlast.call("/local", "eth_chainId", json!([])).await;
        assert_eq!(reply["result"], "0x7a69", "{reply}");
        assert_eq!(upstream.as_deref(), Some("right"));
    }
    drop(honest);
    let (reply, _) = outlast.call("/local", "eth_chainId", json!([])).await;
    let tried = reply["error"]["data"]["tried"].to_string();
    assert!(
        tried.contains("disabled: serves chain id 5, not 31337"),
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_faults_move_the_call_to_the_next_upstream() {
    let fleet = Fleet::start(1).await;
    for how in [
        Misbehaviour::BadGateway,
        Misbehaviour::Garbage,
        Misbehaviour::RateLimited,
        Misbehaviour::RpcLimit,
        Misbehaviour::Oversized,
    ] {
        let (bad, hits) = misbehaving_upstream(how).await;
        let toml = format!(
            "{FAST_ROUTING}max_reply_bytes = 1048576\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\n[[chains.upstreams]]\nname = \"bad\"\nurl = \"{bad}\"\noperator = \"a\"\n\n[[chains.upstreams]]\nname = \"anvil\"\nurl = \"{}\"\noperator = \"b\"\ntier = 2\n",
            fleet.url(0)
        );
        let outlast = Outlast::start(&toml).await;
        outlast.wait_in_rotation("bad").await;
        let (reply, upstream) = outlast
            .call(
                "/local",
                "eth_getBalance",
                json!([ACCOUNT0_ADDRESS, "latest"]),
            )
            .await;
        assert_eq!(reply["result"], "0x21e19e0c9bab2400000", "{how:?}: {reply}");
        assert_eq!(upstream.as_deref(), Some("anvil"), "{how:?}");
        let asked = *hits.lock().expect("lock");
        if asked != 1 {
            // Its state says why it was or was not tried (a clean-clone CI run once
            // found it not asked at all).
            let state = outlast.upstream_status("bad").await;
            panic!("{how:?}: the bad upstream was asked {asked} times, not once: {state}");
        }
        outlast.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_errors_pass_through_untouched_and_are_not_retried() {
    let (recorder, seen) = recording_upstream().await;
    let fleet = Fleet::start(1).await;
    // Anvil first; the recorder would answer anything, so a retry would show there.
    // Hedging off: a hedge is a race, not a retry, and on a loaded machine an Anvil
    // slower than the hedge delay (100 ms) lost it to the recorder (a CI run). For the
    // same reason a longer timeout: an Anvil slower than 1 s under a loaded CI run is
    // a timeout, rightly failed over to the recorder, not the caller error under test.
    let routing = FAST_ROUTING.replace("request_timeout_ms = 1000", "request_timeout_ms = 10000");
    assert_ne!(routing, FAST_ROUTING, "the timeout is set");
    let toml = format!(
        "{routing}hedge = false\n\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\n[[chains.upstreams]]\nname = \"anvil\"\nurl = \"{}\"\noperator = \"a\"\n\n[[chains.upstreams]]\nname = \"recorder\"\nurl = \"{recorder}\"\noperator = \"b\"\ntier = 2\n",
        fleet.url(0)
    );
    let outlast = Outlast::start(&toml).await;
    outlast.wait_in_rotation("anvil").await;
    let params = json!(["0xnot-an-address", "latest"]);
    let direct = rpc(&fleet.url(0), "eth_getBalance", params.clone()).await;
    let (reply, upstream) = outlast.call("/local", "eth_getBalance", params).await;
    assert!(direct.get("error").is_some(), "{direct}");
    assert_eq!(upstream.as_deref(), Some("anvil"), "{reply}");
    assert_eq!(reply["error"], direct["error"]);
    let forwarded: Vec<String> = seen.lock().expect("lock").iter().cloned().collect();
    assert!(
        forwarded.is_empty(),
        "retried a caller error: {forwarded:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_does_not_block_calls_routed_elsewhere() {
    let mut hung = Fleet::start(1).await;
    let healthy = Fleet::start_with(1, 31338).await;
    let toml = format!(
        "[routing]\nrequest_timeout_ms = 20000\n\n[[chains]]\nname = \"slow\"\nchain_id = 31337\nverify = \"off\"\n[[chains.upstreams]]\nname = \"hung\"\nurl = \"{}\"\noperator = \"a\"\n\n[[chains]]\nname = \"fast\"\nchain_id = 31338\n[[chains.upstreams]]\nname = \"ok\"\nurl = \"{}\"\noperator = \"b\"\n",
        hung.url(0),
        healthy.url(0)
    );
    let outlast = std::sync::Arc::new(Outlast::start(&toml).await);
    hung.pause(0);
    let slow = {
        let o = outlast.clone();
        tokio::spawn(async move {
            o.call("/slow", "eth_getBlockByNumber", json!(["0x0", false]))
                .await
        })
    };
    for _ in 0..5 {
        let (reply, _) = outlast.call("/fast", "eth_chainId", json!([])).await;
        assert_eq!(reply["result"], "0x7a6a", "{reply}");
    }
    assert!(
        !slow.is_finished(),
        "the hung upstream's call should still be waiting"
    );
    hung.resume(0);
    let (reply, _) = slow.await.expect("task");
    assert_eq!(
        reply["result"]["number"], "0x0",
        "the held call completes once the node answers: {reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_api_explains_each_upstreams_state_and_rank() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&config(&fleet.urls(), FAST_ROUTING)).await;
    fleet.kill(2);
    // Head polls find the dead node within a few of their 100 ms rounds.
    let mut status = Value::Null;
    for _ in 0..100 {
        outlast
            .call("/local", "eth_getBlockByNumber", json!(["0x1", false]))
            .await;
        status = outlast.status().await;
        if status["chains"][0]["upstreams"][2]["state"] != "ready" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    }
    let chain = &status["chains"][0];
    assert_eq!(chain["name"], "local");
    assert_eq!(chain["head"]["number"], 2, "{chain}");
    let ups = chain["upstreams"].as_array().expect("upstreams");
    assert_eq!(ups[0]["state"], "ready", "{chain}");
    assert_eq!(ups[0]["breaker"], "closed");
    assert!(
        ups[0]["reasons"][0]
            .as_str()
            .is_some_and(|r| r.starts_with("latency")),
        "{chain}"
    );
    assert_eq!(ups[2]["state"], "cooling-down", "{chain}");
    assert_eq!(ups[2]["breaker"], "open");
    assert!(
        ups[2]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connection")),
        "{chain}"
    );
    assert!(!status.to_string().contains("127.0.0.1"), "no URL is shown");
}

/// A provider (or the load balancer in front of it) that answers each call with the
/// answer to the call before it: every such answer is well-formed and carries that other
/// call's id. None is ever served: each call moves on to the honest upstream; after
/// three in a row the provider is banned like a liar (for liar_ban_secs), and it is
/// back once the ban ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_carrying_another_calls_id_is_never_served() {
    let mut fleet = Fleet::start(2).await;
    // Account 0's balance differs at every block 1..=5: a mixed-up answer would show.
    for nonce in 0..5 {
        fleet.transfer_on_every_node(nonce).await;
        fleet.mine(1).await;
    }
    let mixer = FaultProxy::start(fleet.url(0)).await;
    // The mixed-up provider is tier 1, so calls are asked there first. Head polls are
    // rare, so client calls are the ones that meet the mix-up.
    let routing = FAST_ROUTING
        .replace(
            "failures_before_cooldown = 2",
            "failures_before_cooldown = 1000",
        )
        .replace("head_poll_ms = 100", "head_poll_ms = 60000");
    let toml = format!(
        "{routing}liar_ban_secs = 2\n[cache]\nsize_bytes = 0\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\n[[chains.upstreams]]\nname = \"mixed\"\nurl = \"{}\"\noperator = \"a\"\ntier = 1\n\n[[chains.upstreams]]\nname = \"honest\"\nurl = \"{}\"\noperator = \"b\"\ntier = 2\n",
        mixer.url(),
        fleet.url(1)
    );
    let outlast = Outlast::start(&toml).await;
    outlast.wait_for_head("/local", fleet.height()).await;
    outlast.wait_in_rotation("mixed").await;
    let balance = |n: u64| json!([ACCOUNT0_ADDRESS, format!("{n:#x}")]);
    let honest = fleet.url(1);

    // Before the fault, the tier-1 provider serves.
    let (reply, upstream) = outlast.call("/local", "eth_getBalance", balance(1)).await;
    assert_eq!(upstream.as_deref(), Some("mixed"), "{reply}");

    mixer.set(Fault::SwapReplies);
    let asked_before = mixer.requests_of("eth_getBalance");
    for round in 0..3 {
        for n in 1..=5 {
            let (reply, upstream) = outlast.call("/local", "eth_getBalance", balance(n)).await;
            let truth = rpc_result(&honest, "eth_getBalance", balance(n)).await;
            assert_eq!(reply["result"], truth, "round {round}, block {n}: {reply}");
            assert_eq!(
                upstream.as_deref(),
                Some("honest"),
                "round {round}, block {n}"
            );
        }
        // A batch: the mixed-up reply answers none of its calls either.
        let batch: Vec<Value> = (1..=3)
            .map(|n| json!({"jsonrpc": "2.0", "id": n, "method": "eth_getBalance", "params": balance(n)}))
            .collect();
        let r = outlast.post("/local", Value::from(batch).to_string()).await;
        assert_eq!(r.upstream.as_deref(), Some("honest"), "{}", r.text);
        let replies = r.json();
        for n in 1..=3u64 {
            let truth = rpc_result(&honest, "eth_getBalance", balance(n)).await;
            let reply = &replies[(n - 1) as usize];
            assert_eq!(
                (&reply["id"], &reply["result"]),
                (&json!(n), &truth),
                "{replies}"
            );
        }
    }
    // The first calls were asked there, their answers refused; the third refusal in a
    // row banned it.
    assert!(
        mixer.requests_of("eth_getBalance") - asked_before >= 3,
        "calls asked of the mixed-up provider: {}",
        mixer.requests_of("eth_getBalance") - asked_before
    );
    let state = outlast.upstream_status("mixed").await;
    assert_eq!(state["state"], "banned", "{state}");
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("answers to other calls in a row")),
        "{state}"
    );

    // Lifted: once its ban ends, the same provider serves again.
    mixer.set(Fault::None);
    let mut back = false;
    for _ in 0..400 {
        let (_, upstream) = outlast.call("/local", "eth_getBalance", balance(2)).await;
        if upstream.as_deref() == Some("mixed") {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(back, "the provider never served again after its ban");
}

/// A provider that starts serving another network mid-run (its endpoint re-pointed):
/// nothing fails, only the periodic chain-id check (`chain_id_check_secs`) can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_switches_chains_mid_run_is_disabled_by_the_periodic_check() {
    let mut honest = Fleet::start(2).await;
    honest.mine(2).await;
    let mut other = Fleet::start_with(1, 5).await;
    other.mine(2).await;
    let (switching, target) = switchable_upstream(honest.url(0)).await;
    let toml = format!(
        "{FAST_ROUTING}chain_id_check_secs = 1\n[cache]\nsize_bytes = 0\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\n[[chains.upstreams]]\nname = \"switching\"\nurl = \"{switching}\"\noperator = \"a\"\ntier = 1\n\n[[chains.upstreams]]\nname = \"steady\"\nurl = \"{}\"\noperator = \"b\"\ntier = 2\n",
        honest.url(1)
    );
    let outlast = Outlast::start(&toml).await;
    outlast.wait_in_rotation("switching").await;
    let (reply, upstream) = outlast.call("/local", "eth_chainId", json!([])).await;
    assert_eq!(reply["result"], "0x7a69", "{reply}");
    assert_eq!(
        upstream.as_deref(),
        Some("switching"),
        "tier 1 serves first"
    );

    *target.lock().expect("lock") = other.url(0);
    let mut state = Value::Null;
    for _ in 0..400 {
        state = outlast.upstream_status("switching").await;
        if state["state"] == "wrong-chain" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(state["state"], "wrong-chain", "{state}");
    for _ in 0..5 {
        let (reply, upstream) = outlast.call("/local", "eth_chainId", json!([])).await;
        assert_eq!(reply["result"], "0x7a69", "{reply}");
        assert_eq!(upstream.as_deref(), Some("steady"));
    }
    drop(honest);
    let (reply, _) = outlast.call("/local", "eth_chainId", json!([])).await;
    assert!(
        reply["error"]["data"]["tried"]
            .to_string()
            .contains("disabled: serves chain id 5, not 31337"),
        "{reply}"
    );
}

/// Keys in provider URLs (user info, path, query) never leave Outlast: not in a
/// client's `data.tried`, the status API and page, `/metrics`, nor its log (its own
/// lines at debug).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_upstream_urls_never_show_in_errors_status_metrics_or_logs() {
    const SECRETS: [&str; 3] = ["PASS-s3cr3t-1", "KEY-s3cr3t-2", "QUERY-s3cr3t-3"];
    let mut fleet = Fleet::start(1).await;
    fleet.mine(1).await;
    let keyed = |hostport: &str| {
        format!(
            "http://user:{}@{hostport}/v3/{}?apikey={}",
            SECRETS[0], SECRETS[1], SECRETS[2]
        )
    };
    // Serving at first, through a relay that takes any path; then pointed at nothing.
    let (relay, target) = switchable_upstream(fleet.url(0)).await;
    let relay_hostport = relay
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    // Nothing listens there: connections are refused.
    let dead = format!("127.0.0.1:{}", free_port());
    // Answers 502 to everything.
    let failing = FaultProxy::start(fleet.url(0)).await;
    failing.set(Fault::Http(502, "<html>502 Bad Gateway</html>".into()));
    let failing_hostport = failing.addr().to_string();
    let toml = format!(
        "{FAST_ROUTING}\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\
         [[chains.upstreams]]\nname = \"keyed\"\nurl = \"{}\"\noperator = \"a\"\n\
         [[chains.upstreams]]\nname = \"dead\"\nurl = \"{}\"\noperator = \"b\"\n\
         [[chains.upstreams]]\nname = \"failing\"\nurl = \"{}\"\noperator = \"c\"\n",
        keyed(&relay_hostport),
        keyed(&dead),
        keyed(&failing_hostport),
    );
    let outlast = Outlast::start_process_logging("info,outlast=debug", &toml).await;
    let (reply, upstream) = outlast.call("/local", "eth_chainId", json!([])).await;
    assert_eq!(reply["result"], "0x7a69", "{reply}");
    assert_eq!(upstream.as_deref(), Some("keyed"));

    *target.lock().expect("lock") = format!("http://{dead}");
    let (reply, _) = outlast
        .call("/local", "eth_getBlockByNumber", json!(["0x1", false]))
        .await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    let tried = reply["error"]["data"]["tried"]
        .as_array()
        .expect("data.tried");
    assert_eq!(tried.len(), 3, "{reply}");
    let mut shown = vec![("the reply".to_owned(), reply.to_string())];
    for path in ["/api/v1/status", "/status", "/metrics"] {
        let text = reqwest::get(outlast.url(path))
            .await
            .expect("GET")
            .text()
            .await
            .expect("body");
        assert!(text.contains("keyed"), "{path} names the upstream: {text}");
        shown.push((path.to_owned(), text));
    }
    outlast_stop_and_keep_log(outlast, &mut shown).await;
    for (place, text) in &shown {
        for secret in SECRETS
            .iter()
            .chain([&dead.as_str(), &failing_hostport.as_str()])
        {
            assert!(!text.contains(secret), "{place} shows {secret}:\n{text}");
        }
    }
}

/// Stops `outlast` (a process) and adds its log to `shown`, after checking the log says
/// what failed, by name.
async fn outlast_stop_and_keep_log(outlast: Outlast, shown: &mut Vec<(String, String)>) {
    let log = outlast.log();
    assert!(
        log.contains("dead") && log.contains("failing"),
        "the log names the failing upstreams:\n{log}"
    );
    shown.push(("the log".to_owned(), log));
    outlast.stop().await;
}
