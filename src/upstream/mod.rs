//! One RPC endpoint: how to send it calls (`client`), the provider's limits we keep
//! (`limits`), and the background tasks that keep its health honest (`probe`: chain id
//! and coming back from a cool-down; `track`: its head). The only module that sees a
//! provider's real URL.

mod capabilities;
mod client;
#[cfg(test)]
pub mod fake;
pub mod heads;
pub mod health;
mod limits;
mod probe;
pub mod score;
mod track;
mod transport;
mod ws;

use std::{sync::Arc, time::Duration};

pub use capabilities::Capability;
pub use client::{Answer, UpstreamError};
pub use limits::{InFlight, Limits, LogsRange, MIN_LEARNED_LOGS_RANGE};
pub use probe::{log_transition, watch};
pub use track::{PolledHead, poll_interval};
pub use transport::{HttpClient, http_client};
pub use ws::WsFeed;

use crate::config::{self, UpstreamUrl};
use heads::UpstreamHead;
use health::Health;

pub struct Upstream {
    pub name: Arc<str>,
    /// The chain this upstream serves, for logs.
    pub chain: Arc<str>,
    pub operator: String,
    /// Where it runs, when labelled: incidents group failures that share them.
    pub cloud: Option<String>,
    pub region: Option<String>,
    pub tier: u8,
    url: UpstreamUrl,
    http: HttpClient,
    /// The URL as a request target, worked out once (an error here is reported at
    /// every send, never a panic).
    target: Result<transport::Target, String>,
    /// What the HTTP client waits for one attempt, named in timeout errors.
    timeout: Duration,
    /// `[routing] max_reply_bytes`.
    max_reply: usize,
    /// Shared with the upstream that replaces this one when a reload only relabels it
    /// (`relabelled`), so health and head outlive a reload.
    pub health: Arc<Health>,
    pub head: Arc<UpstreamHead>,
    pub limits: Limits,
    /// Largest `eth_getLogs` block range it takes: from config, or learned from its
    /// refusals (with a floor and an expiry).
    pub logs_range: LogsRange,
    /// Set by a person through the admin API: not chosen while set (`route::select`).
    pub cordon: Arc<health::Cordon>,
    /// In unit tests: replies come from this script instead of the network.
    #[cfg(test)]
    script: Option<fake::Script>,
}

impl Upstream {
    /// What the HTTP client waits for one attempt.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn new(
        chain: &Arc<str>,
        cfg: &config::Upstream,
        routing: &config::Routing,
        http: HttpClient,
    ) -> Self {
        Upstream {
            name: Arc::from(cfg.name.as_str()),
            chain: chain.clone(),
            operator: cfg.operator.clone(),
            cloud: cfg.cloud.clone(),
            region: cfg.region.clone(),
            tier: cfg.tier,
            url: cfg.url.clone(),
            target: transport::Target::new(cfg.url.expose()),
            http,
            timeout: Duration::from_millis(routing.request_timeout_ms),
            max_reply: usize::try_from(routing.max_reply_bytes).unwrap_or(usize::MAX),
            health: Arc::new(Health::new(routing)),
            head: Arc::default(),
            limits: Limits::new(cfg.max_rps, cfg.max_concurrency),
            logs_range: LogsRange::new(cfg.max_logs_range),
            cordon: Arc::default(),
            #[cfg(test)]
            script: None,
        }
    }

    /// This upstream with the labels and limits of `cfg` (same name and URLs; a reload
    /// changed its tier, operator, cloud, region or limits): health, head and cordon
    /// are shared, so the new one serves on what the old one learned.
    pub fn relabelled(
        &self,
        cfg: &config::Upstream,
        routing: &config::Routing,
        http: HttpClient,
    ) -> Self {
        Upstream {
            health: self.health.clone(),
            head: self.head.clone(),
            cordon: self.cordon.clone(),
            ..Upstream::new(&self.chain, cfg, routing, http)
        }
    }

    /// The URL with secrets redacted: safe for logs and pages.
    pub fn shown_url(&self) -> String {
        self.url.to_string()
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}
