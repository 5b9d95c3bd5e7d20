//! The state half of `GET /metrics`: upstream health, breaker, lag, heads, open
//! incidents and uptime from the status snapshot (`status::snapshot`, the same one
//! `/api/v1/status` serves), plus filters and cache size, read at scrape time (never
//! stale, only this gateway's), after the events `metrics` recorded.

use super::{ChainStatus, UpstreamStatus};
use crate::{
    gateway::Gateway,
    incidents::{Kind, Severity},
    metrics::{self, UPSTREAM_BANS, text::Family},
    upstream::health::Status,
};

/// The whole `/metrics` text: the recorded events, then this gateway's state.
pub fn render(gw: &Gateway) -> String {
    let mut out = metrics::recorded();
    state(gw, &mut out);
    out
}

const BREAKER_STATES: [&str; 3] = ["closed", "open", "half-open"];
const KINDS: [Kind; 8] = [
    Kind::UpstreamDown,
    Kind::UpstreamLagging,
    Kind::UpstreamLying,
    Kind::ChainDegraded,
    Kind::ChainDown,
    Kind::HeadStalled,
    Kind::CorrelatedFailure,
    Kind::ProvidersUnreachable,
];
const SEVERITIES: [Severity; 3] = [Severity::Minor, Severity::Major, Severity::Critical];

