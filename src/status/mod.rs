//! What Outlast knows about its chains and upstreams right now, as one serializable
//! snapshot: served as `GET /api/v1/status`, and the one source of the status page, the
//! Atom feed and the state half of `/metrics` (`scrape`). Reads only; never names a URL.
//! (The incident detector keeps its own, smaller sample: it sits a layer below and is
//! a pure function of it.)
//!
//! `page` renders the status page (`GET /status`) and `feed` the Atom feed of incidents
//! (`GET /feed.atom`), both from this snapshot and the incident history.

pub mod feed;
pub mod page;
pub mod scrape;

use std::time::Instant;

use serde::Serialize;

use crate::{
    gateway::Gateway,
    incidents::{Incidents, Kind, Severity, Time},
    route::Chain,
    upstream::Upstream,
    upstream::score,
};

#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub chains: Vec<ChainStatus>,
    /// Open incidents, newest first (details at `/api/v1/incidents`).
    pub incidents: Vec<IncidentBrief>,
}

#[derive(Debug, Serialize)]
pub struct IncidentBrief {
    pub id: u64,
    pub kind: Kind,
    pub severity: Severity,
    pub title: String,
    pub started: Time,
}

#[derive(Debug, Serialize)]
pub struct ChainStatus {
    pub name: String,
    pub chain_id: u64,
    /// `ok` (quorum can be met), `degraded` (some upstream serving, fewer operators than
    /// the quorum), `down` (none serving).
    pub state: &'static str,
    pub head: Option<Head>,
    pub safe: Option<u64>,
    pub finalized: Option<u64>,
    pub quorum: usize,
    pub upstreams: Vec<UpstreamStatus>,
    /// Share of observed time with at least one upstream serving (`null`: no data).
    pub uptime_24h: Option<f64>,
    pub uptime_90d: Option<f64>,
    /// Ids of the open incidents that concern this chain.
    pub open_incidents: Vec<u64>,
}

#[derive(Debug, Serialize)]
pub struct Head {
    pub number: u64,
    pub hash: String,
    pub confirmed: bool,
}

#[derive(Debug, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub operator: String,
    pub tier: u8,
    /// `ready`, `unresponsive` (connected, nothing answers), `cooling-down` (failing
    /// or refused), `banned` (caught lying), `unchecked` or `wrong-chain`.
    pub state: &'static str,
    /// Seconds since it last answered well (`null`: never, since Outlast started).
    pub last_success_secs: Option<u64>,
    pub breaker: &'static str,
    pub head: Option<u64>,
    pub lag: Option<u64>,
    pub latency_ms: Option<f64>,
    pub tail_ms: Option<f64>,
    pub error_rate: f64,
    pub in_flight: usize,
    /// Lower is better; `reasons` say why, in words.
    pub score: f64,
    pub reasons: Vec<String>,
    pub last_error: Option<String>,
    /// Times it was caught lying since Outlast started.
    pub bans: u32,
    pub cloud: Option<String>,
    pub region: Option<String>,
    /// Share of observed time serving and caught up (`null`: no data).
    pub uptime_24h: Option<f64>,
    pub uptime_90d: Option<f64>,
}

pub fn snapshot(gw: &Gateway) -> Snapshot {
    let open = gw.incidents.open();
    let now = Time::now();
    Snapshot {
        chains: gw
            .chains
            .iter()
            .map(|c| {
                let mut status = chain(c, &gw.incidents, now);
                status.open_incidents = open
                    .iter()
                    .filter(|i| i.chains.iter().any(|n| *n == *c.name))
                    .map(|i| i.id)
                    .collect();
                status
            })
            .collect(),
        incidents: open
            .into_iter()
            .map(|i| IncidentBrief {
                id: i.id,
                kind: i.kind,
                severity: i.severity,
                title: i.title,
                started: i.started,
            })
            .collect(),
    }
}

fn chain(c: &Chain, incidents: &Incidents, now: Time) -> ChainStatus {
    let heads = c.head.get();
    let upstreams: Vec<UpstreamStatus> = c
        .upstreams()
        .iter()
        .map(|u| upstream(c, u, incidents, now))
        .collect();
    let uptime = incidents.uptime(&c.name, now);
    let serving: std::collections::HashSet<&str> = upstreams
        .iter()
        .filter(|u| u.state == "ready")
        .map(|u| u.operator.as_str())
        .collect();
    ChainStatus {
        name: c.name.to_string(),
        chain_id: c.chain_id,
        state: match serving.len() {
            0 => "down",
            n if n < c.quorum => "degraded",
            _ => "ok",
        },
        head: heads.consensus.map(|h| Head {
            number: h.number,
            hash: h.hash.to_string(),
            confirmed: h.confirmed,
        }),
        safe: heads.safe,
        finalized: heads.finalized,
        quorum: c.quorum,
        upstreams,
        uptime_24h: uptime.ratio_24h,
        uptime_90d: uptime.ratio_90d,
        open_incidents: Vec::new(),
    }
}

fn upstream(c: &Chain, u: &Upstream, incidents: &Incidents, now: Time) -> UpstreamStatus {
    let uptime = incidents.uptime(&format!("{}/{}", c.name, u.name), now);
    let stats = u.health.stats();
    let head = u.head.latest();
    let lag = head.map(|_| c.lag(u));
    let in_flight = u.limits.in_flight();
    let s = score::score(&stats, in_flight, lag.unwrap_or(0));
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    UpstreamStatus {
        name: u.name.to_string(),
        operator: u.operator.clone(),
        tier: u.tier,
        state: u.health.status().state(),
        last_success_secs: u
            .health
            .last_success()
            .map(|t| Instant::now().saturating_duration_since(t).as_secs()),
        breaker: u.health.breaker(Instant::now()),
        head,
        lag,
        latency_ms: stats.latency().map(ms),
        tail_ms: stats.tail().map(ms),
        error_rate: (stats.error_rate() * 1000.0).round() / 1000.0,
        in_flight,
        score: (s.value * 10.0).round() / 10.0,
        reasons: s.reasons,
        last_error: u.health.last_error(),
        bans: u.health.bans(),
        cloud: u.cloud.clone(),
        region: u.region.clone(),
        uptime_24h: uptime.ratio_24h,
        uptime_90d: uptime.ratio_90d,
    }
}
