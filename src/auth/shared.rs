//! Budgets shared by every instance through Redis (`[redis] url`): the GCRA step of
//! `gcra` as one Lua script, so checking and advancing a budget is atomic however many
//! instances charge it at once, timed by Redis' own clock (instances' clocks may
//! differ). A budget is one key, `key_prefix` + `rl:` + its name, expiring once it is
//! back at full burst.
//!
//! Every call is bounded by `[redis] timeout_ms`. Redis not answering is reported as
//! `Unavailable` (the caller then applies `[auth] redis_fallback`); each change between
//! answering and not is logged once and shown in `/readyz` and `/metrics`.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::aio::ConnectionManager;

use super::gcra::Rate;
use crate::config;

/// KEYS[1]: the budget. ARGV: interval (µs), burst, cost. Returns {1, 0} when allowed,
/// {0, µs to wait} when not. Numbers are written with `%.0f`: Lua's default `%.14g`
/// would round a TAT in microseconds since 1970 (16 digits).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local next = tat + cost * interval
local limit = now + burst * interval
if next > limit then
  return {0, next - limit}
end
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil((next - now) / 1000) + 1)
return {1, 0}
";

#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis could not be set up")]
    Setup,
}

pub struct Shared {
    client: redis::Client,
    manager: OnceLock<Option<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
    up: AtomicBool,
    /// The URL as shown (it may hold a password).
    shown: String,
}

impl Shared {
    pub fn new(cfg: &config::Redis) -> Option<Shared> {
        let url = cfg.url.as_ref()?;
        let client = redis::Client::open(url.expose().as_str())
            .inspect_err(|e| tracing::error!(redis = %url, error = %e, "cannot use [redis] url for shared rate limits; limits are local"))
            .ok()?;
        crate::metrics::rate_limits_shared(true);
        Some(Shared {
            client,
            manager: OnceLock::new(),
            prefix: cfg.key_prefix.clone(),
            timeout: Duration::from_millis(cfg.timeout_ms),
            up: AtomicBool::new(true),
            shown: url.to_string(),
        })
    }

    fn manager(&self) -> Option<ConnectionManager> {
        self.manager
            .get_or_init(|| {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .inspect_err(|e| tracing::error!(redis = %self.shown, error = %e, "cannot set up Redis for shared rate limits"))
                    .ok()
            })
            .clone()
    }

    /// Whether the last call answered.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Charges `cost` calls to `budget`: `Ok(None)` allowed, `Ok(Some(wait))` refused.
    pub async fn charge(
        &self,
        budget: &str,
        rate: Rate,
        cost: u64,
    ) -> Result<Option<Duration>, SharedError> {
        let result = self.eval(budget, rate, cost).await;
        let ok = result.is_ok();
        if self.up.swap(ok, Ordering::Relaxed) != ok {
            crate::metrics::rate_limits_shared(ok);
            match &result {
                Ok(_) => {
                    tracing::info!(redis = %self.shown, "Redis answers again: rate limits are shared by the instances again")
                }
                Err(e) => {
                    tracing::warn!(redis = %self.shown, error = %e, "Redis is unavailable: rate limits fall back to [auth] redis_fallback until it answers")
                }
            }
        }
        result
    }

    async fn eval(
        &self,
        budget: &str,
        rate: Rate,
        cost: u64,
    ) -> Result<Option<Duration>, SharedError> {
        let mut conn = self.manager().ok_or(SharedError::Setup)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(1)
            .arg(format!("{}rl:{budget}", self.prefix))
            .arg(rate.interval_us)
            .arg(rate.burst)
            .arg(cost);
        let (allowed, wait): (i64, i64) =
            tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
                .await
                .map_err(|_| SharedError::Timeout(self.timeout))??;
        Ok((allowed == 0).then(|| Duration::from_micros(u64::try_from(wait).unwrap_or(0))))
    }
}
