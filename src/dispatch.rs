//! One JSON-RPC request's way through Outlast, numbered as the design's request flow
//! (step 1, listen — limits on the body, the chain lookup, keys and rate limits — is
//! `server`'s):
//! 2 parse → 3 classify (denied methods, a key's allow-list; what Outlast answers
//! itself: filters, the block number; each call's cache key and check, from the method
//! table `rpc::methods`) → 4 resolve (pin tags to the consensus head) → 5 cache (answer
//! from it, or join an identical call in flight) → 6-7 select + send
//! (`route::forward`; raw transactions broadcast by `tx`) → 8 verify (calls to check
//! are proven or agreed, `route::verified`) → 9 answer (keep in cache, hold answers
//! from above the head, read-your-writes, then `rpc::respond`, which restores each
//! client id).

use std::{sync::Arc, time::Duration};

use smallvec::SmallVec;

use crate::{
    cache::{
        self,
        coalesce::{Follower, Joined, Leader},
        policy,
    },
    config::Verify,
    gateway::Gateway,
    route::Chain,
    route::{
        self, Outcome, logs,
        resolve::{Need, Resolved, resolve},
        verified::{self, BlockId, Checked, Level, StateRead, Unverified},
    },
    rpc::{
        self, Call, ReplyBody, Request, RpcError,
        classify::MethodPolicy,
        methods::{self, Name},
        parse::{Rejected, Shape},
    },
    subscribe::filters::{Filters, Handled, Owner},
    upstream::Answer,
    upstream::heads::ChainHeadState,
};

/// What the HTTP layer sends back.
pub struct Reply {
    /// `None`: only notifications, nothing to say.
    pub body: Option<Vec<u8>>,
    /// Who answered, for `x-outlast-upstream` (in call order, without repeats); mostly
    /// one, so on the stack.
    pub upstreams: SmallVec<[Arc<str>; 2]>,
    /// The weakest check among the answers, for `x-outlast-verified`.
    pub verified: Level,
    /// Set when a cached answer was served stale (`[cache] serve_stale`): the oldest
    /// one's age, for `x-outlast-stale-seconds`.
    pub stale_seconds: Option<u64>,
}

pub async fn handle(gw: &Gateway, chain: &Chain, body: &[u8]) -> Reply {
    let nobody = Owner::of(
        &crate::auth::Caller::Open,
        std::net::Ipv4Addr::UNSPECIFIED.into(),
    );
    let shape = Shape::of(body, gw.limits().max_depth);
    handle_as(gw, chain, (body, shape), None, &nobody).await
}

/// As `handle`, for a caller whose key may call only `methods` (`auth`), named `key`;
/// the filters it makes count against `owner` (`[limits] max_filters_per_client`). The
/// body comes with its `Shape`, taken by the server to charge its calls.
pub async fn handle_as(
    gw: &Gateway,
    chain: &Chain,
    (body, shape): (&[u8], Shape),
    methods: Option<(&crate::auth::glob::Methods, &str)>,
    owner: &Owner,
) -> Reply {
    // 2. parse
    let (batch, entries) = match rpc::parse::parse_shaped(body, shape, gw.parse_limits()) {
        Ok(Request::Single(e)) => (false, vec![e]),
        Ok(Request::Batch(es)) => (true, es),
        Err(e) => {
            count_rejected(&chain.name, &e);
            return Reply {
                body: Some(rpc::respond::whole_request_error(&e)),
                upstreams: SmallVec::new(),
                verified: Level::None,
                stale_seconds: None,
            };
        }
    };
    handle_entries(gw, chain, batch, entries, methods, owner).await
}

