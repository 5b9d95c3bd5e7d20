//! The configured gateways of one kind (IPFS or Arweave) and what is known of each, in
//! the same breaker RPC upstreams have (`upstream::health::Health`, with `[storage]`'s
//! settings): latency and error rate, a cool-down after failures in a row (half-open
//! once it is over: the next failure opens it again), and a ban after a lie, with its
//! evidence. `order` says whom to ask first; it never waits. The only place that sees
//! a gateway's real URL.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use url::Url;

use super::race::GatewayError;
use crate::{
    config::{self, UpstreamUrl},
    upstream::{
        health::{Cause, Evidence, Health, Status},
        score,
    },
};

/// Lies kept for the incident view.
const KEEP_LIES: usize = 100;

pub struct Gateway {
    pub name: Arc<str>,
    pub kind: &'static str,
    pub operator: String,
    pub cloud: Option<String>,
    pub region: Option<String>,
    url: UpstreamUrl,
    health: Health,
    /// Times it was caught serving content that does not match its address.
    lies: AtomicU64,
}

/// A gateway caught serving content that does not match its address, reported like
/// a lying RPC provider.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lie {
    pub gateway: Arc<str>,
    pub operator: String,
    pub kind: &'static str,
    /// The CID, or Arweave transaction id, it lied about.
    pub address: String,
    pub what: String,
    #[serde(with = "unix_seconds")]
    pub at: SystemTime,
    pub banned_for_secs: u64,
}

/// One gateway's state for status pages: the labels, the breaker, the ban.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GatewayStatus {
    pub name: Arc<str>,
    pub kind: &'static str,
    pub operator: String,
    pub cloud: Option<String>,
    pub region: Option<String>,
    /// `ready`, `cooling down` or `banned`.
    pub state: &'static str,
    /// Seconds left of a cool-down or ban.
    pub for_secs: Option<u64>,
    pub lies: u64,
    pub score: f64,
    pub reasons: Vec<String>,
    pub last_error: Option<String>,
}

impl Gateway {
    fn new(kind: &'static str, cfg: &config::StorageGateway, settings: &config::Storage) -> Self {
        let first = Duration::from_millis(settings.cooldown_ms);
        let health = Health::with(
            settings.failures_before_cooldown,
            first,
            Duration::from_millis(settings.max_cooldown_ms),
            Duration::from_secs(settings.ban_secs),
        );
        // No chain id to check: a gateway is in rotation from the start.
        health.record_probe(Ok(0), 0, Instant::now());
        Gateway {
            name: Arc::from(cfg.name.as_str()),
            kind,
            operator: cfg.operator.clone(),
            cloud: cfg.cloud.clone(),
            region: cfg.region.clone(),
            url: cfg.url.clone(),
            health,
            lies: AtomicU64::new(0),
        }
    }

    /// The request URL for `path` (starting with `/`, its segments percent-encoded) and
    /// `query` pairs, under the configured base (which may carry its own path prefix and
    /// query, e.g. a token). `set_path` would resolve `.` and `..` segments (`%2e` and
    /// `\` count too) and so climb out of the prefix: a path that does not come out
    /// exactly as asked is refused, never sent.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> Result<Url, GatewayError> {
        let mut url = self.url.expose().clone();
        let wanted = format!("{}{path}", url.path().trim_end_matches('/'));
        url.set_path(&wanted);
        if url.path() != wanted {
            return Err(GatewayError::Refused(format!(
                "the request path `{path}` would not stay under the gateway's base path"
            )));
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        Ok(url)
    }

    pub fn banned(&self, now: Instant) -> bool {
        matches!(self.health.status(), Status::Banned { until, .. } if until > now)
    }

    fn cooling(&self, now: Instant) -> bool {
        matches!(self.health.status(), Status::CoolingDown { until, .. } if until > now)
    }

    pub fn record_success(&self, latency: Duration) {
        let _ = self.health.record_success(latency);
    }

    /// A failure of the gateway's own (not a lie): after `failures_before_cooldown` in a
    /// row it is asked only when nothing else is left, for a doubling cool-down.
    fn record_failure(&self, why: &str, now: Instant) {
        if let crate::upstream::health::Transition::CooledDown { for_, .. } =
            self.health.record_failure(why, Cause::Failing, now)
        {
            tracing::warn!(gateway = %self.name, kind = self.kind, "storage gateway cooling down for {for_:?}: {why}");
        }
    }

    /// After how long an unanswered request here is worth asking elsewhere too.
    pub fn hedge_delay(&self, min: Duration, max: Duration) -> Duration {
        self.health.hedge_delay(min, max)
    }

    fn score(&self) -> score::Score {
        score::score(&self.health.stats(), 0, 0)
    }

