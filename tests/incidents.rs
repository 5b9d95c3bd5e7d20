//! Incidents on the real test bed: each signal opens an incident by itself and resolves
//! it when the problem goes away — a killed or hung node, a lagging one, a liar, a chain
//! below its quorum or with nothing left, a head that stops — and nodes of one
//! cloud/region failing together make one correlated incident, seen on the status page,
//! in the Atom feed and at a webhook receiver. History survives a restart.

mod testbed;

use std::time::Duration;

use serde_json::{Value, json};
use testbed::{
    ACCOUNT1_ADDRESS, Fleet,
    gateway::{FAST_ROUTING, Outlast, scratch_dir},
    incidents::{
        FAST_STATUS, FIVE_PLACES, evaluations_pass, get_text, incidents, independent, is_open,
        labelled_config, of_kind, python, wait_incidents,
    },
    receiver::Receiver,
    rpc_result,
};

const WITHIN: Duration = Duration::from_secs(20);
/// Evaluations to watch for an incident that must not open: FAST_STATUS opens one
/// after 500 ms of a problem, evaluating every 100 ms; twice that, and more.
const SETTLE: usize = 12;

fn open_of_kind(list: &[Value], kind: &str) -> usize {
    of_kind(list, kind)
        .into_iter()
        .filter(|i| is_open(i))
        .count()
}

fn resolved_of_kind(list: &[Value], kind: &str) -> usize {
    of_kind(list, kind)
        .into_iter()
        .filter(|i| !is_open(i))
        .count()
}

