//! The configuration contract of design.md: plain serde structs, every key with a default,
//! unknown keys rejected, `${VAR}` expanded in every string.
//!
//! Loading with line-precise diagnostics lives in `load`, expansion in `env`, and the
//! URL type that keeps provider secrets out of logs in `secret`. Nothing here does I/O
//! beyond reading the file it is given.

mod env;
mod load;
mod secret;

use std::net::SocketAddr;

use serde::Deserialize;

pub use load::{LoadError, Problem, Problems, load_file, load_str};
pub use secret::UpstreamUrl;

/// The embedded default: public endpoints of many independent operators, so that
/// `outlast serve` with no file is already useful and already resilient.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The whole configuration, as `load` assembles it section by section.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub limits: Limits,
    pub routing: Routing,
    pub chains: Vec<Chain>,
}

impl Config {
    /// The embedded default, parsed. It is checked by a unit test, so this cannot fail
    /// unless the environment lacks a variable the default names (it names none).
    pub fn embedded_default() -> Result<Config, Problems> {
        load_str(DEFAULT_TOML)
    }
}

/// `[server]`: where clients reach Outlast.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: SocketAddr,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8545)),
        }
    }
}

/// `[limits]`: what one client request may cost, so one client cannot starve the rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Larger bodies get `-32005` before any parsing.
    pub max_body_bytes: usize,
    /// Calls in one batch.
    pub max_batch: usize,
    /// Nesting of arrays and objects in a body; deep nesting is a cheap way to burn CPU.
    pub max_depth: usize,
    /// Methods answered with `-32004`; a trailing `*` matches a prefix. Node-control
    /// methods are denied so a public endpoint cannot be steered by its users.
    pub denied_methods: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 5 * 1024 * 1024,
            max_batch: 100,
            max_depth: 32,
            denied_methods: [
                "admin_*",
                "debug_*",
                "personal_*",
                "miner_*",
                "engine_*",
                "clique_*",
                "anvil_*",
                "hardhat_*",
                "evm_*",
                "eth_sendTransaction",
                "eth_sign",
                "eth_signTransaction",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `[routing]`: how long to wait for an upstream and when to stop asking one that fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Routing {
    pub connect_timeout_ms: u64,
    /// One attempt at one upstream; a call may make `max_attempts` of them.
    pub request_timeout_ms: u64,
    pub max_attempts: usize,
    /// Consecutive failures that take an upstream out of rotation.
    pub failures_before_cooldown: u32,
    /// First cool-down; doubles while probes keep failing, up to `max_cooldown_ms`.
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
    /// How often each upstream's `eth_chainId` is checked again.
    pub chain_id_check_secs: u64,
    /// Slowest head poll per upstream; it polls faster (a third of the observed block
    /// time, down to 100 ms) on chains with fast blocks.
    pub head_poll_ms: u64,
    /// Ask a second upstream when the first has not answered a read within its tail
    /// latency (at least `hedge_min_ms`): a hung upstream then costs one hedge delay.
    pub hedge: bool,
    pub hedge_min_ms: u64,
    /// Retries and hedges allowed per call on average (0.2 = one extra attempt per five
    /// calls), plus `retry_budget_per_sec` always: in a total outage retries cannot
    /// multiply the load on providers that are already failing.
    pub retry_budget_ratio: f64,
    pub retry_budget_per_sec: f64,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
            max_attempts: 3,
            failures_before_cooldown: 3,
            cooldown_ms: 5_000,
            max_cooldown_ms: 60_000,
            chain_id_check_secs: 300,
            head_poll_ms: 2_000,
            hedge: true,
            hedge_min_ms: 100,
            retry_budget_ratio: 0.2,
            retry_budget_per_sec: 10.0,
        }
    }
}

/// `[[chains]]`: one network and the upstreams that serve it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chain {
    #[serde(deserialize_with = "env::expanded")]
    pub name: String,
    pub chain_id: u64,
    #[serde(default)]
    pub verify: Verify,
    #[serde(default = "default_quorum")]
    pub quorum: usize,
    /// Read from `[[chains.upstreams]]` one by one, so each is diagnosed on its own.
    #[serde(default, skip)]
    pub upstreams: Vec<Upstream>,
}

fn default_quorum() -> usize {
    2
}

/// How answers are checked before they reach a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    Off,
    Quorum,
    #[default]
    Proofs,
}

/// `[[chains.upstreams]]`: one RPC endpoint and the labels that say how independent it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(deserialize_with = "env::expanded")]
    pub name: String,
    pub url: UpstreamUrl,
    #[serde(default)]
    pub ws_url: Option<UpstreamUrl>,
    #[serde(deserialize_with = "env::expanded")]
    pub operator: String,
    #[serde(default, deserialize_with = "env::expanded_opt")]
    pub cloud: Option<String>,
    #[serde(default, deserialize_with = "env::expanded_opt")]
    pub region: Option<String>,
    /// Calls per second this provider accepts from us (its plan's limit).
    #[serde(default)]
    pub max_rps: Option<u32>,
    /// Calls in flight at once; beyond it, calls go to other upstreams.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Largest `eth_getLogs` block range it accepts; larger queries are split. Learned
    /// from its errors when not set.
    #[serde(default)]
    pub max_logs_range: Option<u64>,
    #[serde(default = "default_tier")]
    pub tier: u8,
}

fn default_tier() -> u8 {
    1
}
