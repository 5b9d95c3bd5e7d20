//! The failover loop: walks `select`'s plan until every call has an answer that is not
//! the upstream's fault, or the plan, `max_attempts` or the retry budget runs out.
//!
//! Transport errors, timeouts, 429/5xx and malformed replies move the calls on; a
//! JSON-RPC error blamed on the caller (a revert, bad params) is the answer and is not
//! retried. A read that the first upstream has not answered within its tail latency is
//! **hedged**: the next upstream is asked too and the first good answer wins, so a hung
//! upstream costs one hedge delay, not a timeout. Retrying is safe for every method
//! that gets here: reads are idempotent and a signed raw transaction is the same
//! transaction wherever it is sent (which is why writes are retried but not hedged).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};
use smallvec::SmallVec;

use super::{resolve::Need, select};
use crate::upstream::health::Transition;
use crate::{
    route::Chain,
    rpc::{Attempt, Blame, Call},
    upstream::{self, Answer, Upstream, UpstreamError},
};

#[derive(Debug)]
pub enum Outcome {
    Answered {
        upstream: Arc<str>,
        answer: Answer,
    },
    /// Nothing answered; every attempt and skip, with why.
    Unavailable(Vec<Attempt>),
    /// Answers came, but none could be verified (`route::verified`).
    Unverified {
        what: String,
        why: String,
    },
    /// Outlast itself refused the call: it would cost more than a client may ask
    /// (`[limits]`); the client's error, never sent upstream.
    Refused(crate::rpc::RpcError),
}

impl Outcome {
    /// The labels of `Unavailable`, and of a call left without an outcome (answered as
    /// unavailable).
    pub const UNAVAILABLE: (&'static str, &'static str) = ("none", "unavailable");

    /// Who answered and how, as `outlast_requests_total`'s `upstream` and `outcome`.
    pub fn labels(&self) -> (&str, &'static str) {
        match self {
            Outcome::Answered { upstream, answer } => (
                upstream,
                match answer {
                    Answer::Result(_) => "result",
                    Answer::Error { .. } => "error",
                },
            ),
            Outcome::Unavailable(_) => Outcome::UNAVAILABLE,
            Outcome::Unverified { .. } => ("none", "unverified"),
            Outcome::Refused(_) => ("none", "limited"),
        }
    }
}

/// How many upstreams may be working on the same calls at once (the first + hedges).
const MAX_PARALLEL: usize = 2;

/// Indices into `calls`, and the calls of one attempt: made for every attempt, and
/// most requests are one call, so they stay on the stack (past eight, on the heap).
type Indices = SmallVec<[usize; 8]>;
type Batch<'c, 'a> = SmallVec<[&'c Call<'a>; 8]>;

/// One finished attempt: who, which calls (indices into `calls`), what came back.
type Finished = (
    Arc<Upstream>,
    Indices,
    Result<Vec<Option<Answer>>, UpstreamError>,
    Duration,
);
type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Finished> + Send + 'a>>;

