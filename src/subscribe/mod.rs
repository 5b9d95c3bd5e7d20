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
//!
//! Clients never talk to an upstream directly: whichever upstream dies, the feed goes on
//! from the consensus head, so a subscription has no gap and no duplicate. Never sees
//! provider URLs (`upstream::ws` dials them).

pub mod feeds;
pub mod filter;
pub mod filters;
pub mod follow;
pub mod hub;

use std::sync::Arc;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use hub::Hub;

use crate::{config::Config, gateway::Gateway};

/// How long shutdown waits for sessions to send their close frames.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts every chain's feeds on `tasks`; they stop with `stop`, closing the sessions.
pub fn spawn(gw: &Arc<Gateway>, config: &Config, tasks: &TaskTracker, stop: &CancellationToken) {
    for (chain, chain_cfg) in gw.chains.iter().zip(&config.chains) {
        let ws_urls: Vec<_> = chain
            .upstreams
            .iter()
            .zip(&chain_cfg.upstreams)
            .filter_map(|(up, cfg)| cfg.ws_url.clone().map(|url| (up.clone(), url)))
            .collect();
        for (up, url) in &ws_urls {
            tasks.spawn(feeds::push_heads(
                chain.clone(),
                up.clone(),
                url.clone(),
                stop.clone(),
            ));
        }
        tasks.spawn(feeds::pending(chain.clone(), ws_urls, stop.clone()));
        tasks.spawn(follow::follow(chain.clone(), stop.clone()));
        tasks.spawn(filters::pump(chain.clone(), stop.clone()));
        let (chain, stop) = (chain.clone(), stop.clone());
        tasks.spawn(async move {
            stop.cancelled().await;
            chain.subs.close();
            let _ = tokio::time::timeout(CLOSE_WAIT, chain.subs.sessions.wait()).await;
        });
    }
}
