//! Outlast: a JSON-RPC gateway that keeps wallets and dApps answering correctly when the
//! providers under them fail. See ARCHITECTURE.md for the map; in short:
//!
//! - `config`   — the TOML contract, `${VAR}`, line-precise diagnostics, the embedded default
//! - `cores`    — one single-threaded runtime per worker thread; which one a thread is
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
//! - `reload`   — SIGHUP and the admin API re-read the config: what changes, what
//!   needs a restart; each upstream's background tasks under their own token
//! - `telemetry` — a span per request and per upstream attempt; W3C `traceparent` in and
//!   out; OTLP export with `[tracing]`

pub mod admin;
pub mod auth;
pub mod bans;
pub mod cache;
pub mod config;
pub mod cores;
pub mod dispatch;
pub mod gateway;
pub mod incidents;
pub mod lockfile;
pub mod metrics;
pub mod probe;
pub mod reload;
pub mod route;
pub mod rpc;
pub mod server;
pub mod status;
pub mod storage;
pub mod subscribe;
pub mod telemetry;
pub mod tx;
pub mod upstream;
pub mod verify;

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration};

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
    run_reloading(config, None, listener, shutdown).await
}

/// Where a running Outlast re-reads its config from, and the requests to do so (the
/// trigger's other clones: SIGHUP in `main`, and the admin API).
pub struct Reloading {
    pub path: PathBuf,
    pub trigger: reload::Trigger,
    pub inbox: reload::Inbox,
}

/// As `run`, reloading from `reloading.path` when asked (`reload`).
pub async fn run_reloading(
    config: Config,
    reloading: Option<Reloading>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    metrics::install();
    let pending = tx::Pending::open(&config.tx, &incidents::data_dir(&config.status))
        .map_err(RunError::TxStore)?;
    let gw = Arc::new(Gateway::with_rebroadcast(&config, pending).map_err(RunError::HttpClient)?);
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    incidents::spawn(
        gw.incidents.clone(),
        gw.chains.clone(),
        &tasks,
        stop.clone(),
    );
    let upstream_tasks = Arc::new(reload::UpstreamTasks::new(
        tasks.clone(),
        stop.clone(),
        gw.chain_id_check,
    ));
    for (chain, chain_cfg) in gw.chains.iter().zip(&config.chains) {
        for (up, cfg) in chain.upstreams().iter().zip(&chain_cfg.upstreams) {
            upstream_tasks.start(chain, up, cfg.ws_url.as_ref());
        }
    }
    let first_checks = Duration::from_millis(
        config.routing.connect_timeout_ms + config.routing.request_timeout_ms,
    );
    tasks.spawn(report_first_checks(gw.clone(), first_checks, stop.clone()));
    let live: Vec<_> = gw
        .chains_live()
        .map(|(c, l)| (c.clone(), l.clone()))
        .collect();
    subscribe::spawn(&live, &config, &tasks, &stop);
    if let Some(pending) = &gw.rebroadcast {
        tx::rebroadcast::spawn(
            pending,
            &gw.chains,
            &gw.ledger,
            gw.broadcast_to,
            &tasks,
            &stop,
        );
    }
    if let Some(redis) = gw.cache.shared() {
        tasks.spawn(bans::share(redis, gw.chains.clone(), stop.clone()));
    }
    if let Some(r) = reloading {
        // Set once, here: `gw` was just built, so nothing set it before.
        let _ = gw.reload.set(r.trigger);
        tasks.spawn(serve_reloads(
            gw.clone(),
            config.clone(),
            r.path,
            r.inbox,
            upstream_tasks,
            stop.clone(),
        ));
    }
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

/// Serves reload requests one at a time until `stop`: reads the file, refuses it with
/// every problem when invalid (the running config keeps serving), else applies what
/// can change while running and logs what changed and what needs a restart.
async fn serve_reloads(
    gw: Arc<Gateway>,
    mut running: Config,
    path: PathBuf,
    mut inbox: reload::Inbox,
    tasks: Arc<reload::UpstreamTasks>,
    stop: CancellationToken,
) {
    loop {
        let ask = tokio::select! {
            _ = stop.cancelled() => return,
            ask = inbox.0.recv() => match ask {
                Some(ask) => ask,
                None => return,
            },
        };
        let report = match config::load_file(&path) {
            Err(e) => {
                let problems = match &e {
                    config::LoadError::Invalid { path, problems } => {
                        problems.0.iter().map(|p| format!("{path}:{p}")).collect()
                    }
                    config::LoadError::Read { .. } => vec![e.to_string()],
                };
                tracing::error!("reload refused; the running config keeps serving. {e}");
                reload::Report::refused(problems)
            }
            Ok(file) => {
                let plan = reload::plan(&running, file);
                apply(&gw, &plan, &tasks);
                for change in &plan.changes {
                    tracing::info!(change = %change, "reload");
                }
                for change in &plan.restart_needed {
                    tracing::warn!(change = %change, "reload: needs a restart; the running value keeps serving");
                }
                tracing::info!(
                    changes = plan.changes.len(),
                    restart_needed = plan.restart_needed.len(),
                    "config reloaded from {}",
                    path.display()
                );
                let report = reload::Report {
                    applied: true,
                    changes: plan.changes,
                    restart_needed: plan.restart_needed,
                    problems: Vec::new(),
                };
                running = plan.next;
                report
            }
        };
        metrics::admin_action("reload", if report.applied { "done" } else { "refused" });
        // The asker may have gone (SIGHUP never waits): the log has the report.
        let _ = ask.send(report);
    }
}

/// Applies a reload plan: each chain's new upstream set is built (kept upstreams are
/// the same objects; relabelled ones share health and head), tasks of new ones start,
/// the set is swapped at once, then tasks of the ones gone stop. Calls in flight
/// finish on the upstreams they hold. Then limits, policy and access are swapped.
fn apply(gw: &Gateway, plan: &reload::Plan, tasks: &reload::UpstreamTasks) {
    let routing = &plan.next.routing;
    for cp in &plan.chains {
        let Some(chain) = gw.chain(Some(&cp.chain)) else {
            continue;
        };
        let old = chain.upstreams();
        let mut next = Vec::with_capacity(cp.upstreams.len());
        let mut started = Vec::new();
        for (cfg, fate) in &cp.upstreams {
            let existing = old.iter().find(|u| *u.name == cfg.name);
            let up = match (fate, existing) {
                (reload::Fate::Kept, Some(u)) => u.clone(),
                (reload::Fate::Relabelled, Some(u)) => {
                    Arc::new(u.relabelled(cfg, routing, gw.http.clone()))
                }
                _ => Arc::new(upstream::Upstream::new(
                    &chain.name,
                    cfg,
                    routing,
                    gw.http.clone(),
                )),
            };
            if !(matches!(fate, reload::Fate::Kept) && existing.is_some()) {
                started.push((up.clone(), cfg.ws_url.clone()));
            }
            next.push(up);
        }
        for (up, ws_url) in &started {
            tasks.start(chain, up, ws_url.as_ref());
        }
        chain.swap_upstreams(next);
        for name in &cp.removed {
            tasks.stop(&chain.name, name);
        }
    }
    gw.swap_settings(gateway::Settings::new(&plan.next));
}
