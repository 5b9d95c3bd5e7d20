//! Asking gateways for one thing: `race` starts the first `race` candidates at once,
//! one more whenever the newest has not answered within its hedge delay (its tail
//! latency) or one fails, and returns the first *verified* answer. Every outcome feeds
//! the gateway's health; a lie bans it. What the callers' `attempt` verifies decides
//! what "verified" means (a block's hash, a chunk's proof, a header's signature).

use std::{
    error::Error as _,
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{StreamExt, stream::FuturesUnordered};

use super::{
    Attempt, Settings, StorageError,
    gateways::{Gateway, Pool},
};

/// Why one gateway gave no verified answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("not found (HTTP {0})")]
    NotFound(u16),
    #[error("HTTP {0}")]
    Status(u16),
    /// A 3xx: redirects are never followed (they could point anywhere, 127.0.0.1
    /// included), so a gateway that redirects has failed this request.
    #[error("redirected (HTTP {0}); redirects are not followed")]
    Redirected(u16),
    /// Not sent: the request itself would not stay under the gateway's base URL. Not
    /// the gateway's fault.
    #[error("not sent: {0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("stalled: nothing for {0:?} in the middle of its stream")]
    Stalled(Duration),
    #[error("its stream broke: {0}")]
    Body(String),
    #[error("not a valid answer: {0}")]
    Malformed(String),
    #[error("its answer did not contain {0}")]
    Missing(String),
    /// Content that does not match its address: the gateway is banned.
    #[error("served {0}; banned")]
    Lie(String),
}

impl GatewayError {
    pub fn not_found(&self) -> bool {
        matches!(self, Self::NotFound(_) | Self::Missing(_))
    }

    pub fn timed_out(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Stalled(_))
    }

    pub fn from_reqwest(e: &reqwest::Error, waited: Duration) -> Self {
        if e.is_timeout() {
            return Self::Timeout(waited);
        }
        // The innermost cause, without the URL reqwest would print (it may hold a token).
        let mut detail = None;
        let mut source = e.source();
        while let Some(s) = source {
            detail = Some(s.to_string());
            source = s.source();
        }
        let detail = detail.unwrap_or_else(|| {
            e.to_string()
                .replace(e.url().map_or("", |u| u.as_str()), "<gateway>")
        });
        if e.is_connect() {
            Self::Connect(detail)
        } else if e.is_body() || e.is_decode() {
            Self::Body(detail)
        } else {
            Self::Request(detail)
        }
    }
}

/// One gateway's failure, kept for the error a client gets when all fail.
#[derive(Debug, Clone)]
pub struct Failure {
    pub gateway: Arc<str>,
    pub error: GatewayError,
}

impl Failure {
    pub fn new(gateway: &Gateway, error: GatewayError) -> Self {
        Failure {
            gateway: gateway.name.clone(),
            error,
        }
    }
}

/// Records `error` in `gateway`'s health: a lie bans it, anything else counts towards
/// its cool-down.
pub fn record(pool: &Pool, gateway: &Gateway, address: &str, error: &GatewayError) {
    match error {
        GatewayError::Lie(what) => pool.record_lie(gateway, address, what),
        GatewayError::NotFound(_) | GatewayError::Missing(_) | GatewayError::Refused(_) => {}
        other => pool.record_failure(gateway, &other.to_string()),
    }
}

/// The client's error when every gateway failed: 404 when every one said it has
/// nothing, 504 when some timed out, 502 otherwise; each attempt listed.
pub fn exhausted(kind: &'static str, address: &str, failures: Vec<Failure>) -> StorageError {
    if failures.is_empty() {
        return StorageError::NoGateways { kind };
    }
    let all_missing = failures.iter().all(|f| f.error.not_found());
    let timed_out = failures.iter().any(|f| f.error.timed_out());
    let tried = failures
        .into_iter()
        .map(|f| Attempt {
            gateway: f.gateway,
            error: f.error.to_string(),
        })
        .collect();
    if all_missing {
        StorageError::NotFound {
            kind,
            address: address.to_owned(),
            tried,
        }
    } else {
        StorageError::Unavailable {
            kind,
            address: address.to_owned(),
            tried,
            timed_out,
        }
    }
}

/// Asks `candidates` (best first) for `address` with `attempt`, racing and hedging as
/// the module doc says. Each attempt gets `settings.first_block` to succeed. On
/// success, the winner and its answer; the others are dropped (their requests end).
pub async fn race<T, F, Fut>(
    pool: &Pool,
    settings: &Settings,
    candidates: Vec<Arc<Gateway>>,
    address: &str,
    attempt: F,
) -> Result<(Arc<Gateway>, T), Vec<Failure>>
where
    F: Fn(Arc<Gateway>) -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let limit = settings.first_block;
    let run = |g: Arc<Gateway>| {
        let fut = attempt(g.clone());
        async move {
            let started = Instant::now();
            let result = match tokio::time::timeout(limit, fut).await {
                Ok(r) => r,
                Err(_) => Err(GatewayError::Timeout(limit)),
            };
            (g, started.elapsed(), result)
        }
    };
    let mut waiting = candidates.into_iter();
    let mut running = FuturesUnordered::new();
    let mut failures = Vec::new();
    let mut newest = None;
    for g in waiting.by_ref().take(settings.race) {
        newest = Some(g.clone());
        running.push(run(g));
    }
    let hedge_after = |g: &Option<Arc<Gateway>>| {
        g.as_ref()
            .map_or(limit, |g| g.hedge_delay(settings.hedge_min, limit))
    };
    let hedge = tokio::time::sleep(hedge_after(&newest));
    tokio::pin!(hedge);
    let mut more = waiting.len() > 0;
    loop {
        tokio::select! {
            done = running.next() => {
                let Some((g, took, result)) = done else {
                    return Err(failures);
                };
                match result {
                    Ok(v) => {
                        g.record_success(took);
                        return Ok((g, v));
                    }
                    Err(e) => {
                        tracing::debug!(gateway = %g.name, address, "storage gateway failed: {e}");
                        record(pool, &g, address, &e);
                        failures.push(Failure::new(&g, e));
                        if let Some(next) = waiting.next() {
                            newest = Some(next.clone());
                            running.push(run(next));
                            hedge.as_mut().reset(tokio::time::Instant::now() + hedge_after(&newest));
                        }
                        more = waiting.len() > 0;
                        if running.is_empty() {
                            return Err(failures);
                        }
                    }
                }
            }
            _ = &mut hedge, if more => {
                if let Some(next) = waiting.next() {
                    tracing::debug!(gateway = %next.name, address, "hedging: asking one more storage gateway");
                    newest = Some(next.clone());
                    running.push(run(next));
                }
                hedge.as_mut().reset(tokio::time::Instant::now() + hedge_after(&newest));
                more = waiting.len() > 0;
            }
        }
    }
}