/// Answers `calls` in order. Calls still pending after an attempt (left out of a batch
/// reply, or refused for the upstream's reasons) go together to the next upstream.
pub async fn forward(chain: &Chain, calls: &[&Call<'_>], need: Need) -> Vec<Outcome> {
    let plan = select::plan(chain, need, Instant::now());
    let hedge = chain
        .hedge
        .filter(|_| calls.iter().all(|c| is_hedgeable(&c.method)));
    chain.budget.deposit();
    let mut run = Run {
        chain,
        calls,
        candidates: plan.order.into_iter(),
        tried: plan.skipped,
        answered: vec![None; calls.len()],
        fallback: vec![None; calls.len()],
        attempts: 0,
        launched: SmallVec::new(),
        finished: SmallVec::new(),
        need,
    };
    let mut inflight: FuturesUnordered<AttemptFuture<'_>> = FuturesUnordered::new();
    if let Some(first) = run.launch(&run.pending()) {
        inflight.push(first);
    }
    let mut hedge_at = run.hedge_deadline(hedge, &inflight);
    while !inflight.is_empty() {
        let finished = match hedge_at {
            Some(at) => tokio::select! {
                f = inflight.next() => f,
                _ = tokio::time::sleep_until(at.into()) => {
                    hedge_at = None;
                    if let Some(extra) = run.launch(&run.pending()) {
                        tracing::debug!(chain = %chain.name, "hedging a slow call");
                        inflight.push(extra);
                    }
                    continue;
                }
            },
            None => inflight.next().await,
        };
        let Some((up, sent, result, took)) = finished else {
            break;
        };
        run.settle(&up, &sent, result, took);
        let pending = run.pending();
        if pending.is_empty() {
            break;
        }
        if inflight.is_empty()
            && let Some(next) = run.launch(&pending)
        {
            inflight.push(next);
        }
        if inflight.len() < MAX_PARALLEL && hedge_at.is_none() {
            hedge_at = run.hedge_deadline(hedge, &inflight);
        }
    }
    // Dropping `inflight` cancels an attempt that lost the race to a hedge; that
    // upstream was slower than its own tail latency, which counts against it, so a hung
    // upstream leaves the rotation after a few calls instead of costing each a hedge.
    drop(inflight);
    run.penalize_overtaken();
    run.finish()
}

/// State of one `forward`.
struct Run<'c, 'a> {
    chain: &'c Chain,
    calls: &'c [&'c Call<'a>],
    candidates: std::vec::IntoIter<Arc<Upstream>>,
    tried: Vec<Attempt>,
    answered: Vec<Option<(Arc<str>, Answer)>>,
    /// An upstream's own error (e.g. "method not found" there), kept in case no one does better.
    fallback: Vec<Option<(Arc<str>, Answer)>>,
    attempts: usize,
    /// Upstreams asked so far, in order, and those whose attempt came back (the first,
    /// and a hedge at most, unless attempts fail).
    launched: SmallVec<[Arc<Upstream>; 2]>,
    finished: SmallVec<[Arc<str>; 2]>,
    /// The block the calls need: a `null` from an upstream below it means "not yet".
    need: Need,
}

impl<'c, 'a> Run<'c, 'a> {
    fn pending(&self) -> Indices {
        (0..self.calls.len())
            .filter(|&i| self.answered[i].is_none())
            .collect()
    }

    /// Starts an attempt at the next candidate that may take it, within `max_attempts`
    /// and (beyond the first) the retry budget. `None` when nobody may.
    fn launch(&mut self, pending: &[usize]) -> Option<AttemptFuture<'c>> {
        if pending.is_empty() {
            return None;
        }
        while let Some(up) = self.candidates.next() {
            if self.attempts >= self.chain.max_attempts {
                self.untried(
                    &up,
                    &format!(
                        "[routing] max_attempts = {} reached",
                        self.chain.max_attempts
                    ),
                );
                continue;
            }
            if self.attempts > 0 && !self.chain.budget.withdraw(Instant::now()) {
                self.untried(&up, "the chain's retry budget is spent (too many failures)");
                continue;
            }
            let guard = match up.admit() {
                Ok(g) => g,
                Err(limit) => {
                    self.untried(&up, limit);
                    continue;
                }
            };
            self.attempts += 1;
            self.launched.push(up.clone());
            let batch: Batch<'c, 'a> = pending.iter().map(|&i| self.calls[i]).collect();
            let sent = Indices::from_slice(pending);
            return Some(Box::pin(async move {
                let _guard = guard;
                let started = Instant::now();
                let result = up.send(&batch).await;
                (up, sent, result, started.elapsed())
            }));
        }
        None
    }

    fn untried(&mut self, up: &Upstream, why: &str) {
        let last = up
            .health
            .last_error()
            .map(|e| format!("; its last error: {e}"))
            .unwrap_or_default();
        self.tried.push(Attempt {
            upstream: up.name.to_string(),
            error: format!("not tried: {why}{last}"),
        });
    }

    /// When to hedge the one attempt in flight: after that upstream's tail latency.
    fn hedge_deadline(
        &self,
        hedge: Option<(Duration, Duration)>,
        inflight: &FuturesUnordered<AttemptFuture<'_>>,
    ) -> Option<Instant> {
        let (min, max) = hedge?;
        if inflight.len() != 1 || self.candidates.len() == 0 {
            return None;
        }
        // The attempt in flight is the latest launched; its upstream's stats set the delay.
        let last = self.launched.last()?;
        Some(Instant::now() + last.health.hedge_delay(min, max))
    }

    fn penalize_overtaken(&self) {
        if self.answered.iter().any(Option::is_none) {
            return;
        }
        for up in &self.launched {
            if !self.finished.contains(&up.name) {
                let why = format!(
                    "overtaken by a hedge: no answer within {} ms",
                    up.health
                        .hedge_delay(Duration::ZERO, Duration::MAX)
                        .as_millis()
                );
                note_failure(up, &UpstreamError::Slow(why));
            }
        }
    }

    /// A `null` block or state from an upstream whose head is below the block asked
    /// for means it does not have it yet, not that it does not exist.
    fn lacks_block(&self, up: &Upstream, answer: &Answer) -> bool {
        let Need::Block(n) = self.need else {
            return false;
        };
        matches!(answer, Answer::Result(raw) if &raw[..] == b"null")
            && up.head.latest().is_none_or(|h| h < n)
    }

    fn settle(
        &mut self,
        up: &Upstream,
        sent: &[usize],
        result: Result<Vec<Option<Answer>>, UpstreamError>,
        took: Duration,
    ) {
        self.finished.push(up.name.clone());
        let answers = match result {
            Err(e) => {
                note_failure(up, &e);
                self.tried.push(Attempt {
                    upstream: up.name.to_string(),
                    error: e.to_string(),
                });
                return;
            }
            Ok(answers) => answers,
        };
        crate::metrics::upstream_attempt(&self.chain.name, &up.name, "ok", Some(took));
        upstream::log_transition(up, &up.health.record_success(took));
        let mut refusal = None;
        for (&i, answer) in sent.iter().zip(answers) {
            if self.answered[i].is_some() {
                continue; // a hedge already answered it
            }
            match answer {
                None => {
                    refusal
                        .get_or_insert_with(|| "left the call out of its batch reply".to_owned());
                }
                Some(a) if a.blame() == Some(Blame::Upstream) || self.lacks_block(up, &a) => {
                    match &a {
                        Answer::Error { code, message, .. } => {
                            refusal.get_or_insert_with(|| format!("error {code}: {message}"));
                        }
                        Answer::Result(_) => {
                            refusal.get_or_insert_with(|| {
                                "null: it does not have that block yet".to_owned()
                            });
                        }
                    }
                    self.fallback[i] = Some((up.name.clone(), a));
                }
                Some(a) => self.answered[i] = Some((up.name.clone(), a)),
            }
        }
        if let Some(error) = refusal {
            self.tried.push(Attempt {
                upstream: up.name.to_string(),
                error,
            });
        }
    }

    fn finish(self) -> Vec<Outcome> {
        let tried = self.tried;
        if self.answered.iter().any(Option::is_none) {
            tracing::debug!(chain = %self.chain.name, ?tried, "calls left unanswered");
        }
        self.answered
            .into_iter()
            .zip(self.fallback)
            .map(|(answer, fallback)| match answer.or(fallback) {
                Some((upstream, answer)) => Outcome::Answered { upstream, answer },
                None => Outcome::Unavailable(tried.clone()),
            })
            .collect()
    }
}

