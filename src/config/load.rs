//! Turns TOML text into a `Config`, reporting *every* problem with its line, column and
//! key. serde stops at the first error, so each section, chain and upstream is
//! deserialized on its own from a span-keeping parse; checks that span several values
//! (duplicate names, URL schemes) run afterwards and are located by key path.

use std::{collections::HashSet, fmt, ops::Range, path::Path};

use serde::de::DeserializeOwned;
use toml::{
    Spanned,
    de::{DeTable, DeValue, ValueDeserializer},
};

use super::{
    Admin, Auth, Cache, Chain, Config, Cors, Limits, Redis, Routing, Server, Status, Tracing, Tx,
    Upstream, Webhook,
};

/// One thing wrong with a config file, located for a person with an editor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `chains[0].upstreams[2].max_rps`; empty for the whole file.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.line, self.column, self.key, self.message
            )
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {count} problem(s):\n{problems}", count = problems.0.len(), problems = Prefixed(path, problems))]
    Invalid { path: String, problems: Problems },
}

/// Prints each problem as `path:line:col: …`, the form editors and CI logs link.
struct Prefixed<'a>(&'a str, &'a Problems);

impl fmt::Display for Prefixed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.1.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{p}", self.0)?;
        }
        Ok(())
    }
}

pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    load_str(&text).map_err(|problems| LoadError::Invalid {
        path: shown,
        problems,
    })
}

pub fn load_str(text: &str) -> Result<Config, Problems> {
    let mut ctx = Ctx {
        text,
        problems: Vec::new(),
    };
    let (root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            ctx.push(e.span(), "", e.message().trim().to_owned());
        }
        return Err(ctx.finish());
    }
    let root_span = root.span();
    let root = root.into_inner();

    let mut config = Config {
        server: Server::default(),
        limits: Limits::default(),
        routing: Routing::default(),
        chains: Vec::new(),
        status: Status::default(),
        webhooks: Vec::new(),
        storage: super::Storage::default(),
        cache: Cache::default(),
        redis: Redis::default(),
        tx: Tx::default(),
        auth: None,
        cors: Cors::default(),
        admin: Admin::default(),
        tracing: Tracing::default(),
    };
    for (key, value) in root.iter() {
        match key.get_ref().as_ref() {
            "server" => config.server = ctx.section(value, "server").unwrap_or_default(),
            "limits" => config.limits = ctx.section(value, "limits").unwrap_or_default(),
            "routing" => config.routing = ctx.section(value, "routing").unwrap_or_default(),
            "chains" => config.chains = ctx.chains(value),
            "status" => config.status = ctx.section(value, "status").unwrap_or_default(),
            "webhooks" => config.webhooks = ctx.webhooks(value),
            "storage" => config.storage = ctx.storage(value),
            "cache" => config.cache = ctx.section(value, "cache").unwrap_or_default(),
            "redis" => config.redis = ctx.section(value, "redis").unwrap_or_default(),
            "tx" => config.tx = ctx.section(value, "tx").unwrap_or_default(),
            "auth" => config.auth = Some(ctx.section::<Auth>(value, "auth").unwrap_or_default()),
            "cors" => config.cors = ctx.section(value, "cors").unwrap_or_default(),
            "admin" => config.admin = ctx.section(value, "admin").unwrap_or_default(),
            "tracing" => config.tracing = ctx.section(value, "tracing").unwrap_or_default(),
            other => ctx.push(
                Some(key.span()),
                other,
                "unknown section; expected one of `server`, `limits`, `routing`, `chains`, `status`, `webhooks`, `storage`, `cache`, `redis`, `tx`, `auth`, `cors`, `admin`, `tracing`".into(),
            ),
        }
    }
    if !root.iter().any(|(k, _)| k.get_ref().as_ref() == "chains") {
        ctx.push(
            Some(root_span.start..root_span.start),
            "chains",
            "no `[[chains]]` configured; add at least one chain with its upstreams".into(),
        );
    }
    for (path, message) in validate(&config) {
        let span = locate(&root, &path);
        ctx.push(span, &path_text(&path), message);
    }
    ctx.times(&root, "");
    if ctx.problems.is_empty() {
        Ok(config)
    } else {
        Err(ctx.finish())
    }
}

struct Ctx<'t> {
    text: &'t str,
    problems: Vec<Problem>,
}

/// The longest time any `_secs` or `_ms` key may give. Nothing Outlast waits for takes
/// this long, and a time near `u64::MAX` overflows the clock arithmetic it goes into
/// (`Instant + Duration`, `ping * 2`: a panic on first use).
const MAX_TIME_SECS: u64 = 10 * 365 * 24 * 3600;

