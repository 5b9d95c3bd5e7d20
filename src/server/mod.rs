//! The one listener: JSON-RPC over HTTP (`http`) and the health endpoints, served until
//! the shutdown future resolves; in-flight requests then finish before `serve` returns.

mod http;

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    routing::{get, post},
};
use tokio::net::TcpListener;

use crate::gateway::Gateway;

pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/", post(http::rpc_root))
        .route("/{chain}", post(http::rpc_chain))
        .route("/healthz", get(http::healthz))
        .route("/readyz", get(http::readyz))
        .route("/api/v1/status", get(http::status))
        .with_state(gw)
}

pub async fn serve(
    listener: TcpListener,
    gw: Arc<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(gw))
        .with_graceful_shutdown(shutdown)
        .await
}
