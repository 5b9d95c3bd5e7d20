//! Who may call, how often, and from which pages: `[auth]` keys and per-address limits,
//! budgets shared through Redis, `[cors]`, and the `[admin]` token.
//!
//! - `keys`    — API keys by digest, compared in constant time; never logged
//! - `glob`    — a key's method allow-list (`eth_*`)
//! - `gcra`    — the rate-limit rule (pure) and this instance's budgets
//! - `shared`  — the same rule as one Redis script, for budgets every instance shares
//! - `browser` — CORS origins and `Host` names (DNS rebinding), pure decisions
//!
//! [`Access`] is what the server asks, before dispatch: `identify` (which key, or which
//! address without one), `Caller::may_use` (a chain), `charge` (a request's calls).
//! Method allow-lists are applied in `dispatch`'s classify step. Nothing here sees a
//! provider URL; a key's value never leaves `keys`.

pub mod browser;
pub mod gcra;
pub mod glob;
pub mod keys;
pub mod shared;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::http::{HeaderMap, StatusCode, header};

use crate::{
    config::{self, RedisFallback},
    rpc::RpcError,
};
use browser::Browser;
use gcra::{Rate, Table};
use glob::Methods;
use keys::Key;

/// The network a client address stands for when it is counted (its rate budget, its
/// connections, its filters): an IPv4 address (also when mapped into IPv6), or an IPv6
/// address's /64, which one host usually holds whole and could otherwise walk through
/// for a fresh budget at every address.
pub fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from_bits(
                a.to_bits() & !u128::from(u64::MAX),
            )),
        },
    }
}

/// Why a request is not let in.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "this gateway needs an API key: POST /{{chain}}/{{key}}, or send it in an `x-api-key` or `Authorization: Bearer` header"
    )]
    KeyRequired,
    #[error("unknown API key: check it, or ask this gateway's operator for one")]
    UnknownKey,
    #[error("key `{key}` may not use chain `{chain}`; it may use: {allowed}")]
    Chain {
        key: Arc<str>,
        chain: String,
        allowed: String,
    },
    #[error("{who} may make {rps} calls per second ({burst} at once); retry in {} s", secs(*.wait))]
    Limited {
        who: String,
        rps: u64,
        burst: u64,
        wait: Duration,
    },
    #[error(
        "a batch of {calls} calls is more than {who} may make at once ({burst}): send smaller batches"
    )]
    Batch { who: String, calls: u64, burst: u64 },
    #[error("rate limits cannot be checked now (Redis is unavailable); retry shortly")]
    Unchecked,
}

/// Whole seconds to wait, at least one (`Retry-After` has no fractions).
fn secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::KeyRequired | Refused::UnknownKey => StatusCode::UNAUTHORIZED,
            Refused::Chain { .. } => StatusCode::FORBIDDEN,
            Refused::Limited { .. } | Refused::Batch { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refused::Unchecked => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds for `Retry-After`, when waiting helps.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refused::Limited { wait, .. } => Some(secs(*wait).max(1)),
            Refused::Unchecked => Some(1),
            _ => None,
        }
    }

    /// The JSON-RPC error (its code comes from `rpc::errors`).
    pub fn rpc_error(&self) -> RpcError {
        match self {
            Refused::KeyRequired | Refused::UnknownKey | Refused::Chain { .. } => {
                RpcError::Unauthorized(self.to_string())
            }
            Refused::Limited { .. } | Refused::Batch { .. } | Refused::Unchecked => {
                RpcError::LimitExceeded(self.to_string())
            }
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            Refused::KeyRequired => "key_required",
            Refused::UnknownKey => "unknown_key",
            Refused::Chain { .. } => "chain",
            Refused::Limited { .. } | Refused::Batch { .. } => "limited",
            Refused::Unchecked => "unchecked",
        }
    }
}

/// Who is calling, once identified.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No `[auth]`: anyone.
    Open,
    Key(Arc<Key>),
    /// No key, let in by `anonymous_rps`, limited per address.
    Anonymous(IpAddr),
}

