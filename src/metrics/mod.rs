//! Prometheus metrics for `GET /metrics`, in the text exposition format.
//!
//! Two kinds, kept apart on purpose:
//! - **events** (calls, upstream attempts, latencies, cache lookups, verifications, bans,
//!   webhook deliveries) are counted where they happen through the `metrics` facade,
//!   into the one recorder of the process ([`install`], idempotent). Use the functions
//!   below, not the macros, so names and labels stay as documented here.
//! - **state** (upstream health, breaker, lag, heads, open incidents) is read from the
//!   gateway at scrape time by `status::scrape`: never stale, and only this gateway's.
//!
//! Imports nothing of the crate: callers pass labels as values, so every layer can
//! count what happens in it.
//!
//! Label values are names from the config (chain, upstream, operator, webhook) or fixed
//! words; a method name comes from clients, so callers pass `rpc::methods::label`:
//! known methods by name, every other one as `other` (a client cannot grow the series
//! without bound).

use std::{
    cell::RefCell,
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, OnceLock},
    time::Duration,
};

mod durations;
pub mod text;
use durations::{Histogram, Series};

use metrics::{Counter, Label, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

// Counters and histograms (events). `_total` and `_seconds` per Prometheus conventions.
/// Every JSON-RPC call answered: `chain`, `method`, `upstream` (or `consensus`,
/// `cache`, `none`), `outcome` (`result`, `error`, `unavailable`, `unverified`, `denied`,
/// `invalid`, `limited`). A batch counts each of its calls.
pub const REQUESTS: &str = "outlast_requests_total";
/// HTTP requests on a chain's JSON-RPC endpoint, start to answer: `chain`.
pub const REQUEST_DURATION: &str = "outlast_http_request_duration_seconds";
/// Attempts at an upstream: `chain`, `upstream`, `outcome` (`ok`, `connect`, `timeout`,
/// `rate_limited`, `http_status`, `malformed`, `transport`, `slow`).
pub const UPSTREAM_REQUESTS: &str = "outlast_upstream_requests_total";
/// Time to an upstream's reply: `chain`, `upstream`.
pub const UPSTREAM_DURATION: &str = "outlast_upstream_request_duration_seconds";
/// Bans for lying: `chain`, `upstream`.
/// Read at scrape time from each upstream's health (`Health::bans`), so every ban counts
/// once, however it was recorded.
pub const UPSTREAM_BANS: &str = "outlast_upstream_bans_total";
/// Cache lookups: `chain`, `method`, `result` (`hit`, `miss`, `coalesced`, `stale`).
pub const CACHE_REQUESTS: &str = "outlast_cache_requests_total";
/// Verification results: `chain`, `method`, `mode` (`proof`, `quorum`), `outcome`
/// (`verified`, `failed`, `unverifiable`).
pub const VERIFICATIONS: &str = "outlast_verifications_total";
/// Incidents opened: `kind`, `severity`.
pub const INCIDENTS_OPENED: &str = "outlast_incidents_opened_total";
/// Webhook messages: `webhook`, `outcome` (`delivered`, `retried`, `failed`, `dropped`).
pub const WEBHOOK_DELIVERIES: &str = "outlast_webhook_deliveries_total";
/// Pending transactions looked at by `[tx] rebroadcast`, one per transaction per round:
/// `chain`, `outcome` (`mined`, `replaced`, `expired`: forgotten; `resent`, `refused`,
/// `unavailable`, `undecided`: still pending).
pub const TX_REBROADCASTS: &str = "outlast_tx_rebroadcasts_total";
/// Client requests refused or cut off by a limit: `limit` (`body`, `request` (batch
/// size or nesting), `logs_range`, `logs_pieces`, `logs_budget`, `logs_bytes`, `connections`,
/// `connections_per_ip`, `header_timeout`, `body_timeout`, `idle_timeout`, `send_rate`,
/// `request_timeout`, `drain`, `filters` (max_filters, max_filters_per_client),
/// `filter_items`, `call_gas`, `host`, `origin`, `tx_pending`; WebSocket: `ws_frame`,
/// `ws_subscriptions`, `ws_client_buffer`, `ws_write_timeout`, `ws_ping`).
pub const LIMITS_EXCEEDED: &str = "outlast_limits_exceeded_total";
/// Client connections open now (HTTP and WebSocket).
pub const CONNECTIONS: &str = "outlast_http_connections";
/// Calls (a batch counts each) and requests refused by `[auth]`: `key` (a key's name,
/// `anonymous`, or `none` when no valid key came), `outcome` (`allowed`, `limited`,
/// `key_required`, `unknown_key`, `chain`, `method`, `unchecked`). Never the key itself.
pub const AUTH: &str = "outlast_auth_calls_total";
/// 1 while rate-limit budgets are shared through Redis, 0 while each instance keeps its
/// own (Redis unavailable); absent without `[redis]`.
pub const RATE_LIMITS_SHARED: &str = "outlast_rate_limits_shared";
/// Calls charged to a local budget because Redis did not answer.
pub const RATE_LIMIT_FALLBACKS: &str = "outlast_rate_limit_fallbacks_total";
/// Admin API actions: `action` (`cordon`, `uncordon`, `open`, `update`, `resolve`,
/// `maintenance`), `outcome` (`done`, `refused`).
pub const ADMIN_ACTIONS: &str = "outlast_admin_actions_total";

/// The latency histograms, kept by `durations` (not the recorder), rendered after it.
static REQUEST_DURATIONS: Histogram = Histogram::new(
    REQUEST_DURATION,
    "Time from an HTTP JSON-RPC request to its answer.",
);
static UPSTREAM_DURATIONS: Histogram = Histogram::new(
    UPSTREAM_DURATION,
    "Time an upstream took to reply (every attempt that got a reply).",
);
const HISTOGRAMS: [&Histogram; 2] = [&REQUEST_DURATIONS, &UPSTREAM_DURATIONS];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder once (later calls do nothing). When another recorder
/// was installed first (Outlast embedded in a program that has one), events go there
/// and `/metrics` shows the latency histograms (`durations`, kept here) and the state
/// gauges only.
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed; /metrics shows state only");
            return None;
        }
        describe();
        Some(handle)
    });
}

