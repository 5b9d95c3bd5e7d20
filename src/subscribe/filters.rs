//! HTTP filters held by Outlast: `eth_newFilter`, `eth_newBlockFilter`,
//! `eth_newPendingTransactionFilter`, `eth_getFilterChanges`, `eth_getFilterLogs`,
//! `eth_uninstallFilter`.
//!
//! A filter made on one node lives on that node only, and the next poll may reach
//! another (`-32000 filter not found`): so Outlast answers these methods itself. Every
//! filter of a chain is fed by one `pump`, a client of the chain's `Hub` like a
//! WebSocket connection: new consensus blocks (each once, in chain order, gap-free
//! across failover), their logs (fetched by block hash by `follow`), the logs of blocks
//! that left the chain again (`"removed": true`) and pending transaction hashes. A poll
//! only drains the filter's queue; `eth_getFilterLogs` runs the filter's criteria as an
//! `eth_getLogs` through the normal path (its limits included: see `dispatch`).
//!
//! Bounded: `[limits] max_filters` per chain, `max_filters_per_client` per client (its
//! API key, else its address: `Owner`), `max_filter_items` queued per filter between
//! polls (more: the next poll gets -32005 and the filter is removed, so a gap is never
//! silent), and a filter not polled for `filter_timeout_secs` is dropped (as geth does
//! after 5 minutes). Ids are 128 random bits from the OS.
//!
//! Where a filter lives: with `[redis]`, block and log filters live in Redis
//! (`shared`), so any instance behind a load balancer answers their polls; their
//! bounds are counted there, across instances. Pending-transaction filters, and every
//! filter without Redis (or while Redis does not answer at creation), live in the
//! instance that made them, here. `handle` is the one entry from `dispatch`: it finds
//! each id here first, then in Redis. The local part never does I/O and never waits on
//! the hub: the hub never waits on it either.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{
    filter::{HEADS, LOGS, LogFilter, PENDING},
    hub::{Event, Hub, Log, Published},
    shared::{Kind, Shared},
};
use crate::{
    auth::Caller,
    cache::redis::RedisTier,
    config::Limits,
    route::Chain,
    route::Outcome,
    rpc::{Call, RpcError, errors::Attempt, parse::Rejected},
    upstream::Answer,
    upstream::heads::Consensus,
};

/// How often the pump looks for filters nobody polled for too long.
const SWEEP: Duration = Duration::from_secs(5);
/// A poll waits at most this long for the filters to catch up with the consensus head
/// (so a poll right after a receipt for block N sees block N's logs).
const CATCH_UP: Duration = Duration::from_secs(2);

/// `[limits]` on filters.
#[derive(Debug, Clone, Copy)]
pub struct FilterLimits {
    pub max_filters: usize,
    pub max_per_client: usize,
    pub max_items: usize,
    pub idle: Duration,
}

impl FilterLimits {
    pub fn of(limits: &Limits) -> FilterLimits {
        FilterLimits {
            max_filters: limits.max_filters,
            max_per_client: limits.max_filters_per_client,
            max_items: limits.max_filter_items,
            idle: Duration::from_secs(limits.filter_timeout_secs),
        }
    }

    /// The chain holds `max_filters` (`shared`: counted in Redis, across instances).
    pub fn total_error(&self, shared: bool) -> FilterError {
        crate::metrics::limit_exceeded("filters");
        let across = if shared {
            ", counted across the instances sharing Redis"
        } else {
            ""
        };
        FilterError::Limit(format!(
            "this chain has {} filters open ([limits] max_filters{across}); uninstall some (eth_uninstallFilter), or subscribe over WebSocket",
            self.max_filters
        ))
    }

    /// The caller holds `max_filters_per_client`.
    pub fn per_client_error(&self, shared: bool) -> FilterError {
        crate::metrics::limit_exceeded("filters");
        let across = if shared {
            ", counted across the instances sharing Redis"
        } else {
            ""
        };
        FilterError::Limit(format!(
            "you have {} filters open on this chain ([limits] max_filters_per_client, per API key, or per address without one{across}); uninstall those you no longer poll (eth_uninstallFilter), or let them expire ({} s unpolled)",
            self.max_per_client,
            self.idle.as_secs()
        ))
    }
}

/// Whom a filter counts against for `max_filters_per_client`: the caller's API key, or
/// without one its address (an IPv6 client's /64, which one host usually holds whole).
/// Every HTTP request has one, and few make filters: it is the parts, not their name
/// (`Display`), so making one allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Owner {
    Key(Arc<str>),
    /// An IPv4 address (also when mapped into IPv6), or an IPv6 /64 (its network).
    Address(std::net::IpAddr),
}

impl Owner {
    pub fn of(caller: &Caller, address: std::net::IpAddr) -> Owner {
        match caller {
            Caller::Key(key) => Owner::Key(key.name.clone()),
            _ => Owner::Address(crate::auth::network(address)),
        }
    }
}

/// `key:{name}`, `ip:{v4}` or `ip:{first four groups}::/64`: how Redis keys name it.
impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Key(name) => write!(f, "key:{name}"),
            Owner::Address(std::net::IpAddr::V4(a)) => write!(f, "ip:{a}"),
            Owner::Address(std::net::IpAddr::V6(a)) => {
                let s = a.segments();
                write!(f, "ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        }
    }
}

