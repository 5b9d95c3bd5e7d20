//! Handlers for what people and tools read about Outlast itself: the status page, the
//! incidents as JSON and Atom, and the Prometheus metrics. Rendering lives in `status`
//! and `metrics`; here only the HTTP side (content types, caching, query parameters).

use std::sync::Arc;

use axum::{
    extract::{Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{gateway::Gateway, incidents::Time, status};

fn respond(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body.into(),
    )
        .into_response()
}

pub async fn page(State(gw): State<Arc<Gateway>>) -> Response {
    let snapshot = status::snapshot(&gw);
    let html = status::page::render(&snapshot, &gw.incidents, Time::now());
    respond("text/html; charset=utf-8", html)
}

#[derive(serde::Deserialize)]
pub struct IncidentQuery {
    /// `open`, `resolved`, or absent for both.
    state: Option<String>,
}

pub async fn incidents(State(gw): State<Arc<Gateway>>, Query(q): Query<IncidentQuery>) -> Response {
    let all = gw.incidents.list();
    let incidents: Vec<_> = match q.state.as_deref() {
        None | Some("all") => all,
        Some("open") => all.into_iter().filter(|i| i.is_open()).collect(),
        Some("resolved") => all.into_iter().filter(|i| !i.is_open()).collect(),
        Some(other) => {
            let body = serde_json::json!({
                "error": format!("state={other:?}: use open, resolved or all")
            });
            return (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
    };
    let body = serde_json::json!({ "incidents": incidents });
    respond("application/json", body.to_string())
}

pub async fn feed(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let base = base_url(gw.incidents.settings().public_url.as_deref(), &headers);
    let xml = status::feed::render(
        &gw.incidents.settings().title,
        &base,
        &gw.incidents.list(),
        Time::now(),
    );
    respond("application/atom+xml; charset=utf-8", xml)
}

pub async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    respond(
        "text/plain; version=0.0.4; charset=utf-8",
        crate::status::scrape::render(&gw),
    )
}

/// `[status] public_url`, else `http(s)://Host` of the request (the scheme from
/// `X-Forwarded-Proto` behind a proxy). A `Host` that is not a plain host[:port] is
/// not trusted and becomes `localhost`.
fn base_url(public: Option<&str>, headers: &HeaderMap) -> String {
    if let Some(p) = public {
        return p.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or("localhost");
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
    {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_feed_base_comes_from_config_or_a_plain_host() {
        let mut h = HeaderMap::new();
        assert_eq!(base_url(Some("https://x.org/"), &h), "https://x.org");
        assert_eq!(base_url(None, &h), "http://localhost");
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8545"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(None, &h), "https://127.0.0.1:8545");
        h.insert(header::HOST, HeaderValue::from_static("evil\"><x"));
        assert_eq!(base_url(None, &h), "https://localhost");
    }
}