/// The "done when": the aws/us-east-1 nodes die together; within seconds there
/// is exactly one incident, naming aws/us-east-1, on the page, in the feed and at the
/// webhook receiver, and it is resolved when they return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_aws_us_east_1_nodes_opens_one_correlated_incident_until_they_return() {
    let mut fleet = Fleet::start(5).await;
    fleet.mine(2).await;
    let hooks = Receiver::start(0).await;
    let webhook = format!(
        "[[webhooks]]\nname = \"ops\"\nurl = \"{}\"\nbackoff_ms = 100\n",
        hooks.url("ops")
    );
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &FIVE_PLACES,
        FAST_STATUS,
        &webhook,
    ))
    .await;

    fleet.kill(0);
    fleet.kill(1);
    let title = "2 of 5 upstreams down, all on aws/us-east-1";
    let list = wait_incidents(&outlast, "a correlated incident", WITHIN, |l| {
        open_of_kind(l, "correlated_failure") == 1
    })
    .await;
    // Let more evaluations pass than a problem needs to open one: nothing else may.
    evaluations_pass(&outlast, "u0", SETTLE, WITHIN).await;
    let list = incidents(&outlast)
        .await
        .into_iter()
        .chain(list)
        .collect::<Vec<_>>();
    let ids: std::collections::HashSet<u64> =
        list.iter().filter_map(|i| i["id"].as_u64()).collect();
    assert_eq!(
        ids.len(),
        1,
        "one incident, not one per upstream: {list:#?}"
    );
    let incident = &list[0];
    assert_eq!(incident["title"], title, "{incident:#}");
    assert_eq!(incident["factor"], "aws/us-east-1");
    assert_eq!(incident["severity"], "major");
    let names: Vec<&str> = incident["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["u0", "u1"]);
    let id = incident["id"].as_u64().expect("id");

    // On the page…
    let page = get_text(&outlast, "/status").await;
    assert_eq!(page.matches(title).count(), 1, "{page}");
    assert!(page.contains("Partial outage"), "{page}");
    // …in the feed, as a feed reader sees it…
    let feed = python("feed_check.py", &[&outlast.url("/feed.atom")]).await;
    let feed: Value = serde_json::from_str(&feed).expect("feed JSON");
    let entries = feed["entries"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{feed:#}");
    assert_eq!(entries[0]["title"], format!("[Open] {title}"));
    // …and at the webhook.
    let opened = hooks
        .wait_for("ops", WITHIN, |m| m["event"] == "opened")
        .await;
    assert_eq!(opened["incident"]["id"], id);
    assert_eq!(opened["incident"]["title"], title);

    fleet.restart(0).await;
    fleet.restart(1).await;
    let list = wait_incidents(&outlast, "the correlated incident resolved", WITHIN, |l| {
        resolved_of_kind(l, "correlated_failure") == 1
    })
    .await;
    assert_eq!(list.len(), 1, "still the one incident: {list:#?}");
    let updates = list[0]["updates"].as_array().expect("updates");
    assert_eq!(updates.last().expect("an update")["event"], "resolved");
    let resolved = hooks
        .wait_for("ops", WITHIN, |m| m["event"] == "resolved")
        .await;
    assert_eq!(resolved["incident"]["id"], id);
    let feed = python("feed_check.py", &[&outlast.url("/feed.atom")]).await;
    assert!(feed.contains(&format!("[Resolved] {title}")), "{feed}");
    let page = get_text(&outlast, "/status").await;
    assert!(page.contains("All systems operational"), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_opens_a_down_incident_that_resolves_when_it_returns() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        "",
    ))
    .await;
    fleet.kill(2);
    let list = wait_incidents(&outlast, "u2 down", WITHIN, |l| {
        open_of_kind(l, "upstream_down") == 1
    })
    .await;
    assert_eq!(list[0]["title"], "local: upstream u2 is down");
    assert_eq!(list[0]["severity"], "minor");
    assert_eq!(
        list.len(),
        1,
        "two operators still serve: no chain incident {list:#?}"
    );
    fleet.restart(2).await;
    let list = wait_incidents(&outlast, "u2 back", WITHIN, |l| {
        resolved_of_kind(l, "upstream_down") == 1
    })
    .await;
    let updates = list[0]["updates"].as_array().expect("updates");
    assert_eq!(updates[0]["event"], "opened");
    assert!(
        updates
            .last()
            .and_then(|u| u["message"].as_str())
            .is_some_and(|m| m.contains("u2 is serving again")),
        "{updates:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_opens_a_down_incident_that_resolves_when_it_answers() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        "",
    ))
    .await;
    // u1 answers before it hangs: its last success is what the status then shows.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !status_json(&outlast).await["chains"][0]["upstreams"][1]["last_success_secs"].is_u64() {
        assert!(tokio::time::Instant::now() < deadline, "u1 never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.pause(1);
    let list = wait_incidents(&outlast, "u1 down", WITHIN, |l| {
        open_of_kind(l, "upstream_down") == 1
    })
    .await;
    assert_eq!(list[0]["title"], "local: upstream u1 is not answering");
    let status = status_json(&outlast).await;
    let u1 = &status["chains"][0]["upstreams"][1];
    assert_eq!(u1["state"], "unresponsive", "{u1}");
    assert!(u1["last_success_secs"].is_u64(), "{u1}");
    fleet.resume(1);
    wait_incidents(&outlast, "u1 back", WITHIN, |l| {
        resolved_of_kind(l, "upstream_down") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_upstream_opens_a_lag_incident_until_it_catches_up() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        "",
    ))
    .await;
    fleet.lag(2);
    fleet.mine(5).await;
    let list = wait_incidents(&outlast, "u2 lagging", WITHIN, |l| {
        open_of_kind(l, "upstream_lagging") == 1
    })
    .await;
    let lag = &of_kind(&list, "upstream_lagging")[0];
    assert_eq!(lag["title"], "local: upstream u2 is lagging");
    assert!(
        lag["updates"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("5 blocks behind")),
        "{lag:#}"
    );
    fleet.catch_up(2).await;
    wait_incidents(&outlast, "u2 caught up", WITHIN, |l| {
        resolved_of_kind(l, "upstream_lagging") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_quorum_opens_a_chain_degraded_incident() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(2),
        FAST_STATUS,
        "",
    ))
    .await;
    fleet.kill(1);
    let list = wait_incidents(&outlast, "chain degraded", WITHIN, |l| {
        open_of_kind(l, "chain_degraded") == 1
    })
    .await;
    let chain = &of_kind(&list, "chain_degraded")[0];
    assert_eq!(chain["severity"], "major");
    assert_eq!(
        chain["title"],
        "local is degraded: fewer independent operators than its quorum"
    );
    fleet.restart(1).await;
    wait_incidents(&outlast, "chain whole again", WITHIN, |l| {
        resolved_of_kind(l, "chain_degraded") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_every_upstream_opens_a_critical_chain_down_incident() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(2),
        FAST_STATUS,
        "",
    ))
    .await;
    // One dead, one hung: not one cause (that is the next test), so the chain is down.
    fleet.kill(0);
    fleet.pause(1);
    let list = wait_incidents(&outlast, "chain down", WITHIN, |l| {
        l.iter()
            .any(|i| is_open(i) && i["kind"] == "chain_down" && i["severity"] == "critical")
    })
    .await;
    let down = list
        .iter()
        .find(|i| i["kind"] == "chain_down")
        .expect("chain incident");
    assert_eq!(down["title"], "local is down: no upstream is serving");
    let page = get_text(&outlast, "/status").await;
    assert!(page.contains("Major outage: local down"), "{page}");
    fleet.restart(0).await;
    fleet.resume(1);
    wait_incidents(&outlast, "chain back", WITHIN, |l| {
        l.iter().any(|i| !is_open(i) && i["kind"] == "chain_down")
    })
    .await;
}

/// The default verify mode (proofs, quorum 2), as users run it.
fn default_mode(config: String) -> String {
    config.replace("verify = \"off\"\n", "")
}

async fn status_json(outlast: &Outlast) -> Value {
    serde_json::from_str(&get_text(outlast, "/api/v1/status").await).expect("status JSON")
}

async fn balance(outlast: &Outlast) -> (Value, Option<String>) {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[ACCOUNT1_ADDRESS,"latest"]});
    let r = outlast.post("/local", body.to_string()).await;
    (r.json(), r.verified)
}

