//! The one listener: JSON-RPC over HTTP (`http`) and WebSocket (`ws`, with
//! subscriptions) and the health endpoints, served until the shutdown future resolves;
//! in-flight requests then finish (within `[server] drain_secs`) before `serve`
//! returns. `listen` is the accept loop and its connection limits.

mod guard;
mod http;
pub mod listen;
mod status;
mod ws;

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    middleware::{from_fn_with_state, map_response},
    routing::{get, post},
};
use tokio::net::TcpListener;

use crate::gateway::Gateway;

/// Every route, each group with its layers: operator surfaces behind `[admin] token`
/// when configured, the admin API always behind it, storage content sandboxed, and
/// `guard::browser` (hosts, origins, CORS) in front of everything.
pub fn router(gw: Arc<Gateway>) -> Router {
    let operator = Router::new()
        .route("/api/v1/status", get(http::status))
        .route("/api/v1/incidents", get(status::incidents))
        .route("/metrics", get(status::metrics))
        .route_layer(from_fn_with_state(gw.clone(), guard::operator));
    let admin = crate::admin::router().route_layer(from_fn_with_state(gw.clone(), guard::admin));
    let storage = Router::new()
        .route("/ipfs/{*rest}", get(crate::storage::http::ipfs))
        .route("/ar/{*rest}", get(crate::storage::http::arweave))
        .layer(map_response(guard::sandbox))
        .with_state(gw.storage.clone());
    Router::new()
        .route("/", post(http::rpc_root).get(ws::upgrade_root))
        .route("/{chain}", post(http::rpc_chain).get(ws::upgrade_chain))
        .route(
            "/{chain}/{key}",
            post(http::rpc_chain_key).get(ws::upgrade_chain_key),
        )
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/status", get(status::page))
        .route("/feed.atom", get(status::feed))
        .merge(operator)
        .merge(admin)
        .merge(storage)
        .layer(from_fn_with_state(gw.clone(), guard::browser))
        .with_state(gw)
}

pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    hygiene: listen::Hygiene,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listen::serve(listener, router(gw), hygiene, shutdown).await
}