impl Ctx<'_> {
    /// Every key ending `_secs` or `_ms`, in any section or array of tables, is at most
    /// `MAX_TIME_SECS`: checked by name, so a key added later is covered too.
    fn times(&mut self, table: &DeTable<'_>, at: &str) {
        for (key, value) in table.iter() {
            let key = key.get_ref().as_ref();
            let path = if at.is_empty() {
                key.to_owned()
            } else {
                format!("{at}.{key}")
            };
            match value.get_ref() {
                DeValue::Table(t) => self.times(t, &path),
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let DeValue::Table(t) = item.get_ref() {
                            self.times(t, &format!("{path}[{i}]"));
                        }
                    }
                }
                DeValue::Integer(n) => {
                    let per_sec = match key {
                        k if k.ends_with("_secs") => 1,
                        k if k.ends_with("_ms") => 1000,
                        _ => continue,
                    };
                    let most = MAX_TIME_SECS * per_sec;
                    // Not a u64 (negative): the section's own parse says so.
                    if u64::from_str_radix(n.as_str(), n.radix()).is_ok_and(|n| n > most) {
                        self.push(
                            Some(value.span()),
                            &path,
                            format!("must be at most {most} (ten years)"),
                        );
                    }
                }
                _ => {}
            }
        }
    }

    fn push(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        let (line, column) = span.map_or((1, 1), |s| line_col(self.text, s.start));
        self.problems.push(Problem {
            line,
            column,
            key: key.to_owned(),
            message,
        });
    }

    fn finish(mut self) -> Problems {
        self.problems.sort_by_key(|p| (p.line, p.column));
        Problems(self.problems)
    }

    /// Deserializes one table; on error, names the key whose value holds the error.
    fn section<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
    ) -> Option<T> {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(v) => Some(v),
            Err(e) => {
                let span = e.span();
                let key = span
                    .as_ref()
                    .and_then(|s| child_containing(value, s))
                    .map_or_else(|| path.to_owned(), |k| format!("{path}.{k}"));
                self.push(
                    span.or(Some(value.span())),
                    &key,
                    e.message().trim().to_owned(),
                );
                None
            }
        }
    }

    fn chains(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<Chain> {
        let Some(array) = value.get_ref().as_array() else {
            self.push(
                Some(value.span()),
                "chains",
                "must be an array of tables: write `[[chains]]`".into(),
            );
            return Vec::new();
        };
        let mut chains = Vec::new();
        for (i, item) in array.iter().enumerate() {
            let path = format!("chains[{i}]");
            let Some(table) = item.get_ref().as_table() else {
                self.push(Some(item.span()), &path, "must be a table".into());
                continue;
            };
            let rest: DeTable<'_> = table
                .iter()
                .filter(|(k, _)| k.get_ref().as_ref() != "upstreams")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let rest = Spanned::new(item.span(), DeValue::Table(rest));
            let chain: Option<Chain> = self.section(&rest, &path);
            let upstreams = match table
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == "upstreams")
            {
                Some((_, ups)) => self.upstreams(ups, &path),
                None => {
                    self.push(
                        Some(item.span()),
                        &path,
                        "no `[[chains.upstreams]]`: add at least one".into(),
                    );
                    Vec::new()
                }
            };
            if let Some(mut chain) = chain {
                chain.upstreams = upstreams;
                chains.push(chain);
            }
        }
        chains
    }

    fn webhooks(&mut self, value: &Spanned<DeValue<'_>>) -> Vec<Webhook> {
        self.tables(value, "webhooks", "webhooks", |_| Vec::new())
    }

    fn upstreams(&mut self, value: &Spanned<DeValue<'_>>, chain_path: &str) -> Vec<Upstream> {
        let path = format!("{chain_path}.upstreams");
        self.tables(value, &path, "chains.upstreams", validate_upstream)
    }

    /// An array of tables (`[[written]]`) at `path`: each table deserialized on its own,
    /// so one bad table does not hide the others' problems, then checked by `validate`,
    /// each problem reported at its key.
    fn tables<T: DeserializeOwned>(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        written: &str,
        validate: fn(&T) -> Vec<(&'static str, String)>,
    ) -> Vec<T> {
        let Some(array) = value.get_ref().as_array() else {
            self.push(
                Some(value.span()),
                path,
                format!("must be an array of tables: write `[[{written}]]`"),
            );
            return Vec::new();
        };
        let mut items = Vec::new();
        for (i, item) in array.iter().enumerate() {
            let at = format!("{path}[{i}]");
            let Some(parsed) = self.section::<T>(item, &at) else {
                continue;
            };
            for (key, message) in validate(&parsed) {
                let span = item
                    .get_ref()
                    .as_table()
                    .and_then(|t| t.iter().find(|(k, _)| k.get_ref().as_ref() == key))
                    .map(|(_, v)| v.span());
                self.push(span.or(Some(item.span())), &format!("{at}.{key}"), message);
            }
            items.push(parsed);
        }
        items
    }
}

