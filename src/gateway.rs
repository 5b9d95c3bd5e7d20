//! The gateway's long-lived state, built once from the config: each chain with its
//! upstreams, and the request limits. Shared by the server and the background tasks.
//!
//! What a reload changes is swapped, never edited in place: each chain's upstream set
//! (`route::Chain::swap_upstreams`) and the `Settings` here (`[limits]`, the method
//! policy, `[auth]`/`[cors]`/`[admin]`), one snapshot for all three. A request reads
//! them when it needs them; one that started keeps what it loaded.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use arc_swap::ArcSwap;

use crate::{
    config::{Config, Limits},
    incidents::Incidents,
    route::Chain,
    rpc::{MethodPolicy, ParseLimits},
    upstream,
};

pub struct Gateway {
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    pub chains: Vec<Arc<Chain>>,
    /// Per chain (same order as `chains`): its subscriptions and HTTP filters.
    live: Vec<Arc<crate::subscribe::Live>>,
    /// By name and by decimal chain id: both are valid URL paths.
    by_path: HashMap<String, Arc<Chain>>,
    /// `[limits]`, the method policy and the access rules: read with `limits()`,
    /// `policy()`, `access()`; replaced together by `swap_settings` (hot reload).
    settings: ArcSwap<Settings>,
    /// The HTTP client of every upstream, for the ones a reload adds.
    pub http: upstream::HttpClient,
    /// Asks for a reload (`POST /api/v1/admin/reload`); unset when Outlast was started
    /// without a config file, or outside `run` (`outlast probe`, tests).
    pub reload: OnceLock<crate::reload::Trigger>,
    /// `[server] body_timeout_ms`: a request body must arrive within this long.
    pub body_timeout: Duration,
    pub chain_id_check: Duration,
    /// Incidents, uptime and webhooks (`incidents`), shared with every chain.
    pub incidents: Arc<Incidents>,
    /// IPFS and Arweave gateways, for `/ipfs/…` and `/ar/…` (`storage`).
    pub storage: Arc<crate::storage::Storage>,
    /// Answers of every chain, keyed by chain id (`cache`).
    pub cache: crate::cache::Cache,
    /// Raw transactions Outlast broadcast, for read-your-writes (`tx`).
    pub ledger: crate::tx::Ledger,
    /// `[tx] broadcast_to`: distinct operators each raw transaction is sent to.
    pub broadcast_to: usize,
    /// `[tx] rebroadcast`: accepted transactions kept and re-sent until mined (`tx`).
    pub rebroadcast: Option<Arc<crate::tx::Pending>>,
}

/// What a reload replaces at once: one snapshot, so no request sees new limits with
/// old keys.
pub struct Settings {
    pub limits: Arc<Limits>,
    pub policy: Arc<MethodPolicy>,
    /// `[auth]`, `[cors]`, `[admin]`: keys, rate limits, browsers, the admin token.
    /// Rebuilt on reload, so per-key and per-address budgets start full again.
    pub access: Arc<crate::auth::Access>,
}

impl Settings {
    pub fn new(config: &Config) -> Settings {
        Settings {
            limits: Arc::new(config.limits.clone()),
            policy: Arc::new(MethodPolicy::new(&config.limits.denied_methods)),
            access: Arc::new(crate::auth::Access::new(config)),
        }
    }
}

impl Gateway {
    /// Without `[tx] rebroadcast` (e.g. `outlast probe`, which must not take the store).
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        Gateway::with_rebroadcast(config, None)
    }

    /// With the pending transactions `tx::Pending::open` loaded (when rebroadcast is on).
    pub fn with_rebroadcast(
        config: &Config,
        rebroadcast: Option<Arc<crate::tx::Pending>>,
    ) -> reqwest::Result<Self> {
        let http = upstream::http_client(&config.routing);
        let incidents = Arc::new(Incidents::new(&config.status, &config.webhooks));
        let chains: Vec<Arc<Chain>> = config
            .chains
            .iter()
            .map(|c| Arc::new(Chain::new(c, &config.routing, &http)))
            .collect();
        let live = chains
            .iter()
            .map(|_| Arc::new(crate::subscribe::Live::new(&config.limits)))
            .collect();
        let mut by_path = HashMap::new();
        for chain in &chains {
            by_path.insert(chain.name.to_string(), chain.clone());
            by_path.insert(chain.chain_id.to_string(), chain.clone());
        }
        Ok(Gateway {
            draining: std::sync::atomic::AtomicBool::new(false),
            chains,
            live,
            by_path,
            settings: ArcSwap::from_pointee(Settings::new(config)),
            http,
            reload: OnceLock::new(),
            body_timeout: Duration::from_millis(config.server.body_timeout_ms),
            chain_id_check: Duration::from_secs(config.routing.chain_id_check_secs),
            incidents,
            storage: Arc::new(crate::storage::Storage::new(&config.storage)?),
            cache: crate::cache::Cache::new(&config.cache, &config.redis),
            ledger: crate::tx::Ledger::new(Duration::from_secs(config.tx.remember_secs)),
            broadcast_to: config.tx.broadcast_to,
            rebroadcast,
        })
    }

    /// `path` is a chain name or decimal chain id; `None` means `POST /`, which is only
    /// unambiguous with exactly one chain.
    pub fn chain(&self, path: Option<&str>) -> Option<&Arc<Chain>> {
        match path {
            Some(p) => self.by_path.get(p),
            None if self.chains.len() == 1 => self.chains.first(),
            None => None,
        }
    }

    /// The subscriptions and HTTP filters of `chain` (one of `chains`).
    pub fn live(&self, chain: &Chain) -> &Arc<crate::subscribe::Live> {
        let i = self
            .chains
            .iter()
            .position(|c| std::ptr::eq(&**c, chain))
            .unwrap_or_default();
        &self.live[i]
    }

    /// Every chain with its subscriptions and HTTP filters.
    pub fn chains_live(&self) -> impl Iterator<Item = (&Arc<Chain>, &Arc<crate::subscribe::Live>)> {
        self.chains.iter().zip(&self.live)
    }

    /// `[limits]` now in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.settings.load().limits.clone()
    }

    /// Methods denied to everyone (`[limits] denied_methods`).
    pub fn policy(&self) -> Arc<MethodPolicy> {
        self.settings.load().policy.clone()
    }

    /// Keys, budgets, browsers and the admin token now in force.
    pub fn access(&self) -> Arc<crate::auth::Access> {
        self.settings.load().access.clone()
    }

    /// Replaces limits, policy and access rules at once (hot reload).
    pub fn swap_settings(&self, settings: Settings) {
        self.settings.store(Arc::new(settings));
    }

    /// `[limits]` on what one client's `eth_getLogs` may cost.
    pub fn log_limits(&self) -> crate::route::logs::LogLimits {
        let limits = self.limits();
        crate::route::logs::LogLimits {
            max_range: limits.max_logs_range,
            max_pieces: limits.max_logs_pieces,
            max_bytes: limits.max_logs_bytes,
        }
    }

    pub fn parse_limits(&self) -> ParseLimits {
        let limits = self.limits();
        ParseLimits {
            max_batch: limits.max_batch,
            max_depth: limits.max_depth,
        }
    }
}