/// Steps 3 to 9 for calls already parsed (step 2): `handle_as` after its parse, and
/// `server::ws` for the calls of a message it answered subscriptions of itself.
/// `batch`: the reply is an array.
pub async fn handle_entries(
    gw: &Gateway,
    chain: &Chain,
    batch: bool,
    entries: Vec<Result<Call<'_>, Rejected<'_>>>,
    methods: Option<(&crate::auth::glob::Methods, &str)>,
    owner: &Owner,
) -> Reply {
    // 3. classify: refuse what is not allowed here.
    let mut entries = classify(gw, entries, methods);
    // 3. classify: filters are held by Outlast (`subscribe::filters`; with Redis, block and log
    // filters are shared by the instances): answered here, except a log filter's
    // eth_getFilterLogs, which becomes the eth_getLogs of its criteria, with that
    // path's limits. A poll never runs behind a receipt the client was given.
    let live = gw.live(chain);
    let shared = gw.cache.shared();
    let mut filtered = if Filters::asked(&entries) {
        Box::pin(
            live.filters
                .handle(chain, &live.hub, shared.as_deref(), owner, &mut entries),
        )
        .await
    } else {
        Handled::default()
    };

    // 4. resolve: pin block tags to the consensus head; learn which block each call needs.
    let heads = chain.head.get();
    // On the stack up to a few calls: a single call's request allocated for each.
    let calls: SmallVec<[&Call<'_>; 4]> = entries.iter().filter_map(|e| e.as_ref().ok()).collect();
    let resolved: SmallVec<[Resolved; 4]> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| match filtered.query(i) {
            Some(q) => {
                let mut r = resolve(&c.method, Some(&q), &heads);
                r.params.get_or_insert(q);
                r
            }
            None => resolve(&c.method, c.params, &heads),
        })
        .collect();

    let mut work = Work::new(gw, chain, &heads, &calls, &resolved, filtered);
    // The steps with large futures (kilobytes: broadcasts, proofs, Redis) are entered
    // only when a call needs them, and boxed: a future is copied whole into its caller
    // each time it is awaited, even to do nothing, and makes the caller (this request's
    // future, copied twice itself) as large (bench/README.md).
    if work.any(Slot::sends) {
        Box::pin(work.send_transactions()).await;
    }
    work.answer_from_cache().await;
    work.join_flights();
    work.forward().await;
    if work.any(Slot::splits) {
        Box::pin(work.split_logs()).await;
    }
    if work.any(Slot::to_verify) {
        Box::pin(work.verify()).await;
    }
    work.keep();
    if work.any(Slot::follows) {
        Box::pin(work.follow()).await;
    }
    work.hold_ahead().await;
    let stale_seconds = if work.any(Slot::unavailable) {
        Box::pin(work.serve_stale()).await
    } else {
        None
    };
    work.read_your_writes();

    // 9. answer, in request order; notifications get nothing.
    answer(chain, batch, &entries, work.slots, stale_seconds)
}

/// Step 3, classify: why `method` may not be called here by this caller, if it may
/// not: outside the caller's key's allow-list (`[[auth.keys]] methods`), or denied for
/// everyone (`[limits] denied_methods`). The one home of that rule: `server::ws` asks
/// it for the subscriptions it answers itself.
pub fn refusal(
    gw: &Gateway,
    method: &Name<'_>,
    methods: Option<(&crate::auth::glob::Methods, &str)>,
) -> Option<RpcError> {
    refused_by(&gw.policy(), method, methods)
}

/// `refusal`, under the policy a request read once.
fn refused_by(
    policy: &MethodPolicy,
    method: &Name<'_>,
    methods: Option<(&crate::auth::glob::Methods, &str)>,
) -> Option<RpcError> {
    if let Some((allowed, key)) = methods
        && !allowed.allows(method)
    {
        return Some(RpcError::NotForKey {
            method: method.to_string(),
            key: key.to_owned(),
        });
    }
    policy.denies(method).then(|| RpcError::Denied {
        method: method.to_string(),
    })
}

/// Step 3, classify: refused methods (`refusal`), and subscriptions (which need a
/// WebSocket: over one, `server::ws` answers them before dispatch), become errors;
/// everything else goes on.
fn classify<'a>(
    gw: &Gateway,
    entries: Vec<Result<Call<'a>, Rejected<'a>>>,
    methods: Option<(&crate::auth::glob::Methods, &str)>,
) -> Vec<Result<Call<'a>, Rejected<'a>>> {
    let policy = gw.policy();
    entries
        .into_iter()
        .map(|entry| match entry {
            Ok(call) => {
                let error = refused_by(&policy, &call.method, methods).or_else(|| {
                    matches!(call.method.as_ref(), "eth_subscribe" | "eth_unsubscribe").then(|| {
                        RpcError::NeedsWebSocket {
                            method: call.method.to_string(),
                        }
                    })
                });
                match error {
                    Some(error) => Err(Rejected {
                        id: call.id.or(Some(rpc::parse::null())),
                        error,
                    }),
                    None => Ok(call),
                }
            }
            rejected => rejected,
        })
        .collect()
}

