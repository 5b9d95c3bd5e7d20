//! HTTP handlers: find the chain, enforce the body limit, hand the bytes to `dispatch`,
//! and set the response headers of design.md.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    dispatch,
    gateway::Gateway,
    rpc::{RpcError, respond::whole_request_error},
};

pub async fn rpc_chain(
    State(gw): State<Arc<Gateway>>,
    Path(chain): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    rpc(&gw, Some(&chain), &headers, body).await
}

pub async fn rpc_root(State(gw): State<Arc<Gateway>>, headers: HeaderMap, body: Body) -> Response {
    rpc(&gw, None, &headers, body).await
}

async fn rpc(gw: &Gateway, path: Option<&str>, headers: &HeaderMap, body: Body) -> Response {
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
    let max = gw.limits.max_body_bytes;
    let too_large = || {
        let e = RpcError::LimitExceeded(format!("request body exceeds {max} bytes"));
        json(StatusCode::PAYLOAD_TOO_LARGE, whole_request_error(&e))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return too_large();
    }
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(e) if is_length_limit(&e) => return too_large(),
        Err(e) => {
            let e = RpcError::Parse(format!("could not read the request body: {e}"));
            return json(StatusCode::BAD_REQUEST, whole_request_error(&e));
        }
    };
    let started = std::time::Instant::now();
    let reply = dispatch::handle(gw, chain, &bytes).await;
    crate::metrics::request_duration(&chain.name, started.elapsed());
    let mut response = match reply.body {
        Some(body) => json(StatusCode::OK, body),
        None => StatusCode::NO_CONTENT.into_response(),
    };
    let h = response.headers_mut();
    if !reply.upstreams.is_empty() {
        let names: Vec<&str> = reply.upstreams.iter().map(|u| &**u).collect();
        if let Ok(v) = HeaderValue::from_str(&names.join(",")) {
            h.insert("x-outlast-upstream", v);
        }
    }
    h.insert(
        "x-outlast-verified",
        HeaderValue::from_static(reply.verified.header_value()),
    );
    if let Some(age) = reply.stale_seconds {
        h.insert("x-outlast-stale-seconds", HeaderValue::from(age));
    }
    response
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
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
    let ready = chains.iter().all(|c| c.ready_upstreams > 0);
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
    let body = serde_json::json!({ "ready": ready, "chains": chains, "redis": redis });
    json(status, body.to_string().into_bytes())
}
