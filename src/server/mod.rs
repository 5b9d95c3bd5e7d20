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
    body::Body,
    http::Request,
    middleware::{from_fn_with_state, map_response},
    response::Response,
    routing::{get, post},
};
use futures_util::future::Either;
use hyper::body::Incoming;
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
    let front = Front {
        router: router(gw.clone()),
        gw,
    };
    listen::serve(listener, front, hygiene, shutdown).await
}

/// Each request's first stop: JSON-RPC to a chain takes `http::lane`, everything else
/// the router.
#[derive(Clone)]
struct Front {
    gw: Arc<Gateway>,
    router: Router,
}

impl listen::Handler for Front {
    fn call(
        &self,
        mut req: Request<Incoming>,
        client: listen::ClientAddr,
    ) -> impl Future<Output = Response> + Send + use<> {
        match http::lane_path(&self.gw, &req) {
            // Boxed here, once: the lane's future is 1.6 kB, and the listener and
            // hyper move it three times before its first poll (bench/profiles).
            Some(at) => Either::Left(Box::pin(http::lane(self.gw.clone(), req, at, client.0))),
            None => {
                req.extensions_mut().insert(client);
                let routed =
                    tower_service::Service::call(&mut self.router.clone(), req.map(Body::new));
                Either::Right(async move {
                    match routed.await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                })
            }
        }
    }
}