/// One call's way through steps 5 to 8c.
struct Slot<'a> {
    /// With block tags pinned to the consensus head.
    call: Call<'a>,
    need: Need,
    /// Where its answer may be cached (and identical calls joined); `None`: never.
    key: Option<cache::Key>,
    /// How step 8 checks it; `None`: forwarded as it is.
    check: Option<Check>,
    /// An `eth_getLogs` range fetched in pieces: (from, to, piece size).
    split: Option<(u64, u64, u64)>,
    /// Leading an identical call in flight, or following one.
    flight: Option<Flight>,
    outcome: Option<Outcome>,
    level: Level,
}

enum Flight {
    Leader(Leader),
    Follower(Follower),
}

impl Slot<'_> {
    fn follows(&self) -> bool {
        matches!(self.flight, Some(Flight::Follower(_)))
    }

    /// Still to be asked of the upstreams by this request itself.
    fn open(&self) -> bool {
        self.outcome.is_none() && self.split.is_none() && !self.follows()
    }

    /// A raw transaction still to be broadcast (step 5).
    fn sends(&self) -> bool {
        self.outcome.is_none() && self.call.method == "eth_sendRawTransaction"
    }

    /// A log range that is, or may turn out to be, fetched in pieces (step 6).
    fn splits(&self) -> bool {
        self.split.is_some() || log_range(&self.call).is_some()
    }

    /// Still to be asked, and checked (step 8).
    fn to_verify(&self) -> bool {
        self.open() && self.check.is_some()
    }

    /// Nothing could answer it; a stale answer may (step 9).
    fn unavailable(&self) -> bool {
        self.key.is_some() && matches!(self.outcome, Some(Outcome::Unavailable(_)))
    }
}

/// The calls of one request that are not rejected, and what is known of each so far.
struct Work<'g, 'a> {
    gw: &'g Gateway,
    chain: &'g Chain,
    heads: &'g ChainHeadState,
    /// Some upstream serves the chain: the consensus head is current.
    live: bool,
    slots: Vec<Slot<'a>>,
}

