//! What people read: the status page rendered by a real browser (headless Chromium,
//! screenshots kept under `target/` as artifacts), the Atom feed read by a real feed
//! parser (Python feedparser), the JSON API — and no provider secret in any of them.

mod testbed;

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use testbed::{
    Fleet,
    gateway::Outlast,
    incidents::{
        FAST_STATUS, FIVE_PLACES, get_text, independent, is_open, labelled_config, of_kind, python,
        wait_incidents,
    },
};

const WITHIN: Duration = Duration::from_secs(20);
/// Put in every upstream URL: it must never be shown.
const SECRET: &str = "sekret-4fe1c0";

fn with_secret(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| format!("{u}/?apikey={SECRET}"))
        .collect()
}

/// Runs headless Chromium (Debian's `chromium`, flags from the test bed notes) on `url`.
async fn chromium(args: &[String]) -> String {
    let profile = testbed::gateway::scratch_dir();
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("chromium finished within 60 s")
        .expect("chromium runs (scripts/test.sh installs it)");
    let _ = std::fs::remove_dir_all(profile);
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> Option<(u32, u32)> {
    if bytes.get(..8)? != b"\x89PNG\r\n\x1a\n" || bytes.get(12..16)? != b"IHDR" {
        return None;
    }
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Some((be(bytes.get(16..20)?), be(bytes.get(20..24)?)))
}

fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&dir).expect("target/artifacts");
    dir.join(name)
}

/// The aws/us-east-1 failure with one upstream also lagging: the page shows every
/// state in words a browser renders, on a desktop and a phone-sized window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_every_state_in_a_real_browser() {
    let mut fleet = Fleet::start(5).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &with_secret(&fleet.urls()),
        &FIVE_PLACES,
        FAST_STATUS,
        "",
    ))
    .await;
    fleet.kill(0);
    fleet.kill(1);
    fleet.lag(3);
    fleet.mine(4).await;
    wait_incidents(&outlast, "correlated + lagging", WITHIN, |l| {
        of_kind(l, "correlated_failure").iter().any(|i| is_open(i))
            && of_kind(l, "upstream_lagging").iter().any(|i| is_open(i))
    })
    .await;

    let url = outlast.url("/status");
    let dom = chromium(&["--dump-dom".into(), url.clone()]).await;
    for expected in [
        "Outlast test bed",
        "Partial outage",
        "2 of 5 upstreams down, all on aws/us-east-1",
        "local: upstream u3 is lagging",
        "lagging 4 blocks",
        "infura · aws/us-east-1",
        "serving",
        "Chain 24 h",
        "90 d",
        "Past incidents",
    ] {
        assert!(
            dom.contains(expected),
            "{expected:?} missing from the page:\n{dom}"
        );
    }
    assert!(
        dom.contains("<meta http-equiv=\"refresh\""),
        "reloads itself"
    );
    assert!(!dom.contains("<script"), "no JavaScript");
    assert!(!dom.contains(SECRET), "no provider secret on the page");

    for (name, size) in [
        ("status-page.png", "1280,1600"),
        ("status-page-phone.png", "390,1800"),
    ] {
        let path = artifact(name);
        let _ = std::fs::remove_file(&path);
        chromium(&[
            format!("--screenshot={}", path.display()),
            format!("--window-size={size}"),
            url.clone(),
        ])
        .await;
        let png = std::fs::read(&path).expect("the screenshot was written");
        let (w, h) = png_size(&png).expect("a PNG");
        let want: Vec<u32> = size.split(',').filter_map(|n| n.parse().ok()).collect();
        assert_eq!(vec![w, h], want, "{name}");
        assert!(png.len() > 20_000, "{name} is {} bytes: blank?", png.len());
    }
}