#[derive(Debug)]
pub(super) enum What {
    Blocks,
    Logs {
        filter: LogFilter,
        /// Block bounds the client gave as numbers (tags: unbounded).
        from: Option<u64>,
        to: Option<u64>,
        /// The client's criteria object, as sent: `eth_getFilterLogs` runs it.
        criteria: Box<RawValue>,
    },
    Pending,
}

impl What {
    fn label(&self) -> &'static str {
        match self {
            What::Blocks => "blocks",
            What::Logs { .. } => "logs",
            What::Pending => "pending",
        }
    }
}

struct Filter {
    what: What,
    owner: Owner,
    /// Events from this sequence number on are its own.
    since: u64,
    /// Its subscription epoch: block logs fetched for an older one may lack its logs.
    epoch: u64,
    /// What the next poll returns, each a raw JSON value.
    queue: Vec<Bytes>,
    /// More than `max_items` piled up: the next poll says so and removes it.
    overflowed: bool,
    polled: Instant,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<String, Filter>,
    /// The pump's hub client id, while it runs.
    pump: Option<u64>,
}

pub struct Filters {
    inner: Mutex<Inner>,
    limits: FilterLimits,
    /// The newest block number handed to the filters, for polls to wait on.
    delivered: watch::Sender<u64>,
}

/// Why a filter call was refused; becomes the JSON-RPC error nodes give.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// As geth and Anvil answer for an unknown or expired id.
    #[error("filter not found")]
    NotFound,
    #[error("{0}")]
    BadParams(String),
    #[error("{0}")]
    Limit(String),
    /// Redis (where shared filters live) did not answer.
    #[error("filters are shared through Redis, which did not answer; retry shortly")]
    Unreachable,
    /// Other instances kept changing the filter while this one tried to.
    #[error("this filter is being polled elsewhere at the same moment; retry")]
    Busy,
}

impl FilterError {
    fn outcome(self) -> Outcome {
        match self {
            FilterError::NotFound => {
                let message = self.to_string();
                let raw = serde_json::json!({"code": -32000, "message": message}).to_string();
                Outcome::Answered {
                    upstream: label(),
                    answer: Answer::Error {
                        raw: raw.into(),
                        code: -32000,
                        message,
                    },
                }
            }
            FilterError::BadParams(why) => Outcome::Refused(RpcError::InvalidParams(why)),
            FilterError::Limit(why) => Outcome::Refused(RpcError::LimitExceeded(why)),
            FilterError::Unreachable | FilterError::Busy => Outcome::Unavailable(vec![Attempt {
                upstream: "redis".into(),
                error: self.to_string(),
            }]),
        }
    }
}

/// What `Filters::handle` made of a request's accepted calls, by their index: the
/// answer of each filter call answered here, and for each `eth_getFilterLogs` of a log
/// filter, renamed `eth_getLogs`, its params. Empty (the default) for a request
/// without filter calls, which is nearly every request: nothing is allocated then.
#[derive(Default)]
pub struct Handled(Vec<(Option<Outcome>, Option<Box<RawValue>>)>);

impl Handled {
    /// The answer made here for accepted call `i`, taken.
    pub fn answer(&mut self, i: usize) -> Option<Outcome> {
        self.0.get_mut(i).and_then(|(answer, _)| answer.take())
    }

    /// The `eth_getLogs` params accepted call `i` became, taken.
    pub fn query(&mut self, i: usize) -> Option<Box<RawValue>> {
        self.0.get_mut(i).and_then(|(_, query)| query.take())
    }
}

/// The `x-outlast-upstream` of answers about filters: Outlast itself.
fn label() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from("outlast-filters"));
    LABEL.clone()
}

pub fn is_filter_method(method: &str) -> bool {
    matches!(
        method,
        "eth_newFilter"
            | "eth_newBlockFilter"
            | "eth_newPendingTransactionFilter"
            | "eth_getFilterChanges"
            | "eth_getFilterLogs"
            | "eth_uninstallFilter"
    )
}

