//! Hot reload: what re-reading the config file changes, and the per-upstream background
//! tasks a reload starts and stops.
//!
//! - `plan`    — the running config against the file just read (pure): which upstreams
//!   stay as they are, are relabelled, replaced, added or removed; which `[limits]`,
//!   `[auth]`, `[cors]`, `[admin]` keys changed; and what only a restart can change
//!   (those keep their running value, and the report says so)
//! - `UpstreamTasks` — each upstream's chain-id probe, head polls and head pushes,
//!   under its own cancellation token, so a removed upstream's tasks stop
//! - `Trigger` / `Inbox` — SIGHUP and `POST /api/v1/admin/reload` ask through one
//!   channel, so reloads run one at a time, in the order asked
//!
//! Applying a plan (swapping each chain's upstream set and the gateway's settings) is
//! the composition root's (`lib.rs`): this module never sees the assembled gateway.
//! Changes are named by upstream and key names, never URLs or key values.

use std::{
    collections::HashMap,
    fmt::Debug,
    sync::{Arc, Mutex},
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    config::{self, Config},
    route::Chain,
    upstream::Upstream,
};

/// What a reload did, for the log and the admin API.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// True when the file was read and its reloadable parts now serve.
    pub applied: bool,
    /// One line per change applied (names, never URLs or keys).
    pub changes: Vec<String>,
    /// Changes in the file that need a restart; their running values keep serving.
    pub restart_needed: Vec<String>,
    /// Why the file was refused: every problem, with its line and column. The running
    /// config keeps serving.
    pub problems: Vec<String>,
}

impl Report {
    /// A refusal: nothing changed.
    pub fn refused(problems: Vec<String>) -> Report {
        Report {
            problems,
            ..Report::default()
        }
    }
}

/// Why a reload could not even be asked for.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(
        "this Outlast was started without --config (the embedded default): there is no file to reload"
    )]
    NoFile,
    #[error("Outlast is shutting down; nothing is reloaded")]
    Closed,
}

/// One request for a reload, answered with its report (SIGHUP drops the answer: the
/// report is logged either way).
pub type Ask = oneshot::Sender<Report>;

/// Asks for reloads; clonable, held by the gateway (admin API) and the signal handler.
#[derive(Clone, Debug)]
pub struct Trigger(mpsc::Sender<Ask>);

/// Where reload requests arrive, one at a time (`lib.rs` serves them).
pub struct Inbox(pub mpsc::Receiver<Ask>);

/// A trigger and the inbox it feeds. A few requests may wait; more while a reload is
/// running are redundant (the next one reads the same file).
pub fn channel() -> (Trigger, Inbox) {
    let (tx, rx) = mpsc::channel(4);
    (Trigger(tx), Inbox(rx))
}

impl Trigger {
    /// Reloads and waits for the report.
    pub async fn ask(&self) -> Result<Report, AskError> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.map_err(|_| AskError::Closed)?;
        rx.await.map_err(|_| AskError::Closed)
    }

    /// Reloads without waiting (SIGHUP); a request dropped because several are already
    /// waiting loses nothing, as those will read the same file.
    pub fn hangup(&self) {
        let (tx, _report) = oneshot::channel();
        if self.0.try_send(tx).is_err() {
            tracing::info!("a reload is already waiting; this SIGHUP is covered by it");
        }
    }
}

/// What happens to one upstream of the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Exactly as running: the same object, its tasks untouched.
    Kept,
    /// Same name and URLs, other labels or limits: a new object sharing the old one's
    /// health, head and cordon (`Upstream::relabelled`); its tasks restart.
    Relabelled,
    /// Same name, another URL: another endpoint, so it starts fresh.
    Replaced,
    Added,
}

/// One chain's new upstream set, in the file's order.
#[derive(Debug)]
pub struct ChainPlan {
    pub chain: String,
    pub upstreams: Vec<(config::Upstream, Fate)>,
    pub removed: Vec<String>,
}

/// What a reload will do.
#[derive(Debug)]
pub struct Plan {
    /// The config that serves once applied: the file's reloadable parts, the running
    /// values of everything else.
    pub next: Config,
    pub chains: Vec<ChainPlan>,
    pub changes: Vec<String>,
    pub restart_needed: Vec<String>,
}

