//! The admin API, for people during an incident (`/api/v1/admin/…`, behind `[admin]
//! token`, which `server::guard::admin` checks before any handler here runs):
//!
//! - `POST upstreams/{chain}/{name}/cordon` (`{"reason": …}`) and `…/uncordon`: an
//!   upstream taken out of (or put back into) rotation by hand; it is still probed, and
//!   `route::select` skips it with the reason
//! - `POST incidents` (`{"title","message","severity","chains","upstreams"}`): a manual
//!   incident; `POST incidents/{id}/updates` (`{"message"}`) on any open incident;
//!   `POST incidents/{id}/resolve` (`{"message"}`) on one people opened
//! - `POST maintenance` (the same fields plus `"starts"`, `"ends"`, RFC 3339): a window
//!   shown on `/status`, in the feed and webhooks, quieting automatic incidents' webhooks
//!   for what it covers while it runs
//! - `GET keys`, `GET upstreams`: what is configured and cordoned (key names, never keys)
//! - `POST reload`: re-reads the config file, as SIGHUP does (`reload`); 200 with what
//!   changed and what needs a restart, or 422 with every problem of an invalid file
//!   (the running config keeps serving), 409 when there is no file to re-read
//!
//! Everything goes through `incidents` (kept in its history, sent to webhooks) or the
//! upstream's `Cordon`; nothing here touches a provider URL.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, State, rejection::JsonRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;

use crate::{
    gateway::Gateway,
    incidents::{Announcement, ManualError, Time, Window},
};

pub fn router() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/api/v1/admin/keys", get(keys))
        .route("/api/v1/admin/upstreams", get(upstreams))
        .route(
            "/api/v1/admin/upstreams/{chain}/{name}/cordon",
            post(cordon),
        )
        .route(
            "/api/v1/admin/upstreams/{chain}/{name}/uncordon",
            post(uncordon),
        )
        .route("/api/v1/admin/incidents", post(open))
        .route("/api/v1/admin/incidents/{id}/updates", post(update))
        .route("/api/v1/admin/incidents/{id}/resolve", post(resolve))
        .route("/api/v1/admin/maintenance", post(maintenance))
        .route("/api/v1/admin/reload", post(reload))
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn refused(action: &'static str, status: StatusCode, message: String) -> Response {
    crate::metrics::admin_action(action, "refused");
    answer(status, serde_json::json!({ "error": message }))
}

fn done(action: &'static str, status: StatusCode, body: serde_json::Value) -> Response {
    crate::metrics::admin_action(action, "done");
    answer(status, body)
}

fn manual_error(action: &'static str, e: &ManualError) -> Response {
    let status = match e {
        ManualError::NotFound(_) => StatusCode::NOT_FOUND,
        ManualError::Resolved(_) | ManualError::Automatic(_) => StatusCode::CONFLICT,
        ManualError::Invalid(_) => StatusCode::BAD_REQUEST,
    };
    refused(action, status, e.to_string())
}

/// A body that is not what the endpoint takes: 400 saying why.
fn bad_body(action: &'static str, e: &JsonRejection) -> Response {
    refused(action, StatusCode::BAD_REQUEST, e.body_text())
}

async fn keys(State(gw): State<Arc<Gateway>>) -> Response {
    answer(
        StatusCode::OK,
        serde_json::json!({ "keys": gw.access().key_summaries() }),
    )
}