fn describe() {
    describe_counter!(
        REQUESTS,
        "JSON-RPC calls answered, by chain, method, upstream and outcome."
    );
    describe_counter!(UPSTREAM_REQUESTS, "Attempts at an upstream, by outcome.");
    describe_counter!(CACHE_REQUESTS, "Cache lookups, by result.");
    describe_counter!(
        VERIFICATIONS,
        "Answers checked by proof or quorum, by outcome."
    );
    describe_counter!(INCIDENTS_OPENED, "Incidents opened, by kind and severity.");
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook messages, by outcome.");
    describe_counter!(
        TX_REBROADCASTS,
        "Pending transactions checked for re-sending, by outcome."
    );
    describe_counter!(
        LIMITS_EXCEEDED,
        "Client requests refused or connections closed by a limit, by limit."
    );
    describe_gauge!(CONNECTIONS, "Client connections open now.");
    describe_counter!(
        AUTH,
        "Calls by API key name and outcome (allowed, limited, …)."
    );
    describe_gauge!(
        RATE_LIMITS_SHARED,
        "1 while rate limits are shared through Redis; 0 while they are local (Redis away)."
    );
    describe_counter!(
        RATE_LIMIT_FALLBACKS,
        "Calls charged locally because Redis did not answer."
    );
    describe_counter!(ADMIN_ACTIONS, "Admin API actions, by action and outcome.");
}

/// Handles of the series counted on every call, by name and label values. The macros
/// build a series' key (owned label strings) and look it up in the registry each time,
/// which cost more than the rest of answering from the cache; a handle kept here is one
/// atomic add. Label values are bounded (see above), and so is this map.
///
/// One per thread (`counter_of`, `durations_of`): the serving runtimes each keep their
/// own handles to the same series, so a lookup takes no lock and clones no handle (a
/// shared map's read lock and the handle's reference count were four atomic writes per
/// lookup, to cache lines every serving thread writes).
struct Handles<T> {
    /// By a hash of the name and values; each bucket holds the values it was made for.
    /// FxHash: its keys are the metric's name and label values, config names or fixed
    /// words (never chosen by a client), so the keyed SipHash a client-facing map needs
    /// would only cost time, a few lookups per call.
    map: RefCell<HashMap<u64, Bucket<T>, rustc_hash::FxBuildHasher>>,
}