/// The key of `table` whose value (or key) span contains `span`.
fn child_containing(table: &Spanned<DeValue<'_>>, span: &Range<usize>) -> Option<String> {
    table.get_ref().as_table()?.iter().find_map(|(k, v)| {
        let (ks, vs) = (k.span(), v.span());
        let inside = |s: &Range<usize>| s.start <= span.start && span.end <= s.end.max(s.start + 1);
        (inside(&ks) || inside(&vs)).then(|| k.get_ref().to_string())
    })
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(&'static str),
    Index(usize),
}

fn path_text(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if s.is_empty() => s.push_str(k),
            Seg::Key(k) => {
                s.push('.');
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// The span of the value at `path`, or of its nearest ancestor that exists.
fn locate(root: &DeTable<'_>, path: &[Seg]) -> Option<Range<usize>> {
    let mut span = None;
    let mut table = Some(root);
    let mut array = None;
    for seg in path {
        let next = match seg {
            Seg::Key(k) => table?
                .iter()
                .find(|(key, _)| key.get_ref().as_ref() == *k)
                .map(|(_, v)| v),
            Seg::Index(i) => array.and_then(|a: &toml::de::DeArray<'_>| a.get(*i)),
        };
        let Some(next) = next else { break };
        span = Some(next.span());
        table = next.get_ref().as_table();
        array = next.get_ref().as_array();
    }
    span
}

/// Checks that span several values, each reported at the value it concerns.
fn validate(config: &Config) -> Vec<(Vec<Seg>, String)> {
    use Seg::{Index, Key};
    let mut out = Vec::new();
    let limits = &config.limits;
    for (key, value) in [
        ("max_body_bytes", limits.max_body_bytes),
        ("max_batch", limits.max_batch),
        ("max_depth", limits.max_depth),
        ("max_frame_bytes", limits.max_frame_bytes),
        ("max_subscriptions", limits.max_subscriptions),
        ("ws_client_buffer", limits.ws_client_buffer),
        ("ws_ping_secs", limits.ws_ping_secs as usize),
        ("max_logs_range", limits.max_logs_range as usize),
        ("max_logs_pieces", limits.max_logs_pieces as usize),
        ("max_logs_bytes", limits.max_logs_bytes),
        ("max_filters", limits.max_filters),
        ("max_filters_per_client", limits.max_filters_per_client),
        ("max_filter_items", limits.max_filter_items),
        ("filter_timeout_secs", limits.filter_timeout_secs as usize),
        ("max_call_gas", limits.max_call_gas as usize),
    ] {
        if value == 0 {
            out.push((vec![Key("limits"), Key(key)], "must be at least 1".into()));
        }
    }
    let server = &config.server;
    for (key, value) in [
        ("header_timeout_ms", server.header_timeout_ms),
        ("body_timeout_ms", server.body_timeout_ms),
        ("idle_timeout_secs", server.idle_timeout_secs),
        ("request_timeout_ms", server.request_timeout_ms),
        ("max_connections", server.max_connections as u64),
        (
            "max_connections_per_ip",
            server.max_connections_per_ip as u64,
        ),
    ] {
        if value == 0 {
            out.push((vec![Key("server"), Key(key)], "must be at least 1".into()));
        }
    }
    let routing = &config.routing;
    for (key, value) in [
        ("connect_timeout_ms", routing.connect_timeout_ms),
        ("request_timeout_ms", routing.request_timeout_ms),
        ("max_attempts", routing.max_attempts as u64),
        ("chain_id_check_secs", routing.chain_id_check_secs),
        ("head_poll_ms", routing.head_poll_ms),
        ("max_reply_bytes", routing.max_reply_bytes),
    ] {
        if value == 0 {
            out.push((vec![Key("routing"), Key(key)], "must be at least 1".into()));
        }
    }
    for (key, value) in [
        ("retry_budget_ratio", routing.retry_budget_ratio),
        ("retry_budget_per_sec", routing.retry_budget_per_sec),
    ] {
        if !(value.is_finite() && value >= 0.0) {
            out.push((
                vec![Key("routing"), Key(key)],
                "must be a number of at least 0".into(),
            ));
        }
    }
    let status = &config.status;
    for (key, value) in [
        ("refresh_secs", status.refresh_secs),
        ("evaluate_ms", status.evaluate_ms),
        ("lag_blocks", status.lag_blocks),
        (
            "head_stall_block_times",
            u64::from(status.head_stall_block_times),
        ),
        ("history_days", u64::from(status.history_days)),
    ] {
        if value == 0 {
            out.push((vec![Key("status"), Key(key)], "must be at least 1".into()));
        }
    }
    if let Some(u) = &status.public_url
        && !url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        out.push((
            vec![Key("status"), Key("public_url")],
            format!("`{u}`: must be an http:// or https:// URL"),
        ));
    }
    let mut hook_names = HashSet::new();
    for (w, hook) in config.webhooks.iter().enumerate() {
        let at = |key| vec![Key("webhooks"), Index(w), Key(key)];
        if !matches!(hook.url.scheme(), "http" | "https") {
            out.push((
                at("url"),
                format!("must be http:// or https://, not {}://", hook.url.scheme()),
            ));
        }
        for (key, value) in [
            ("max_attempts", u64::from(hook.max_attempts)),
            ("timeout_ms", hook.timeout_ms),
        ] {
            if value == 0 {
                out.push((at(key), "must be at least 1".into()));
            }
        }
        if let Some(name) = &hook.name
            && !hook_names.insert(name.as_str())
        {
            out.push((at("name"), format!("webhook name `{name}` is used twice")));
        }
    }
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for (c, chain) in config.chains.iter().enumerate() {
        let at = |key| vec![Key("chains"), Index(c), Key(key)];
        if !names.insert(chain.name.as_str()) {
            out.push((
                at("name"),
                format!("chain name `{}` is used twice", chain.name),
            ));
        }
        if !ids.insert(chain.chain_id) {
            out.push((
                at("chain_id"),
                format!("chain id {} is used twice", chain.chain_id),
            ));
        }
        if let Some(why) = bad_chain_name(&chain.name) {
            out.push((at("name"), why));
        }
        if chain.quorum == 0 {
            out.push((at("quorum"), "must be at least 1".into()));
        }
        let mut up_names = HashSet::new();
        for (u, up) in chain.upstreams.iter().enumerate() {
            let at = |key| {
                vec![
                    Key("chains"),
                    Index(c),
                    Key("upstreams"),
                    Index(u),
                    Key(key),
                ]
            };
            if !up_names.insert(up.name.as_str()) {
                out.push((
                    at("name"),
                    format!("upstream name `{}` is used twice in this chain", up.name),
                ));
            }
        }
    }
    out.extend(validate_storage(&config.storage));
    for (path, value) in [
        ([Key("cache"), Key("ttl_secs")], config.cache.ttl_secs),
        ([Key("redis"), Key("timeout_ms")], config.redis.timeout_ms),
        (
            [Key("tx"), Key("broadcast_to")],
            config.tx.broadcast_to as u64,
        ),
        (
            [Key("tx"), Key("rebroadcast_secs")],
            config.tx.rebroadcast_secs,
        ),
    ] {
        if value == 0 {
            out.push((path.to_vec(), "must be at least 1".into()));
        }
    }
    if config
        .tx
        .store
        .as_ref()
        .is_some_and(|s| s.trim().is_empty())
    {
        out.push((
            vec![Key("tx"), Key("store")],
            "must name a file, e.g. \"outlast-transactions.json\"".into(),
        ));
    }
    if let Some(url) = &config.redis.url
        && !matches!(url.scheme(), "redis" | "rediss")
    {
        out.push((
            vec![Key("redis"), Key("url")],
            format!("`{url}`: must be a redis:// or rediss:// URL"),
        ));
    }
    out.extend(validate_redis_secret(&config.redis));
    out.extend(validate_access(config));
    for (key, message) in config.tracing.problems() {
        out.push((vec![Key("tracing"), Key(key)], message));
    }
    out
}

/// `[auth]`, `[cors]` and `[admin]`: what a typo there would silently open or close.
fn validate_access(config: &Config) -> Vec<(Vec<Seg>, String)> {
    use Seg::{Index, Key};
    let mut out = Vec::new();
    if let Some(auth) = &config.auth {
        if auth.anonymous_burst == Some(0) {
            out.push((
                vec![Key("auth"), Key("anonymous_burst")],
                "must be at least 1, or left out for twice anonymous_rps".into(),
            ));
        }
        let chains: HashSet<&str> = config.chains.iter().map(|c| c.name.as_str()).collect();
        let mut names = HashSet::new();
        let mut values = HashSet::new();
        for (i, key) in auth.keys.iter().enumerate() {
            let at = |k| vec![Key("auth"), Key("keys"), Index(i), Key(k)];
            if key.name.is_empty()
                || !key
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                out.push((
                    at("name"),
                    format!(
                        "`{}`: use letters, digits, `-`, `_` and `.` (it is a metric label)",
                        key.name
                    ),
                ));
            } else if !names.insert(key.name.as_str()) {
                out.push((at("name"), format!("key name `{}` is used twice", key.name)));
            }
            if key.key.len() < MIN_API_KEY {
                out.push((
                    at("key"),
                    format!(
                        "{} is {} bytes: use at least {MIN_API_KEY} (`openssl rand -hex 24`)",
                        key.key,
                        key.key.len()
                    ),
                ));
            } else if !values.insert(key.key.expose()) {
                out.push((at("key"), "the same key is given to two names".into()));
            } else if key
                .key
                .expose()
                .iter()
                .any(|b| !b.is_ascii_graphic() || *b == b'/')
            {
                out.push((
                    at("key"),
                    "use printable characters other than `/` (it may be a URL path segment)".into(),
                ));
            }
            if key.rps == 0 {
                out.push((at("rps"), "must be at least 1".into()));
            }
            if key.burst == Some(0) {
                out.push((
                    at("burst"),
                    "must be at least 1, or left out for twice rps".into(),
                ));
            }
            if key.methods.as_ref().is_some_and(|m| m.is_empty()) {
                out.push((
                    at("methods"),
                    "empty: the key could call nothing; leave it out for every method".into(),
                ));
            }
            for chain in key.chains.iter().flatten() {
                if !chains.contains(chain.as_str()) {
                    out.push((at("chains"), format!("`{chain}` is not a configured chain")));
                }
            }
        }
    }
    for (i, origin) in config.cors.allowed_origins.iter().enumerate() {
        let ok = origin == "*"
            || url::Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && !origin.ends_with('/')
            });
        if !ok {
            out.push((
                vec![Key("cors"), Key("allowed_origins"), Index(i)],
                format!("`{origin}`: write an origin as browsers send it, e.g. `https://app.example.com` (no path, no trailing `/`), or `*`"),
            ));
        }
    }
    for (i, host) in config.cors.allowed_hosts.iter().enumerate() {
        let name = host.strip_prefix("*.").unwrap_or(host);
        if host != "*"
            && (name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
        {
            out.push((
                vec![Key("cors"), Key("allowed_hosts"), Index(i)],
                format!("`{host}`: a host name without port (`rpc.example.com`), `*.example.com`, or `*`"),
            ));
        }
    }
    if let Some(token) = &config.admin.token
        && token.len() < MIN_API_KEY
    {
        out.push((
            vec![Key("admin"), Key("token")],
            format!(
                "{token} is {} bytes: use at least {MIN_API_KEY} (`openssl rand -hex 32`)",
                token.len()
            ),
        ));
    }
    out
}

/// Shortest API key or admin token: guessing 16 random characters is out of reach.
const MIN_API_KEY: usize = 16;

/// Shortest `[redis] secret`: 128 bits, as many as a random 16-byte key holds.
const MIN_REDIS_SECRET: usize = 16;

/// Entries in a shared Redis are only as trustworthy as whoever can write to it: with a
/// `url`, a `secret` (shared by the instances) authenticates each of them.
fn validate_redis_secret(redis: &Redis) -> Vec<(Vec<Seg>, String)> {
    use Seg::Key;
    let at = vec![Key("redis"), Key("secret")];
    match (&redis.url, &redis.secret) {
        (Some(_), None) => vec![(
            at,
            format!(
                "required with `url`: every instance sharing this Redis needs the same secret \
                 (at least {MIN_REDIS_SECRET} bytes) so none serves an entry someone else wrote \
                 into it; add e.g. `secret = \"${{OUTLAST_REDIS_SECRET}}\"` and set \
                 OUTLAST_REDIS_SECRET (`openssl rand -hex 32`)"
            ),
        )],
        (_, Some(secret)) if secret.len() < MIN_REDIS_SECRET => vec![(
            at,
            format!(
                "{secret} is {} bytes: use at least {MIN_REDIS_SECRET} (`openssl rand -hex 32`)",
                secret.len()
            ),
        )],
        _ => Vec::new(),
    }
}

/// The name goes into response headers and the URL must be plain HTTP(S): the same
/// rules for RPC upstreams and storage gateways.
fn check_name_and_url(name: &str, url: &super::UpstreamUrl, out: &mut Vec<(&'static str, String)>) {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        out.push((
            "name",
            format!(
                "`{name}`: use letters, digits, `-`, `_` and `.` (it is sent in response headers)"
            ),
        ));
    }
    if !matches!(url.scheme(), "http" | "https") {
        out.push((
            "url",
            format!("must be http:// or https://, not {}://", url.scheme()),
        ));
    }
}