/// The realistic cloud outage: the region's nodes hang (connections open, nothing
/// answers) rather than die. In the default mode, reads keep being answered verified,
/// one correlated incident says the region is not answering, and `/status` shows both
/// upstreams as unresponsive — not serving with their last latency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_region_is_one_incident_and_shown_as_not_answering() {
    let mut fleet = Fleet::start(5).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&default_mode(labelled_config(
        &fleet.urls(),
        &FIVE_PLACES,
        FAST_STATUS,
        "",
    )))
    .await;
    fleet.pause(0);
    fleet.pause(1);
    let title = "2 of 5 upstreams not answering, all on aws/us-east-1";
    let list = wait_incidents(&outlast, "a correlated incident", WITHIN, |l| {
        open_of_kind(l, "correlated_failure") == 1
    })
    .await;
    let open: Vec<&Value> = list.iter().filter(|i| is_open(i)).collect();
    assert_eq!(open.len(), 1, "{list:#?}");
    assert_eq!(open[0]["title"], title, "{:#}", open[0]);
    let status = status_json(&outlast).await;
    let states: Vec<&str> = status["chains"][0]["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .filter_map(|u| u["state"].as_str())
        .collect();
    assert_eq!(
        states,
        ["unresponsive", "unresponsive", "ready", "ready", "ready"]
    );
    let page = get_text(&outlast, "/status").await;
    assert!(page.contains("not answering"), "{page}");
    for _ in 0..10 {
        let (reply, verified) = balance(&outlast).await;
        assert!(reply["result"].is_string(), "{reply}");
        assert_eq!(verified.as_deref(), Some("proof"), "{reply}");
    }
    fleet.resume(0);
    fleet.resume(1);
    wait_incidents(&outlast, "the region back", WITHIN, |l| {
        resolved_of_kind(l, "correlated_failure") == 1
    })
    .await;
}