/// `[limits]` keys read once at start (each chain's subscription hub and HTTP filters).
const RESTART_LIMITS: &[&str] = &[
    "ws_client_buffer",
    "max_filters",
    "max_filters_per_client",
    "max_filter_items",
    "filter_timeout_secs",
];

/// The named fields of `a` and `b` whose values differ (by their `Debug` form).
macro_rules! differing {
    ($a:expr, $b:expr, [$($field:ident),* $(,)?]) => {{
        let mut names: Vec<&'static str> = Vec::new();
        $(
            if format!("{:?}", $a.$field) != format!("{:?}", $b.$field) {
                names.push(stringify!($field));
            }
        )*
        names
    }};
}

/// Compares the running config with the file just read. Pure: tested with tables.
pub fn plan(running: &Config, file: Config) -> Plan {
    let mut next = running.clone();
    let mut changes = Vec::new();
    let mut restart_needed = Vec::new();
    restart_only(running, &file, &mut restart_needed);

    let mut chains = Vec::new();
    for (i, old) in running.chains.iter().enumerate() {
        let Some(new) = file.chains.iter().find(|c| c.name == old.name) else {
            restart_needed.push(format!(
                "chain `{}` removed: it keeps serving until a restart",
                old.name
            ));
            continue;
        };
        let fields = differing!(old, new, [chain_id, verify, quorum, quorum_methods]);
        for f in fields {
            restart_needed.push(format!("chain `{}`: `{f}` changed", old.name));
        }
        let chain = upstreams(old, new, &mut changes);
        next.chains[i].upstreams = new.upstreams.clone();
        chains.push(chain);
    }
    for new in &file.chains {
        if !running.chains.iter().any(|c| c.name == new.name) {
            restart_needed.push(format!(
                "chain `{}` added: it is served after a restart",
                new.name
            ));
        }
    }

    let mut limits = file.limits.clone();
    let (o, n) = (&running.limits, &file.limits);
    let changed = differing!(
        o,
        n,
        [
            max_body_bytes,
            max_batch,
            max_depth,
            denied_methods,
            max_frame_bytes,
            max_subscriptions,
            ws_ping_secs,
            max_logs_range,
            max_logs_pieces,
            max_logs_bytes,
            max_call_gas,
        ]
    );
    for f in changed {
        changes.push(format!("[limits] {f} changed"));
    }
    for f in differing!(
        o,
        n,
        [
            ws_client_buffer,
            max_filters,
            max_filters_per_client,
            max_filter_items,
            filter_timeout_secs,
        ]
    ) {
        debug_assert!(RESTART_LIMITS.contains(&f));
        restart_needed.push(format!("[limits] {f} changed"));
    }
    limits.ws_client_buffer = o.ws_client_buffer;
    limits.max_filters = o.max_filters;
    limits.max_filters_per_client = o.max_filters_per_client;
    limits.max_filter_items = o.max_filter_items;
    limits.filter_timeout_secs = o.filter_timeout_secs;
    next.limits = limits;

    auth(running.auth.as_ref(), file.auth.as_ref(), &mut changes);
    next.auth = file.auth;
    if format!("{:?}", running.cors) != format!("{:?}", file.cors) {
        changes.push("[cors] changed".into());
    }
    next.cors = file.cors;
    if running.admin.token != file.admin.token
        || running.admin.protect_api != file.admin.protect_api
        || running.admin.protect_metrics != file.admin.protect_metrics
    {
        changes.push("[admin] changed".into());
    }
    next.admin = file.admin;

    Plan {
        next,
        chains,
        changes,
        restart_needed,
    }
}

/// Sections read once at start: a change is reported, not applied. (Compared by their
/// `Debug` form, where secrets show as `***` or `${VAR}`: a change of a secret's value
/// alone in one of these sections goes unnoticed — and needs a restart all the same.)
fn restart_only(running: &Config, file: &Config, out: &mut Vec<String>) {
    let mut compare = |name: &str, old: &dyn std::fmt::Debug, new: &dyn std::fmt::Debug| {
        if format!("{old:?}") != format!("{new:?}") {
            out.push(format!("{name} changed"));
        }
    };
    compare("[server]", &running.server, &file.server);
    compare("[routing]", &running.routing, &file.routing);
    compare("[status]", &running.status, &file.status);
    compare("[[webhooks]]", &running.webhooks, &file.webhooks);
    compare("[storage]", &running.storage, &file.storage);
    compare("[cache]", &running.cache, &file.cache);
    compare("[redis]", &running.redis, &file.redis);
    compare("[tx]", &running.tx, &file.tx);
    compare("[tracing]", &running.tracing, &file.tracing);
}