impl<'g, 'a> Work<'g, 'a> {
    /// Whether some call needs a step, as the step's own predicate (a `Slot` method)
    /// says: `handle_entries` enters the steps with large futures only then.
    fn any(&self, step: fn(&Slot<'a>) -> bool) -> bool {
        self.slots.iter().any(step)
    }

    /// Step 3, classify (after 4 pinned the blocks): what the gateway itself knows best
    /// is answered here; each call's cache
    /// key, check and (for log ranges known to be too big) split are decided.
    fn new(
        gw: &'g Gateway,
        chain: &'g Chain,
        heads: &'g ChainHeadState,
        calls: &[&Call<'a>],
        resolved: &'a [Resolved],
        mut filtered: Handled,
    ) -> Work<'g, 'a> {
        // Asked only for a log range: it reads every upstream's health and the clock.
        let limit = std::cell::OnceCell::new();
        let limit = || *limit.get_or_init(|| logs::known_limit(chain));
        let head = heads.consensus.as_ref().map(|c| &c.hash);
        let slots = calls
            .iter()
            .zip(resolved)
            .enumerate()
            .map(|(i, (c, r))| {
                let filtered = filtered.answer(i);
                let call = Call {
                    id: c.id,
                    method: c.method.clone(),
                    params: r.params.as_deref().or(c.params),
                };
                let outcome = local_answer(chain, &call).or(filtered);
                let check = if outcome.is_some() {
                    None
                } else {
                    check_for(chain, &call, r.need)
                };
                let key = gw
                    .cache
                    .enabled()
                    .then(|| policy::key(chain.chain_id, &call.method, call.params))
                    .flatten()
                    .map(|text| {
                        let reach = policy::reach(&call.method, r.need, heads);
                        cache::Key::new(text, reach, head)
                    });
                let range = log_range(&call);
                // A range larger than a client may ask is refused before anything is sent.
                let outcome = match range.map(|(f, t)| logs::check_range(f, t, &gw.log_limits())) {
                    Some(Err(e)) => Some(Outcome::Refused(e)),
                    _ => outcome,
                };
                let split = range
                    .filter(|_| check.is_none())
                    .and_then(|(f, t)| limit().map(|l| (f, t, l)))
                    .filter(|&(f, t, l)| logs::span(f, t).is_some_and(|n| n > l));
                Slot {
                    call,
                    need: r.need,
                    key,
                    check,
                    split,
                    flight: None,
                    outcome,
                    level: Level::None,
                }
            })
            .collect();
        Work {
            gw,
            chain,
            heads,
            live: chain.upstreams().iter().any(|u| u.health.is_ready()),
            slots,
        }
    }

    /// Step 7, send: raw transactions are broadcast to distinct operators, not
    /// forwarded (`tx`).
    async fn send_transactions(&mut self) {
        for slot in &mut self.slots {
            if slot.sends() {
                slot.outcome = Some(
                    crate::tx::broadcast(
                        self.chain,
                        &self.gw.ledger,
                        self.gw.broadcast_to,
                        self.gw.rebroadcast.as_deref(),
                        &slot.call,
                    )
                    .await,
                );
            }
        }
    }

    /// Step 5, cache: what is cached for good, or for this very head, is answered here. A call
    /// that must be verified takes only an answer that was.
    async fn answer_from_cache(&mut self) {
        let mut hits = crate::metrics::cache_lookup_runs(&self.chain.name);
        for slot in &mut self.slots {
            let Some(key) = slot.key.as_ref().filter(|_| slot.outcome.is_none()) else {
                continue;
            };
            let hit = self
                .gw
                .cache
                .fresh(key, self.live)
                .await
                .filter(|e| slot.check.is_none() || e.level > Level::None);
            if let Some(entry) = hit {
                hits.count((slot.call.method.label(), "hit"));
                slot.level = entry.level;
                slot.outcome = Some(Outcome::Answered {
                    upstream: cache_label(),
                    answer: Answer::Result(entry.body),
                });
                slot.check = None;
            }
        }
    }

    /// Step 5, cache: a call identical to one in flight waits for that one's answer.
    fn join_flights(&mut self) {
        let mut lookups = crate::metrics::cache_lookup_runs(&self.chain.name);
        for slot in &mut self.slots {
            let Some(key) = slot.key.as_ref().filter(|_| slot.outcome.is_none()) else {
                continue;
            };
            let joined = slot.open().then(|| self.gw.cache.flights.join(key));
            let counted = match joined {
                Some(Joined::Follower(f)) => {
                    slot.flight = Some(Flight::Follower(f));
                    "coalesced"
                }
                Some(Joined::Leader(l)) => {
                    slot.flight = Some(Flight::Leader(l));
                    "miss"
                }
                None => "miss",
            };
            lookups.count((slot.call.method.label(), counted));
        }
    }

    /// Steps 6-7, select and send the calls that need no check, with failover, as one
    /// batch (each upstream attempt carries all of them).
    async fn forward(&mut self) {
        let ready = |s: &Slot<'_>| s.open() && s.check.is_none();
        let (to_send, need) = self.slots.iter().filter(|s| ready(s)).fold(
            (Vec::new(), Need::Any),
            |(mut v, need), s| {
                v.push(&s.call);
                (v, need.combine(s.need))
            },
        );
        if to_send.is_empty() {
            return;
        }
        let mut sent = route::forward(self.chain, &to_send, need).await.into_iter();
        for slot in self.slots.iter_mut().filter(|s| ready(s)) {
            slot.outcome = sent.next();
        }
    }

    /// Step 7, send: a provider refused a log range as too big: remember its limit, then
    /// fetch the range in pieces it takes.
    async fn split_logs(&mut self) {
        for slot in &mut self.slots {
            if let (Some((from, to)), Some(Outcome::Answered { upstream, answer })) =
                (log_range(&slot.call), &slot.outcome)
                && let Some(asked) = logs::span(from, to)
                && let Some(size) = logs::refused_range(answer, asked)
            {
                self.chain.learn_logs_range(upstream, size);
                slot.split = Some((from, to, size));
            }
            if let Some((from, to, size)) = slot.split {
                let limits = self.gw.log_limits();
                slot.outcome =
                    Some(logs::split(self.chain, &slot.call, (from, to), size, &limits).await);
            }
        }
    }

    /// Step 8, verify: calls to check are proven from Merkle proofs or agreed by a quorum.
    async fn verify(&mut self) {
        let (chain, max_gas) = (self.chain, self.gw.limits().max_call_gas);
        let checked = futures_util::future::join_all(
            self.slots
                .iter()
                .filter(|s| s.to_verify())
                .filter_map(|s| checked(chain, &s.call, &s.check, max_gas)),
        )
        .await;
        let mut checked = checked.into_iter();
        for slot in &mut self.slots {
            if slot.to_verify()
                && let Some(result) = checked.next()
            {
                (slot.outcome, slot.level) = settle(chain, slot, result);
            }
        }
    }

    /// Step 9, answer: keep what may be cached (answers, never errors; a call that was to be
    /// verified only once it was), and hand each answer to the calls that joined it.
    fn keep(&mut self) {
        for slot in &mut self.slots {
            if let (
                Some(key),
                Some(Outcome::Answered {
                    upstream,
                    answer: Answer::Result(body),
                }),
            ) = (&slot.key, &slot.outcome)
                && *upstream != cache_label()
                && (slot.check.is_none() || slot.level > Level::None)
                && let Some(lifetime) =
                    policy::lifetime(&slot.call.method, slot.need, self.heads, body)
            {
                self.gw.cache.store(key, lifetime, slot.level, body.clone());
            }
            if let Some(Flight::Leader(_)) = &slot.flight
                && let Some(Flight::Leader(leader)) = slot.flight.take()
            {
                leader.land(|| match &slot.outcome {
                    Some(Outcome::Answered { upstream, answer }) => {
                        Some((upstream.clone(), answer.clone(), slot.level))
                    }
                    _ => None,
                });
            }
        }
    }

    /// Step 5, cache: the calls that joined another's flight take its answer; when it had none, they
    /// go their own way (checked like any other).
    async fn follow(&mut self) {
        for slot in &mut self.slots {
            let Some(Flight::Follower(follower)) = slot.flight.take() else {
                continue;
            };
            if let Some((upstream, answer, level)) = follower.wait(FOLLOW_AT_MOST).await {
                slot.outcome = Some(Outcome::Answered { upstream, answer });
                slot.level = level;
            } else if let Some(result) = checked(
                self.chain,
                &slot.call,
                &slot.check,
                self.gw.limits().max_call_gas,
            ) {
                (slot.outcome, slot.level) = settle(self.chain, slot, result.await);
            } else {
                let sent = route::forward(self.chain, &[&slot.call], slot.need).await;
                slot.outcome = sent.into_iter().next();
            }
        }
    }

    /// Step 9, answer: no upstream could answer: a head-tied answer may be served stale, if configured
    /// (`[cache] serve_stale`). Returns the oldest served one's age.
    async fn serve_stale(&mut self) -> Option<u64> {
        let mut oldest: Option<u64> = None;
        for slot in &mut self.slots {
            if let (Some(key), Some(Outcome::Unavailable(_))) = (&slot.key, &slot.outcome)
                && let Some(entry) = self.gw.cache.stale(key).await
                && (slot.check.is_none() || entry.level > Level::None)
            {
                crate::metrics::cache_lookup(&self.chain.name, slot.call.method.label(), "stale");
                oldest = oldest.max(Some(entry.age().as_secs()));
                slot.level = entry.level;
                slot.outcome = Some(Outcome::Answered {
                    upstream: cache_label(),
                    answer: Answer::Result(entry.body),
                });
            }
        }
        oldest
    }

    /// Step 9, answer: a receipt, transaction or block found in block N above the consensus
    /// head (one upstream is ahead) is held until the head reaches N, so a client told
    /// "mined in N" never reads `latest` below N afterwards; if the head does not get
    /// there within a couple of head polls, the answer is `null`, as from a node that
    /// has not seen block N yet (clients ask again). `latest` itself never moves but
    /// by quorum, so it still never goes backwards.
    async fn hold_ahead(&mut self) {
        let within =
            (self.chain.poll_interval() * 2).clamp(Duration::from_secs(1), Duration::from_secs(5));
        for slot in &mut self.slots {
            let Some(Outcome::Answered {
                answer: Answer::Result(body),
                ..
            }) = &slot.outcome
            else {
                continue;
            };
            let Some(number) = included_in(&slot.call.method, body) else {
                continue;
            };
            if self.chain.head.latest().is_none_or(|head| head >= number)
                || self.chain.reached(number, within).await
            {
                continue;
            }
            tracing::debug!(chain = %self.chain.name, method = %slot.call.method, number, "answer from a block above the consensus head: null until the head gets there");
            slot.outcome = Some(Outcome::Answered {
                upstream: consensus_label(),
                answer: Answer::Result(bytes::Bytes::from_static(b"null")),
            });
        }
    }

    /// Step 9, answer: read-your-writes: the pending nonce and transactions Outlast broadcast.
    fn read_your_writes(&mut self) {
        for slot in &mut self.slots {
            if let Some(outcome) = &mut slot.outcome {
                self.gw
                    .ledger
                    .read_your_writes(self.chain.chain_id, &slot.call, outcome);
            }
        }
    }
}

/// The check step 8 runs for `call`, if it has one; an `eth_call` executed here gets
/// at most `max_gas` (`[limits] max_call_gas`).
fn checked<'c>(
    chain: &'c Chain,
    call: &'c Call<'_>,
    check: &'c Option<Check>,
    max_gas: u64,
) -> Option<impl Future<Output = Result<Checked, Unverified>> + 'c> {
    let check = check.as_ref()?;
    Some(async move {
        match check {
            Check::Proof(read, n) => verified::proven(chain, call, read, *n).await,
            Check::Block(id) => verified::block(chain, call, *id).await,
            Check::Quorum(need) => verified::agreed(chain, call, *need).await,
            Check::Call(n) => route::call::executed(chain, call, *n, max_gas).await,
            Check::Receipt => route::receipt::receipt(chain, call).await,
            Check::Logs(from, to) => route::proven_logs::logs(chain, call, *from, *to).await,
        }
    })
}