type Bucket<T> = Vec<(Vec<Box<str>>, T)>;

impl<T> Handles<T> {
    fn new() -> Handles<T> {
        Handles {
            map: RefCell::new(HashMap::default()),
        }
    }

    /// `use_it` with the handle of `name` at `labels`, made by `make` the first time.
    fn with(
        &self,
        name: &'static str,
        labels: &[(&'static str, &str)],
        make: impl FnOnce() -> T,
        use_it: impl FnOnce(&T),
    ) {
        if HANDLE.get().is_none() {
            // No recorder yet: a handle made now would count nowhere for good.
            return use_it(&make());
        }
        let mut h = rustc_hash::FxHasher::default();
        name.hash(&mut h);
        labels.iter().for_each(|(_, v)| v.hash(&mut h));
        let key = h.finish();
        let same = |values: &[Box<str>]| values.iter().map(|v| &**v).eq(labels.iter().map(|l| l.1));
        // Never borrowed across a call out: `make` and `use_it` run with it released.
        if let Ok(map) = self.map.try_borrow()
            && let Some(found) = map
                .get(&key)
                .and_then(|bucket| bucket.iter().find(|(v, _)| same(v)))
        {
            return use_it(&found.1);
        }
        let handle = make();
        use_it(&handle);
        let values = labels.iter().map(|l| Box::from(l.1)).collect();
        if let Ok(mut map) = self.map.try_borrow_mut() {
            map.entry(key).or_default().push((values, handle));
        }
    }
}

fn counter_of(name: &'static str, labels: &[(&'static str, &str)], use_it: impl FnOnce(&Counter)) {
    thread_local!(static HANDLES: Handles<Counter> = Handles::new());
    with_local(
        &HANDLES,
        name,
        labels,
        || counter!(name, owned(labels)),
        use_it,
    );
}