/// Writes are retried on failure but never sent twice at once.
fn is_hedgeable(method: &str) -> bool {
    !matches!(
        method,
        "eth_sendRawTransaction" | "eth_sendRawTransactionSync"
    )
}

pub(crate) fn note_failure(up: &Upstream, e: &UpstreamError) {
    let now = Instant::now();
    let transition = match e {
        UpstreamError::RateLimited { retry_after } => {
            up.health.record_rate_limited(*retry_after, now)
        }
        UpstreamError::ForeignReply(_) => up.health.record_foreign_reply(&e.to_string(), now),
        _ => up.health.record_failure(&e.to_string(), e.cause(), now),
    };
    tracing::debug!(chain = %up.chain, upstream = %up.name, error = %e, "attempt failed");
    crate::metrics::upstream_attempt(&up.chain, &up.name, e.label(), None);
    if transition != Transition::None {
        upstream::log_transition(up, &transition);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::{
        route::testing::{call, chain, params},
        upstream::fake::{self, Act},
    };

    fn answered_by(outcome: &Outcome) -> (&str, String) {
        match outcome {
            Outcome::Answered {
                upstream,
                answer: Answer::Result(raw),
            } => (upstream, String::from_utf8_lossy(raw).into_owned()),
            other => panic!("not a result: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_upstream_is_left_for_the_next_one() {
        let a = fake::upstream("test", "a", "op-a", |_, _| Act::Status(502));
        let b = fake::upstream("test", "b", "op-b", |_, _| Act::result(json!("0x1")));
        let chain = chain("off", 1, &[&a, &b]);
        let p = params("[]");
        let out = forward(&chain, &[&call("eth_chainId", &p)], Need::Any).await;
        assert_eq!(answered_by(&out[0]), ("b", "\"0x1\"".to_owned()));
        assert_eq!(b.requests(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_read_is_hedged_and_the_fast_answer_wins() {
        let slow = fake::in_tier("test", "slow", "op-a", 1, |_, _| {
            Act::after(10_000, Act::result(json!("0xa")))
        });
        let fast = fake::in_tier("test", "fast", "op-b", 2, |_, _| {
            Act::after(5, Act::result(json!("0xb")))
        });
        let chain = chain("off", 1, &[&slow, &fast]);
        let p = params(r#"["0x0000000000000000000000000000000000000001", "0x1"]"#);
        let started = tokio::time::Instant::now();
        let out = forward(&chain, &[&call("eth_getBalance", &p)], Need::Block(1)).await;
        // The slow one (preferred tier) was asked first; the hedge went to the fast one.
        assert_eq!(slow.requests(), 1);
        assert_eq!(answered_by(&out[0]), ("fast", "\"0xb\"".to_owned()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_callers_error_is_the_answer_and_goes_nowhere_else() {
        let revert = |_: &str, _: &serde_json::Value| Act::Error(3, "execution reverted".into());
        let a = fake::upstream("test", "a", "op-a", revert);
        let b = fake::upstream("test", "b", "op-b", revert);
        let chain = chain("off", 1, &[&a, &b]);
        let p = params(r#"[{"to": "0x0000000000000000000000000000000000000001"}, "0x1"]"#);
        let out = forward(&chain, &[&call("eth_call", &p)], Need::Block(1)).await;
        assert!(
            matches!(
                &out[0],
                Outcome::Answered {
                    answer: Answer::Error { code: 3, .. },
                    ..
                }
            ),
            "{:?}",
            out[0]
        );
        assert_eq!(
            a.requests() + b.requests(),
            1,
            "a revert is not retried elsewhere"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn when_nothing_answers_every_attempt_is_reported() {
        let a = fake::upstream("test", "a", "op-a", |_, _| Act::Status(503));
        let b = fake::upstream("test", "b", "op-b", |_, _| Act::Hang);
        let chain = chain("off", 1, &[&a, &b]);
        let p = params("[]");
        let out = forward(&chain, &[&call("eth_chainId", &p)], Need::Any).await;
        let Outcome::Unavailable(tried) = &out[0] else {
            panic!("{:?}", out[0])
        };
        let mut who: Vec<&str> = tried.iter().map(|t| &*t.upstream).collect();
        who.sort_unstable();
        assert_eq!(who, ["a", "b"], "{tried:?}");
    }
}