impl Filters {
    pub fn new(limits: &Limits) -> Filters {
        Filters {
            inner: Mutex::new(Inner::default()),
            limits: FilterLimits::of(limits),
            delivered: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Filters are inserted and removed whole: a poisoned map is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Filters open now, by kind (`blocks`, `logs`, `pending`), for `/metrics`.
    pub fn counts(&self) -> [(&'static str, usize); 3] {
        let inner = self.lock();
        let mut out = [("blocks", 0), ("logs", 0), ("pending", 0)];
        for f in inner.by_id.values() {
            if let Some(slot) = out.iter_mut().find(|(k, _)| *k == f.what.label()) {
                slot.1 += 1;
            }
        }
        out
    }

    /// Whether any of these calls is about filters: `handle` is for those requests (its
    /// future is kilobytes, and nearly every request has none).
    pub fn asked(entries: &[Result<Call<'_>, Rejected<'_>>]) -> bool {
        entries
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .any(|call| is_filter_method(&call.method))
    }

    /// Step 3 of `dispatch`: answers every filter call of `entries`, in order (one batch
    /// may make a filter and poll it). Block and log filters are made in Redis when
    /// there is one (`redis`), else (or while it does not answer) here; an id is looked
    /// for here first, then in Redis. A poll of a filter held here first lets the
    /// filters catch up with the consensus head, so it never runs behind a receipt.
    pub async fn handle(
        &self,
        chain: &Chain,
        hub: &Hub,
        redis: Option<&RedisTier>,
        owner: &Owner,
        entries: &mut [Result<Call<'_>, Rejected<'_>>],
    ) -> Handled {
        let mut out = Handled::default();
        let mut waited = false;
        for call in entries.iter_mut().filter_map(|e| e.as_mut().ok()) {
            let (answer, query) = if is_filter_method(&call.method) {
                let shared = redis.map(|redis| Shared {
                    redis,
                    chain,
                    limits: self.limits,
                });
                let head = chain.head.get().consensus;
                let number = head.as_ref().map(|h| h.number);
                if call.method == "eth_getFilterChanges"
                    && !waited
                    && filter_id(call.params).is_ok_and(|id| self.holds(&id))
                {
                    waited = true;
                    self.caught_up(number).await;
                }
                self.answer_one(hub, shared.as_ref(), call, head.as_ref(), owner)
                    .await
            } else {
                (None, None)
            };
            out.0.push((answer, query));
        }
        out
    }

    /// One filter call: its answer, or for `eth_getFilterLogs` of a log filter the
    /// `eth_getLogs` params it becomes (the call renamed).
    async fn answer_one(
        &self,
        hub: &Hub,
        shared: Option<&Shared<'_>>,
        call: &mut Call<'_>,
        head: Option<&Consensus>,
        owner: &Owner,
    ) -> (Option<Outcome>, Option<Box<RawValue>>) {
        let number = head.map(|h| h.number);
        let local = |call: &Call<'_>| (self.answer(hub, call, number, owner), None);
        let Some(shared) = shared else {
            return match self.local_query(call) {
                Some(query) => (None, Some(query)),
                None => local(call),
            };
        };
        let done = |result: Result<Bytes, FilterError>| {
            let outcome = match result {
                Ok(raw) => Outcome::Answered {
                    upstream: label(),
                    answer: Answer::Result(raw),
                },
                Err(e) => e.outcome(),
            };
            (Some(outcome), None)
        };
        match call.method.as_ref() {
            "eth_newBlockFilter" | "eth_newFilter" => {
                let (kind, criteria) = if call.method == "eth_newFilter" {
                    match parse_criteria(call.params) {
                        Ok(What::Logs { criteria, .. }) => (Kind::Logs, Some(criteria)),
                        Ok(_) => return local(call),
                        Err(e) => return done(Err(e)),
                    }
                } else {
                    (Kind::Blocks, None)
                };
                // No consensus head yet: nothing to start a shared cursor at.
                let Some(head) = head else { return local(call) };
                match shared.create(kind, criteria, owner, head).await {
                    Err(FilterError::Unreachable) => {
                        tracing::debug!(method = %call.method, "Redis does not answer: this filter is held by this instance only");
                        local(call)
                    }
                    made => done(made.map(id_json)),
                }
            }
            "eth_getFilterChanges" | "eth_uninstallFilter" | "eth_getFilterLogs" => {
                let id = match filter_id(call.params) {
                    Ok(id) if !self.holds(&id) => id,
                    // Held here, or not an id at all: answered here.
                    _ => {
                        return match self.local_query(call) {
                            Some(query) => (None, Some(query)),
                            None => local(call),
                        };
                    }
                };
                match call.method.as_ref() {
                    "eth_getFilterChanges" => done(shared.changes(&id, head).await),
                    "eth_uninstallFilter" => done(
                        shared
                            .uninstall(&id)
                            .await
                            .map(|gone| Bytes::from_static(if gone { b"true" } else { b"false" })),
                    ),
                    _ => match shared.criteria(&id).await {
                        Ok(criteria) => {
                            match RawValue::from_string(format!("[{}]", criteria.get())) {
                                Ok(query) => {
                                    call.method = "eth_getLogs".into();
                                    (None, Some(query))
                                }
                                Err(_) => done(Err(FilterError::NotFound)),
                            }
                        }
                        Err(e) => done(Err(e)),
                    },
                }
            }
            _ => local(call),
        }
    }

    /// Whether the filter `id` is held by this instance.
    fn holds(&self, id: &str) -> bool {
        self.lock().by_id.contains_key(id)
    }

    /// Answers a filter method from the filters held here, other than a log filter's
    /// `eth_getFilterLogs` (`local_query`); `None` for any other method. `head` is the
    /// consensus head now: a new filter is owed nothing up to it.
    pub fn answer(
        &self,
        hub: &Hub,
        call: &Call<'_>,
        head: Option<u64>,
        owner: &Owner,
    ) -> Option<Outcome> {
        if !is_filter_method(&call.method) {
            return None;
        }
        let result = match call.method.as_ref() {
            "eth_newBlockFilter" => self.install(hub, What::Blocks, head, owner).map(id_json),
            "eth_newPendingTransactionFilter" => {
                self.install(hub, What::Pending, head, owner).map(id_json)
            }
            "eth_newFilter" => parse_criteria(call.params)
                .and_then(|what| self.install(hub, what, head, owner))
                .map(id_json),
            "eth_getFilterChanges" => filter_id(call.params).and_then(|id| self.changes(hub, &id)),
            "eth_uninstallFilter" => filter_id(call.params).map(|id| {
                let gone = self.remove(hub, &id);
                Bytes::from_static(if gone { b"true" } else { b"false" })
            }),
            // A log filter's became eth_getLogs: this is an unknown id or another kind.
            _ => filter_id(call.params).and_then(|_| Err(FilterError::NotFound)),
        };
        Some(match result {
            Ok(raw) => Outcome::Answered {
                upstream: label(),
                answer: Answer::Result(raw),
            },
            Err(e) => e.outcome(),
        })
    }

    /// When `call` is `eth_getFilterLogs` of a log filter held here: renames it
    /// `eth_getLogs` and returns its criteria as the params to send (`[criteria]`), so
    /// it takes the eth_getLogs path with its limits.
    fn local_query(&self, call: &mut Call<'_>) -> Option<Box<RawValue>> {
        let query = (call.method == "eth_getFilterLogs")
            .then(|| filter_id(call.params).ok())
            .flatten()
            .and_then(|id| self.criteria(&id))
            .and_then(|c| RawValue::from_string(format!("[{}]", c.get())).ok());
        if query.is_some() {
            call.method = "eth_getLogs".into();
        }
        query
    }

    fn criteria(&self, id: &str) -> Option<Box<RawValue>> {
        let mut inner = self.lock();
        let f = inner.by_id.get_mut(id)?;
        if f.polled.elapsed() > self.limits.idle {
            return None; // expired: swept soon; "not found" meanwhile
        }
        f.polled = Instant::now();
        match &f.what {
            What::Logs { criteria, .. } => Some(criteria.clone()),
            _ => None,
        }
    }

    fn install(
        &self,
        hub: &Hub,
        what: What,
        head: Option<u64>,
        owner: &Owner,
    ) -> Result<String, FilterError> {
        let mut inner = self.lock();
        let now = Instant::now();
        let idle = self.limits.idle;
        inner
            .by_id
            .retain(|_, f| now.duration_since(f.polled) <= idle);
        let owned = inner.by_id.values().filter(|f| f.owner == *owner).count();
        if owned >= self.limits.max_per_client {
            return Err(self.limits.per_client_error(false));
        }
        if inner.by_id.len() >= self.limits.max_filters {
            return Err(self.limits.total_error(false));
        }
        let id = new_id();
        inner.by_id.insert(
            id.clone(),
            Filter {
                what,
                owner: owner.clone(),
                since: u64::MAX,
                epoch: u64::MAX,
                queue: Vec::new(),
                overflowed: false,
                polled: now,
            },
        );
        // Events from now on are the new filter's: its place in the feed is taken
        // while the lock is held, so the pump sees it before any event it must get.
        let (since, epoch) = resubscribe(hub, &inner);
        if let Some(f) = inner.by_id.get_mut(&id) {
            (f.since, f.epoch) = (since, epoch);
        }
        // Blocks up to the head are not owed to the new filter: its first polls need
        // not wait for the feed (which starts at the head when nobody followed it).
        if let Some(head) = head {
            self.delivered.send_if_modified(|d| {
                let behind = *d < head;
                *d = (*d).max(head);
                behind
            });
        }
        Ok(id)
    }

    fn remove(&self, hub: &Hub, id: &str) -> bool {
        let mut inner = self.lock();
        let gone = inner.by_id.remove(id).is_some();
        if gone {
            resubscribe(hub, &inner);
        }
        gone
    }

    fn changes(&self, hub: &Hub, id: &str) -> Result<Bytes, FilterError> {
        let mut inner = self.lock();
        let f = inner.by_id.get_mut(id).ok_or(FilterError::NotFound)?;
        if f.polled.elapsed() > self.limits.idle {
            inner.by_id.remove(id);
            resubscribe(hub, &inner);
            return Err(FilterError::NotFound);
        }
        if f.overflowed {
            inner.by_id.remove(id);
            resubscribe(hub, &inner);
            return Err(FilterError::Limit(format!(
                "more than {} changes piled up since this filter's last poll ([limits] max_filter_items), so some were dropped; the filter was removed: create a new one and poll it more often (eth_getLogs fills the gap)",
                self.limits.max_items
            )));
        }
        f.polled = Instant::now();
        let items = std::mem::take(&mut f.queue);
        Ok(json_array(&items))
    }

    /// Waits (at most `CATCH_UP`) until the filters were given the consensus head
    /// `head`, so a poll never runs behind what the client was already told.
    pub async fn caught_up(&self, head: Option<u64>) {
        let Some(head) = head else { return };
        // Pending filters are not fed blocks: only block and log filters wait.
        let fed_blocks = self
            .lock()
            .by_id
            .values()
            .any(|f| !matches!(f.what, What::Pending));
        if !fed_blocks || *self.delivered.borrow() >= head {
            return;
        }
        let mut delivered = self.delivered.subscribe();
        let _ = tokio::time::timeout(CATCH_UP, delivered.wait_for(|d| *d >= head)).await;
    }

    /// Hands one event to every filter it belongs to.
    fn deliver(&self, published: &Published) {
        let max = self.limits.max_items;
        let mut inner = self.lock();
        let mut block_hash: Option<Bytes> = None;
        for f in inner
            .by_id
            .values_mut()
            .filter(|f| published.seq >= f.since && !f.overflowed)
        {
            let before = f.queue.len();
            match (&published.event, &f.what) {
                (Event::Block { header, .. }, What::Blocks) => {
                    if block_hash.is_none() {
                        block_hash = hash_of(header);
                    }
                    if let Some(h) = &block_hash {
                        f.queue.push(h.clone());
                    }
                }
                (
                    Event::Block {
                        number,
                        logs: Some(logs),
                        logs_as_of,
                        ..
                    },
                    What::Logs {
                        filter, from, to, ..
                    },
                ) if f.epoch <= *logs_as_of && in_range(*number, *from, *to) => {
                    push_logs(&mut f.queue, logs, filter, |_| true);
                }
                (
                    Event::Removed { of, logs },
                    What::Logs {
                        filter, from, to, ..
                    },
                ) if f.epoch <= *of => {
                    push_logs(&mut f.queue, logs, filter, |l| {
                        log_block(l).is_none_or(|n| in_range(n, *from, *to))
                    });
                }
                (Event::Pending { hash }, What::Pending) => f.queue.push(hash.clone()),
                _ => {}
            }
            if f.queue.len() > max && f.queue.len() > before {
                crate::metrics::limit_exceeded("filter_items");
                f.overflowed = true;
                f.queue = Vec::new();
            }
        }
        drop(inner);
        if let Event::Block { number, .. } = &published.event {
            self.delivered.send_replace(*number);
        }
    }

    /// Every filter missed events (the pump was cut off): each says so at its next poll.
    fn lost_events(&self) {
        for f in self.lock().by_id.values_mut() {
            f.overflowed = true;
            f.queue = Vec::new();
        }
    }

    /// Drops filters nobody polled for `filter_timeout_secs`.
    fn sweep(&self, hub: &Hub) {
        let mut inner = self.lock();
        let idle = self.limits.idle;
        let before = inner.by_id.len();
        inner.by_id.retain(|_, f| f.polled.elapsed() <= idle);
        if inner.by_id.len() != before {
            tracing::debug!(
                expired = before - inner.by_id.len(),
                "filters: expired unpolled filters"
            );
            resubscribe(hub, &inner);
        }
    }
}

/// Tells the hub what the pump needs now: the union of the filters' kinds and log
/// addresses. Returns the sequence number and epoch from which events include them.
fn resubscribe(hub: &Hub, inner: &Inner) -> (u64, u64) {
    let Some(pump) = inner.pump else {
        // No pump (background tasks not running): the filter never gets changes.
        return (u64::MAX, u64::MAX);
    };
    let mut kinds = 0;
    let mut addresses: Option<Vec<String>> = Some(Vec::new());
    for f in inner.by_id.values() {
        match &f.what {
            What::Blocks => kinds |= HEADS,
            What::Pending => kinds |= PENDING,
            What::Logs { filter, .. } => {
                // Blocks too: they carry the logs, and mark what was delivered.
                kinds |= HEADS | LOGS;
                match (&mut addresses, filter.addresses.is_empty()) {
                    (_, true) => addresses = None,
                    (Some(list), false) => list.extend(filter.addresses.iter().cloned()),
                    (None, false) => {}
                }
            }
        }
    }
    if let Some(list) = &mut addresses {
        list.sort_unstable();
        list.dedup();
    }
    hub.set_subscriptions(pump, kinds, addresses)
}

/// Feeds a chain's filters from its hub until `stop`. Spawned once per chain.
pub async fn pump(chain: Arc<Chain>, live: Arc<super::Live>, stop: CancellationToken) {
    let hub = &live.hub;
    let filters = &live.filters;
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        let mut client = hub.join();
        {
            let mut inner = filters.lock();
            inner.pump = Some(client.id);
            let (since, epoch) = resubscribe(hub, &inner);
            for f in inner.by_id.values_mut() {
                // After a restart of the pump, events count from here.
                (f.since, f.epoch) = (f.since.max(since), f.epoch.max(epoch));
            }
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = client.kicked.cancelled() => break,
                _ = sweep.tick() => filters.sweep(hub),
                event = client.events.recv() => match event {
                    Some(published) => filters.deliver(&published),
                    None => break,
                },
            }
        }
        tracing::warn!(chain = %chain.name, "filters: the feed cut the filters off (events piled up); every filter reports the gap at its next poll");
        filters.lock().pump = None;
        filters.lost_events();
        drop(client);
    }
}

fn push_logs(
    queue: &mut Vec<Bytes>,
    logs: &Arc<[Log]>,
    filter: &LogFilter,
    keep: impl Fn(&Log) -> bool,
) {
    queue.extend(
        logs.iter()
            .filter(|l| filter.matches(&l.address, &l.topics) && keep(l))
            .map(|l| l.raw.clone()),
    );
}

fn in_range(n: u64, from: Option<u64>, to: Option<u64>) -> bool {
    from.is_none_or(|f| n >= f) && to.is_none_or(|t| n <= t)
}

/// A log's `blockNumber`.
fn log_block(log: &Log) -> Option<u64> {
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(borrow, rename = "blockNumber")]
        block_number: Option<&'a str>,
    }
    let s: Shape<'_> = serde_json::from_slice(&log.raw).ok()?;
    quantity(s.block_number?)
}