/// Checks of one upstream on its own, so they run even when its chain has other errors.
fn validate_upstream(up: &Upstream) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    check_name_and_url(&up.name, &up.url, &mut out);
    if let Some(ws) = &up.ws_url
        && !matches!(ws.scheme(), "ws" | "wss")
    {
        out.push((
            "ws_url",
            format!("must be ws:// or wss://, not {}://", ws.scheme()),
        ));
    }
    if up.tier == 0 {
        out.push(("tier", "must be at least 1 (1 is tried first)".into()));
    }
    if up.max_logs_range == Some(0) {
        out.push((
            "max_logs_range",
            "must be at least 1, or left out to learn it".into(),
        ));
    }
    if up.max_concurrency == Some(0) {
        out.push((
            "max_concurrency",
            "must be at least 1, or left out for no limit".into(),
        ));
    }
    if up.max_rps == Some(0) {
        out.push((
            "max_rps",
            "must be at least 1, or left out for no limit".into(),
        ));
    }
    out
}

/// Chain names are URL path segments beside `/status`, `/metrics` and friends.
fn bad_chain_name(name: &str) -> Option<String> {
    const RESERVED: [&str; 8] = [
        "status",
        "api",
        "metrics",
        "healthz",
        "readyz",
        "ipfs",
        "ar",
        "feed.atom",
    ];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        Some(format!(
            "`{name}`: use lowercase letters, digits, `-` and `_` (it becomes the URL path)"
        ))
    } else if name.chars().all(|c| c.is_ascii_digit()) {
        Some(format!(
            "`{name}`: a name of digits only would clash with chain ids in the URL path"
        ))
    } else if RESERVED.contains(&name) {
        Some(format!("`{name}` is reserved for Outlast's own pages"))
    } else {
        None
    }
}