    pub fn status(&self, now: Instant) -> GatewayStatus {
        let score = self.score();
        let status = self.health.status();
        let left = status
            .out_until()
            .filter(|t| *t > now)
            .map(|t| t.duration_since(now).as_secs());
        let (state, for_secs) = match (&status, left) {
            (Status::Banned { .. }, Some(secs)) => ("banned", Some(secs)),
            (_, Some(secs)) => ("cooling down", Some(secs)),
            _ => ("ready", None),
        };
        GatewayStatus {
            name: self.name.clone(),
            kind: self.kind,
            operator: self.operator.clone(),
            cloud: self.cloud.clone(),
            region: self.region.clone(),
            state,
            for_secs,
            lies: self.lies.load(Ordering::Relaxed),
            score: score.value,
            reasons: score.reasons,
            last_error: self.health.last_error(),
        }
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The gateways of one kind.
pub struct Pool {
    pub kind: &'static str,
    pub gateways: Vec<Arc<Gateway>>,
    /// `[storage] ban_secs`: how long a gateway that lied is left out.
    ban: Duration,
    lies: Mutex<VecDeque<Lie>>,
}

impl Pool {
    pub fn new(
        kind: &'static str,
        gateways: &[config::StorageGateway],
        cfg: &config::Storage,
    ) -> Pool {
        Pool {
            kind,
            gateways: gateways
                .iter()
                .map(|g| Arc::new(Gateway::new(kind, g, cfg)))
                .collect(),
            ban: Duration::from_secs(cfg.ban_secs),
            lies: Mutex::new(VecDeque::new()),
        }
    }

    /// Whom to ask, best first: gateways neither banned nor `skip`ped; ready ones by
    /// score (config order breaks ties), one per operator before a second of the same
    /// operator, so that a race asks independent gateways; cooling ones last, as a
    /// last resort.
    pub fn order(&self, now: Instant, skip: impl Fn(&Gateway) -> bool) -> Vec<Arc<Gateway>> {
        let mut ready = Vec::new();
        let mut cooling = Vec::new();
        for (i, g) in self.gateways.iter().enumerate() {
            if g.banned(now) || skip(g) {
                continue;
            }
            let entry = (g.score().value, i, g.clone());
            if g.cooling(now) {
                cooling.push(entry);
            } else {
                ready.push(entry);
            }
        }
        let by_score = |a: &(f64, usize, Arc<Gateway>), b: &(f64, usize, Arc<Gateway>)| {
            a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))
        };
        ready.sort_by(by_score);
        cooling.sort_by(by_score);
        let mut firsts = Vec::new();
        let mut seconds = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (_, _, g) in ready {
            if seen.insert(g.operator.clone()) {
                firsts.push(g);
            } else {
                seconds.push(g);
            }
        }
        firsts.extend(seconds);
        firsts.extend(cooling.into_iter().map(|(_, _, g)| g));
        firsts
    }

    pub fn record_failure(&self, g: &Gateway, why: &str) {
        g.record_failure(why, Instant::now());
    }

    /// `g` served content that does not match `address`: banned for `ban_secs`, and
    /// the lie is kept for the incident view.
    pub fn record_lie(&self, g: &Gateway, address: &str, what: &str) {
        let now = Instant::now();
        let ban = self.ban;
        g.lies.fetch_add(1, Ordering::Relaxed);
        let evidence = Evidence {
            summary: format!("served content that does not match {address}: {what}"),
            check: Some("content address".to_owned()),
            ..Evidence::default()
        };
        let _ = g.health.record_lie(evidence, ban, now);
        tracing::warn!(
            gateway = %g.name,
            operator = %g.operator,
            kind = self.kind,
            address,
            "storage gateway served content that does not match its address ({what}); banned for {}s",
            ban.as_secs()
        );
        let mut lies = self.lies.lock().unwrap_or_else(|e| e.into_inner());
        if lies.len() == KEEP_LIES {
            lies.pop_front();
        }
        lies.push_back(Lie {
            gateway: g.name.clone(),
            operator: g.operator.clone(),
            kind: self.kind,
            address: address.to_owned(),
            what: what.to_owned(),
            at: SystemTime::now(),
            banned_for_secs: ban.as_secs(),
        });
    }