/// A check's result as the call's outcome and level, counted.
fn settle(
    chain: &Chain,
    slot: &Slot<'_>,
    result: Result<Checked, Unverified>,
) -> (Option<Outcome>, Level) {
    let mode = match slot.check {
        Some(
            Check::Proof(..)
            | Check::Block(BlockId::Hash(_))
            | Check::Call(_)
            | Check::Receipt
            | Check::Logs(..),
        ) => "proof",
        _ => "quorum",
    };
    let counted = match &result {
        Ok(c) if c.level == Level::None => "unconfirmed",
        Ok(_) => "verified",
        Err(Unverified::Disputed { .. }) => "unverifiable",
        Err(Unverified::Unreachable(_)) => "unavailable",
    };
    crate::metrics::verification(&chain.name, slot.call.method.label(), mode, counted);
    match result {
        Ok(c) => (
            Some(Outcome::Answered {
                upstream: c.upstream,
                answer: c.answer,
            }),
            c.level,
        ),
        Err(Unverified::Disputed { what, why }) => {
            (Some(Outcome::Unverified { what, why }), Level::None)
        }
        Err(Unverified::Unreachable(tried)) => (Some(Outcome::Unavailable(tried)), Level::None),
    }
}

/// Step 9, answer: every entry's answer or error in request order, with who answered.
fn answer(
    chain: &Chain,
    batch: bool,
    entries: &[Result<Call<'_>, Rejected<'_>>],
    slots: Vec<Slot<'_>>,
    stale_seconds: Option<u64>,
) -> Reply {
    let verified = slots.iter().map(|s| s.level).min().unwrap_or(Level::None);
    let mut counted = crate::metrics::call_runs(&chain.name);
    for slot in &slots {
        let (upstream, label) = slot
            .outcome
            .as_ref()
            .map_or(Outcome::UNAVAILABLE, Outcome::labels);
        counted.count((slot.call.method.label(), upstream, label));
    }
    drop(counted);
    // Sized for the answers and each one's envelope: a batch's body grew (and was
    // copied) at least once from a fixed guess.
    let answers: usize = slots
        .iter()
        .map(|s| match &s.outcome {
            Some(Outcome::Answered {
                answer: Answer::Result(raw) | Answer::Error { raw, .. },
                ..
            }) => raw.len(),
            _ => 0,
        })
        .sum();
    let mut outcomes = slots.into_iter().map(|s| s.outcome);
    let mut reply = ReplyBody::new(batch, answers + 64 * entries.len());
    let mut upstreams = SmallVec::new();
    let mut traced = crate::telemetry::Summary::start();
    for entry in entries {
        match entry {
            Err(rejected) => {
                count_rejected(&chain.name, &rejected.error);
                traced.rejected(matches!(rejected.error, RpcError::LimitExceeded(_)));
                if let Some(id) = rejected.id {
                    reply.error(id, &rejected.error);
                }
            }
            Ok(call) => {
                let outcome = outcomes
                    .next()
                    .flatten()
                    .unwrap_or(Outcome::Unavailable(Vec::new()));
                traced.answered(&call.method, outcome.labels().1);
                if let Outcome::Answered { upstream, .. } = &outcome
                    && !upstreams.contains(upstream)
                {
                    upstreams.push(upstream.clone());
                }
                let Some(id) = call.id else { continue };
                match outcome {
                    Outcome::Answered {
                        answer: Answer::Result(raw),
                        ..
                    } => reply.result(id, &raw),
                    Outcome::Answered {
                        answer: Answer::Error { raw, .. },
                        ..
                    } => reply.raw_error(id, &raw),
                    Outcome::Unavailable(tried) => reply.error(
                        id,
                        &RpcError::Unavailable {
                            chain: chain.name.to_string(),
                            tried,
                        },
                    ),
                    Outcome::Unverified { what, why } => {
                        reply.error(id, &RpcError::Unverifiable { what, why })
                    }
                    Outcome::Refused(e) => reply.error(id, &e),
                }
            }
        }
    }
    traced.finish();
    Reply {
        body: reply.finish(),
        upstreams,
        verified,
        stale_seconds,
    }
}