async fn upstreams(State(gw): State<Arc<Gateway>>) -> Response {
    let list: Vec<_> = gw
        .chains
        .iter()
        .flat_map(|c| {
            c.upstreams()
                .iter()
                .map(|u| {
                    serde_json::json!({
                        "chain": &*c.name,
                        "name": &*u.name,
                        "cordoned": u.cordon.reason(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    answer(StatusCode::OK, serde_json::json!({ "upstreams": list }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CordonBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn cordon(
    State(gw): State<Arc<Gateway>>,
    Path((chain, name)): Path<(String, String)>,
    body: Option<Json<CordonBody>>,
) -> Response {
    let reason = body
        .and_then(|Json(b)| b.reason)
        .map(|r| r.trim().chars().take(200).collect::<String>())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "cordoned by an operator".into());
    set_cordon(&gw, "cordon", &chain, &name, Some(reason))
}

async fn uncordon(
    State(gw): State<Arc<Gateway>>,
    Path((chain, name)): Path<(String, String)>,
) -> Response {
    set_cordon(&gw, "uncordon", &chain, &name, None)
}

fn set_cordon(
    gw: &Gateway,
    action: &'static str,
    chain: &str,
    name: &str,
    reason: Option<String>,
) -> Response {
    let Some(up) = gw
        .chain(Some(chain))
        .and_then(|c| c.upstreams().iter().find(|u| &*u.name == name).cloned())
    else {
        return refused(
            action,
            StatusCode::NOT_FOUND,
            format!("no upstream `{name}` in chain `{chain}`"),
        );
    };
    match &reason {
        Some(r) => {
            tracing::warn!(chain, upstream = name, reason = %r, "upstream cordoned through the admin API")
        }
        None => tracing::info!(
            chain,
            upstream = name,
            "upstream uncordoned through the admin API"
        ),
    }
    up.cordon.set(reason.clone());
    done(
        action,
        StatusCode::OK,
        serde_json::json!({ "chain": chain, "name": name, "cordoned": reason }),
    )
}

/// Re-reads the config file (the same as SIGHUP, and serialized with it).
async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    let Some(trigger) = gw.reload.get() else {
        return refused(
            "reload",
            StatusCode::CONFLICT,
            crate::reload::AskError::NoFile.to_string(),
        );
    };
    match trigger.ask().await {
        // Counted by the reload itself (SIGHUP's too).
        Ok(report) if report.applied => answer(StatusCode::OK, serde_json::json!(report)),
        Ok(report) => answer(StatusCode::UNPROCESSABLE_ENTITY, serde_json::json!(report)),
        Err(e) => refused("reload", StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn open(
    State(gw): State<Arc<Gateway>>,
    body: Result<Json<Announcement>, JsonRejection>,
) -> Response {
    let Json(a) = match body {
        Ok(b) => b,
        Err(e) => return bad_body("open", &e),
    };
    if let Some(unknown) = unknown_targets(&gw, &a) {
        return refused("open", StatusCode::BAD_REQUEST, unknown);
    }
    match gw.incidents.open_manual(a) {
        Ok(i) => done("open", StatusCode::CREATED, serde_json::json!(i)),
        Err(e) => manual_error("open", &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    message: String,
}

async fn update(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<u64>,
    body: Result<Json<Message>, JsonRejection>,
) -> Response {
    let Json(m) = match body {
        Ok(b) => b,
        Err(e) => return bad_body("update", &e),
    };
    match gw.incidents.post_update(id, &m.message) {
        Ok(i) => done("update", StatusCode::OK, serde_json::json!(i)),
        Err(e) => manual_error("update", &e),
    }
}

async fn resolve(
    State(gw): State<Arc<Gateway>>,
    Path(id): Path<u64>,
    body: Result<Json<Message>, JsonRejection>,
) -> Response {
    let Json(m) = match body {
        Ok(b) => b,
        Err(e) => return bad_body("resolve", &e),
    };
    match gw.incidents.resolve_manual(id, &m.message) {
        Ok(i) => done("resolve", StatusCode::OK, serde_json::json!(i)),
        Err(e) => manual_error("resolve", &e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    title: String,
    message: String,
    #[serde(default)]
    severity: crate::incidents::Severity,
    #[serde(default)]
    chains: Vec<String>,
    #[serde(default)]
    upstreams: Vec<crate::incidents::UpstreamRef>,
    starts: Time,
    ends: Time,
}

async fn maintenance(
    State(gw): State<Arc<Gateway>>,
    body: Result<Json<MaintenanceBody>, JsonRejection>,
) -> Response {
    let Json(m) = match body {
        Ok(b) => b,
        Err(e) => return bad_body("maintenance", &e),
    };
    let a = Announcement {
        title: m.title,
        message: m.message,
        severity: m.severity,
        chains: m.chains,
        upstreams: m.upstreams,
    };
    if let Some(unknown) = unknown_targets(&gw, &a) {
        return refused("maintenance", StatusCode::BAD_REQUEST, unknown);
    }
    let window = Window {
        starts: m.starts,
        ends: m.ends,
    };
    match gw.incidents.schedule(a, window) {
        Ok(i) => done("maintenance", StatusCode::CREATED, serde_json::json!(i)),
        Err(e) => manual_error("maintenance", &e),
    }
}

/// Chains or upstreams named that are not configured: a typo would quiet nothing.
fn unknown_targets(gw: &Gateway, a: &Announcement) -> Option<String> {
    for c in &a.chains {
        if gw.chain(Some(c)).is_none() {
            return Some(format!("no chain `{c}`"));
        }
    }
    for u in &a.upstreams {
        let known = gw
            .chain(Some(&u.chain))
            .is_some_and(|c| c.upstreams().iter().any(|x| *x.name == u.name));
        if !known {
            return Some(format!("no upstream `{}` in chain `{}`", u.name, u.chain));
        }
    }
    None
}