/// The `hash` of a block header, as a raw JSON string.
fn hash_of(header: &[u8]) -> Option<Bytes> {
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(borrow)]
        hash: &'a str,
    }
    let s: Shape<'_> = serde_json::from_slice(header).ok()?;
    serde_json::to_vec(s.hash).ok().map(Bytes::from)
}

pub(super) fn json_array(items: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(2 + items.iter().map(|i| i.len() + 1).sum::<usize>());
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.push(b']');
    Bytes::from(out)
}

fn id_json(id: String) -> Bytes {
    Bytes::from(format!("\"{id}\""))
}

/// `0x` and 32 hex digits: 128 bits from the OS's random source, so nobody can guess
/// (and poll or uninstall) another client's filter.
pub(super) fn new_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS source failed (it does not on Linux): keyed SipHash of a counter,
        // under keys the standard library drew from the OS at start.
        use std::hash::BuildHasher;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = std::collections::hash_map::RandomState::new();
        bytes[..8].copy_from_slice(&state.hash_one(n).to_be_bytes());
        bytes[8..].copy_from_slice(&state.hash_one(!n).to_be_bytes());
    }
    let mut id = String::with_capacity(34);
    id.push_str("0x");
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// The filter id of `[id]`, lowercased (ids are hex).
fn filter_id(params: Option<&RawValue>) -> Result<String, FilterError> {
    params
        .and_then(|p| serde_json::from_str::<(String,)>(p.get()).ok())
        .map(|(id,)| id.to_ascii_lowercase())
        .ok_or_else(|| FilterError::BadParams("expected [filter id]".into()))
}

