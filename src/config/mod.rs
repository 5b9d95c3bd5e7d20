//! The configuration contract of design.md: plain serde structs, every key with a default,
//! unknown keys rejected, `${VAR}` expanded in every string.
//!
//! Loading with line-precise diagnostics lives in `load`, expansion in `env`, and the
//! URL type that keeps provider secrets out of logs in `secret`. Nothing here does I/O
//! beyond reading the file it is given.

mod env;
mod load;
mod secret;
mod telemetry;

use std::{fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

pub use load::{LoadError, Problem, Problems, load_file, load_str};
pub use secret::{Secret, UpstreamUrl};
pub use telemetry::Tracing;

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
    pub status: Status,
    pub webhooks: Vec<Webhook>,
    pub storage: Storage,
    pub cache: Cache,
    pub redis: Redis,
    pub tx: Tx,
    /// `[auth]`; `None`: open, as a local gateway is.
    pub auth: Option<Auth>,
    pub cors: Cors,
    pub admin: Admin,
    /// `[tracing]`: request spans over OTLP; off without `otlp_endpoint`.
    pub tracing: Tracing,
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
    /// Threads serving requests; 0: one per core. Each runs a runtime of its own
    /// (`cores`): a connection, its requests and their upstream connections stay on
    /// one thread. 1 runs everything on one thread (the fair match for one nginx
    /// worker).
    pub worker_threads: usize,
    /// A request's headers must arrive within this long of its first byte, or the
    /// connection is closed (slow-header clients hold sockets for nothing).
    pub header_timeout_ms: u64,
    /// A request's body must arrive within this long once its headers are in (408).
    pub body_timeout_ms: u64,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout_secs: u64,
    /// The whole request, from its headers to the answer: past it the client gets
    /// `-32002` with HTTP 504 (work already sent upstream, such as a broadcast, goes on).
    pub request_timeout_ms: u64,
    /// Connections open at once; more are answered 503 and closed. Also held below the
    /// process's file-descriptor limit.
    pub max_connections: usize,
    /// Connections open at once from one client address (a trusted proxy's own address
    /// is not capped: its clients are many).
    pub max_connections_per_ip: usize,
    /// Proxies (addresses or CIDR blocks) whose `X-Forwarded-For` is believed for the
    /// client's address; everyone else's is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// On shutdown, requests in flight get this long to finish; then connections close.
    pub drain_secs: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            listen: SocketAddr::from(([127, 0, 0, 1], 8545)),
            worker_threads: 0,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            idle_timeout_secs: 60,
            request_timeout_ms: 60_000,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            trusted_proxies: Vec::new(),
            drain_secs: 15,
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
    /// WebSocket: largest message (and frame) a client may send; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// WebSocket: `eth_subscribe` calls alive at once on one connection.
    pub max_subscriptions: usize,
    /// WebSocket: events waiting for one client; a client that lets more pile up is
    /// too slow, and is told so and disconnected (close 1008) instead of growing memory.
    pub ws_client_buffer: usize,
    /// WebSocket: a ping this often; a client silent for two of them is disconnected.
    pub ws_ping_secs: u64,
    /// `eth_getLogs`: blocks one query may span (after `latest` is pinned); larger gets
    /// `-32005` naming the limit, as providers answer.
    pub max_logs_range: u64,
    /// `eth_getLogs`: upstream calls one query may be split into when providers take
    /// smaller ranges (each past the first is paid from the retry budget).
    pub max_logs_pieces: u64,
    /// `eth_getLogs`: bytes of a result merged from pieces.
    pub max_logs_bytes: usize,
    /// HTTP filters (`eth_newFilter` & co., held by Outlast): open at once per chain
    /// (with `[redis]`, block and log filters are counted across the instances).
    pub max_filters: usize,
    /// HTTP filters: open at once per chain for one client (its API key, or its address
    /// without one), so one client cannot take them all.
    pub max_filters_per_client: usize,
    /// HTTP filters: changes queued for one filter between two polls; more and the next
    /// poll gets -32005 (the filter is removed, so the gap is never silent).
    pub max_filter_items: usize,
    /// HTTP filters: one not polled for this long is dropped (geth: 5 minutes).
    pub filter_timeout_secs: u64,
    /// Verified `eth_call`: the most gas a call is executed here with, whatever its `gas`
    /// says (geth's `--rpc.gascap`, 50M, caps it the same way): execution is CPU for as
    /// long as the gas lasts, and `gas: 2^64-1` would otherwise never end.
    pub max_call_gas: u64,
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
            max_frame_bytes: 5 * 1024 * 1024,
            max_subscriptions: 100,
            ws_client_buffer: 1024,
            ws_ping_secs: 30,
            max_logs_range: 100_000,
            max_logs_pieces: 100,
            max_logs_bytes: 64 << 20,
            max_filters: 1_000,
            max_filters_per_client: 100,
            max_filter_items: 10_000,
            filter_timeout_secs: 300,
            max_call_gas: 50_000_000,
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
    /// How long an upstream caught lying stays out of rotation.
    pub liar_ban_secs: u64,
    /// Largest reply read from an upstream; a larger one is refused as malformed and the
    /// call moves on, so a broken or hostile provider cannot exhaust Outlast's memory.
    pub max_reply_bytes: u64,
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
            liar_ban_secs: 600,
            max_reply_bytes: 256 << 20,
        }
    }
}

