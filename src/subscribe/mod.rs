//! Subscriptions (`eth_subscribe` over WebSocket): one feed per chain fans out to every
//! client, each with its own filters.
//!
//! - `hub`    — per chain: registered clients with bounded queues; `publish` never waits
//! - `filter` — subscription kinds and `logs` filters (pure)
//! - `follow` — `newHeads` and `logs` from the consensus head: gap-free backfill through
//!   `route::forward`, reorgs with `removed: true` logs
//! - `feeds`  — what listens to upstreams: head pushes over an upstream's WebSocket (into
//!   the same consensus head as the polls), and pending transaction hashes (an
//!   upstream WebSocket, or a polled filter where there is none)
//! - `filters` — HTTP filters (`eth_newFilter` & co.) held by Outlast, fed from the hub
//! - `shared` — with `[redis]`: block and log filters kept in Redis (definition and
//!   cursor), answered by any instance from the chain itself
//!
//! Clients never talk to an upstream directly: whichever upstream dies, the feed goes on
//! from the consensus head, so a subscription has no gap and no duplicate. Never sees
//! provider URLs (`upstream::ws` dials them).

pub mod feeds;
pub mod filter;
pub mod filters;
pub mod follow;
pub mod hub;
pub mod shared;

use std::sync::Arc;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use hub::Hub;

use crate::{
    config::{Config, Limits},
    route::Chain,
};

/// One chain's live side, held beside its `route::Chain`: the WebSocket subscriptions
/// (`hub`) and the HTTP filters, both fed from the chain's consensus head moves.
pub struct Live {
    pub hub: Hub,
    pub filters: filters::Filters,
}

impl Live {
    pub fn new(limits: &Limits) -> Live {
        Live {
            hub: Hub::new(limits.ws_client_buffer),
            filters: filters::Filters::new(limits),
        }
    }
}

/// How long shutdown waits for sessions to send their close frames.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts every chain's feeds on `tasks`; they stop with `stop`, closing the sessions.
/// `chains` are the configured chains, in `config`'s order, each with its `Live`.
pub fn spawn(
    chains: &[(Arc<Chain>, Arc<Live>)],
    config: &Config,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    for ((chain, live), chain_cfg) in chains.iter().zip(&config.chains) {
        // Head pushes (`feeds::push_heads`) are each upstream's own task, started and
        // stopped with it (`reload::UpstreamTasks`). Pending transactions read the
        // WebSockets configured at start.
        let ws_urls: Vec<_> = chain
            .upstreams()
            .iter()
            .zip(&chain_cfg.upstreams)
            .filter_map(|(up, cfg)| cfg.ws_url.clone().map(|url| (up.clone(), url)))
            .collect();
        tasks.spawn(feeds::pending(
            chain.clone(),
            live.clone(),
            ws_urls,
            stop.clone(),
        ));
        tasks.spawn(follow::follow(chain.clone(), live.clone(), stop.clone()));
        tasks.spawn(filters::pump(chain.clone(), live.clone(), stop.clone()));
        let (live, stop) = (live.clone(), stop.clone());
        tasks.spawn(async move {
            stop.cancelled().await;
            live.hub.close();
            let _ = tokio::time::timeout(CLOSE_WAIT, live.hub.sessions.wait()).await;
        });
    }
}