/// `eth_newFilter`'s `[{fromBlock, toBlock, address, topics}]`.
pub(super) fn parse_criteria(params: Option<&RawValue>) -> Result<What, FilterError> {
    #[derive(Deserialize)]
    struct Bounds<'a> {
        #[serde(borrow, default, rename = "fromBlock")]
        from: Option<&'a str>,
        #[serde(borrow, default, rename = "toBlock")]
        to: Option<&'a str>,
        #[serde(borrow, default, rename = "blockHash")]
        block_hash: Option<&'a RawValue>,
    }
    let usage = "eth_newFilter takes [{\"fromBlock\", \"toBlock\", \"address\", \"topics\"}]";
    let (criteria,): (Box<RawValue>,) = params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .ok_or_else(|| FilterError::BadParams(usage.into()))?;
    let bounds: Bounds<'_> = serde_json::from_str(criteria.get())
        .map_err(|e| FilterError::BadParams(format!("{usage}: {e}")))?;
    if bounds.block_hash.is_some() {
        return Err(FilterError::BadParams(
            "a filter cannot name a blockHash: it follows new blocks (use eth_getLogs for one block)"
                .into(),
        ));
    }
    let bound = |tag: Option<&str>, what: &str| -> Result<Option<u64>, FilterError> {
        match tag {
            None | Some("latest" | "pending" | "safe" | "finalized") => Ok(None),
            Some("earliest") => Ok(Some(0)),
            Some(n) => quantity(n).map(Some).ok_or_else(|| {
                FilterError::BadParams(format!("{what} `{n}` is not a block number or tag"))
            }),
        }
    };
    let (from, to) = (
        bound(bounds.from, "fromBlock")?,
        bound(bounds.to, "toBlock")?,
    );
    if let (Some(f), Some(t)) = (from, to)
        && f > t
    {
        return Err(FilterError::BadParams(
            "invalid from and to block combination: fromBlock is after toBlock".into(),
        ));
    }
    let filter = LogFilter::parse(&criteria).map_err(|e| FilterError::BadParams(e.0))?;
    Ok(What::Logs {
        filter,
        from,
        to,
        criteria,
    })
}