/// How one call is checked (step 8), decided by the chain's `verify` mode.
enum Check {
    /// A state read at a known block: answered from a verified Merkle proof.
    Proof(StateRead, u64),
    /// Answered only when a quorum of independent operators agree.
    Quorum(Need),
    /// A block whose header must hash to the agreed (or asked-for) hash.
    Block(BlockId),
    /// `eth_call` at a known block, executed here on proven state (`route::call`).
    Call(u64),
    /// A receipt, proven against its block's receipts root (`route::receipt`).
    Receipt,
    /// `eth_getLogs` over a short numeric range, from proven receipts (`route::proven_logs`).
    Logs(u64, u64),
}

fn check_for(chain: &Chain, call: &Call<'_>, need: Need) -> Option<Check> {
    use rpc::methods::Proof;
    if chain.verify == Verify::Off && chain.quorum_methods.is_empty() {
        return None;
    }
    let proof = call.method.proof();
    let read = if proof == Proof::State {
        StateRead::parse(&call.method, call.params)
    } else {
        None
    };
    let listed = chain
        .quorum_methods
        .iter()
        .any(|m| m == call.method.as_ref());
    if chain.verify != Verify::Off
        && proof == Proof::Block
        && let Some(id) = BlockId::of(&call.method, call.params, need)
    {
        return Some(Check::Block(id));
    }
    match (chain.verify, read, need) {
        (Verify::Off, ..) => None,
        (Verify::Proofs, Some(read), Need::Block(n)) => Some(Check::Proof(read, n)),
        (Verify::Proofs, None, Need::Block(n)) if proof == Proof::Call && !listed => {
            Some(Check::Call(n))
        }
        (Verify::Proofs, None, _) if proof == Proof::Call => Some(Check::Quorum(need)),
        (Verify::Proofs, None, _) if proof == Proof::Receipt && !listed => Some(Check::Receipt),
        (Verify::Proofs, None, _) if proof == Proof::Logs && !listed => log_range(call)
            .filter(|&(f, t)| {
                logs::span(f, t).is_some_and(|n| n <= route::proven_logs::MAX_PROVEN_BLOCKS)
            })
            .map(|(f, t)| Check::Logs(f, t)),
        (_, Some(_), _) => Some(Check::Quorum(need)),
        (_, None, _) if listed => Some(Check::Quorum(need)),
        _ => None,
    }
}