/// One chain's upstreams, old against new, by name.
fn upstreams(old: &config::Chain, new: &config::Chain, changes: &mut Vec<String>) -> ChainPlan {
    let chain = &old.name;
    let mut planned = Vec::new();
    for u in &new.upstreams {
        let fate = match old.upstreams.iter().find(|o| o.name == u.name) {
            None => Fate::Added,
            Some(o) if o.url != u.url || o.ws_url != u.ws_url => Fate::Replaced,
            Some(o) => {
                let labels = differing!(
                    o,
                    u,
                    [
                        operator,
                        cloud,
                        region,
                        tier,
                        max_rps,
                        max_concurrency,
                        max_logs_range,
                    ]
                );
                if labels.is_empty() {
                    Fate::Kept
                } else {
                    changes.push(format!(
                        "chain `{chain}`: upstream `{}` relabelled ({})",
                        u.name,
                        labels.join(", ")
                    ));
                    Fate::Relabelled
                }
            }
        };
        match fate {
            Fate::Added => changes.push(format!("chain `{chain}`: upstream `{}` added", u.name)),
            Fate::Replaced => changes.push(format!(
                "chain `{chain}`: upstream `{}` has a new URL: started afresh",
                u.name
            )),
            Fate::Kept | Fate::Relabelled => {}
        }
        planned.push((u.clone(), fate));
    }
    let removed: Vec<String> = old
        .upstreams
        .iter()
        .filter(|o| !new.upstreams.iter().any(|u| u.name == o.name))
        .map(|o| o.name.clone())
        .collect();
    for name in &removed {
        changes.push(format!("chain `{chain}`: upstream `{name}` removed"));
    }
    ChainPlan {
        chain: chain.clone(),
        upstreams: planned,
        removed,
    }
}

/// `[auth]` keys by name; the key values are compared, never shown.
fn auth(old: Option<&config::Auth>, new: Option<&config::Auth>, changes: &mut Vec<String>) {
    let (o, n) = match (old, new) {
        (None, None) => return,
        (None, Some(_)) => {
            changes.push("[auth] added: calls need a key (or anonymous_rps) now".into());
            return;
        }
        (Some(_), None) => {
            changes.push("[auth] removed: the gateway is open now".into());
            return;
        }
        (Some(o), Some(n)) => (o, n),
    };
    for f in differing!(o, n, [anonymous_rps, anonymous_burst, redis_fallback]) {
        changes.push(format!("[auth] {f} changed"));
    }
    for k in &n.keys {
        match o.keys.iter().find(|x| x.name == k.name) {
            None => changes.push(format!("[auth] key `{}` added", k.name)),
            Some(x) => {
                let mut fields = differing!(x, k, [rps, burst, methods, chains]);
                if x.key != k.key {
                    fields.insert(0, "key");
                }
                if !fields.is_empty() {
                    changes.push(format!(
                        "[auth] key `{}` changed ({})",
                        k.name,
                        fields.join(", ")
                    ));
                }
            }
        }
    }
    for x in &o.keys {
        if !n.keys.iter().any(|k| k.name == x.name) {
            changes.push(format!("[auth] key `{}` removed", x.name));
        }
    }
}

/// An upstream by chain name and upstream name.
type Key = (Arc<str>, Arc<str>);

/// Each upstream's background tasks (chain-id probe, head polls, head pushes over its
/// WebSocket), under a token of its own: a child of the gateway's stop token, so
/// shutdown stops them all, and a reload stops one upstream's alone.
pub struct UpstreamTasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    chain_id_check: std::time::Duration,
    running: Mutex<HashMap<Key, CancellationToken>>,
}