fn state(gw: &Gateway, out: &mut String) {
    let snapshot = super::snapshot(gw);
    let ups: Vec<(&ChainStatus, &UpstreamStatus)> = snapshot
        .chains
        .iter()
        .flat_map(|c| c.upstreams.iter().map(move |u| (c, u)))
        .collect();

    let name = "outlast_upstream_up";
    let mut f = Family::new(
        out,
        name,
        "1 while the upstream is in rotation (ready), else 0.",
    );
    for (c, u) in &ups {
        let labels = [
            ("chain", c.name.as_str()),
            ("upstream", u.name.as_str()),
            ("operator", u.operator.as_str()),
            ("cloud", u.cloud.as_deref().unwrap_or("")),
            ("region", u.region.as_deref().unwrap_or("")),
        ];
        f.sample(name, &labels, f64::from(u8::from(u.state == "ready")));
    }

    let name = "outlast_upstream_state";
    let mut f = Family::new(out, name, "1 for the upstream's current health state.");
    for (c, u) in &ups {
        for s in Status::STATES {
            let labels = [
                ("chain", c.name.as_str()),
                ("upstream", u.name.as_str()),
                ("state", s),
            ];
            f.sample(name, &labels, f64::from(u8::from(s == u.state)));
        }
    }

    let name = "outlast_upstream_breaker_state";
    let mut f = Family::new(out, name, "1 for the circuit breaker's current state.");
    for (c, u) in &ups {
        for s in BREAKER_STATES {
            let labels = [
                ("chain", c.name.as_str()),
                ("upstream", u.name.as_str()),
                ("state", s),
            ];
            f.sample(name, &labels, f64::from(u8::from(s == u.breaker)));
        }
    }

    let per_upstream = |out: &mut String,
                        name: &str,
                        help: &str,
                        value: &dyn Fn(&UpstreamStatus) -> Option<f64>| {
        let mut f = Family::new(out, name, help);
        for (c, u) in &ups {
            if let Some(v) = value(u) {
                f.sample(
                    name,
                    &[("chain", c.name.as_str()), ("upstream", u.name.as_str())],
                    v,
                );
            }
        }
    };
    per_upstream(
        out,
        "outlast_upstream_lag_blocks",
        "Blocks the upstream's head is behind the consensus head.",
        &|u| u.lag.map(|l| l as f64),
    );
    per_upstream(
        out,
        "outlast_upstream_head_block",
        "The newest block the upstream reported.",
        &|u| u.head.map(|h| h as f64),
    );
    per_upstream(
        out,
        "outlast_upstream_latency_seconds",
        "The upstream's smoothed latency, as used for ranking.",
        &|u| u.latency_ms.map(|ms| ms / 1000.0),
    );
    per_upstream(
        out,
        "outlast_upstream_error_ratio",
        "Share of the upstream's recent calls that failed.",
        &|u| Some(u.error_rate),
    );

    let name = UPSTREAM_BANS;
    let mut f = Family::typed(
        out,
        name,
        "Times the upstream was banned for lying.",
        "counter",
    );
    for (c, u) in &ups {
        let labels = [("chain", c.name.as_str()), ("upstream", u.name.as_str())];
        f.sample(name, &labels, f64::from(u.bans));
    }

    per_upstream(
        out,
        "outlast_upstream_in_flight",
        "Calls in flight at the upstream.",
        &|u| Some(u.in_flight as f64),
    );

    let name = "outlast_chain_head_block";
    let mut f = Family::new(
        out,
        name,
        "The consensus head: newest block a quorum agrees on.",
    );
    for c in &snapshot.chains {
        if let Some(h) = &c.head {
            f.sample(name, &[("chain", c.name.as_str())], h.number as f64);
        }
    }

    let name = "outlast_chain_finalized_block";
    let mut f = Family::new(out, name, "The chain's finalized block, by quorum.");
    for c in &snapshot.chains {
        if let Some(h) = c.finalized {
            f.sample(name, &[("chain", c.name.as_str())], h as f64);
        }
    }

    let name = "outlast_filters";
    let mut f = Family::new(
        out,
        name,
        "HTTP filters held by Outlast now, by chain and kind (blocks, logs, pending).",
    );
    for (c, live) in gw.chains_live() {
        for (kind, n) in live.filters.counts() {
            f.sample(name, &[("chain", &*c.name), ("kind", kind)], n as f64);
        }
    }

    let name = "outlast_chain_serving_operators";
    let mut f = Family::new(
        out,
        name,
        "Distinct operators with an upstream in rotation.",
    );
    for c in &snapshot.chains {
        let serving: std::collections::HashSet<&str> = c
            .upstreams
            .iter()
            .filter(|u| u.state == "ready")
            .map(|u| u.operator.as_str())
            .collect();
        f.sample(name, &[("chain", c.name.as_str())], serving.len() as f64);
    }

    let name = "outlast_chain_quorum";
    let mut f = Family::new(out, name, "Distinct operators the chain's quorum needs.");
    for c in &snapshot.chains {
        f.sample(name, &[("chain", c.name.as_str())], c.quorum as f64);
    }

    let name = "outlast_incidents_open";
    let mut f = Family::new(out, name, "Incidents open now, by kind and severity.");
    for kind in KINDS {
        for severity in SEVERITIES {
            let n = snapshot
                .incidents
                .iter()
                .filter(|i| i.kind == kind && i.severity == severity)
                .count();
            f.sample(
                name,
                &[("kind", kind.as_str()), ("severity", severity.label())],
                n as f64,
            );
        }
    }

    let name = "outlast_uptime_ratio_24h";
    let mut f = Family::new(
        out,
        name,
        "Share of the last 24 h the upstream or chain was up (observed time only).",
    );
    for c in &snapshot.chains {
        if let Some(r) = c.uptime_24h {
            f.sample(name, &[("chain", c.name.as_str()), ("upstream", "")], r);
        }
        for u in &c.upstreams {
            if let Some(r) = u.uptime_24h {
                f.sample(
                    name,
                    &[("chain", c.name.as_str()), ("upstream", u.name.as_str())],
                    r,
                );
            }
        }
    }

    let (entries, bytes) = gw.cache.usage();
    let name = "outlast_cache_entries";
    let mut f = Family::new(out, name, "Answers held in the memory cache.");
    f.sample(name, &[], entries as f64);
    let name = "outlast_cache_bytes";
    let mut f = Family::new(
        out,
        name,
        "Memory the cache holds so far: its index and the answers written.",
    );
    f.sample(name, &[], bytes as f64);
    if let Some(up) = gw.cache.redis_up() {
        let name = "outlast_cache_redis_up";
        let mut f = Family::new(out, name, "1 while the shared Redis tier answers.");
        f.sample(name, &[], f64::from(u8::from(up)));
    }

    let name = "outlast_build_info";
    let mut f = Family::new(out, name, "Always 1; the version as a label.");
    f.sample(name, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
}