/// The block a receipt, a mined transaction or a block (by hash) answer sits in.
fn included_in(method: &str, body: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Shape<'a> {
        #[serde(borrow, default, rename = "blockNumber")]
        block_number: Option<&'a str>,
        #[serde(borrow, default)]
        number: Option<&'a str>,
    }
    let by_number = match method {
        "eth_getTransactionReceipt" | "eth_getTransactionByHash" => false,
        "eth_getBlockByHash" => true,
        _ => return None,
    };
    let shape: Shape<'_> = serde_json::from_slice(body).ok()?;
    let n = if by_number {
        shape.number
    } else {
        shape.block_number
    }?;
    rpc::quantity::parse(n)
}

/// The block range of an `eth_getLogs` call with numeric (or pinned) bounds.
fn log_range(call: &Call<'_>) -> Option<(u64, u64)> {
    (call.method == "eth_getLogs")
        .then(|| logs::range(call.params))
        .flatten()
}

/// `eth_blockNumber` is the consensus head: answered here, so it never goes backwards
/// whichever upstream would have been asked. Only while some upstream is serving, so
/// an outage is not hidden behind a frozen number.
fn local_answer(chain: &Chain, call: &Call<'_>) -> Option<Outcome> {
    if call.method != "eth_blockNumber" || !chain.upstreams().iter().any(|u| u.health.is_ready()) {
        return None;
    }
    let number = chain.head.latest()?;
    Some(Outcome::Answered {
        upstream: consensus_label(),
        answer: Answer::Result(format!("\"{number:#x}\"").into()),
    })
}

/// The `x-outlast-upstream` of answers taken from the cache.
fn cache_label() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("cache"));
    LABEL.clone()
}

/// A call joined to an identical one in flight waits this long at most, then asks itself.
const FOLLOW_AT_MOST: Duration = Duration::from_secs(30);