/// `[status]`: the status page, incident detection and where their history is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Status {
    /// The status page's heading.
    #[serde(deserialize_with = "env::expanded")]
    pub title: String,
    /// Where people reach this Outlast (`https://rpc.example.com`): links in the Atom feed
    /// and webhooks. Unset: the feed uses the request's `Host`, webhooks carry no link.
    #[serde(deserialize_with = "env::expanded_opt")]
    pub public_url: Option<String>,
    /// Incident history and uptime. Unset: `$XDG_STATE_HOME/outlast`, else
    /// `~/.local/state/outlast`, else `./outlast-state`.
    #[serde(deserialize_with = "env::expanded_opt")]
    pub data_dir: Option<String>,
    /// The page reloads itself this often.
    pub refresh_secs: u64,
    /// How often health is looked at for incidents.
    pub evaluate_ms: u64,
    /// A problem must last this long before an incident opens…
    pub open_after_ms: u64,
    /// …and be gone this long before it is resolved, so flapping does not spam.
    pub resolve_after_ms: u64,
    /// The same problem again within this time reopens the incident instead of a new one.
    pub reopen_within_secs: u64,
    /// An upstream this many blocks behind the consensus head is lagging.
    pub lag_blocks: u64,
    /// No new consensus block for this many block times (and at least
    /// `head_stall_min_secs`) while upstreams answer: the head is stalled.
    pub head_stall_block_times: u32,
    pub head_stall_min_secs: u64,
    /// Resolved incidents older than this are forgotten.
    pub history_days: u32,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            title: "Outlast status".into(),
            public_url: None,
            data_dir: None,
            refresh_secs: 10,
            evaluate_ms: 500,
            open_after_ms: 3_000,
            resolve_after_ms: 10_000,
            reopen_within_secs: 300,
            lag_blocks: 5,
            head_stall_block_times: 5,
            head_stall_min_secs: 30,
            history_days: 90,
        }
    }
}

/// `[[webhooks]]`: where incident news is posted when incidents open, change and resolve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Shown in logs and metrics (the URL never is); default `webhook-N`.
    #[serde(default, deserialize_with = "env::expanded_opt")]
    pub name: Option<String>,
    /// Slack and Discord webhook URLs are secrets: shown redacted, like upstream URLs.
    pub url: UpstreamUrl,
    #[serde(default)]
    pub format: WebhookFormat,
    /// Incidents below this severity are not sent.
    #[serde(default)]
    pub min_severity: Severity,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries per message, the first included; waits `backoff_ms`, doubling, in between.
    #[serde(default = "default_webhook_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_webhook_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_webhook_timeout_ms() -> u64 {
    5_000
}

fn default_webhook_attempts() -> u32 {
    6
}

fn default_webhook_backoff_ms() -> u64 {
    1_000
}

/// The body a webhook gets: Outlast's own JSON, or a Slack or Discord message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
    Discord,
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
    /// Further methods answered only when `quorum` operators agree (e.g. `eth_call`,
    /// `eth_getTransactionReceipt`, `eth_getLogs`), in every verify mode but `off`.
    #[serde(default)]
    pub quorum_methods: Vec<String>,
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