/// Every upstream refusing at once is one cause (this host's network, DNS or
/// firewall): one incident says so, and nothing else opens under it. A call meanwhile
/// gets -32002 with what was tried — nothing answered, so nothing was "unverifiable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_upstream_refusing_is_one_incident_about_this_host_and_calls_get_32002() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&default_mode(labelled_config(
        &fleet.urls(),
        &[
            ("infura", "aws/us-east-1"),
            ("alchemy", "aws/us-east-1"),
            ("drpc", "hetzner/fsn1"),
        ],
        FAST_STATUS,
        "",
    )))
    .await;
    for i in 0..3 {
        fleet.kill(i);
    }
    let list = wait_incidents(&outlast, "one incident about this host", WITHIN, |l| {
        open_of_kind(l, "providers_unreachable") == 1
    })
    .await;
    // Let more evaluations pass than a problem needs to open one: nothing else may
    // open under it.
    evaluations_pass(&outlast, "u0", SETTLE, WITHIN).await;
    let list = incidents(&outlast)
        .await
        .into_iter()
        .chain(list)
        .collect::<Vec<_>>();
    let ids: std::collections::HashSet<u64> =
        list.iter().filter_map(|i| i["id"].as_u64()).collect();
    assert_eq!(ids.len(), 1, "one incident for one cause: {list:#?}");
    let incident = list
        .iter()
        .find(|i| i["kind"] == "providers_unreachable")
        .expect("the incident");
    assert_eq!(
        incident["title"],
        "Outlast cannot reach any of its providers"
    );
    assert_eq!(incident["severity"], "critical");
    assert!(
        incident["updates"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("network, DNS and firewall")),
        "{incident:#}"
    );
    let (reply, _) = balance(&outlast).await;
    assert_eq!(reply["error"]["code"], -32002, "{reply}");
    assert!(reply["error"]["data"]["tried"].is_array(), "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.contains("no 1 operators"), "{message}");
    for i in 0..3 {
        fleet.restart(i).await;
    }
    wait_incidents(&outlast, "providers back", WITHIN, |l| {
        resolved_of_kind(l, "providers_unreachable") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_stops_moving_opens_a_stalled_incident() {
    let mut fleet = Fleet::start(2).await;
    fleet.mine(1).await;
    let status = FAST_STATUS.replace(
        "head_stall_min_secs = 3600",
        "head_stall_min_secs = 1\nhead_stall_block_times = 3",
    );
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(2),
        &status,
        "",
    ))
    .await;
    // Blocks every 200 ms teach Outlast the block time…
    for _ in 0..10 {
        fleet.mine(1).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // …then none.
    let list = wait_incidents(&outlast, "head stalled", WITHIN, |l| {
        open_of_kind(l, "head_stalled") == 1
    })
    .await;
    let height = fleet.height();
    assert_eq!(
        list[0]["title"],
        format!("local: no new block after #{height}")
    );
    assert_eq!(list.len(), 1, "{list:#?}");
    fleet.mine(1).await;
    wait_incidents(&outlast, "head moving", WITHIN, |l| {
        resolved_of_kind(l, "head_stalled") == 1
    })
    .await;
}

/// The zero-balance lie: verification catches it and bans the liar (the integrity
/// work); the ban becomes an incident with what was caught, resolved after the ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liar_caught_by_verification_opens_an_incident_until_its_ban_ends() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(3).await;
    // The liar (u0) is asked first (tier 1), alone (no hedging: a slow liar would lose
    // the race to an honest answer, its lie never seen), and banned for 3 s only.
    let mut config = format!(
        "{FAST_ROUTING}liar_ban_secs = 3\nhedge = false\n\n[status]\n{FAST_STATUS}\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"proofs\"\nquorum = 2\n"
    );
    for (i, url) in fleet.urls().iter().enumerate() {
        let tier = if i == 0 { 1 } else { 2 };
        config.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\ntier = {tier}\n"
        ));
    }
    let outlast = Outlast::start(&config).await;
    // The liar zeroes every funded account. Each balance asked is a fresh race (a cached
    // answer never reaches an upstream): asked again, a liar slower than the half second
    // it is given then is not banned that time, so accounts are asked until it is.
    // The liar in the race: its head known (its first poll can come late under load, and
    // an upstream whose head is not known is not asked for a proof).
    let deadline = tokio::time::Instant::now() + WITHIN;
    while outlast.upstream_status("u0").await["head"].as_u64() != Some(3) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "u0's head never known"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accounts = rpc_result(&fleet.url(1), "eth_accounts", json!([])).await;
    let accounts = accounts.as_array().expect("eth_accounts is a list").clone();
    for account in &accounts {
        rpc_result(&fleet.url(0), "anvil_setBalance", json!([account, "0x0"])).await;
    }
    for account in &accounts {
        let (reply, _) = outlast
            .call("/local", "eth_getBalance", json!([account, "latest"]))
            .await;
        assert_ne!(reply["result"], "0x0", "the lie is never served: {reply}");
        if outlast.upstream_status("u0").await["bans"] == 1 {
            break;
        }
    }
    let liar = outlast.upstream_status("u0").await;
    assert_eq!(liar["bans"], 1, "the liar was never banned: {liar}");
    let list = wait_incidents(&outlast, "a liar incident", WITHIN, |l| {
        open_of_kind(l, "upstream_lying") == 1
    })
    .await;
    let lie = &of_kind(&list, "upstream_lying")[0];
    assert_eq!(lie["title"], "local: upstream u0 was caught lying");
    assert_eq!(lie["severity"], "major");
    assert!(
        !lie["evidence"]["summary"].as_str().unwrap_or("").is_empty(),
        "{lie:#}"
    );
    assert!(
        of_kind(&list, "upstream_down").is_empty(),
        "a banned upstream is a liar, not down: {list:#?}"
    );
    // It tells the truth again; once the ban is over it is back, and the incident ends.
    for account in &accounts {
        let truth = json!([account, "latest"]);
        let balance = rpc_result(&fleet.url(1), "eth_getBalance", truth).await;
        rpc_result(&fleet.url(0), "anvil_setBalance", json!([account, balance])).await;
    }
    wait_incidents(&outlast, "the ban over", WITHIN, |l| {
        resolved_of_kind(l, "upstream_lying") == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incident_history_survives_a_restart() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let dir = scratch_dir();
    let status = format!("{FAST_STATUS}data_dir = \"{}\"\n", dir.display());
    let config = labelled_config(&fleet.urls(), &independent(3), &status, "");
    let outlast = Outlast::start(&config).await;
    fleet.kill(2);
    let before = wait_incidents(&outlast, "u2 down", WITHIN, |l| {
        open_of_kind(l, "upstream_down") == 1
    })
    .await;
    outlast.stop().await;
    fleet.restart(2).await;

    let outlast = Outlast::start(&config).await;
    let after = incidents(&outlast).await;
    assert_eq!(
        after.first().map(|i| &i["id"]),
        before.first().map(|i| &i["id"])
    );
    assert_eq!(after[0]["title"], "local: upstream u2 is down");
    // It was open when Outlast stopped; u2 is back, so it resolves by itself.
    wait_incidents(&outlast, "resolved after the restart", WITHIN, |l| {
        resolved_of_kind(l, "upstream_down") == 1 && l.len() == 1
    })
    .await;
    let page = get_text(&outlast, "/status").await;
    assert!(
        page.contains("local: upstream u2 is down"),
        "a past incident: {page}"
    );
    outlast.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
