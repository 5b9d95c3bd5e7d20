//! HTTP handlers: find the chain, enforce the body limit, hand the bytes to `dispatch`,
//! and set the response headers of design.md.

use std::sync::Arc;

use std::net::{IpAddr, Ipv4Addr};

use axum::{
    Extension,
    extract::{Path, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use hyper::body::{Body as HttpBody, Incoming};

use super::{guard, listen::ClientAddr};
use crate::{
    auth::Refused,
    config::Limits,
    dispatch,
    gateway::Gateway,
    rpc::{RpcError, parse::Shape, respond::whole_request_error},
};

// The handlers take the whole request and split it: a `HeaderMap` argument would be a
// copy of the headers for every call.
pub async fn rpc_chain(
    State(gw): State<Arc<Gateway>>,
    Path(chain): Path<String>,
    client: Option<Extension<ClientAddr>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    rpc(
        &gw,
        Some(&chain),
        None,
        address(client),
        &parts.headers,
        body,
    )
    .await
}

/// `POST /{chain}/{key}`: the key in the path, for clients that cannot set headers.
pub async fn rpc_chain_key(
    State(gw): State<Arc<Gateway>>,
    Path((chain, key)): Path<(String, String)>,
    client: Option<Extension<ClientAddr>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    rpc(
        &gw,
        Some(&chain),
        Some(&key),
        address(client),
        &parts.headers,
        body,
    )
    .await
}

pub async fn rpc_root(
    State(gw): State<Arc<Gateway>>,
    client: Option<Extension<ClientAddr>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    rpc(&gw, None, None, address(client), &parts.headers, body).await
}

/// The client's address as `server::listen` worked it out (trusted proxies'
/// `X-Forwarded-For` believed); unspecified when served without the listener.
pub fn address(client: Option<Extension<ClientAddr>>) -> IpAddr {
    client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |Extension(c)| c.0)
}

/// A request `auth` turned away: 401, 403, 429 (with `Retry-After`) or 503.
pub fn refused(r: &Refused) -> Response {
    let mut response = json(r.status(), whole_request_error(&r.rpc_error()));
    if let Some(secs) = r.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// `POST /{chain}` and `POST /{chain}/{key}` of a configured chain (`lane_path`): the
/// JSON-RPC lane, answered without the router. Its matching, path extraction,
/// middleware and boxed services were a third of a cache hit's allocations
/// (bench/README.md). The browser guard runs here as the router's layer runs it.
pub async fn lane(
    gw: Arc<Gateway>,
    req: Request<Incoming>,
    at: LanePath,
    client: IpAddr,
) -> Response {
    let cors = match guard::admit(&gw, &req) {
        guard::Admission::Pass { cors } => cors,
        guard::Admission::Answered(answer) => return answer,
    };
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().get(1..).unwrap_or_default();
    let (chain, key) = match at.key {
        Some(k) => (path.get(..at.chain), path.get(k..)),
        None => (Some(path), None),
    };
    let response = rpc(&gw, chain, key, client, &parts.headers, body).await;
    guard::expose(&gw, response, cors)
}

/// Where a lane request's path splits: the chain's length, and where the key starts.
pub struct LanePath {
    chain: usize,
    key: Option<usize>,
}

/// Whether `req` takes the lane: `POST /{chain}` or `POST /{chain}/{key}` with `chain`
/// configured and neither segment empty or percent-encoded (the router decodes
/// those). Anything else goes to the router, which answers it as before.
pub fn lane_path<B>(gw: &Gateway, req: &Request<B>) -> Option<LanePath> {
    if req.method() != Method::POST {
        return None;
    }
    let rest = req.uri().path().strip_prefix('/')?;
    let (chain, key) = match rest.split_once('/') {
        Some((c, k)) => (c, Some(k)),
        None => (rest, None),
    };
    let plain = |s: &str| !s.is_empty() && !s.contains(['/', '%']);
    if !plain(chain) || !key.is_none_or(plain) {
        return None;
    }
    gw.chain(Some(chain))?;
    Some(LanePath {
        chain: chain.len(),
        key: key.map(|_| chain.len() + 1),
    })
}

async fn rpc<B>(
    gw: &Arc<Gateway>,
    path: Option<&str>,
    key: Option<&str>,
    client: IpAddr,
    headers: &HeaderMap,
    body: B,
) -> Response
where
    B: HttpBody<Data = bytes::Bytes>,
    B::Error: std::fmt::Display,
{
    let Some(chain) = gw.chain(path) else {
        let available = gw
            .chains
            .iter()
            .map(|c| (c.name.to_string(), c.chain_id))
            .collect();
        let error = match path {
            Some(p) => RpcError::UnknownChain {
                requested: p.to_owned(),
                available,
            },
            None => RpcError::ChainRequired { available },
        };
        return json(StatusCode::NOT_FOUND, whole_request_error(&error));
    };
    // Who calls, before the body is read: a request without a valid key costs nothing.
    let caller = match gw
        .access()
        .identify(key, headers, client)
        .and_then(|c| c.may_use(&chain.name).map(|()| c))
    {
        Ok(c) => c,
        Err(r) => return refused(&r),
    };
    let limits = gw.limits();
    let max = limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let bytes = match read_body(body, max, declared, gw.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            crate::metrics::limit_exceeded("body");
            let e = RpcError::LimitExceeded(format!("request body exceeds {max} bytes"));
            return closing(json(StatusCode::PAYLOAD_TOO_LARGE, whole_request_error(&e)));
        }
        Err(BodyError::Timeout) => {
            crate::metrics::limit_exceeded("body_timeout");
            let e = RpcError::InvalidRequest(format!(
                "the request body did not arrive within {} ms ([server] body_timeout_ms)",
                gw.body_timeout.as_millis()
            ));
            return closing(json(StatusCode::REQUEST_TIMEOUT, whole_request_error(&e)));
        }
        Err(BodyError::Read(e)) => {
            let e = RpcError::Parse(format!("could not read the request body: {e}"));
            return json(StatusCode::BAD_REQUEST, whole_request_error(&e));
        }
    };
    let shape = Shape::of(&bytes, limits.max_depth);
    if let Err(r) = gw.access().charge(&caller, charged(&limits, shape)).await {
        return refused(&r);
    }
    let started = std::time::Instant::now();
    let (gw_task, chain_task) = (gw.clone(), chain.clone());
    let owner = crate::subscribe::filters::Owner::of(&caller, client);
    let traced = crate::telemetry::Request::http(&chain.name, caller.label(), client, headers);
    // Boxed once, wrapped in the request's span: the request's future is kilobytes, and
    // each move (into the span's wrapper, into a task, its output over it) copied it
    // whole, a few percent of a cache hit's CPU (bench/profiles).
    let work: Detached<dispatch::Reply> = Box::pin(traced.run(async move {
        let body = (&bytes[..], shape);
        dispatch::handle_as(&gw_task, &chain_task, body, caller.methods(), &owner).await
    }));
    let reply = match to_completion(work).await {
        Ok(reply) => reply,
        Err(e) => {
            tracing::error!(chain = %chain.name, "a request's work failed: {e}");
            let e = RpcError::Internal("the gateway failed to answer this request".into());
            return json(StatusCode::INTERNAL_SERVER_ERROR, whole_request_error(&e));
        }
    };
    crate::metrics::request_duration(&chain.name, started.elapsed());
    let mut response = match reply.body {
        Some(body) => json(StatusCode::OK, body),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    let h = response.headers_mut();
    let upstreams = match reply.upstreams.as_slice() {
        [] => None,
        [one] => HeaderValue::from_str(one).ok(),
        many => HeaderValue::from_str(&many.join(",")).ok(),
    };
    if let Some(v) = upstreams {
        h.insert(UPSTREAM, v);
    }
    h.insert(
        VERIFIED,
        HeaderValue::from_static(reply.verified.header_value()),
    );
    if let Some(age) = reply.stale_seconds {
        h.insert(STALE_SECONDS, HeaderValue::from(age));
    }
    response
}

/// A request's work, boxed so it can be moved onto a task of its own half-way.
type Detached<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;

/// Runs `work` to its end even if what awaits it is dropped (a client that goes away,
/// the request deadline): a call is never cancelled half-way (a broadcast already sent
/// is recorded and re-sent all the same). It is polled here first: what needs no
/// waiting (a cache hit) is answered without a task of its own, which also spares the
/// connection's task a second wake-up per request. What must wait moves, as it is, to
/// its own task and is polled there from then on. A panic in it is the request's
/// failure (500), not its connection's.
async fn to_completion<T: Send + 'static>(mut work: Detached<T>) -> Result<T, String> {
    use std::{panic::AssertUnwindSafe, task::Poll};
    let first = std::future::poll_fn(|cx| {
        Poll::Ready(std::panic::catch_unwind(AssertUnwindSafe(|| {
            work.as_mut().poll(cx)
        })))
    })
    .await;
    match first {
        Ok(Poll::Ready(out)) => Ok(out),
        Ok(Poll::Pending) => tokio::spawn(work).await.map_err(|e| e.to_string()),
        Err(_) => Err("it panicked".to_owned()),
    }
}

/// The calls a body is charged for before it is parsed: its `Shape`'s, at most one
/// past `[limits] max_batch` (a larger batch is refused whole, by the parser).
pub(super) fn charged(limits: &Limits, shape: Shape) -> u64 {
    shape.calls.min((limits.max_batch as u64).saturating_add(1))
}

// Outlast's answer headers (design.md), named once: a name given as a `&str` is copied
// into each response's map.
const UPSTREAM: HeaderName = HeaderName::from_static("x-outlast-upstream");
const VERIFIED: HeaderName = HeaderName::from_static("x-outlast-verified");
const STALE_SECONDS: HeaderName = HeaderName::from_static("x-outlast-stale-seconds");

/// An oversized body is still read, and thrown away, up to this many bytes (within the
/// body timeout), as nginx's lingering close does: a client that writes its whole body
/// before reading (Python's urllib, many HTTP libraries) then reads the 413 instead of
/// a broken pipe. Past it, the connection is closed.
const LINGER_BYTES: u64 = 64 << 20;

enum BodyError {
    TooLarge,
    Timeout,
    Read(String),
}

/// The most of a body's declared length reserved before its bytes arrive; a larger
/// body grows as it comes.
const RESERVED_BODY: u64 = 64 * 1024;

/// The body, at most `max` bytes, arriving within `timeout`.
async fn read_body<B>(
    body: B,
    max: usize,
    declared: Option<u64>,
    timeout: std::time::Duration,
) -> Result<bytes::Bytes, BodyError>
where
    B: HttpBody<Data = bytes::Bytes>,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let max_u64 = u64::try_from(max).unwrap_or(u64::MAX);
    if declared.is_some_and(|n| n > LINGER_BYTES) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        // Sized by what the client declared, up to `RESERVED_BODY`: a declared length is
        // only a claim, and one reserved whole was memory held for every connection
        // that declares `max` and sends nothing.
        let reserve = declared.unwrap_or(0).min(max_u64).min(RESERVED_BODY);
        let mut kept = bytes::BytesMut::with_capacity(usize::try_from(reserve).unwrap_or(0));
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len() as u64);
            if seen > LINGER_BYTES {
                return Err(BodyError::TooLarge);
            }
            if seen <= max_u64 {
                kept.extend_from_slice(&data);
            }
        }
        if seen > max_u64 {
            Err(BodyError::TooLarge)
        } else {
            Ok(kept.freeze())
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

/// The connection is closed once this response is written.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A JSON response, its header map made once with room for Outlast's answer headers:
/// axum's `(status, [(name, value)], body)` set the content type twice (the body's
/// own, then the pair's) and grew the map on the next insert (~200 instructions a
/// request). The WebSocket handler's refusals use it too.
pub(super) fn json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn status(State(gw): State<Arc<Gateway>>) -> Response {
    let body = serde_json::to_vec(&crate::status::snapshot(&gw)).unwrap_or_default();
    json(StatusCode::OK, body)
}

pub async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    let chains: Vec<_> = gw.chains.iter().map(|c| c.readiness()).collect();
    // Shutting down: unready at once, so load balancers stop sending new calls while the
    // ones in flight finish (`[server] drain_secs`).
    let draining = gw.draining.load(std::sync::atomic::Ordering::Relaxed);
    let ready = !draining && chains.iter().all(|c| c.ready_upstreams > 0);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Redis down never makes Outlast unready: it degrades to the memory cache, said here.
    let redis = gw.cache.redis_up().map(|up| {
        if up {
            "up"
        } else {
            "down: caching in memory only"
        }
    });
    // Where rate-limit budgets are kept now: shared through Redis, or each instance's own.
    let rate_limits = gw.access().limits_state();
    let body = serde_json::json!({
        "ready": ready, "draining": draining, "chains": chains, "redis": redis,
        "rate_limits": rate_limits,
    });
    json(status, body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        time::Duration,
    };

    use super::*;

    #[tokio::test]
    async fn work_that_must_wait_finishes_though_its_request_is_dropped() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let work: Detached<()> = Box::pin(async move {
            let _ = wait.await;
            finished.store(true, Ordering::SeqCst);
        });
        // The request is dropped while its work waits (as a client going away drops it).
        let dropped = tokio::time::timeout(Duration::from_millis(20), to_completion(work)).await;
        assert!(dropped.is_err(), "the work was still waiting");
        go.send(()).expect("the work still listens");
        for _ in 0..100 {
            if done.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the work was cancelled with its request");
    }

    #[tokio::test]
    async fn work_answers_or_fails_as_the_request_s_outcome() {
        assert_eq!(to_completion(Box::pin(async { 7 })).await, Ok(7));
        let waits: Detached<u8> = Box::pin(async {
            tokio::task::yield_now().await;
            8
        });
        assert_eq!(to_completion(waits).await, Ok(8));
        let panics: Detached<u8> = Box::pin(async { panic!("a bug in dispatch") });
        assert!(to_completion(panics).await.is_err());
        let panics_later: Detached<u8> = Box::pin(async {
            tokio::task::yield_now().await;
            panic!("a bug in dispatch, after a wait")
        });
        assert!(to_completion(panics_later).await.is_err());
    }
}
