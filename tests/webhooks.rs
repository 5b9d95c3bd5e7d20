//! Webhooks on the real test bed: retried after a failure, in the format each receiver
//! expects, and never in the way of serving.

mod testbed;

use std::time::{Duration, Instant};

use serde_json::json;
use testbed::{
    Fleet,
    gateway::Outlast,
    incidents::{FAST_STATUS, independent, is_open, labelled_config, wait_incidents},
    receiver::Receiver,
};

const WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_fails_its_first_attempt_gets_the_message_on_the_retry() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let hooks = Receiver::start(1).await;
    let webhook = format!(
        "[[webhooks]]\nname = \"flaky\"\nurl = \"{}\"\nbackoff_ms = 200\n",
        hooks.url("flaky")
    );
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        &webhook,
    ))
    .await;
    fleet.kill(2);
    let opened = hooks
        .wait_for("flaky", WITHIN, |m| m["event"] == "opened")
        .await;
    assert_eq!(opened["incident"]["title"], "local: upstream u2 is down");
    assert_eq!(opened["incident"]["kind"], "upstream_down");
    assert_eq!(
        hooks.attempts("flaky"),
        2,
        "one failed attempt (HTTP 500), then the delivery"
    );
    drop(outlast);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_and_discord_webhooks_get_their_own_formats() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let hooks = Receiver::start(0).await;
    let webhooks = format!(
        "public_url = \"https://rpc.example.com\"\n\n[[webhooks]]\nurl = \"{}\"\nformat = \"slack\"\n\n[[webhooks]]\nurl = \"{}\"\nformat = \"discord\"\n\n[[webhooks]]\nurl = \"{}\"\nmin_severity = \"major\"\n",
        hooks.url("slack"),
        hooks.url("discord"),
        hooks.url("major-only")
    );
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        &webhooks,
    ))
    .await;
    fleet.kill(2);
    let slack = hooks
        .wait_for("slack", WITHIN, |m| m["text"].is_string())
        .await;
    let text = slack["text"].as_str().unwrap_or("");
    assert!(
        text.contains("*[Opened] #1 local: upstream u2 is down*"),
        "{text}"
    );
    assert!(
        text.contains("<https://rpc.example.com/status#incident-1|Status page>"),
        "{text}"
    );
    let discord = hooks
        .wait_for("discord", WITHIN, |m| m["embeds"].is_array())
        .await;
    let embed = &discord["embeds"][0];
    assert_eq!(embed["title"], "[Opened] #1 local: upstream u2 is down");
    assert_eq!(embed["url"], "https://rpc.example.com/status#incident-1");
    assert!(
        embed["description"]
            .as_str()
            .is_some_and(|d| d.contains("u2")),
        "{discord:#}"
    );
    // The filter, checked once something has landed there: a major incident after the
    // minor one. Each webhook delivers its messages in order, so had the minor one been
    // let through, it would have arrived first.
    fleet.kill(1);
    let major = hooks
        .wait_for("major-only", WITHIN, |m| m["event"] == "opened")
        .await;
    assert_eq!(major["incident"]["severity"], "major", "{major:#}");
    for m in hooks.delivered("major-only") {
        assert_ne!(
            m["incident"]["severity"], "minor",
            "a minor incident was sent where min_severity = major: {m:#}"
        );
    }
    // …while minor ones still go where min_severity is minor.
    hooks
        .wait_for("slack", WITHIN, |m| {
            m["text"].as_str().is_some_and(|t| t.contains("u1 is down"))
        })
        .await;
    drop(outlast);
}

/// A webhook whose receiver accepts connections and never answers: serving goes on at
/// full speed and the other webhook gets its message at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_webhook_never_delays_serving_or_other_webhooks() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_url = format!("http://{}/", hung.local_addr().expect("addr"));
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = {
        let reached = reached.clone();
        tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = hung.accept().await {
                reached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                conns.push(c); // read nothing, answer nothing
            }
        })
    };
    // The hung delivery holds for its whole timeout: anything that waited for it would
    // take at least this long.
    let hung_for = Duration::from_secs(60);
    let hooks = Receiver::start(0).await;
    let webhooks = format!(
        "[[webhooks]]\nname = \"hung\"\nurl = \"{hung_url}\"\ntimeout_ms = {}\n\n[[webhooks]]\nname = \"fine\"\nurl = \"{}\"\n",
        hung_for.as_millis(),
        hooks.url("fine")
    );
    let outlast = Outlast::start(&labelled_config(
        &fleet.urls(),
        &independent(3),
        FAST_STATUS,
        &webhooks,
    ))
    .await;
    fleet.kill(2);
    let opened = Instant::now();
    wait_incidents(&outlast, "u2 down", WITHIN, |l| l.iter().any(is_open)).await;
    hooks
        .wait_for("fine", WITHIN, |m| m["event"] == "opened")
        .await;
    // The hung receiver was reached: its delivery is under way, held.
    for _ in 0..400 {
        if reached.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        reached.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "the hung webhook was never called"
    );
    for _ in 0..20 {
        let (reply, _) = outlast
            .call("/local", "eth_getBlockByNumber", json!(["0x1", false]))
            .await;
        assert_eq!(reply["result"]["number"], "0x1", "{reply}");
    }
    // Not a wall-clock guess: waiting on the hung delivery cannot take less than its
    // timeout, and all of this happened within it.
    let took = opened.elapsed();
    assert!(
        took < hung_for,
        "the other webhook and 20 calls took {took:?}: they waited on the hung delivery"
    );
    held.abort();
}