/// The `x-outlast-upstream` of answers taken from the consensus head.
fn consensus_label() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from("consensus"));
    LABEL.clone()
}

/// A call refused before it was sent (denied, over a limit, not a valid call), counted.
fn count_rejected(chain: &str, error: &RpcError) {
    use crate::metrics;
    match error {
        RpcError::Denied { method } => {
            metrics::call(chain, methods::label(method), "none", "denied")
        }
        RpcError::NotForKey { method, key } => {
            metrics::auth(key, "method", 1);
            metrics::call(chain, methods::label(method), "none", "denied")
        }
        RpcError::LimitExceeded(_) => {
            metrics::limit_exceeded("request");
            metrics::call(chain, "other", "none", "limited")
        }
        _ => metrics::call(chain, "other", "none", "invalid"),
    }
}

#[cfg(test)]
mod seam_tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::upstream::fake::{self, Act, Fake};

    /// A gateway with one chain `test` (verify off) served by `fakes`.
    fn gateway(fakes: &[&Fake]) -> Gateway {
        let config = crate::config::load_str(
            "[[chains]]\nname = \"test\"\nchain_id = 1\nverify = \"off\"\n\n\
             [[chains.upstreams]]\nname = \"placeholder\"\nurl = \"http://127.0.0.1:9\"\noperator = \"x\"\n",
        )
        .expect("valid config");
        let gw = Gateway::new(&config).expect("gateway");
        gw.chains[0].swap_upstreams(fakes.iter().map(|f| f.upstream.clone()).collect());
        gw
    }

    async fn ask(gw: &Gateway, body: Value) -> (Reply, Value) {
        let reply = handle(gw, &gw.chains[0], body.to_string().as_bytes()).await;
        let parsed = reply.body.as_deref().map_or(Value::Null, |b| {
            serde_json::from_slice(b).expect("a JSON reply")
        });
        (reply, parsed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_comes_back_in_request_order_with_each_clients_id() {
        // Each call asks for its own address back, so a mix-up would show.
        let up = fake::upstream("test", "a", "op-a", |method, params| match method {
            "eth_getBalance" => Act::result(json!(params[0])),
            _ => Act::Error(-32601, "method not found".into()),
        });
        let gw = gateway(&[&up]);
        let (reply, body) = ask(
            &gw,
            json!([
                {"jsonrpc": "2.0", "id": "first", "method": "eth_getBalance", "params": ["0x01", "0x1"]},
                {"jsonrpc": "2.0", "method": "eth_getBalance", "params": ["0x02", "0x1"]},
                {"jsonrpc": "2.0", "id": 7, "method": "eth_madeUp", "params": []},
                {"jsonrpc": "2.0", "id": {"odd": true}, "method": "eth_getBalance", "params": ["0x03", "0x1"]},
            ]),
        )
        .await;
        assert_eq!(
            body,
            json!([
                {"jsonrpc": "2.0", "id": "first", "result": "0x01"},
                {"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "method not found"}},
                {"jsonrpc": "2.0", "id": null, "error": {
                    "code": -32600,
                    "message": "invalid request: `id` must be a string, a number or null"
                }},
            ]),
            "the notification gets nothing; the rest keep their order and ids (an object id \
             is not one)"
        );
        assert_eq!(reply.upstreams.as_slice(), [Arc::<str>::from("a")]);
        assert_eq!(reply.verified, Level::None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_denied_method_is_refused_and_no_upstream_hears_of_it() {
        let up = fake::upstream("test", "a", "op-a", |_, _| Act::result(json!("0x")));
        let gw = gateway(&[&up]);
        let (_, body) = ask(
            &gw,
            json!({"jsonrpc": "2.0", "id": 1, "method": "eth_sign", "params": ["0x01", "0x"]}),
        )
        .await;
        assert_eq!(body["error"]["code"], json!(-32004), "{body}");
        assert_eq!(up.requests(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unparsable_body_is_one_error_and_sends_nothing() {
        let up = fake::upstream("test", "a", "op-a", |_, _| Act::result(json!("0x")));
        let gw = gateway(&[&up]);
        let reply = handle(&gw, &gw.chains[0], b"{\"jsonrpc\": \"2.0\", \"id\": 1,").await;
        let body: Value = serde_json::from_slice(&reply.body.expect("an error")).expect("JSON");
        assert_eq!(body["error"]["code"], json!(-32700), "{body}");
        assert_eq!(up.requests(), 0);
    }
}
