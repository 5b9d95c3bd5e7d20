//! The one listener: JSON-RPC over HTTP (`http`) and WebSocket (`ws`, with
//! subscriptions) and the health endpoints, served until the shutdown future resolves;
//! in-flight requests then finish (within `[server] drain_secs`) before `serve`
//! returns. `listen` is the accept loop and its connection limits.

mod http;
pub mod listen;
mod status;
mod ws;

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    routing::{get, post},
};
use tokio::net::TcpListener;

use crate::gateway::Gateway;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", post(http::rpc_root).get(ws::upgrade_root))
        .route("/{chain}", post(http::rpc_chain).get(ws::upgrade_chain))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/api/v1/status", get(http::status))
        .route("/api/v1/incidents", get(status::incidents))
        .route("/status", get(status::page))
        .route("/feed.atom", get(status::feed))
        .route("/metrics", get(status::metrics))
        .route("/ipfs/{*rest}", get(crate::storage::http::ipfs))
        .route("/ar/{*rest}", get(crate::storage::http::arweave))
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