/// `use_it` with the series of the latency `histogram` at `labels` (`durations`).
fn durations_of(
    histogram: &'static Histogram,
    labels: &[(&'static str, &str)],
    use_it: impl FnOnce(&Series),
) {
    thread_local!(static HANDLES: Handles<Arc<Series>> = Handles::new());
    with_local(
        &HANDLES,
        histogram.name(),
        labels,
        || histogram.series(labels),
        |s| use_it(s),
    );
}

/// `use_it` with this thread's handle from `handles`; while the thread is torn down
/// (its handles dropped already: a task's drop may still count), with one made for it.
fn with_local<T: 'static>(
    handles: &'static std::thread::LocalKey<Handles<T>>,
    name: &'static str,
    labels: &[(&'static str, &str)],
    make: impl Fn() -> T,
    use_it: impl FnOnce(&T),
) {
    let mut use_it = Some(use_it);
    let mut run = |handle: &T| {
        if let Some(f) = use_it.take() {
            f(handle);
        }
    };
    if handles
        .try_with(|h| h.with(name, labels, &make, &mut run))
        .is_err()
    {
        run(&make());
    }
}

/// A series' labels as the registry keeps them.
fn owned(labels: &[(&'static str, &str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|&(k, v)| Label::new(k, v.to_owned()))
        .collect()
}

/// One JSON-RPC call answered.
pub fn call(chain: &str, method: &'static str, upstream: &str, outcome: &'static str) {
    calls(chain, (method, upstream, outcome), 1);
}

/// `n` JSON-RPC calls answered alike: `(method, upstream, outcome)`.
fn calls(chain: &str, (method, upstream, outcome): (&'static str, &str, &'static str), n: u64) {
    let labels = [
        ("chain", chain),
        ("method", method),
        ("upstream", upstream),
        ("outcome", outcome),
    ];
    counter_of(REQUESTS, &labels, |c| c.increment(n));
}

/// The calls of one request, counted by runs of alike ones: a series' handle is looked
/// up once per run (`Handles::get`, a few hundred instructions), not once per call, so
/// a batch of ten alike calls costs one lookup. The last run is added when it is
/// dropped. `L` is the labels besides the chain.
pub struct Runs<'c, L: PartialEq> {
    chain: &'c str,
    add: fn(&str, L, u64),
    run: Option<(L, u64)>,
}

impl<'c, L: PartialEq> Runs<'c, L> {
    /// One more call labelled `labels`.
    pub fn count(&mut self, labels: L) {
        match &mut self.run {
            Some((same, n)) if *same == labels => *n += 1,
            run => {
                if let Some((done, n)) = run.replace((labels, 1)) {
                    (self.add)(self.chain, done, n);
                }
            }
        }
    }
}

impl<L: PartialEq> Drop for Runs<'_, L> {
    fn drop(&mut self) {
        if let Some((labels, n)) = self.run.take() {
            (self.add)(self.chain, labels, n);
        }
    }
}

/// JSON-RPC calls answered on `chain`, counted by runs: `(method, upstream, outcome)`.
pub fn call_runs<'c>(chain: &'c str) -> Runs<'c, (&'static str, &'c str, &'static str)> {
    Runs {
        chain,
        add: calls,
        run: None,
    }
}

/// One HTTP JSON-RPC request served on `chain`.
pub fn request_duration(chain: &str, took: Duration) {
    durations_of(&REQUEST_DURATIONS, &[("chain", chain)], |h| h.record(took));
}

/// One attempt at an upstream; `took` when it replied.
pub fn upstream_attempt(
    chain: &str,
    upstream: &str,
    outcome: &'static str,
    took: Option<Duration>,
) {
    let labels = [
        ("chain", chain),
        ("upstream", upstream),
        ("outcome", outcome),
    ];
    counter_of(UPSTREAM_REQUESTS, &labels, |c| c.increment(1));
    if let Some(took) = took {
        durations_of(&UPSTREAM_DURATIONS, &labels[..2], |h| h.record(took));
    }
}

/// For the cache: one lookup of `method` on `chain`; `result` is `hit`, `miss`,
/// `coalesced` (joined a call in flight) or `stale` (served stale by configuration).
pub fn cache_lookup(chain: &str, method: &'static str, result: &'static str) {
    cache_lookups(chain, (method, result), 1);
}

fn cache_lookups(chain: &str, (method, result): (&'static str, &'static str), n: u64) {
    let labels = [("chain", chain), ("method", method), ("result", result)];
    counter_of(CACHE_REQUESTS, &labels, |c| c.increment(n));
}

/// Cache lookups on `chain`, counted by runs (`Runs`): `(method, result)`.
pub fn cache_lookup_runs(chain: &str) -> Runs<'_, (&'static str, &'static str)> {
    Runs {
        chain,
        add: cache_lookups,
        run: None,
    }
}

/// For the Redis cache tier: an entry refused, counted in
/// `outlast_cache_redis_rejected_total`; `reason` is `tag` (missing or wrong: forged,
/// edited, or written with another `[redis] secret`), `format` (valid tag, unknown
/// layout) or `too_large` (longer than any entry Outlast writes: not read whole). Such
/// an entry is a miss, never an answer.
pub fn cache_redis_rejected(reason: &'static str) {
    counter!("outlast_cache_redis_rejected_total", "reason" => reason).increment(1);
}

/// For verification: one answer checked; `mode` is `proof` or `quorum`, `outcome` is
/// `verified`, `unconfirmed` (fewer operators reachable than the quorum), `failed` (an upstream lied) or `unverifiable`.
pub fn verification(chain: &str, method: &'static str, mode: &'static str, outcome: &'static str) {
    counter!(VERIFICATIONS,
        "chain" => chain.to_owned(),
        "method" => method,
        "mode" => mode,
        "outcome" => outcome)
    .increment(1);
}

pub fn incident_opened(kind: &'static str, severity: &'static str) {
    counter!(INCIDENTS_OPENED, "kind" => kind, "severity" => severity).increment(1);
}

pub fn webhook(name: &str, outcome: &'static str) {
    counter!(WEBHOOK_DELIVERIES, "webhook" => name.to_owned(), "outcome" => outcome).increment(1);
}

