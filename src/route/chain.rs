//! One chain's routing state: its upstreams, the consensus head they agree on, the
//! headers a quorum agreed on, the retry budget and hedging bounds. Knows nothing of
//! the features built on it (cache, subscriptions, incidents, transactions): they
//! receive a `Chain` and follow its head through `moves`.
//!
//! The upstream set is a snapshot swapped whole on reload (`swap_upstreams`): a call
//! works on the set it loaded, so a reload never changes one under its feet.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use super::budget::RetryBudget;
use crate::{
    config::{self, Routing, Verify},
    upstream::{
        self, Upstream,
        heads::{self, ChainHead, Consensus, HeadView},
        health::Status,
    },
    verify::header::CheckedHeader,
};

/// Fastest head poll, however fast the chain's blocks.
const MIN_POLL: Duration = Duration::from_millis(100);

pub struct Chain {
    pub name: Arc<str>,
    pub chain_id: u64,
    /// Swapped whole by `swap_upstreams` (hot reload); read with `upstreams()`.
    upstreams: ArcSwap<Vec<Arc<Upstream>>>,
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
    /// Distinct operators among the configured upstreams (recounted on reload).
    operators: AtomicUsize,
    /// Headers whose hash a quorum agreed on, by number (see `trusted_header`).
    trusted: Mutex<BTreeMap<u64, (CheckedHeader, Instant)>>,
    /// Proven receipts of the blocks asked for last (`route::receipt`).
    pub(super) receipts: super::receipt::RecentReceipts,
    /// Every move of the consensus head, for whoever follows it (subscriptions, filters,
    /// reads held until the head reaches a block).
    moves: watch::Sender<Option<Consensus>>,
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
    /// A chain with no head known yet, from its config and `[routing]`.
    pub fn new(c: &config::Chain, routing: &Routing, http: &upstream::HttpClient) -> Chain {
        let name: Arc<str> = Arc::from(c.name.as_str());
        let upstreams: Vec<Arc<Upstream>> = c
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(&name, u, routing, http.clone())))
            .collect();
        Chain {
            operators: AtomicUsize::new(operators(&upstreams)),
            upstreams: ArcSwap::from_pointee(upstreams),
            name,
            chain_id: c.chain_id,
            max_attempts: routing.max_attempts,
            quorum: c.quorum,
            head: ChainHead::default(),
            hedge: routing.hedge.then(|| {
                (
                    Duration::from_millis(routing.hedge_min_ms),
                    Duration::from_millis(routing.request_timeout_ms),
                )
            }),
            budget: RetryBudget::new(routing.retry_budget_ratio, routing.retry_budget_per_sec),
            rotation: AtomicUsize::new(0),
            block_time: Mutex::new(BlockTime::default()),
            max_poll: Duration::from_millis(routing.head_poll_ms),
            verify: c.verify,
            quorum_methods: c.quorum_methods.clone(),
            ban_for: Duration::from_secs(routing.liar_ban_secs),
            trusted: Mutex::new(BTreeMap::new()),
            receipts: Default::default(),
            moves: watch::Sender::new(None),
        }
    }

    /// The upstreams now configured: a snapshot, kept by whoever holds it even when a
    /// reload swaps the set (so a call finishes on the upstreams it started with).
    pub fn upstreams(&self) -> Arc<Vec<Arc<Upstream>>> {
        self.upstreams.load_full()
    }

    /// Replaces the upstream set at once (hot reload) and recomputes the consensus head
    /// from the new set. Returns the old set.
    pub fn swap_upstreams(&self, new: Vec<Arc<Upstream>>) -> Arc<Vec<Arc<Upstream>>> {
        self.operators.store(operators(&new), Ordering::Relaxed);
        let old = self.upstreams.swap(Arc::new(new));
        self.refresh_head();
        old
    }

    /// The consensus head as it moves (the current one first, once known).
    pub fn moves(&self) -> watch::Receiver<Option<Consensus>> {
        self.moves.subscribe()
    }

    /// Waits (at most `within`) until the consensus head is at block `number` or
    /// above; true when it is.
    pub async fn reached(&self, number: u64, within: Duration) -> bool {
        let mut moves = self.moves.subscribe();
        let at = |h: &Option<Consensus>| h.as_ref().is_some_and(|c| c.number >= number);
        tokio::time::timeout(within, moves.wait_for(at))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Operators that must agree: the configured quorum, or every configured operator
    /// when there are fewer (`outlast check` warns about that).
    pub fn effective_quorum(&self) -> usize {
        self.quorum
            .min(self.operators.load(Ordering::Relaxed))
            .max(1)
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
        let upstreams = self.upstreams();
        let views: Vec<(&str, HeadView)> = upstreams
            .iter()
            .filter(|u| u.health.is_ready())
            .map(|u| (u.operator.as_str(), u.head.view()))
            .collect();
        let views = heads::without_stalled(views, self.stall_after(), Instant::now());
        let Some(moved) = self.head.update(&views, self.quorum) else {
            return;
        };
        tracing::debug!(chain = %self.name, number = moved.number, hash = %moved.hash, confirmed = moved.confirmed, "consensus head");
        self.moves.send_replace(Some(moved.clone()));
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
        if let Some(up) = self.upstreams().iter().find(|u| &*u.name == upstream)
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
        let upstreams = self.upstreams();
        let count =
            |f: fn(&Status) -> bool| upstreams.iter().filter(|u| f(&u.health.status())).count();
        Readiness {
            chain: self.name.clone(),
            upstreams: upstreams.len(),
            ready_upstreams: count(|s| *s == Status::Ready),
            unchecked_upstreams: count(|s| *s == Status::Unchecked),
            head: self.head.latest(),
        }
    }
}

/// Distinct operators among `upstreams`.
fn operators(upstreams: &[Arc<Upstream>]) -> usize {
    upstreams
        .iter()
        .map(|u| u.operator.as_str())
        .collect::<HashSet<_>>()
        .len()
}