/// `[storage]`: verified retrieval from IPFS and Arweave gateways (`GET /ipfs/{cid}`,
/// `GET /ar/{id}`). Gateways are listed in `[[storage.ipfs]]` and `[[storage.arweave]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Verified blocks and chunks kept in memory, in bytes; 0 turns the cache off.
    pub cache_bytes: u64,
    pub connect_timeout_ms: u64,
    /// A gateway that has sent no verified block by then is left for the next one.
    pub first_block_timeout_ms: u64,
    /// A stream that sends nothing for this long mid-way is resumed at another gateway.
    pub stall_timeout_ms: u64,
    /// Gateways asked at once when a fetch starts (of distinct operators when there are
    /// enough); the first verified block wins.
    pub race: usize,
    /// One more gateway is asked when none has answered within the newest one's tail
    /// latency, and at least this long.
    pub hedge_min_ms: u64,
    /// A gateway caught serving content that does not match its address is not asked
    /// again for this long.
    pub ban_secs: u64,
    /// Failures in a row that make a gateway a last resort, for a cool-down doubling
    /// from `cooldown_ms` up to `max_cooldown_ms`.
    pub failures_before_cooldown: u32,
    pub cooldown_ms: u64,
    pub max_cooldown_ms: u64,
    /// Read from `[[storage.ipfs]]` one by one, so each is diagnosed on its own.
    #[serde(default, skip)]
    pub ipfs: Vec<StorageGateway>,
    /// Read from `[[storage.arweave]]` one by one.
    #[serde(default, skip)]
    pub arweave: Vec<StorageGateway>,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            cache_bytes: 128 * 1024 * 1024,
            connect_timeout_ms: 3_000,
            first_block_timeout_ms: 20_000,
            stall_timeout_ms: 10_000,
            race: 2,
            hedge_min_ms: 500,
            ban_secs: 3_600,
            failures_before_cooldown: 3,
            cooldown_ms: 5_000,
            max_cooldown_ms: 300_000,
            ipfs: Vec::new(),
            arweave: Vec::new(),
        }
    }
}

/// `[[storage.ipfs]]`, `[[storage.arweave]]`: one public gateway and the labels that
/// say how independent it is. IPFS gateways must speak the trustless gateway formats
/// (`?format=car`, `?format=raw`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageGateway {
    #[serde(deserialize_with = "env::expanded")]
    pub name: String,
    pub url: UpstreamUrl,
    #[serde(deserialize_with = "env::expanded")]
    pub operator: String,
    #[serde(default, deserialize_with = "env::expanded_opt")]
    pub cloud: Option<String>,
    #[serde(default, deserialize_with = "env::expanded_opt")]
    pub region: Option<String>,
}

/// `[cache]`: answers kept in memory (and in Redis when `[redis] url` is set). Immutable
/// answers (at or below the finalized block) live until evicted; answers tied to the
/// consensus head live until the head moves or `ttl_secs` passes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cache {
    /// Memory for cached answers, in bytes (keys and values); 0 turns caching off.
    pub size_bytes: u64,
    /// Longest life of an answer tied to the consensus head (a `latest` read), even while
    /// the head stands still.
    pub ttl_secs: u64,
    /// With every upstream of a chain down, answer head-tied reads from the cache anyway,
    /// marked `x-outlast-stale-seconds`. Off: such reads get `-32002`.
    pub serve_stale: bool,
    /// How old a head-tied answer may be and still be served stale.
    pub max_stale_secs: u64,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            size_bytes: 64 * 1024 * 1024,
            ttl_secs: 60,
            serve_stale: false,
            max_stale_secs: 600,
        }
    }
}

/// `[redis]`: a cache tier shared by every Outlast instance. Unset `url`: memory only.
/// Redis down never takes Outlast down: it answers from memory and upstreams meanwhile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Redis {
    /// `redis://host:port/db`; may hold a password, so shown redacted.
    pub url: Option<UpstreamUrl>,
    /// Prefix of every key Outlast writes, so deployments can share one Redis.
    #[serde(deserialize_with = "env::expanded")]
    pub key_prefix: String,
    /// A Redis call slower than this is given up (the cache then misses).
    pub timeout_ms: u64,
    /// Shared by the instances; every entry carries an HMAC-SHA256 of its key and value
    /// under it, so whoever can write to Redis cannot plant an answer. Required with
    /// `url`, at least 16 bytes; write it as `${VAR}`. Shown as `${VAR}` or `***`.
    pub secret: Option<secret::Secret>,
}

impl Default for Redis {
    fn default() -> Self {
        Redis {
            url: None,
            key_prefix: "outlast:".into(),
            timeout_ms: 250,
            secret: None,
        }
    }
}

/// `[tx]`: how `eth_sendRawTransaction` is broadcast, and re-sent until mined.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tx {
    /// Upstreams of distinct operators a raw transaction is sent to at once.
    pub broadcast_to: usize,
    /// Transactions remembered for read-your-writes (pending nonce, tx by hash) until
    /// seen mined, at most this long. With `rebroadcast`, also how long one is re-sent.
    pub remember_secs: u64,
    /// Re-send each accepted transaction until it is in a block or replaced: a node's
    /// mempool forgets (restarts, eviction), and the sender should not have to notice.
    pub rebroadcast: bool,
    /// How often pending transactions are checked and re-sent.
    pub rebroadcast_secs: u64,
    /// The file that keeps pending transactions across restarts (`rebroadcast` only);
    /// unset: `transactions.json` in the data directory, beside the incident history.
    #[serde(deserialize_with = "env::expanded_opt")]
    pub store: Option<String>,
}