use crate::rpc::quantity::parse as quantity;

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x5fbdb2315678afecb367f032d93f642f64180aa3";

    fn limits(max_filters: usize, max_items: usize) -> Limits {
        Limits {
            max_filters,
            max_filter_items: max_items,
            ..Limits::default()
        }
    }

    fn call<'a>(method: &'a str, params: &'a RawValue) -> Call<'a> {
        Call {
            id: None,
            method: method.into(),
            params: Some(params),
        }
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("test JSON")
    }

    fn result(o: Option<Outcome>) -> Result<String, String> {
        match o {
            Some(Outcome::Answered {
                answer: Answer::Result(r),
                ..
            }) => Ok(String::from_utf8_lossy(&r).into_owned()),
            Some(Outcome::Answered {
                answer: Answer::Error { code, message, .. },
                ..
            }) => Err(format!("{code} {message}")),
            Some(Outcome::Refused(e)) => Err(format!("{} {e}", e.code())),
            other => Err(format!("{other:?}")),
        }
    }

    fn owner(name: &str) -> Owner {
        Owner::Key(Arc::from(name))
    }

    impl Filters {
        fn answer_now(&self, hub: &Hub, call: &Call<'_>) -> Option<Outcome> {
            self.answer(hub, call, None, &owner("ip:127.0.0.1"))
        }
    }

    /// A hub with a pump registered (its events are read by hand).
    fn setup(l: &Limits) -> (Hub, Filters) {
        (Hub::new(64), Filters::new(l))
    }

    fn new_filter(filters: &Filters, hub: &Hub, method: &str, params: &str) -> String {
        let p = raw(params);
        let id = result(filters.answer_now(hub, &call(method, &p))).expect("created");
        serde_json::from_str(&id).expect("id string")
    }

    fn poll(filters: &Filters, hub: &Hub, id: &str) -> Result<String, String> {
        let p = raw(&format!("[\"{id}\"]"));
        result(filters.answer_now(hub, &call("eth_getFilterChanges", &p)))
    }

    fn block(n: u64, logs: Option<Vec<Log>>, as_of: u64) -> Event {
        Event::Block {
            number: n,
            header: Bytes::from(format!(r#"{{"hash":"0x{n:064x}","number":"{n:#x}"}}"#)),
            logs: logs.map(Arc::from),
            logs_as_of: as_of,
        }
    }

    fn log(n: u64, address: &str) -> Log {
        Log {
            address: address.into(),
            topics: vec![],
            raw: Bytes::from(format!(
                r#"{{"address":"{address}","blockNumber":"{n:#x}","removed":false}}"#
            )),
        }
    }

    /// Runs what the pump would: every event the hub queued for it.
    fn pump_once(filters: &Filters, client: &mut super::super::hub::Client<'_>) {
        while let Ok(p) = client.events.try_recv() {
            filters.deliver(&p);
        }
    }

    #[test]
    fn block_filters_return_new_block_hashes_once() {
        let l = Limits::default();
        let (hub, filters) = setup(&l);
        let mut pump = hub.join();
        filters.lock().pump = Some(pump.id);
        hub.publish(block(1, None, 0)); // before the filter: not its own
        let id = new_filter(&filters, &hub, "eth_newBlockFilter", "[]");
        assert!(id.len() == 34 && id.starts_with("0x"), "{id}");
        hub.publish(block(2, None, 0));
        hub.publish(block(3, None, 0));
        pump_once(&filters, &mut pump);
        assert_eq!(
            poll(&filters, &hub, &id),
            Ok(format!("[\"0x{:064x}\",\"0x{:064x}\"]", 2, 3))
        );
        assert_eq!(poll(&filters, &hub, &id), Ok("[]".into()));
        assert_eq!(
            poll(&filters, &hub, "0x0000"),
            Err("-32000 filter not found".into())
        );
    }

    #[test]
    fn log_filters_get_matching_logs_and_removals_within_their_range() {
        let l = Limits::default();
        let (hub, filters) = setup(&l);
        let mut pump = hub.join();
        filters.lock().pump = Some(pump.id);
        let id = new_filter(
            &filters,
            &hub,
            "eth_newFilter",
            &format!(r#"[{{"address":"{A}","toBlock":"0x3"}}]"#),
        );
        // The pump now asks the feed for that address's logs.
        assert_eq!(
            hub.log_scope().0,
            super::super::hub::LogScope::Addresses(vec![A.into()])
        );
        let as_of = hub.log_scope().1;
        let other = "0x0000000000000000000000000000000000000001";
        hub.publish(block(2, Some(vec![log(2, A), log(2, other)]), as_of));
        hub.publish(block(4, Some(vec![log(4, A)]), as_of)); // past toBlock
        let removed = Log {
            raw: Bytes::from(format!(
                r#"{{"address":"{A}","blockNumber":"0x2","removed":true}}"#
            )),
            ..log(2, A)
        };
        hub.publish(Event::Removed {
            of: as_of,
            logs: Arc::from(vec![removed]),
        });
        pump_once(&filters, &mut pump);
        let got: Vec<serde_json::Value> =
            serde_json::from_str(&poll(&filters, &hub, &id).expect("changes")).expect("JSON");
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0]["removed"], false);
        assert_eq!(got[1]["removed"], true);
    }

    #[test]
    fn filters_are_bounded_in_number_and_in_items_between_polls() {
        let l = limits(2, 2);
        let (hub, filters) = setup(&l);
        let mut pump = hub.join();
        filters.lock().pump = Some(pump.id);
        let id = new_filter(&filters, &hub, "eth_newBlockFilter", "[]");
        new_filter(&filters, &hub, "eth_newPendingTransactionFilter", "[]");
        let p = raw("[]");
        let third = result(filters.answer_now(&hub, &call("eth_newBlockFilter", &p)));
        assert!(
            third.as_ref().is_err_and(|e| e.starts_with("-32005")),
            "{third:?}"
        );
        for n in 1..=3 {
            hub.publish(block(n, None, 0));
        }
        pump_once(&filters, &mut pump);
        let overflowed = poll(&filters, &hub, &id);
        assert!(
            overflowed.as_ref().is_err_and(|e| e.starts_with("-32005")),
            "{overflowed:?}"
        );
        // Removed with the error: the gap is never silent, and its place is free.
        assert_eq!(
            poll(&filters, &hub, &id),
            Err("-32000 filter not found".into())
        );
        new_filter(&filters, &hub, "eth_newBlockFilter", "[]");
    }

    #[test]
    fn each_client_holds_at_most_max_filters_per_client() {
        let l = Limits {
            max_filters_per_client: 2,
            ..Limits::default()
        };
        let (hub, filters) = setup(&l);
        let p = raw("[]");
        let make = |who: &str| {
            result(filters.answer(&hub, &call("eth_newBlockFilter", &p), None, &owner(who)))
        };
        assert!(make("key:a").is_ok());
        assert!(make("key:a").is_ok());
        let third = make("key:a");
        assert!(
            third
                .as_ref()
                .is_err_and(|e| e.starts_with("-32005") && e.contains("max_filters_per_client")),
            "{third:?}"
        );
        assert!(make("key:b").is_ok(), "another client still may");
    }

    #[test]
    fn owners_are_the_key_else_the_address_or_its_64() {
        use std::net::IpAddr;
        let ip = |s: &str| s.parse::<IpAddr>().expect("address");
        let open = Caller::Open;
        assert_eq!(Owner::of(&open, ip("10.0.0.7")).to_string(), "ip:10.0.0.7");
        assert_eq!(
            Owner::of(&open, ip("2001:db8:1:2:aaaa::1")),
            Owner::of(&open, ip("2001:db8:1:2:bbbb::9"))
        );
        assert_eq!(
            Owner::of(&open, ip("::ffff:10.0.0.7")).to_string(),
            "ip:10.0.0.7"
        );
        assert_eq!(
            Owner::of(&open, ip("2001:db8:1:2:aaaa::1")).to_string(),
            "ip:2001:db8:1:2::/64"
        );
        assert_ne!(
            Owner::of(&open, ip("2001:db8:1:2:aaaa::1")),
            Owner::of(&open, ip("2001:db8:1:3:aaaa::1"))
        );
    }

    #[test]
    fn unpolled_filters_expire_and_uninstall_says_whether_one_was_there() {
        let l = Limits {
            filter_timeout_secs: 0,
            ..Limits::default()
        };
        let (hub, filters) = setup(&l);
        let id = new_filter(&filters, &hub, "eth_newBlockFilter", "[]");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            poll(&filters, &hub, &id),
            Err("-32000 filter not found".into())
        );
        let l = Limits::default();
        let (hub, filters) = setup(&l);
        let id = new_filter(&filters, &hub, "eth_newBlockFilter", "[]");
        let p = raw(&format!(
            "[\"{}\"]",
            id.to_ascii_uppercase().replacen("0X", "0x", 1)
        ));
        assert_eq!(
            result(filters.answer_now(&hub, &call("eth_uninstallFilter", &p))),
            Ok("true".into())
        );
        assert_eq!(
            result(filters.answer_now(&hub, &call("eth_uninstallFilter", &p))),
            Ok("false".into())
        );
    }

    #[test]
    fn get_filter_logs_becomes_the_filters_eth_get_logs() {
        let l = Limits::default();
        let (hub, filters) = setup(&l);
        let criteria = format!(r#"{{"fromBlock":"0x1","address":"{A}"}}"#);
        let id = new_filter(&filters, &hub, "eth_newFilter", &format!("[{criteria}]"));
        let blocks = new_filter(&filters, &hub, "eth_newBlockFilter", "[]");
        let (p1, p2, p3) = (
            raw(&format!("[\"{id}\"]")),
            raw(&format!("[\"{blocks}\"]")),
            raw("[\"0x01\"]"),
        );
        let mut calls = [
            call("eth_getFilterLogs", &p1),
            call("eth_getFilterLogs", &p2),
            call("eth_getFilterLogs", &p3),
        ];
        let queries: Vec<Option<String>> = calls
            .iter_mut()
            .map(|c| filters.local_query(c).map(|q| q.get().to_owned()))
            .collect();
        assert_eq!(queries, vec![Some(format!("[{criteria}]")), None, None]);
        let methods: Vec<String> = calls.iter().map(|c| c.method.to_string()).collect();
        assert_eq!(
            methods,
            ["eth_getLogs", "eth_getFilterLogs", "eth_getFilterLogs"]
        );
        assert_eq!(
            result(filters.answer_now(&hub, &call("eth_getFilterLogs", &p2))),
            Err("-32000 filter not found".into())
        );
    }

    #[test]
    fn bad_criteria_are_refused() {
        for params in [
            r#"[{"fromBlock":"0x5","toBlock":"0x1"}]"#,
            r#"[{"blockHash":"0x01"}]"#,
            r#"[{"address":"0x12"}]"#,
            r#"[{"fromBlock":"soon"}]"#,
            r#"[]"#,
        ] {
            assert!(parse_criteria(Some(&raw(params))).is_err(), "{params}");
        }
        assert!(parse_criteria(Some(&raw(r#"[{}]"#))).is_ok());
    }
}