/// One pending transaction looked at by `tx::rebroadcast`.
pub fn tx_rebroadcast(chain: &str, outcome: &'static str) {
    counter!(TX_REBROADCASTS, "chain" => chain.to_owned(), "outcome" => outcome).increment(1);
}

/// A client hit `limit` (see `LIMITS_EXCEEDED`).
pub fn limit_exceeded(limit: &'static str) {
    counter!(LIMITS_EXCEEDED, "limit" => limit).increment(1);
}

/// `calls` of `key` (a key's name, `anonymous`, `none`) had `outcome` (see `AUTH`).
pub fn auth(key: &str, outcome: &'static str, calls: u64) {
    counter!(AUTH, "key" => key.to_owned(), "outcome" => outcome).increment(calls);
}

/// Whether rate limits are shared through Redis now.
pub fn rate_limits_shared(shared: bool) {
    gauge!(RATE_LIMITS_SHARED).set(if shared { 1.0 } else { 0.0 });
}

pub fn rate_limit_fallback() {
    counter!(RATE_LIMIT_FALLBACKS).increment(1);
}

pub fn admin_action(action: &'static str, outcome: &'static str) {
    counter!(ADMIN_ACTIONS, "action" => action, "outcome" => outcome).increment(1);
}

/// Client connections open now.
pub fn connections(open: usize) {
    gauge!(CONNECTIONS).set(open as f64);
}

/// The recorded events in the text format (before `install`, or with another
/// recorder, only the latency histograms), ending in a newline; `status::scrape`
/// appends the state read at scrape time.
pub fn recorded() -> String {
    let mut out = match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    };
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for histogram in HISTOGRAMS {
        histogram.render(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the one `name` series whose labels include all of `with`.
    fn value(name: &str, with: &[&str]) -> Option<String> {
        recorded()
            .lines()
            .filter(|l| l.starts_with(name) && with.iter().all(|w| l.contains(w)))
            .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
            .next()
    }

    #[test]
    fn runs_of_alike_calls_add_up_to_every_call() {
        install();
        {
            let mut runs = call_runs("runs-test");
            for (method, upstream) in [
                ("eth_call", "a"),
                ("eth_call", "a"),
                ("eth_getBalance", "a"),
                ("eth_call", "b"),
                ("eth_call", "a"),
            ] {
                runs.count((method, upstream, "result"));
            }
        }
        let of = |method: &str, upstream: &str| {
            let (m, u) = (
                format!("method=\"{method}\""),
                format!("upstream=\"{upstream}\""),
            );
            value(REQUESTS, &["chain=\"runs-test\"", &m, &u])
        };
        assert_eq!(of("eth_call", "a").as_deref(), Some("3"));
        assert_eq!(of("eth_getBalance", "a").as_deref(), Some("1"));
        assert_eq!(of("eth_call", "b").as_deref(), Some("1"));

        drop(cache_lookup_runs("runs-test"));
        let mut lookups = cache_lookup_runs("runs-test");
        lookups.count(("eth_call", "miss"));
        lookups.count(("eth_call", "miss"));
        drop(lookups);
        let misses = value(CACHE_REQUESTS, &["chain=\"runs-test\"", "result=\"miss\""]);
        assert_eq!(misses.as_deref(), Some("2"));
    }

    #[test]
    fn a_count_while_its_thread_is_torn_down_is_kept_not_a_panic() {
        struct CountsOnDrop;
        impl Drop for CountsOnDrop {
            fn drop(&mut self) {
                call("teardown-test", "eth_chainId", "u", "result");
            }
        }
        thread_local!(static LAST: RefCell<Option<CountsOnDrop>> = const { RefCell::new(None) });
        std::thread::spawn(|| {
            // Set before the thread's metric handles exist, so dropped after them
            // (thread-locals are dropped in the reverse order they were first used).
            LAST.with(|last| *last.borrow_mut() = Some(CountsOnDrop));
            call("teardown-test", "eth_chainId", "u", "result");
        })
        .join()
        .expect("the thread ends without a panic");
    }
}
