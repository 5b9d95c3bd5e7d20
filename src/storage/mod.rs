//! Decentralized storage that cannot lie: `GET /ipfs/{cid}[/path]` and `GET /ar/{id}`,
//! fetched from several public gateways at once, every byte checked against its
//! content address before it is sent.
//!
//! - `address`  — CIDs and the paths below them: parsed (a 400 names the problem; `.`,
//!   `..` and empty segments are refused), blocks checked against them
//! - `gateways` — the configured gateways: health, bans for lies, the order to ask them
//! - `race`     — ask gateways in order, a few at once and one more after a hedge delay;
//!   the first verified answer wins
//! - `car`      — one gateway's CAR stream, read block by block, each block verified
//! - `blocks`   — one request's supply of verified blocks: cache, the current stream,
//!   resumed at another gateway when it lies, stalls or dies, single blocks last
//! - `ipfs`     — UnixFS: paths through directories (HAMT too), files walked in order
//! - `arweave`  — transaction headers (id, RSA-PSS signature), chunks against `data_root`
//! - `cache`    — verified blocks and chunks by address, bounded in bytes
//! - `http`     — the handlers: Range, ETag, Cache-Control, Content-Type, errors
//!
//! Architecture invariants: only `gateways` sees a gateway's real URL, and requests go
//! only under it: a path that would leave its prefix is never sent, and redirects are
//! never followed (a 3xx is that gateway's failure). Bytes reach a client only after
//! their check (a block's hash against its CID; a chunk's proof against a signed
//! `data_root`); the cache holds only checked bytes. Every position and size from a
//! client, a gateway or content is added and subtracted checked. Nothing here talks to
//! chain upstreams; gateways are ranked with the same `upstream::score` numbers.

mod address;
mod arweave;
mod blocks;
mod cache;
mod car;
mod fetch;
mod gateways;
pub mod http;
mod ipfs;
mod race;
mod range;

use std::{fmt, sync::Arc, time::Duration};

pub use gateways::{GatewayStatus, Lie};

use crate::config;
use cache::Cache;
use gateways::Pool;

/// The decentralized-storage side of the gateway, built once from `[storage]`.
pub struct Storage {
    pub ipfs: Pool,
    pub arweave: Pool,
    cache: Cache,
    http: reqwest::Client,
    settings: Settings,
}

/// Timings every fetch follows, from `[storage]`.
#[derive(Debug, Clone)]
struct Settings {
    /// A gateway that has sent no verified block by then is left for the next one.
    first_block: Duration,
    /// A stream silent this long mid-way is resumed elsewhere.
    stall: Duration,
    /// Gateways asked at once when a fetch starts.
    race: usize,
    /// Least wait before one more gateway is asked.
    hedge_min: Duration,
}

impl Settings {
    /// The same timings, one gateway at a time (hedging still adds more when it is
    /// slow): for the many chunks of one transaction, where racing would double the
    /// bytes fetched.
    fn one_at_a_time(&self) -> Settings {
        Settings {
            race: 1,
            ..self.clone()
        }
    }
}

impl Storage {
    pub fn new(cfg: &config::Storage) -> reqwest::Result<Storage> {
        let http = reqwest::Client::builder()
            // A gateway's 3xx is its failure, never followed: a redirect could send the
            // request (and the configured URL's token) anywhere, 127.0.0.1 included.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("outlast/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Storage {
            ipfs: Pool::new("ipfs", &cfg.ipfs, cfg),
            arweave: Pool::new("arweave", &cfg.arweave, cfg),
            cache: Cache::new(cfg.cache_bytes),
            http,
            settings: Settings {
                first_block: Duration::from_millis(cfg.first_block_timeout_ms),
                stall: Duration::from_millis(cfg.stall_timeout_ms),
                race: cfg.race.max(1),
                hedge_min: Duration::from_millis(cfg.hedge_min_ms),
            },
        })
    }

    /// Every gateway's state, for status pages and the incident view.
    pub fn snapshot(&self) -> Vec<GatewayStatus> {
        let now = std::time::Instant::now();
        self.ipfs
            .gateways
            .iter()
            .chain(&self.arweave.gateways)
            .map(|g| g.status(now))
            .collect()
    }

    /// Lies caught lately (newest last), for the incident view.
    pub fn lies(&self) -> Vec<Lie> {
        let mut all = self.ipfs.lies();
        all.extend(self.arweave.lies());
        all.sort_by_key(|l| l.at);
        all
    }
}

/// One gateway asked, and what went wrong there: the `tried` list of an error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    pub gateway: Arc<str>,
    pub error: String,
}

/// Everything the storage layer answers instead of content. `http` maps each variant to
/// a status code in one `match`.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("`{input}` is not a CID: {why}")]
    BadCid { input: String, why: String },
    #[error("`{input}` is not an Arweave transaction id: {why}")]
    BadArweaveId { input: String, why: String },
    /// A path Outlast will not send to a gateway (`.`, `..`, empty segments): refused
    /// before any gateway is asked.
    #[error("`{path}` is not a content path: {why}")]
    BadPath { path: String, why: String },
    #[error("{address}: {why}")]
    Unsupported { address: String, why: String },
    #[error("{address}: no `{name}` in {within}")]
    NoSuchPath {
        address: String,
        name: String,
        within: String,
    },
    #[error("{address}: not found at any {kind} gateway ({} tried)", tried.len())]
    NotFound {
        kind: &'static str,
        address: String,
        tried: Vec<Attempt>,
    },
    #[error("{address}: no {kind} gateway delivered it ({} tried{})", tried.len(), if *timed_out { ", some timed out" } else { "" })]
    Unavailable {
        kind: &'static str,
        address: String,
        tried: Vec<Attempt>,
        timed_out: bool,
    },
    #[error(
        "no {kind} gateways are configured: add `[[storage.{kind}]]` sections (see `outlast default-config`)"
    )]
    NoGateways { kind: &'static str },
    #[error("{address}: verified, but not valid {what}: {why}")]
    Malformed {
        address: String,
        what: &'static str,
        why: String,
    },
    #[error("range not satisfiable: the content has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
}

impl StorageError {
    /// What was tried, for the error body.
    pub fn tried(&self) -> &[Attempt] {
        match self {
            Self::NotFound { tried, .. } | Self::Unavailable { tried, .. } => tried,
            _ => &[],
        }
    }
}

/// A short, printable form of a byte count for messages.
struct ByteCount(u64);

impl fmt::Display for ByteCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            n if n >= 1 << 20 => write!(f, "{:.1} MiB", n as f64 / (1u64 << 20) as f64),
            n if n >= 1 << 10 => write!(f, "{:.1} KiB", n as f64 / 1024.0),
            n => write!(f, "{n} B"),
        }
    }
}
