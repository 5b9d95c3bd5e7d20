//! Layers in front of every handler: `browser` (the `Host` allow-list against DNS
//! rebinding, CORS preflights, `Origin` checked on anything that acts, CORS headers on
//! answers), `operator` (`/metrics`, `/api/v1/*` behind `[admin] token` when
//! configured), `admin` (the admin API: the token, always), and `sandbox` (storage
//! content may not act as Outlast's origin). Decisions are `auth::browser`'s and
//! `auth::Access`'s; here only HTTP.

use std::{borrow::Cow, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::{
    gateway::Gateway,
    rpc::{RpcError, respond::whole_request_error},
};

/// Headers a page may send: the body's type and the two ways of giving a key.
const ALLOW_HEADERS: &str = "content-type, x-api-key, authorization";
const ALLOW_METHODS: &str = "GET, POST, OPTIONS";
/// Outlast's own answer headers, readable by pages.
const EXPOSE_HEADERS: &str =
    "x-outlast-upstream, x-outlast-verified, x-outlast-stale-seconds, retry-after";

pub async fn browser(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    match admit(&gw, &req) {
        Admission::Pass { cors } => expose(&gw, next.run(req).await, cors),
        Admission::Answered(answer) => answer,
    }
}

/// `browser`'s decision before the handler runs.
pub enum Admission {
    /// On to the handler; `cors` is the page's origin when the answer must carry CORS
    /// headers (`expose`).
    Pass { cors: Option<String> },
    /// Answered here: a refusal, or a preflight.
    Answered(Response),
}

/// Decides as `browser` does; the JSON-RPC lane (`http::lane`) asks it too.
pub fn admit<B>(gw: &Gateway, req: &axum::http::Request<B>) -> Admission {
    let rules = &gw.access().browser;
    let host = request_host(req);
    if !rules.host_allowed(host.as_deref()) {
        crate::metrics::limit_exceeded("host");
        let shown = host
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(100)
            .collect::<String>();
        return Admission::Answered(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "host `{shown}` is not served here; its operator can add it to [cors] allowed_hosts"
            ),
        ));
    }
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allowed = origin
        .as_deref()
        .map(|o| rules.origin_allowed(o, host.as_deref()));
    if req.method() == Method::OPTIONS {
        return Admission::Answered(preflight(gw, origin.as_deref(), allowed, req.headers()));
    }
    let acts = !matches!(*req.method(), Method::GET | Method::HEAD)
        || req.headers().contains_key(header::UPGRADE)
        || req.uri().path().starts_with("/api/v1/admin");
    if allowed == Some(false) && acts {
        crate::metrics::limit_exceeded("origin");
        let shown = origin
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(100)
            .collect::<String>();
        return Admission::Answered(refuse(
            StatusCode::FORBIDDEN,
            format!(
                "pages of `{shown}` may not call this gateway; its operator can add the origin to [cors] allowed_origins"
            ),
        ));
    }
    Admission::Pass {
        cors: origin.filter(|_| allowed == Some(true)),
    }
}

/// The CORS headers on an answer to a page of an allowed `origin` (from `admit`).
pub fn expose(gw: &Gateway, mut response: Response, origin: Option<String>) -> Response {
    if let Some(origin) = origin {
        let h = response.headers_mut();
        allow_origin(h, gw, &origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
    }
    response
}

/// The host a request was sent to: HTTP/2's authority, else `Host` (borrowed: this
/// runs on every request; a `Host` that is not visible ASCII is copied, lossily).
fn request_host<B>(req: &axum::http::Request<B>) -> Option<Cow<'_, str>> {
    if let Some(a) = req.uri().authority() {
        return Some(Cow::Borrowed(a.as_str()));
    }
    let h = req.headers().get(header::HOST)?;
    Some(match h.to_str() {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(h.as_bytes()),
    })
}

fn allow_origin(h: &mut HeaderMap, gw: &Gateway, origin: &str) {
    let value = if gw.access().browser.any_origin() {
        HeaderValue::from_static("*")
    } else {
        match HeaderValue::from_str(origin) {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    h.append(header::VARY, HeaderValue::from_static("origin"));
}

/// `OPTIONS`: a CORS preflight when it has an `Origin`, else what may be asked here.
fn preflight(
    gw: &Gateway,
    origin: Option<&str>,
    allowed: Option<bool>,
    headers: &HeaderMap,
) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    match (origin, allowed) {
        (None, _) => {
            h.insert(header::ALLOW, HeaderValue::from_static(ALLOW_METHODS));
        }
        (Some(origin), Some(true)) => {
            allow_origin(h, gw, origin);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from(gw.access().browser.max_age_secs),
            );
            // Chrome's Private Network Access: a public page calling a local Outlast.
            if headers.contains_key("access-control-request-private-network") {
                h.insert(
                    "access-control-allow-private-network",
                    HeaderValue::from_static("true"),
                );
            }
        }
        (Some(_), _) => {
            crate::metrics::limit_exceeded("origin");
            *response.status_mut() = StatusCode::FORBIDDEN;
        }
    }
    response
}

/// `/metrics` and `/api/v1/status|incidents`: the admin token when `[admin]` asks.
pub async fn operator(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let protected = if path == "/metrics" {
        gw.access().protect_metrics
    } else {
        gw.access().protect_api
    };
    if protected && !gw.access().is_admin(req.headers()) {
        return unauthorized();
    }
    next.run(req).await
}

/// The admin API: off without `[admin] token`, else the token on every call.
pub async fn admin(State(gw): State<Arc<Gateway>>, req: Request, next: Next) -> Response {
    if !gw.access().admin_enabled() {
        return error_json(
            StatusCode::NOT_FOUND,
            "the admin API is off: set [admin] token to turn it on",
        );
    }
    if !gw.access().is_admin(req.headers()) {
        crate::metrics::admin_action("auth", "refused");
        return unauthorized();
    }
    next.run(req).await
}

fn unauthorized() -> Response {
    let mut r = error_json(
        StatusCode::UNAUTHORIZED,
        "this needs the admin token: send `Authorization: Bearer TOKEN` ([admin] token)",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

pub fn error_json(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
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

/// A JSON-RPC error body (clients of any path may be JSON-RPC clients).
fn refuse(status: StatusCode, message: String) -> Response {
    let body = whole_request_error(&RpcError::Unauthorized(message));
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::from(body),
    )
        .into_response()
}

/// IPFS and Arweave content is anyone's HTML: sandboxed, it runs in an opaque origin
/// and cannot read or call anything as Outlast's origin (its status API, its keys).
pub async fn sandbox(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}
