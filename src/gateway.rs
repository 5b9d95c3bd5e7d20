//! The gateway's long-lived state, built once from the config: each chain with its
//! upstreams, and the request limits. Shared by the server and the background tasks.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use crate::{
    config::{Config, Limits, Verify},
    incidents::Incidents,
    route::{
        budget::RetryBudget,
        heads::{self, ChainHead, HeadView},
        health::Status,
    },
    rpc::{MethodPolicy, ParseLimits},
    upstream::{self, Upstream},
    verify::header::CheckedHeader,
};

/// Fastest head poll, however fast the chain's blocks.
const MIN_POLL: Duration = Duration::from_millis(100);

pub struct Gateway {
    /// Set when shutdown begins: `/readyz` answers 503 from then on.
    pub draining: std::sync::atomic::AtomicBool,
    pub chains: Vec<Arc<Chain>>,
    /// By name and by decimal chain id: both are valid URL paths.
    by_path: HashMap<String, Arc<Chain>>,
    pub limits: Limits,
    /// `[server] body_timeout_ms`: a request body must arrive within this long.
    pub body_timeout: Duration,
    pub policy: MethodPolicy,
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
    /// `[auth]`, `[cors]`, `[admin]`: keys, rate limits, browsers, the admin token.
    pub access: crate::auth::Access,
}

pub struct Chain {
    pub name: Arc<str>,
    pub chain_id: u64,
    pub upstreams: Vec<Arc<Upstream>>,
    pub max_attempts: usize,
    /// Distinct operators that must agree on the consensus head.
    pub quorum: usize,
    pub head: ChainHead,
    /// Hedge delay bounds (min, max) for reads; `None` when hedging is off.
    pub hedge: Option<(Duration, Duration)>,
    pub budget: RetryBudget,
    /// Spreads calls over equally good upstreams.
    pub rotation: AtomicUsize,
    /// Seconds per block, learned from the consensus head: sets the head poll interval.
    block_time: Mutex<BlockTime>,
    max_poll: Duration,
    pub verify: Verify,
    pub quorum_methods: Vec<String>,
    /// How long a liar stays banned.
    pub ban_for: Duration,
    /// Distinct operators among the configured upstreams.
    operators: usize,
    /// Headers whose hash a quorum agreed on, by number (see `trusted_header`).
    trusted: Mutex<BTreeMap<u64, (CheckedHeader, Instant)>>,
    /// Where to report a liar with its evidence: `incidents.upstream_lied(..)`.
    pub incidents: Arc<Incidents>,
    /// WebSocket subscriptions: the fan-out hub, told of every consensus head move.
    pub subs: crate::subscribe::Hub,
    /// HTTP filters (`eth_newFilter` & co.), held here and fed from `subs`.
    pub filters: crate::subscribe::filters::Filters,
    /// `[tx] rebroadcast`: where `tx::broadcast` keeps what an upstream accepted (the
    /// gateway's one store, shared by every chain); `None` when off.
    pub rebroadcast: Option<Arc<crate::tx::Pending>>,
}

/// Trusted headers kept for verified reads.
const TRUSTED_HEADERS: usize = 256;
/// A trusted header above the finalized block is reused only this long: it may reorg.
const UNFINALIZED_TRUST: Duration = Duration::from_secs(2);

#[derive(Default)]
struct BlockTime {
    last: Option<(u64, Instant)>,
    estimate: Option<Duration>,
}

/// How many of a chain's upstreams may be chosen now, for `/readyz`.
#[derive(Debug, serde::Serialize)]
pub struct Readiness {
    pub chain: Arc<str>,
    pub upstreams: usize,
    pub ready_upstreams: usize,
    /// Not yet past their first `eth_chainId` check.
    pub unchecked_upstreams: usize,
    /// The consensus head, once any upstream's head is known.
    pub head: Option<u64>,
}

impl Chain {
    /// Operators that must agree: the configured quorum, or every configured operator
    /// when there are fewer (`outlast check` warns about that).
    pub fn effective_quorum(&self) -> usize {
        self.quorum.min(self.operators).max(1)
    }

    /// A header a quorum agreed on, if known and still safe to reuse.
    pub fn trusted_header(&self, number: u64) -> Option<CheckedHeader> {
        let finalized = self.head.get().finalized;
        let trusted = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        let (h, at) = trusted.get(&number)?;
        (finalized.is_some_and(|f| number <= f) || at.elapsed() < UNFINALIZED_TRUST).then_some(*h)
    }

    pub fn remember_header(&self, h: CheckedHeader) {
        let mut trusted = self.trusted.lock().unwrap_or_else(|e| e.into_inner());
        trusted.insert(h.number, (h, Instant::now()));
        while trusted.len() > TRUSTED_HEADERS {
            trusted.pop_first();
        }
    }

