//! The admin API and the operator surfaces on the real server: `[admin] token` guards
//! `/metrics`, `/api/v1/*` and the admin API while `/status` and `/feed.atom` stay
//! public; a person's incident and update reach the status page, the Atom feed and
//! webhooks; a maintenance window is shown as scheduled, starts and ends by itself; a
//! cordoned upstream is not chosen until it is uncordoned.

mod testbed;

use std::time::Duration;

use serde_json::{Value, json};
use testbed::{
    Fleet,
    gateway::{FAST_ROUTING, Outlast, config},
    incidents::get_text,
    receiver::Receiver,
};

const TOKEN: &str = "admin-token-0123456789abcdef";
const WITHIN: Duration = Duration::from_secs(20);

async fn start(fleet: &Fleet, hooks: &Receiver) -> Outlast {
    let extra = format!(
        "{FAST_ROUTING}\n[status]\nevaluate_ms = 100\n\n[admin]\ntoken = \"{TOKEN}\"\n\n\
         [[webhooks]]\nname = \"people\"\nurl = \"{}\"\n",
        hooks.url("people")
    );
    Outlast::start(&config(&fleet.urls(), &extra)).await
}

async fn admin(o: &Outlast, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(o.url(path))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    let bytes = r.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get_status(o: &Outlast, path: &str, token: Option<&str>) -> u16 {
    let mut req = reqwest::Client::new().get(o.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("GET").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_surfaces_need_the_admin_token_and_the_public_pages_do_not() {
    let fleet = Fleet::start(1).await;
    let hooks = Receiver::start(0).await;
    let o = start(&fleet, &hooks).await;
    for path in [
        "/metrics",
        "/api/v1/status",
        "/api/v1/incidents",
        "/api/v1/admin/upstreams",
    ] {
        assert_eq!(
            get_status(&o, path, None).await,
            401,
            "{path} without the token"
        );
        assert_eq!(
            get_status(&o, path, Some("wrong-token-0123456789")).await,
            401,
            "{path}"
        );
        assert_eq!(
            get_status(&o, path, Some(TOKEN)).await,
            200,
            "{path} with it"
        );
    }
    for path in ["/status", "/feed.atom", "/healthz", "/readyz"] {
        assert_eq!(get_status(&o, path, None).await, 200, "{path} is public");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_incident_and_its_update_reach_the_status_page_the_feed_and_webhooks() {
    let fleet = Fleet::start(1).await;
    let hooks = Receiver::start(0).await;
    let o = start(&fleet, &hooks).await;
    let (status, opened) = admin(
        &o,
        "/api/v1/admin/incidents",
        json!({"title": "Moving traffic to our own nodes", "message": "Provider X is slow for us.", "severity": "major", "chains": ["local"]}),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    assert_eq!(opened["kind"], "manual");
    let id = opened["id"].as_u64().expect("id");
    let (status, updated) = admin(
        &o,
        &format!("/api/v1/admin/incidents/{id}/updates"),
        json!({"message": "Half of the traffic is on our nodes now <b>"}),
    )
    .await;
    assert_eq!(status, 200, "{updated}");

    let page = get_text(&o, "/status").await;
    assert!(page.contains("Moving traffic to our own nodes"), "{page}");
    assert!(
        page.contains("Half of the traffic is on our nodes now &lt;b&gt;"),
        "escaped: {page}"
    );
    assert!(
        page.contains("Partial outage"),
        "a major incident colours the banner"
    );
    let feed = get_text(&o, "/feed.atom").await;
    assert!(feed.contains("Moving traffic to our own nodes"), "{feed}");
    assert!(
        feed.contains("Half of the traffic is on our nodes now"),
        "{feed}"
    );
    let sent = hooks
        .wait_for("people", WITHIN, |m| m["event"] == "updated")
        .await;
    assert_eq!(sent["incident"]["title"], "Moving traffic to our own nodes");

    let (status, resolved) = admin(
        &o,
        &format!("/api/v1/admin/incidents/{id}/resolve"),
        json!({"message": "Back to normal."}),
    )
    .await;
    assert_eq!(status, 200, "{resolved}");
    assert!(resolved["resolved"].is_string());
    hooks
        .wait_for("people", WITHIN, |m| m["event"] == "resolved")
        .await;
    let (status, again) = admin(
        &o,
        &format!("/api/v1/admin/incidents/{id}/resolve"),
        json!({"message": "twice"}),
    )
    .await;
    assert_eq!(status, 409, "{again}");
    let (status, bad) = admin(
        &o,
        "/api/v1/admin/incidents",
        json!({"title": "", "message": "x"}),
    )
    .await;
    assert_eq!(status, 400, "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maintenance_window_is_scheduled_then_starts_and_ends_by_itself() {
    let fleet = Fleet::start(1).await;
    let hooks = Receiver::start(0).await;
    let o = start(&fleet, &hooks).await;
    let now = std::time::SystemTime::now();
    let at =
        |secs: u64| humantime::format_rfc3339_seconds(now + Duration::from_secs(secs)).to_string();
    let (status, m) = admin(
        &o,
        "/api/v1/admin/maintenance",
        json!({"title": "Upgrading u0", "message": "u0 restarts for an upgrade.",
               "upstreams": [{"chain": "local", "name": "u0"}], "starts": at(2), "ends": at(4)}),
    )
    .await;
    assert_eq!(status, 201, "{m}");
    assert_eq!(m["kind"], "maintenance");
    let page = get_text(&o, "/status").await;
    assert!(page.contains("Scheduled maintenance"), "{page}");
    assert!(
        page.contains("All systems operational"),
        "not started: the banner is calm"
    );
    hooks
        .wait_for("people", WITHIN, |v| {
            v["event"] == "updated" && v["incident"]["kind"] == "maintenance"
        })
        .await;
    hooks
        .wait_for("people", WITHIN, |v| {
            v["event"] == "resolved" && v["incident"]["kind"] == "maintenance"
        })
        .await;
    let feed = get_text(&o, "/feed.atom").await;
    assert!(feed.contains("Upgrading u0"), "{feed}");
    let (status, typo) = admin(
        &o,
        "/api/v1/admin/maintenance",
        json!({"title": "t", "message": "m", "chains": ["nope"], "starts": at(1), "ends": at(2)}),
    )
    .await;
    assert_eq!(status, 400, "{typo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_upstream_is_not_chosen_until_uncordoned() {
    let fleet = Fleet::start(2).await;
    let hooks = Receiver::start(0).await;
    let o = start(&fleet, &hooks).await;
    let (status, c) = admin(
        &o,
        "/api/v1/admin/upstreams/local/u0/cordon",
        json!({"reason": "provider maintenance"}),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    for _ in 0..10 {
        let (_, up) = o.call("/local", "eth_chainId", json!([])).await;
        assert_eq!(up.as_deref(), Some("u1"));
    }
    let r = reqwest::Client::new()
        .get(o.url("/api/v1/admin/upstreams"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET");
    let list: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("json");
    assert_eq!(
        list["upstreams"][0]["cordoned"], "provider maintenance",
        "{list}"
    );
    let (status, _) = admin(&o, "/api/v1/admin/upstreams/local/u0/uncordon", json!({})).await;
    assert_eq!(status, 200);
    // Back in rotation: with the other one cordoned now, u0 is the one that answers
    // (routing prefers the better score, so a mere sample of calls proves nothing).
    let (status, _) = admin(&o, "/api/v1/admin/upstreams/local/u1/cordon", json!({})).await;
    assert_eq!(status, 200);
    for _ in 0..5 {
        let (_, up) = o.call("/local", "eth_chainId", json!([])).await;
        assert_eq!(up.as_deref(), Some("u0"), "back in rotation");
    }
    let (status, _) = admin(&o, "/api/v1/admin/upstreams/local/u1/uncordon", json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = admin(&o, "/api/v1/admin/upstreams/local/nope/cordon", json!({})).await;
    assert_eq!(status, 404);
}