impl Caller {
    /// The name in metrics and logs: the key's name, `anonymous`, or `open`.
    pub fn label(&self) -> &str {
        match self {
            Caller::Open => "open",
            Caller::Key(k) => &k.name,
            Caller::Anonymous(_) => "anonymous",
        }
    }

    pub fn may_use(&self, chain: &str) -> Result<(), Refused> {
        let Caller::Key(key) = self else {
            return Ok(());
        };
        if key.may_use(chain) {
            return Ok(());
        }
        let refused = Refused::Chain {
            key: key.name.clone(),
            chain: chain.to_owned(),
            allowed: key.chains.as_deref().unwrap_or_default().join(", "),
        };
        crate::metrics::auth(&key.name, refused.outcome(), 1);
        Err(refused)
    }

    /// The methods it may call (`None`: all the gateway allows), and the key's name.
    pub fn methods(&self) -> Option<(&Methods, &str)> {
        match self {
            Caller::Key(k) => k.methods.as_ref().map(|m| (m, &*k.name)),
            _ => None,
        }
    }
}

struct Gate {
    keys: Vec<Arc<Key>>,
    /// `None`: a key is required.
    anonymous: Option<Rate>,
    local: Table,
    shared: Option<shared::Shared>,
    fallback: RedisFallback,
}

/// The gateway's access rules, built once from `[auth]`, `[cors]`, `[admin]`, `[redis]`.
pub struct Access {
    gate: Option<Gate>,
    pub browser: Browser,
    /// SHA-256 of `[admin] token`; `None`: the admin API is off.
    admin: Option<[u8; 32]>,
    pub protect_metrics: bool,
    pub protect_api: bool,
}

impl Access {
    pub fn new(config: &config::Config) -> Access {
        let gate = config.auth.as_ref().map(|auth| Gate {
            keys: auth.keys.iter().map(|k| Arc::new(Key::new(k))).collect(),
            anonymous: (auth.anonymous_rps > 0)
                .then(|| Rate::new(auth.anonymous_rps, auth.anonymous_burst)),
            local: Table::default(),
            shared: shared::Shared::new(&config.redis),
            fallback: auth.redis_fallback,
        });
        let admin = config
            .admin
            .token
            .as_ref()
            .map(|t| keys::digest(t.expose()));
        Access {
            gate,
            browser: Browser::new(&config.cors, config.server.listen),
            admin,
            protect_metrics: admin.is_some() && config.admin.protect_metrics,
            protect_api: admin.is_some() && config.admin.protect_api,
        }
    }

    /// The caller of a request: by the key in its path (`path_key`), `x-api-key` or
    /// `Authorization: Bearer`, else by its address when `anonymous_rps` allows.
    pub fn identify(
        &self,
        path_key: Option<&str>,
        headers: &HeaderMap,
        client: IpAddr,
    ) -> Result<Caller, Refused> {
        let Some(gate) = &self.gate else {
            return Ok(Caller::Open);
        };
        let presented = path_key
            .map(str::as_bytes)
            .or_else(|| headers.get("x-api-key").map(|v| v.as_bytes()))
            .or_else(|| bearer(headers));
        let refused = match presented {
            Some(p) => match keys::find(&gate.keys, p) {
                Some(key) => return Ok(Caller::Key(key.clone())),
                None => Refused::UnknownKey,
            },
            None if gate.anonymous.is_some() => return Ok(Caller::Anonymous(client)),
            None => Refused::KeyRequired,
        };
        crate::metrics::auth("none", refused.outcome(), 1);
        Err(refused)
    }