    /// Recomputes the consensus head from the ready upstreams' views.
    pub fn refresh_head(&self) {
        let views: Vec<(&str, HeadView)> = self
            .upstreams
            .iter()
            .filter(|u| u.health.is_ready())
            .map(|u| (u.operator.as_str(), u.head.view()))
            .collect();
        let views = heads::without_stalled(views, self.stall_after(), Instant::now());
        let Some(moved) = self.head.update(&views, self.quorum) else {
            return;
        };
        tracing::debug!(chain = %self.name, number = moved.number, hash = %moved.hash, confirmed = moved.confirmed, "consensus head");
        self.subs.head_moved(&moved);
        let now = Instant::now();
        let mut bt = self.block_time.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n0, t0)) = bt.last
            && moved.number > n0
        {
            let sample =
                now.duration_since(t0) / u32::try_from(moved.number - n0).unwrap_or(u32::MAX);
            bt.estimate = Some(bt.estimate.map_or(sample, |e| (e * 3 + sample) / 4));
        }
        bt.last = Some((moved.number, now));
    }

    /// How long a head may stand still behind the others before it loses its vote:
    /// three block times, and at least a second.
    fn stall_after(&self) -> Duration {
        let estimate = self
            .block_time
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .estimate;
        (estimate.unwrap_or(self.max_poll) * 3).max(Duration::from_secs(1))
    }

    pub fn poll_interval(&self) -> Duration {
        let estimate = self
            .block_time
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .estimate;
        upstream::poll_interval(estimate, MIN_POLL.min(self.max_poll), self.max_poll)
    }

    /// Remembers that `upstream` refused log ranges larger than `size`.
    pub fn learn_logs_range(&self, upstream: &str, size: u64) {
        if let Some(up) = self.upstreams.iter().find(|u| &*u.name == upstream)
            && let Some(size) = up.logs_range.learn(size, Instant::now())
        {
            tracing::info!(chain = %self.name, upstream, size, "learned the upstream's eth_getLogs range limit");
        }
    }

    /// Blocks behind the consensus head (0 when unknown).
    pub fn lag(&self, up: &Upstream) -> u64 {
        match (self.head.latest(), up.head.latest()) {
            (Some(consensus), Some(own)) => consensus.saturating_sub(own),
            _ => 0,
        }
    }

    pub fn readiness(&self) -> Readiness {
        let count = |f: fn(&Status) -> bool| {
            self.upstreams
                .iter()
                .filter(|u| f(&u.health.status()))
                .count()
        };
        Readiness {
            chain: self.name.clone(),
            upstreams: self.upstreams.len(),
            ready_upstreams: count(|s| *s == Status::Ready),
            unchecked_upstreams: count(|s| *s == Status::Unchecked),
            head: self.head.latest(),
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
            .map(|c| {
                let name: Arc<str> = Arc::from(c.name.as_str());
                Arc::new(Chain {
                    upstreams: c
                        .upstreams
                        .iter()
                        .map(|u| Arc::new(Upstream::new(&name, u, &config.routing, http.clone())))
                        .collect(),
                    name,
                    chain_id: c.chain_id,
                    max_attempts: config.routing.max_attempts,
                    quorum: c.quorum,
                    head: ChainHead::default(),
                    hedge: config.routing.hedge.then(|| {
                        (
                            Duration::from_millis(config.routing.hedge_min_ms),
                            Duration::from_millis(config.routing.request_timeout_ms),
                        )
                    }),
                    budget: RetryBudget::new(
                        config.routing.retry_budget_ratio,
                        config.routing.retry_budget_per_sec,
                    ),
                    rotation: AtomicUsize::new(0),
                    block_time: Mutex::new(BlockTime::default()),
                    max_poll: Duration::from_millis(config.routing.head_poll_ms),
                    subs: crate::subscribe::Hub::new(config.limits.ws_client_buffer),
                    filters: crate::subscribe::filters::Filters::new(&config.limits),
                    verify: c.verify,
                    quorum_methods: c.quorum_methods.clone(),
                    ban_for: Duration::from_secs(config.routing.liar_ban_secs),
                    operators: c
                        .upstreams
                        .iter()
                        .map(|u| u.operator.as_str())
                        .collect::<HashSet<_>>()
                        .len(),
                    trusted: Mutex::new(BTreeMap::new()),
                    incidents: incidents.clone(),
                    rebroadcast: rebroadcast.clone(),
                })
            })
            .collect();
        let mut by_path = HashMap::new();
        for chain in &chains {
            by_path.insert(chain.name.to_string(), chain.clone());
            by_path.insert(chain.chain_id.to_string(), chain.clone());
        }
        Ok(Gateway {
            draining: std::sync::atomic::AtomicBool::new(false),
            chains,
            by_path,
            limits: config.limits.clone(),
            body_timeout: Duration::from_millis(config.server.body_timeout_ms),
            policy: MethodPolicy::new(&config.limits.denied_methods),
            chain_id_check: Duration::from_secs(config.routing.chain_id_check_secs),
            incidents,
            storage: Arc::new(crate::storage::Storage::new(&config.storage)?),
            cache: crate::cache::Cache::new(&config.cache, &config.redis),
            ledger: crate::tx::Ledger::new(Duration::from_secs(config.tx.remember_secs)),
            broadcast_to: config.tx.broadcast_to,
            rebroadcast,
            access: crate::auth::Access::new(config),
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

    /// `[limits]` on what one client's `eth_getLogs` may cost.
    pub fn log_limits(&self) -> crate::route::logs::LogLimits {
        crate::route::logs::LogLimits {
            max_range: self.limits.max_logs_range,
            max_pieces: self.limits.max_logs_pieces,
            max_bytes: self.limits.max_logs_bytes,
        }
    }

    pub fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_batch: self.limits.max_batch,
            max_depth: self.limits.max_depth,
        }
    }
}