/// Feedparser, the parser feed readers build on, reads the feed without complaint:
/// Atom 1.0, one entry per incident with absolute links, open and resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_atom_feed_is_valid_for_a_real_feed_parser() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &with_secret(&fleet.urls()),
        &independent(3),
        FAST_STATUS,
        "",
    ))
    .await;
    fleet.kill(2);
    wait_incidents(&outlast, "u2 down", WITHIN, |l| !l.is_empty()).await;
    fleet.restart(2).await;
    wait_incidents(&outlast, "u2 back", WITHIN, |l| {
        l.iter().all(|i| !is_open(i))
    })
    .await;
    fleet.kill(1);
    wait_incidents(&outlast, "u1 down", WITHIN, |l| l.iter().any(is_open)).await;

    let out = python("feed_check.py", &[&outlast.url("/feed.atom")]).await;
    let feed: Value = serde_json::from_str(&out).expect("JSON from feed_check.py");
    assert_eq!(feed["bozo"], false, "{}", feed["bozo_exception"]);
    assert_eq!(feed["version"], "atom10");
    assert!(
        feed["content_type"]
            .as_str()
            .is_some_and(|c| c.starts_with("application/atom+xml")),
        "{feed:#}"
    );
    assert_eq!(feed["title"], "Outlast test bed: incidents");
    let entries = feed["entries"].as_array().expect("entries");
    let titles: Vec<&str> = entries.iter().filter_map(|e| e["title"].as_str()).collect();
    assert_eq!(
        titles,
        [
            "[Open] local: upstream u1 is down",
            "[Resolved] local: upstream u2 is down"
        ]
    );
    for e in entries {
        let link = e["link"].as_str().unwrap_or("");
        assert!(link.starts_with(&outlast.url("/status#incident-")), "{e:#}");
        assert!(
            e["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("tag:127.0.0.1,")),
            "{e:#}"
        );
        assert!(!e["updated"].as_str().unwrap_or("").is_empty(), "{e:#}");
        assert!(
            e["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&"minor".into())),
            "{e:#}"
        );
    }
    assert!(!out.contains(SECRET));
}

/// `/api/v1/status` keeps every field it had and gains labels, uptime and incidents;
/// `/api/v1/incidents` filters by state; neither shows a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_adds_labels_uptime_and_incidents_without_secrets() {
    let mut fleet = Fleet::start(5).await;
    fleet.mine(2).await;
    let outlast = Outlast::start(&labelled_config(
        &with_secret(&fleet.urls()),
        &FIVE_PLACES,
        FAST_STATUS,
        "",
    ))
    .await;
    fleet.kill(4);
    wait_incidents(&outlast, "u4 down", WITHIN, |l| l.iter().any(is_open)).await;
    let text = get_text(&outlast, "/api/v1/status").await;
    assert!(!text.contains(SECRET), "{text}");
    let status: Value = serde_json::from_str(&text).expect("JSON");
    let chain = &status["chains"][0];
    for key in ["name", "chain_id", "state", "head", "quorum", "upstreams"] {
        assert!(chain.get(key).is_some(), "kept: {key}");
    }
    assert!(
        chain["uptime_24h"]
            .as_f64()
            .is_some_and(|u| u > 0.0 && u <= 1.0),
        "{chain:#}"
    );
    let id = status["incidents"][0]["id"]
        .as_u64()
        .expect("an open incident");
    assert_eq!(chain["open_incidents"], serde_json::json!([id]));
    let u0 = &chain["upstreams"][0];
    for key in [
        "name",
        "operator",
        "tier",
        "state",
        "breaker",
        "lag",
        "score",
        "last_error",
    ] {
        assert!(u0.get(key).is_some(), "kept: {key}");
    }
    assert_eq!(u0["cloud"], "aws");
    assert_eq!(u0["region"], "us-east-1");
    assert!(u0["uptime_24h"].as_f64().is_some(), "{u0:#}");

    let open = get_text(&outlast, "/api/v1/incidents?state=open").await;
    let open: Value = serde_json::from_str(&open).expect("JSON");
    assert_eq!(open["incidents"].as_array().map(Vec::len), Some(1));
    let resolved = get_text(&outlast, "/api/v1/incidents?state=resolved").await;
    let resolved: Value = serde_json::from_str(&resolved).expect("JSON");
    assert_eq!(resolved["incidents"], serde_json::json!([]));
    let bad = reqwest::get(outlast.url("/api/v1/incidents?state=sideways"))
        .await
        .expect("GET");
    assert_eq!(bad.status(), 400);
}
