//! The failover loop: walks `select`'s plan until every call has an answer that is not
//! the upstream's fault, or the plan (or `max_attempts`) runs out.
//!
//! Transport errors, timeouts, 429/5xx and malformed replies move the call on; a JSON-RPC
//! error blamed on the caller (a revert, bad params) is the answer and is not retried.
//! Retrying is safe for every method that gets here: reads are idempotent and a signed
//! raw transaction is the same transaction wherever it is sent.

use std::{sync::Arc, time::Instant};

use super::{health::Transition, resolve::Need, select};
use crate::{
    gateway::Chain,
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
}

/// Answers `calls` in order. Calls still pending after an attempt (left out of a batch
/// reply, or refused for the upstream's reasons) go together to the next upstream.
pub async fn forward(chain: &Chain, calls: &[&Call<'_>], need: Need) -> Vec<Outcome> {
    let plan = select::plan(chain, need, Instant::now());
    let mut tried = plan.skipped;
    let mut answered: Vec<Option<(Arc<str>, Answer)>> = vec![None; calls.len()];
    // An upstream's own error (e.g. "method not found" there), kept in case no one does better.
    let mut fallback: Vec<Option<(Arc<str>, Answer)>> = vec![None; calls.len()];
    let mut pending: Vec<usize> = (0..calls.len()).collect();

    for (attempt, up) in plan.order.iter().enumerate() {
        if pending.is_empty() {
            break;
        }
        if attempt >= chain.max_attempts {
            let last = up
                .health
                .last_error()
                .map(|e| format!("; its last error: {e}"))
                .unwrap_or_default();
            tried.push(Attempt {
                upstream: up.name.to_string(),
                error: format!(
                    "not tried: [routing] max_attempts = {} reached{last}",
                    chain.max_attempts
                ),
            });
            continue;
        }
        let batch: Vec<&Call<'_>> = pending.iter().map(|&i| calls[i]).collect();
        match up.send(&batch).await {
            Err(e) => {
                note_failure(up, &e);
                tried.push(Attempt {
                    upstream: up.name.to_string(),
                    error: e.to_string(),
                });
            }
            Ok(answers) => {
                upstream::log_transition(up, &up.health.record_success());
                let mut still = Vec::new();
                let mut refusals = Vec::new();
                for (&i, answer) in pending.iter().zip(answers) {
                    match answer {
                        None => {
                            still.push(i);
                            refusals.push("left the call out of its batch reply".to_owned());
                        }
                        Some(a) if a.blame() == Some(Blame::Upstream) => {
                            if let Answer::Error { code, message, .. } = &a {
                                refusals.push(format!("error {code}: {message}"));
                            }
                            fallback[i] = Some((up.name.clone(), a));
                            still.push(i);
                        }
                        Some(a) => answered[i] = Some((up.name.clone(), a)),
                    }
                }
                if let Some(first) = refusals.first() {
                    tried.push(Attempt {
                        upstream: up.name.to_string(),
                        error: first.clone(),
                    });
                }
                pending = still;
            }
        }
    }
    if !pending.is_empty() {
        tracing::debug!(chain = %chain.name, pending = pending.len(), ?tried, "calls left unanswered");
    }
    answered
        .into_iter()
        .zip(fallback)
        .map(|(answer, fallback)| match answer.or(fallback) {
            Some((upstream, answer)) => Outcome::Answered { upstream, answer },
            None => Outcome::Unavailable(tried.clone()),
        })
        .collect()
}

fn note_failure(up: &Upstream, e: &UpstreamError) {
    let now = Instant::now();
    let transition = match e {
        UpstreamError::RateLimited { retry_after } => {
            up.health.record_rate_limited(*retry_after, now)
        }
        _ => up.health.record_failure(&e.to_string(), now),
    };
    tracing::debug!(chain = %up.chain, upstream = %up.name, error = %e, "attempt failed");
    if transition != Transition::None {
        upstream::log_transition(up, &transition);
    }
}