impl UpstreamTasks {
    pub fn new(
        tracker: TaskTracker,
        stop: CancellationToken,
        chain_id_check: std::time::Duration,
    ) -> UpstreamTasks {
        UpstreamTasks {
            tracker,
            stop,
            chain_id_check,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Starts `up`'s tasks (stopping those of an upstream of that name first).
    pub fn start(
        &self,
        chain: &Arc<Chain>,
        up: &Arc<Upstream>,
        ws_url: Option<&config::UpstreamUrl>,
    ) {
        let token = self.stop.child_token();
        let old = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((chain.name.clone(), up.name.clone()), token.clone());
        if let Some(old) = old {
            old.cancel();
        }
        self.tracker.spawn(crate::upstream::watch(
            up.clone(),
            chain.chain_id,
            self.chain_id_check,
            token.clone(),
        ));
        self.tracker.spawn(crate::route::track::track(
            up.clone(),
            chain.clone(),
            token.clone(),
        ));
        if let Some(url) = ws_url {
            self.tracker.spawn(crate::subscribe::feeds::push_heads(
                chain.clone(),
                up.clone(),
                url.clone(),
                token,
            ));
        }
    }

    /// Stops the tasks of upstream `name` of `chain` (removed by a reload).
    pub fn stop(&self, chain: &str, name: &str) {
        let key: Key = (Arc::from(chain), Arc::from(name));
        let token = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if let Some(token) = token {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[limits]
max_batch = 10

[auth]
anonymous_rps = 5
[[auth.keys]]
name = "a"
key = "aaaaaaaaaaaaaaaa"
rps = 10

[[chains]]
name = "local"
chain_id = 31337
[[chains.upstreams]]
name = "u0"
url = "http://127.0.0.1:1"
operator = "op0"
[[chains.upstreams]]
name = "u1"
url = "http://127.0.0.1:2"
operator = "op1"
"#;

    fn load(text: &str) -> Config {
        config::load_str(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn check(edit: impl Fn(String) -> String, changes: &[&str], restart: &[&str]) {
        let plan = plan(&load(BASE), load(&edit(BASE.to_owned())));
        assert_eq!(plan.changes, changes, "changes");
        assert_eq!(plan.restart_needed, restart, "restart_needed");
    }

    #[test]
    fn the_same_file_changes_nothing() {
        check(|s| s, &[], &[]);
        let plan = plan(&load(BASE), load(BASE));
        let fates: Vec<Fate> = plan.chains[0].upstreams.iter().map(|(_, f)| *f).collect();
        assert_eq!(fates, [Fate::Kept, Fate::Kept]);
    }

    #[test]
    fn upstreams_added_removed_relabelled_and_replaced_are_named() {
        check(
            |s| {
                s.replace("name = \"u0\"", "name = \"u2\"")
                    .replace("operator = \"op1\"", "operator = \"op9\"\ntier = 2")
            },
            &[
                "chain `local`: upstream `u2` added",
                "chain `local`: upstream `u1` relabelled (operator, tier)",
                "chain `local`: upstream `u0` removed",
            ],
            &[],
        );
        check(
            |s| s.replace("127.0.0.1:2", "127.0.0.1:3"),
            &["chain `local`: upstream `u1` has a new URL: started afresh"],
            &[],
        );
    }

    #[test]
    fn limits_and_keys_apply_but_restart_only_keys_are_reported() {
        check(
            |s| {
                s.replace("max_batch = 10", "max_batch = 3\nmax_filters = 7")
                    .replace("rps = 10", "rps = 1")
                    .replace("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb")
            },
            &[
                "[limits] max_batch changed",
                "[auth] key `a` changed (key, rps)",
            ],
            &["[limits] max_filters changed"],
        );
        let plan = plan(
            &load(BASE),
            load(&BASE.replace("max_batch = 10", "max_batch = 3\nmax_filters = 7")),
        );
        assert_eq!(plan.next.limits.max_batch, 3);
        assert_eq!(
            plan.next.limits.max_filters,
            load(BASE).limits.max_filters,
            "a restart-only limit keeps its running value"
        );
    }

    #[test]
    fn listen_address_and_chains_need_a_restart() {
        let mut file = load(&BASE.replace("chain_id = 31337", "chain_id = 1"));
        file.server.listen = "127.0.0.1:9".parse().expect("addr");
        let running = load(BASE);
        let plan = plan(&running, file);
        assert_eq!(
            plan.restart_needed,
            ["[server] changed", "chain `local`: `chain_id` changed"]
        );
        assert_eq!(plan.next.server.listen, running.server.listen);
        assert_eq!(plan.next.chains[0].chain_id, 31337);
    }
}