impl Ctx<'_> {
    /// `[storage]`: its own keys as one section, then each `[[storage.ipfs]]` and
    /// `[[storage.arweave]]` gateway on its own, like chains and their upstreams.
    fn storage(&mut self, value: &Spanned<DeValue<'_>>) -> super::Storage {
        let Some(table) = value.get_ref().as_table() else {
            self.push(
                Some(value.span()),
                "storage",
                "must be a table: write `[storage]`".into(),
            );
            return super::Storage::default();
        };
        let lists = ["ipfs", "arweave"];
        let rest: DeTable<'_> = table
            .iter()
            .filter(|(k, _)| !lists.contains(&k.get_ref().as_ref()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let rest = Spanned::new(value.span(), DeValue::Table(rest));
        let mut storage: super::Storage = self.section(&rest, "storage").unwrap_or_default();
        for (key, v) in table.iter() {
            match key.get_ref().as_ref() {
                "ipfs" => storage.ipfs = self.storage_gateways(v, "ipfs"),
                "arweave" => storage.arweave = self.storage_gateways(v, "arweave"),
                _ => {}
            }
        }
        storage
    }

    fn storage_gateways(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        kind: &str,
    ) -> Vec<super::StorageGateway> {
        let path = format!("storage.{kind}");
        self.tables(value, &path, &path, validate_storage_gateway)
    }
}

/// `[storage]` checks that span values: timeouts, and gateway names unique across
/// IPFS and Arweave (they are sent in response headers).
fn validate_storage(storage: &super::Storage) -> Vec<(Vec<Seg>, String)> {
    use Seg::{Index, Key};
    let mut out = Vec::new();
    for (key, value) in [
        ("connect_timeout_ms", storage.connect_timeout_ms),
        ("first_block_timeout_ms", storage.first_block_timeout_ms),
        ("stall_timeout_ms", storage.stall_timeout_ms),
        ("race", storage.race as u64),
    ] {
        if value == 0 {
            out.push((vec![Key("storage"), Key(key)], "must be at least 1".into()));
        }
    }
    let mut names = HashSet::new();
    for (kind, gateways) in [("ipfs", &storage.ipfs), ("arweave", &storage.arweave)] {
        for (i, g) in gateways.iter().enumerate() {
            if !names.insert(g.name.as_str()) {
                out.push((
                    vec![Key("storage"), Key(kind), Index(i), Key("name")],
                    format!("gateway name `{}` is used twice", g.name),
                ));
            }
        }
    }
    out
}

fn validate_storage_gateway(g: &super::StorageGateway) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    check_name_and_url(&g.name, &g.url, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:9000"

[[chains]]
name = "local"
chain_id = 31337

[[chains.upstreams]]
name = "a"
url = "http://127.0.0.1:1"
operator = "self"
"#;

    #[test]
    fn good_config_loads_with_defaults() {
        let c = load_str(GOOD).expect("loads");
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(c.chains[0].upstreams[0].tier, 1);
        assert_eq!(c.chains[0].quorum, 2);
        assert_eq!(c.limits.max_batch, 100);
    }

    #[test]
    fn embedded_default_loads() {
        let c = Config::embedded_default().expect("embedded default is valid");
        let names: Vec<_> = c.chains.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ethereum", "base"]);
        for chain in &c.chains {
            let operators: HashSet<_> = chain.upstreams.iter().map(|u| &u.operator).collect();
            assert!(
                operators.len() >= 6,
                "{} has {} operators",
                chain.name,
                operators.len()
            );
        }
    }

    #[test]
    fn embedded_default_has_storage_gateways_of_distinct_operators() {
        let c = Config::embedded_default().expect("embedded default is valid");
        for (kind, gateways) in [("ipfs", &c.storage.ipfs), ("arweave", &c.storage.arweave)] {
            let operators: HashSet<_> = gateways.iter().map(|g| &g.operator).collect();
            assert!(
                operators.len() >= 3,
                "{kind} has {} operators",
                operators.len()
            );
        }
    }

    #[test]
    fn storage_problems_are_reported_with_line_and_key() {
        let text = format!(
            "{GOOD}\n[storage]\ncache_byts = 1\n\n[[storage.ipfs]]\nname = \"a\"\nurl = \"ftp://x\"\noperator = \"o\"\n\n[[storage.arweave]]\nname = \"a\"\nurl = \"https://arweave.net\"\noperator = \"o\"\n"
        );
        check_prefixes(
            &text,
            &[
                "15:1: storage.cache_byts: unknown field",
                "19:7: storage.ipfs[0].url: must be http",
                "23:8: storage.arweave[0].name: gateway name `a` is used twice",
            ],
        );
        let got = problems(&format!("{GOOD}\n[storage]\nrace = 0\n"));
        assert_eq!(got, ["15:8: storage.race: must be at least 1"]);
    }

    /// Asserts that `text` has exactly these problems, each starting with its prefix.
    #[test]
    fn times_past_ten_years_are_refused_wherever_they_are() {
        // Sections before and after GOOD's 12 lines, and an array of tables.
        let text = format!(
            "[limits]\nws_ping_secs = 18446744073709551615\nmax_call_gas = 18446744073709551615\n{GOOD}\
             \n[routing]\nmax_cooldown_ms = 0xffffffffffffffff\n\n\
             [[webhooks]]\nurl = \"http://127.0.0.1:1\"\ntimeout_ms = 315_360_000_001\n"
        );
        check_prefixes(
            &text,
            &[
                "2:16: limits.ws_ping_secs: must be at most 315360000 (ten years)",
                "18:19: routing.max_cooldown_ms: must be at most 315360000000",
                "22:14: webhooks[0].timeout_ms: must be at most 315360000000",
            ],
        );
        // Ten years is allowed, and keys not about time are not bounded so.
        let text = format!("[limits]\nfilter_timeout_secs = 315_360_000\n{GOOD}");
        assert!(load_str(&text).is_ok(), "{:?}", problems(&text));
    }

    fn check_prefixes(text: &str, prefixes: &[&str]) {
        let got = problems(text);
        assert_eq!(got.len(), prefixes.len(), "{got:#?}");
        for (problem, prefix) in got.iter().zip(prefixes) {
            assert!(problem.starts_with(prefix), "{prefix:?} in {got:#?}");
        }
    }

    fn problems(text: &str) -> Vec<String> {
        load_str(text)
            .expect_err("should fail")
            .0
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn every_problem_is_reported_with_line_and_key() {
        let text = r#"[server]
listen = "nope"

[[chains]]
name = "local"
chain_id = "31337"

[[chains.upstreams]]
name = "a"
url = "http://127.0.0.1:1"
operator = "self"
max_rsp = 5

[[chains.upstreams]]
name = "b"
url = "ftp://127.0.0.1:2"
operator = "self"
"#;
        check_prefixes(
            text,
            &[
                "2:10: server.listen: invalid socket address",
                "6:12: chains[0].chain_id: invalid type: string",
                "12:1: chains[0].upstreams[0].max_rsp: unknown field `max_rsp`",
                "16:7: chains[0].upstreams[1].url: must be http:// or https://",
            ],
        );
    }

    #[test]
    fn missing_environment_variable_is_named_at_its_line() {
        let text = GOOD.replace("http://127.0.0.1:1", "https://x/${OUTLAST_TEST_UNSET_VAR}");
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(got[0].contains("chains[0].upstreams[0].url"), "{got:#?}");
        assert!(
            got[0].contains("environment variable `OUTLAST_TEST_UNSET_VAR` is not set"),
            "{got:#?}"
        );
        assert!(got[0].starts_with("11:7:"), "{got:#?}");
    }

    #[test]
    fn syntax_errors_and_unknown_sections_are_reported() {
        assert!(problems("[server\n")[0].starts_with("1:"));
        let got = problems(&format!("{GOOD}\n[cahce]\nsize = 1\n"));
        assert!(got[0].contains("cahce: unknown section"), "{got:#?}");
        let got = problems("[server]\n");
        assert!(got[0].contains("no `[[chains]]` configured"), "{got:#?}");
    }

    #[test]
    fn status_and_webhooks_have_defaults_and_hide_webhook_secrets() {
        let text = format!(
            "{GOOD}\n[status]\nlag_blocks = 9\n\n[[webhooks]]\nurl = \"https://hooks.example/x?token=abc\"\nformat = \"slack\"\n"
        );
        let c = load_str(&text).expect("loads");
        assert_eq!(c.status.lag_blocks, 9);
        assert_eq!(c.status.resolve_after_ms, 10_000);
        assert_eq!(c.webhooks[0].format, super::super::WebhookFormat::Slack);
        assert_eq!(c.webhooks[0].max_attempts, 6);
        assert_eq!(
            c.webhooks[0].url.to_string(),
            "https://hooks.example/x?token=***"
        );
    }

    #[test]
    fn status_and_webhook_problems_are_reported_with_line_and_key() {
        let text = format!(
            "{GOOD}\n[status]\nevaluate_ms = 0\n\n[[webhooks]]\nurl = \"https://a\"\nformat = \"teams\"\n\n[[webhooks]]\nurl = \"https://b\"\nmax_attemps = 3\n"
        );
        check_prefixes(
            &text,
            &[
                "15:15: status.evaluate_ms: must be at least 1",
                "19:10: webhooks[0].format: unknown variant `teams`",
                "23:1: webhooks[1].max_attemps: unknown field",
            ],
        );
    }

    #[test]
    fn tx_rebroadcast_is_off_by_default_and_its_keys_are_checked() {
        let c = load_str(GOOD).expect("loads");
        assert!(!c.tx.rebroadcast);
        assert_eq!(c.tx.rebroadcast_secs, 12);
        assert_eq!(c.tx.store, None);
        let c = load_str(&format!(
            "{GOOD}\n[tx]\nrebroadcast = true\nrebroadcast_secs = 2\nstore = \"/var/lib/outlast/tx.json\"\n"
        ))
        .expect("loads");
        assert!(c.tx.rebroadcast);
        assert_eq!(c.tx.rebroadcast_secs, 2);
        assert_eq!(c.tx.store.as_deref(), Some("/var/lib/outlast/tx.json"));
        check_prefixes(
            &format!("{GOOD}\n[tx]\nrebroadcast_secs = 0\nstore = \"\"\n"),
            &[
                "15:20: tx.rebroadcast_secs: must be at least 1",
                "16:9: tx.store: must name a file",
            ],
        );
    }

    #[test]
    fn redis_needs_a_secret_of_16_bytes_and_never_shows_it() {
        let redis =
            |rest: &str| format!("{GOOD}\n[redis]\nurl = \"redis://127.0.0.1:6379/\"\n{rest}");
        let got = problems(&redis(""));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0].starts_with("14:1: redis.secret: required with `url`"),
            "{got:#?}"
        );
        assert!(
            got[0].contains("secret = \"${OUTLAST_REDIS_SECRET}\""),
            "{got:#?}"
        );
        let got = problems(&redis("secret = \"short-but-secre\"\n"));
        assert_eq!(
            got,
            ["16:10: redis.secret: *** is 15 bytes: use at least 16 (`openssl rand -hex 32`)"]
        );
        let c = load_str(&redis("secret = \"0123456789abcdef\"\n")).expect("loads");
        let secret = c.redis.secret.as_ref().expect("secret");
        assert_eq!(secret.expose(), b"0123456789abcdef");
        assert!(!format!("{:?}", c.redis).contains("0123456789abcdef"));
        // Without `url` there is nothing to authenticate.
        assert!(load_str(GOOD).expect("loads").redis.secret.is_none());
    }

    #[test]
    fn duplicate_names_are_reported_at_the_second_one() {
        let text = format!(
            "{GOOD}\n[[chains.upstreams]]\nname = \"a\"\nurl = \"http://127.0.0.1:2\"\noperator = \"x\"\n"
        );
        let got = problems(&text);
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            got[0]
                .starts_with("15:8: chains[0].upstreams[1].name: upstream name `a` is used twice"),
            "{got:#?}"
        );
    }
}