    /// Charges `calls` calls to the caller's budget: its key's, or its address's.
    pub async fn charge(&self, caller: &Caller, calls: u64) -> Result<(), Refused> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        let (budget, rate, who) = match caller {
            Caller::Open => return Ok(()),
            Caller::Key(k) => (
                format!("key:{}", k.name),
                k.rate,
                format!("key `{}`", k.name),
            ),
            Caller::Anonymous(ip) => match gate.anonymous {
                Some(rate) => (
                    format!("ip:{}", network(*ip)),
                    rate,
                    "a caller without a key".to_owned(),
                ),
                None => return Err(Refused::KeyRequired),
            },
        };
        let calls = calls.max(1);
        let label = caller.label();
        if calls > rate.burst {
            let refused = Refused::Batch {
                who,
                calls,
                burst: rate.burst,
            };
            crate::metrics::auth(label, refused.outcome(), calls);
            return Err(refused);
        }
        let limited = |wait| Refused::Limited {
            who: who.clone(),
            rps: 1_000_000 / rate.interval_us,
            burst: rate.burst,
            wait,
        };
        let shared = match &gate.shared {
            // Boxed: Redis's future is large, and copied into this one (which every
            // request awaits) even where no Redis is configured.
            Some(s) => Box::pin(s.charge(&budget, rate, calls)).await.map_err(|e| {
                tracing::debug!(error = %e, "shared rate limit not checked");
            }),
            None => Err(()),
        };
        let result = match shared {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => Err(limited(wait)),
            Err(()) if gate.shared.is_some() && gate.fallback == RedisFallback::Deny => {
                Err(Refused::Unchecked)
            }
            Err(()) => {
                if gate.shared.is_some() {
                    crate::metrics::rate_limit_fallback();
                }
                gate.local.charge(&budget, rate, calls).map_err(limited)
            }
        };
        match &result {
            Ok(()) => crate::metrics::auth(label, "allowed", calls),
            Err(r) => crate::metrics::auth(label, r.outcome(), calls),
        }
        result
    }

    /// For `/readyz`: where budgets are kept now (`None` without `[auth]`).
    pub fn limits_state(&self) -> Option<&'static str> {
        let gate = self.gate.as_ref()?;
        Some(match &gate.shared {
            None => "local",
            Some(s) if s.is_up() => "shared (Redis)",
            Some(_) if gate.fallback == RedisFallback::Deny => {
                "Redis unavailable: calls refused until it answers ([auth] redis_fallback = \"deny\")"
            }
            Some(_) => "Redis unavailable: each instance enforces the limits on its own",
        })
    }

    /// The configured keys' names and budgets, for the admin API (never the keys).
    pub fn key_summaries(&self) -> Vec<serde_json::Value> {
        let Some(gate) = &self.gate else {
            return Vec::new();
        };
        gate.keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "name": &*k.name,
                    "rps": 1_000_000 / k.rate.interval_us,
                    "burst": k.rate.burst,
                    "chains": k.chains,
                })
            })
            .collect()
    }

    /// Whether the admin API is on (`[admin] token`).
    pub fn admin_enabled(&self) -> bool {
        self.admin.is_some()
    }

    /// Whether the request carries the admin token (`Authorization: Bearer`).
    pub fn is_admin(&self, headers: &HeaderMap) -> bool {
        match (&self.admin, bearer(headers)) {
            (Some(expected), Some(presented)) => keys::matches(expected, presented),
            _ => false,
        }
    }
}

/// The token of `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_whatever_the_scheme_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "bearer  abc ".parse().expect("header"),
        );
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        assert_eq!(network(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            network(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(network(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(network(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(network(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[tokio::test]
    async fn addresses_of_one_ipv6_64_share_one_budget() {
        let config = config::load_str(
            "[auth]\nanonymous_rps = 1\nanonymous_burst = 2\n\n[[chains]]\nname = \"c\"\nchain_id = 1\n\n\
             [[chains.upstreams]]\nname = \"u\"\nurl = \"http://127.0.0.1:9\"\noperator = \"o\"\n",
        )
        .expect("config");
        let access = Access::new(&config);
        let caller = |s: &str| Caller::Anonymous(s.parse().expect("an address"));
        // Two calls (the burst) from two addresses of one /64, then a third is refused.
        for a in ["2001:db8::1", "2001:db8::ffff:2"] {
            assert!(access.charge(&caller(a), 1).await.is_ok(), "{a}");
        }
        assert!(access.charge(&caller("2001:db8::3"), 1).await.is_err());
        assert!(
            access.charge(&caller("2001:db8:0:1::1"), 1).await.is_ok(),
            "another /64"
        );
    }
}