impl Default for Tx {
    fn default() -> Self {
        Tx {
            broadcast_to: 3,
            remember_secs: 3_600,
            rebroadcast: false,
            rebroadcast_secs: 12,
            store: None,
        }
    }
}

/// `[auth]`: who may call, and how often. Absent: anyone who reaches the port may call
/// (a local gateway). Present: a JSON-RPC request needs one of `keys` (in the path
/// `/{chain}/{key}`, `x-api-key`, or `Authorization: Bearer`), unless `anonymous_rps`
/// lets callers without one in, limited per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Calls per second one client address may make without a key; 0: a key is required.
    pub anonymous_rps: u32,
    /// Calls an address without a key may make at once before `anonymous_rps` paces
    /// it; default twice `anonymous_rps`.
    pub anonymous_burst: Option<u32>,
    /// With `[redis] url`, what applies while Redis does not answer: `local` (each
    /// instance enforces the budgets on its own, so N instances allow up to N times
    /// them) or `deny` (calls are refused with -32005 until Redis is back).
    pub redis_fallback: RedisFallback,
    pub keys: Vec<ApiKey>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            anonymous_rps: 0,
            anonymous_burst: None,
            redis_fallback: RedisFallback::Local,
            keys: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisFallback {
    #[default]
    Local,
    Deny,
}

/// `[[auth.keys]]`: one client's key, its budget and what it may call.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Shown in logs, metrics and the admin API; the key never is.
    #[serde(deserialize_with = "env::expanded")]
    pub name: String,
    /// Write it as `${VAR}`; shown as `${VAR}` or `***`, never its value.
    pub key: Secret,
    /// Calls per second, sustained (a batch counts each of its calls).
    pub rps: u32,
    /// Calls at once before `rps` paces them; default twice `rps`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Methods this key may call (`*` matches any run of characters, e.g. `eth_*`);
    /// absent: every method the gateway allows. `[limits] denied_methods` still apply.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Chains (names) this key may use; absent: all.
    #[serde(default)]
    pub chains: Option<Vec<String>>,
}

/// `[cors]`: what browsers may do. Pages of `allowed_origins` may call Outlast
/// (preflights answered, `Access-Control-*` on every answer); a request or WebSocket
/// from any other page's origin is refused. `allowed_hosts` stops DNS rebinding: a
/// `Host` header not in the list is refused (IP addresses are always accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cors {
    /// `https://app.example.com` (scheme, host and port, as browsers send `Origin`), or
    /// `*` for any page. Empty: only pages Outlast serves itself (same origin).
    pub allowed_origins: Vec<String>,
    /// Host names clients use to reach Outlast (`rpc.example.com`), `*.example.com`
    /// for subdomains, or `*` for any. Empty: `localhost` and IP addresses when
    /// `[server] listen` is a loopback address, any host otherwise.
    pub allowed_hosts: Vec<String>,
    /// How long a browser may reuse a preflight's answer.
    pub max_age_secs: u64,
}

impl Default for Cors {
    fn default() -> Self {
        Cors {
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_age_secs: 600,
        }
    }
}

/// `[admin]`: the admin API (`/api/v1/admin/…`: cordons, manual incidents, maintenance)
/// and who may read the operator surfaces. Without `token` the admin API is off and
/// `/metrics` and `/api/v1/*` are public, as before.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Sent as `Authorization: Bearer TOKEN`. Write it as `${VAR}`; at least 16 bytes.
    pub token: Option<Secret>,
    /// With a token, `/metrics` requires it too.
    pub protect_metrics: bool,
    /// With a token, `/api/v1/status` and `/api/v1/incidents` require it too
    /// (`/status` and `/feed.atom` stay public).
    pub protect_api: bool,
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            token: None,
            protect_metrics: true,
            protect_api: true,
        }
    }
}

/// How bad an incident is for users. Lives here, not in `incidents`, because the
/// config names it (`[[webhooks]] min_severity`) and config imports nothing.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// One upstream out of several: users notice nothing, operators should.
    #[default]
    Minor,
    /// Guarantees weakened: quorum lost, a liar, a correlated failure, a stalled head.
    Major,
    /// A chain cannot be served.
    Critical,
}

impl Severity {
    /// The word for it, as the config, webhooks and metrics write it.
    pub fn label(self) -> &'static str {
        match self {
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
