//! Asking upstreams for what `verified` checks — trusted headers, proofs, quorum votes —
//! with the same resilience as ordinary reads (`forward`): every answer feeds health,
//! an upstream that fails is replaced at once, and one that has not answered within its
//! hedge delay is replaced too (it may still answer: the first useful answer counts).
//! So a hung upstream costs one hedge delay, never a request timeout.
//!
//! Two shapes, one engine:
//! - a **race** (`width` 1, waiting for late ones): the first acceptable proof or block;
//! - a **vote** (`width` = the quorum, not waiting for late ones): voters of distinct
//!   operators; when nobody is left to ask, a voter still silent past its hedge delay is
//!   counted **absent** — absence is not dissent — and the caller decides with the votes
//!   it has.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};

use super::forward::note_failure;
use crate::{
    route::Chain,
    rpc::{Attempt, Call},
    upstream::{self, Answer, Upstream, UpstreamError},
};

/// What one upstream sent back.
pub type Reply = Result<Vec<Option<Answer>>, UpstreamError>;

/// How many to ask and how long to wait.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Attempts kept in flight that are not yet late.
    pub width: usize,
    /// Upstreams asked at most.
    pub max: usize,
    /// When nobody is left to ask: wait for late attempts (a race), or stop and count
    /// them absent (a vote).
    pub wait_for_late: bool,
}

/// How asking ended when the judge never said done.
#[derive(Debug, Default)]
pub struct Exhausted {
    /// Upstreams still silent past their hedge delay when asking stopped.
    pub absent: Vec<Arc<str>>,
    /// Every upstream that failed or was not asked, and why (for `data.tried`).
    pub tried: Vec<Attempt>,
}

type Flight<'a> = Pin<Box<dyn Future<Output = (usize, Reply, Duration)> + Send + 'a>>;

/// Asks `candidates` (best first) for `calls` in `shape`, handing each reply to `judge`
/// until it returns `Some`.
pub async fn ask<'a, T>(
    chain: &'a Chain,
    candidates: Vec<Arc<Upstream>>,
    shape: Shape,
    calls: &'a [&'a Call<'a>],
    mut judge: impl FnMut(&Arc<Upstream>, Reply) -> Option<T>,
) -> Result<T, Exhausted> {
    let mut queue: VecDeque<Arc<Upstream>> = candidates.into();
    let mut launched: Vec<(Arc<Upstream>, Option<Instant>)> = Vec::new();
    let mut done: Vec<bool> = Vec::new();
    let mut inflight: FuturesUnordered<Flight<'a>> = FuturesUnordered::new();
    let mut tried = Vec::new();
    loop {
        let now = Instant::now();
        // Keep `width` punctual attempts in flight while there is anyone left to ask.
        loop {
            let punctual = launched
                .iter()
                .zip(&done)
                .filter(|((_, late_at), d)| !**d && late_at.is_none_or(|t| t > now))
                .count();
            if punctual >= shape.width || launched.len() >= shape.max {
                break;
            }
            let Some(up) = queue.pop_front() else { break };
            let guard = match up.admit() {
                Ok(g) => g,
                Err(limit) => {
                    tried.push(Attempt {
                        upstream: up.name.to_string(),
                        error: format!("not tried: {limit}"),
                    });
                    continue;
                }
            };
            let late_at = chain
                .hedge
                .map(|(min, max)| now + up.health.hedge_delay(min, max));
            let index = launched.len();
            launched.push((up.clone(), late_at));
            done.push(false);
            inflight.push(Box::pin(async move {
                let _guard = guard;
                let started = Instant::now();
                let reply = up.send(calls).await;
                (index, reply, started.elapsed())
            }));
        }
        let pending: Vec<usize> = (0..launched.len()).filter(|&i| !done[i]).collect();
        if pending.is_empty() {
            return Err(Exhausted {
                absent: Vec::new(),
                tried,
            });
        }
        let more = !queue.is_empty() && launched.len() < shape.max;
        let all_late = pending
            .iter()
            .all(|&i| launched[i].1.is_some_and(|t| t <= now));
        if !more && all_late && !shape.wait_for_late {
            let absent = pending
                .iter()
                .map(|&i| {
                    let up = &launched[i].0;
                    penalize_late(up);
                    tried.push(Attempt {
                        upstream: up.name.to_string(),
                        error: "no answer within its hedge delay: counted absent".into(),
                    });
                    up.name.clone()
                })
                .collect();
            return Err(Exhausted { absent, tried });
        }
        // Wake when the next punctual attempt becomes late (someone else is asked then).
        let next_late = pending
            .iter()
            .filter_map(|&i| launched[i].1)
            .filter(|&t| t > now)
            .min();
        let finished = match next_late {
            Some(at) => tokio::select! {
                f = inflight.next() => f,
                () = tokio::time::sleep_until(at.into()) => continue,
            },
            None => inflight.next().await,
        };
        let Some((index, reply, took)) = finished else {
            continue;
        };
        done[index] = true;
        let up = launched[index].0.clone();
        match &reply {
            Ok(_) => {
                crate::metrics::upstream_attempt(&chain.name, &up.name, "ok", Some(took));
                upstream::log_transition(&up, &up.health.record_success(took));
            }
            Err(e) => {
                note_failure(&up, e);
                tried.push(Attempt {
                    upstream: up.name.to_string(),
                    error: e.to_string(),
                });
            }
        }
        if let Some(verdict) = judge(&up, reply) {
            // Attempts still out past their hedge delay lost to a faster upstream:
            // slower than its own tail, which counts against it (as in `forward`).
            let now = Instant::now();
            for (i, (slow, late_at)) in launched.iter().enumerate() {
                if !done[i] && late_at.is_some_and(|t| t <= now) {
                    penalize_late(slow);
                }
            }
            return Ok(verdict);
        }
    }
}

fn penalize_late(up: &Upstream) {
    note_failure(
        up,
        &UpstreamError::Slow("no answer within its hedge delay: another was asked".into()),
    );
}
