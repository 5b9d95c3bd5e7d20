//! The gateway's long-lived state, built once from the config: each chain with its
//! upstreams, and the request limits. Shared by the server and the background tasks.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicUsize},
    time::{Duration, Instant},
};

use crate::{
    config::{Config, Limits},
    route::{
        budget::RetryBudget,
        heads::{self, ChainHead, HeadView},
        health::Status,
    },
    rpc::{MethodPolicy, ParseLimits},
    upstream::{self, Upstream},
};

/// Fastest head poll, however fast the chain's blocks.
const MIN_POLL: Duration = Duration::from_millis(100);

pub struct Gateway {
    pub chains: Vec<Arc<Chain>>,
    /// By name and by decimal chain id: both are valid URL paths.
    by_path: HashMap<String, Arc<Chain>>,
    pub limits: Limits,
    pub policy: MethodPolicy,
    pub chain_id_check: Duration,
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
}

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
        if let Some(up) = self.upstreams.iter().find(|u| &*u.name == upstream) {
            let old = up.logs_range.load(std::sync::atomic::Ordering::Relaxed);
            if old == 0 || size < old {
                up.logs_range
                    .store(size, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(chain = %self.name, upstream, size, "learned the upstream's eth_getLogs range limit");
            }
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
    pub fn new(config: &Config) -> reqwest::Result<Self> {
        let http = upstream::http_client(&config.routing)?;
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
                })
            })
            .collect();
        let mut by_path = HashMap::new();
        for chain in &chains {
            by_path.insert(chain.name.to_string(), chain.clone());
            by_path.insert(chain.chain_id.to_string(), chain.clone());
        }
        Ok(Gateway {
            chains,
            by_path,
            limits: config.limits.clone(),
            policy: MethodPolicy::new(&config.limits.denied_methods),
            chain_id_check: Duration::from_secs(config.routing.chain_id_check_secs),
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

    pub fn parse_limits(&self) -> ParseLimits {
        ParseLimits {
            max_batch: self.limits.max_batch,
            max_depth: self.limits.max_depth,
        }
    }
}