    pub fn lies(&self) -> Vec<Lie> {
        self.lies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s.serialize_u64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(gateways: &[(&str, &str)]) -> Pool {
        let cfg = config::Storage {
            failures_before_cooldown: 2,
            ..config::Storage::default()
        };
        let gws: Vec<config::StorageGateway> = gateways
            .iter()
            .map(|(name, op)| config::StorageGateway {
                name: name.to_string(),
                url: UpstreamUrl::parse("http://127.0.0.1:1/prefix").expect("test URL"),
                operator: op.to_string(),
                cloud: None,
                region: None,
            })
            .collect();
        Pool::new("ipfs", &gws, &cfg)
    }

    fn names(gws: &[Arc<Gateway>]) -> Vec<&str> {
        gws.iter().map(|g| &*g.name).collect()
    }

    #[test]
    fn distinct_operators_come_first_and_liars_are_left_out() {
        let p = pool(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
        let now = Instant::now();
        assert_eq!(names(&p.order(now, |_| false)), ["a1", "b1", "a2"]);
        p.record_lie(&p.gateways[0], "bafy…", "flipped byte");
        assert_eq!(names(&p.order(now, |_| false)), ["a2", "b1"]);
        assert_eq!(p.lies().len(), 1);
        assert_eq!(p.gateways[0].status(now).state, "banned");
    }

    #[test]
    fn failing_gateways_are_asked_last() {
        let p = pool(&[("a", "a"), ("b", "b")]);
        p.record_failure(&p.gateways[0], "refused");
        p.record_failure(&p.gateways[0], "refused");
        let now = Instant::now();
        assert_eq!(names(&p.order(now, |_| false)), ["b", "a"]);
        assert_eq!(names(&p.order(now, |g| &*g.name == "b")), ["a"]);
    }

    #[test]
    fn a_gateway_tried_again_after_its_cool_down_is_cooled_again_on_failure() {
        let p = pool(&[("a", "a")]);
        let g = &p.gateways[0];
        let start = Instant::now();
        g.record_failure("refused", start);
        g.record_failure("refused", start);
        assert!(g.cooling(start), "two failures in a row cool it down");
        // The cool-down is over: half-open, asked again like a ready one.
        let later = start + Duration::from_secs(3600);
        assert!(!g.cooling(later));
        g.record_failure("still refused", later);
        assert!(
            g.cooling(later),
            "one failure while half-open opens it again"
        );
        assert_eq!(g.status(later).state, "cooling down");
        g.record_success(Duration::from_millis(5));
        assert_eq!(g.status(later).state, "ready");
    }

    #[test]
    fn urls_keep_the_configured_prefix_and_query() {
        let p = pool(&[("a", "a")]);
        let url = p.gateways[0]
            .url("/ipfs/bafy/a%20b", &[("format", "car")])
            .expect("a plain path");
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/prefix/ipfs/bafy/a%20b?format=car"
        );
        // What `set_path` would resolve to `/prefix/admin`, or `/admin`: never sent.
        for path in [
            "/ipfs/bafy/../../admin",
            "/ipfs/bafy/%2e%2e/%2E%2e/admin",
            "/ipfs/bafy/..\\..\\admin",
            "/ipfs/./bafy",
        ] {
            let got = p.gateways[0].url(path, &[]);
            assert!(
                matches!(got, Err(GatewayError::Refused(_))),
                "{path}: {got:?}"
            );
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;
        use crate::storage::{address, car::CarRequest};

        /// A gateway whose base has a path prefix holding a token, and a query.
        fn gateway() -> Arc<Gateway> {
            let g = config::StorageGateway {
                name: "g".into(),
                url: UpstreamUrl::parse("https://gw.example/key/s3cr3t/?token=t0k")
                    .expect("test URL"),
                operator: "op".into(),
                cloud: None,
                region: None,
            };
            Pool::new("ipfs", &[g], &config::Storage::default()).gateways[0].clone()
        }

        /// What a client must escape in a name: `%`, and what would end the segment.
        const LITTLE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
            .add(b'%')
            .add(b'/')
            .add(b'?')
            .add(b'#');

        /// A path as a client might send it: names escaped a little, or raw pieces
        /// (dots, slashes, backslashes and escapes of them included).
        fn raw_path() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                any::<String>().prop_map(|n| {
                    percent_encoding::utf8_percent_encode(&n, LITTLE).to_string()
                }),
                prop::sample::select(vec![
                    ".", "..", "%2e%2e", "%2E.", "\\", "..\\..", "%5c", "%2f", "%2F..", "", "a",
                    "%00", "?", "#", ";", "%25",
                ])
                .prop_map(str::to_owned),
            ];
            prop::collection::vec(piece, 0..6).prop_map(|ps| format!("bafkqaaa/{}", ps.join("/")))
        }

        proptest! {
            #[test]
            fn what_a_client_may_ask_for_stays_under_the_prefix_as_those_names(raw in raw_path()) {
                let Ok(path) = address::parse_path(&raw) else {
                    return Ok(());
                };
                let req = CarRequest { root: path.root, path: path.segments.clone(), bytes: None };
                let url = gateway()
                    .url(&req.url_path(), &[("format", "car")])
                    .map_err(|e| TestCaseError::fail(format!("{raw}: {e}")))?;
                let segments: Vec<String> = url
                    .path_segments()
                    .map(|s| {
                        s.map(|x| percent_encoding::percent_decode_str(x).decode_utf8_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                prop_assert_eq!(&segments[..4], &["key", "s3cr3t", "ipfs", "bafkqaaa"][..], "{}", url);
                prop_assert_eq!(&segments[4..], &path.segments[..], "{}", url);
                prop_assert_eq!(url.query(), Some("token=t0k&format=car"));
                prop_assert_eq!(url.host_str(), Some("gw.example"));
            }
        }
    }
}
