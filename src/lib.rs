//! Outlast: a JSON-RPC gateway that keeps wallets and dApps answering correctly when the
//! providers under them fail. See ARCHITECTURE.md for the map; in short:
//!
//! - `config`   — the TOML contract, `${VAR}`, line-precise diagnostics, the embedded default
//! - `server`   — the HTTP listener: JSON-RPC endpoints, `/healthz`, `/readyz`
//! - `dispatch` — one request's way through, step by step
//! - `rpc`      — the JSON-RPC envelope: parse, classify, errors, respond (pure)
//! - `route`    — health per upstream, selection order, the failover loop
//! - `upstream` — sending calls to one provider; its background chain-id probe
//! - `gateway`  — the long-lived state built from the config
//! - `status`   — a snapshot of chains and upstreams (`/api/v1/status`), the status page
//!   (`/status`) and the Atom feed of incidents (`/feed.atom`)
//! - `incidents` — incidents opened and resolved from health, their history, webhooks
//! - `metrics`  — Prometheus `/metrics`: events counted where they happen, state read live
//! - `subscribe` — `eth_subscribe` over WebSocket: one feed per chain fans out to clients
//! - `verify`   — header hashes, Merkle proofs, quorum agreement (pure)
//! - `storage`  — `/ipfs/{cid}` and `/ar/{id}` from many gateways, every byte verified
//! - `probe`    — `outlast probe`: measures every upstream once from here, one table
//! - `cache`    — finality-aware answers in memory and Redis; identical calls joined
//! - `tx`       — raw transactions broadcast to distinct operators; read-your-writes ledger;
//!   with `[tx] rebroadcast`, re-sent until mined, kept in a file across restarts
//! - `auth`     — `[auth]` keys, per-key and per-address limits (shared through Redis),
//!   `[cors]` origins and hosts, the `[admin]` token
//! - `admin`    — the admin API: cordons, manual incidents, maintenance windows
//! - `lockfile` — one Outlast per on-disk store (incident history, pending transactions)
//! - `bans`     — with `[redis]`, a liar banned on one instance is banned on every one

pub mod admin;
pub mod auth;
pub mod bans;
pub mod cache;
pub mod config;
pub mod dispatch;
pub mod gateway;
pub mod incidents;
pub mod lockfile;
pub mod metrics;
pub mod probe;
pub mod route;
pub mod rpc;
pub mod server;
pub mod status;
pub mod storage;
pub mod subscribe;
pub mod tx;
pub mod upstream;
pub mod verify;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use config::Config;
use gateway::Gateway;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build the HTTP client for upstreams: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("serving failed: {0}")]
    Serve(#[source] std::io::Error),
    /// `[tx] rebroadcast` asked for durability that cannot be had: starting without it
    /// would lose transactions silently, so Outlast does not start.
    #[error("{0}")]
    TxStore(#[source] tx::store::StoreError),
}

/// Serves `config` on `listener` until `shutdown` resolves, then lets in-flight calls
/// finish and stops the background checks. Tests bind port 0 and pass their own future.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    metrics::install();
    let pending = tx::Pending::open(&config.tx, &incidents::data_dir(&config.status))
        .map_err(RunError::TxStore)?;
    let gw = Arc::new(Gateway::with_rebroadcast(&config, pending).map_err(RunError::HttpClient)?);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    incidents::spawn(gw.clone(), &tasks, stop.clone());
    tasks.spawn(metrics::upkeep(stop.clone()));
    for chain in &gw.chains {
        for up in &chain.upstreams {
            tasks.spawn(upstream::watch(
                up.clone(),
                chain.chain_id,
                gw.chain_id_check,
                stop.clone(),
            ));
            tasks.spawn(upstream::track(up.clone(), chain.clone(), stop.clone()));
        }
    }
    let first_checks = Duration::from_millis(
        config.routing.connect_timeout_ms + config.routing.request_timeout_ms,
    );
    tasks.spawn(report_first_checks(gw.clone(), first_checks, stop.clone()));
    subscribe::spawn(&gw, &config, &tasks, &stop);
    tx::rebroadcast::spawn(&gw, &tasks, &stop);
    tasks.spawn(bans::share(gw.clone(), stop.clone()));
    if let Ok(addr) = listener.local_addr() {
        let chains: Vec<&str> = gw.chains.iter().map(|c| &*c.name).collect();
        tracing::info!(%addr, ?chains, "Outlast is listening: POST /{{chain}} for JSON-RPC, GET /readyz for readiness");
    }
    let hygiene = server::listen::Hygiene::new(&config.server);
    let draining = gw.clone();
    let shutdown = async move {
        shutdown.await;
        draining
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!("shutting down: /readyz says 503; requests in flight finish");
    };
    let served = server::serve(listener, gw, hygiene, shutdown).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    served.map_err(RunError::Serve)
}

/// Once every upstream has been checked (or `within` passed), says per chain how many
/// upstreams answer — plainly, since "nothing is reachable" is the first thing an
/// operator of a new deployment needs to hear.
async fn report_first_checks(gw: Arc<Gateway>, within: Duration, stop: CancellationToken) {
    let deadline = tokio::time::Instant::now() + within;
    let checked = |gw: &Gateway| {
        gw.chains
            .iter()
            .all(|c| c.readiness().unchecked_upstreams == 0)
    };
    while !checked(&gw) && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    for chain in &gw.chains {
        let r = chain.readiness();
        let (ready, total) = (r.ready_upstreams, r.upstreams);
        if ready == 0 {
            tracing::error!(
                chain = %chain.name,
                "none of {total} upstreams is reachable; calls get -32002 listing each upstream's error until one answers"
            );
        } else {
            tracing::info!(chain = %chain.name, "{ready} of {total} upstreams ready");
        }
    }
}
