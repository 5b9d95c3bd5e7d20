//! The seam for unit tests: upstreams whose replies come from a script instead of the
//! network. A call still goes through the real encoder (Outlast's ids, batches) and
//! its reply through the real decoder, so a test exercises everything but the socket.
//! Time is tokio's: under `#[tokio::test(start_paused = true)]` a scripted delay costs
//! nothing, and hedging, timeouts and cool-downs happen in a known order.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::StatusCode;
use serde_json::{Value, json};

use super::{Upstream, UpstreamError};
use crate::config;

type Reply = Result<(StatusCode, Bytes), UpstreamError>;

/// Answers the JSON body an upstream would receive.
#[derive(Clone)]
pub struct Script(Arc<dyn Fn(Bytes) -> BoxFuture<'static, Reply> + Send + Sync>);

impl Script {
    pub(super) fn reply(&self, body: Bytes) -> BoxFuture<'static, Reply> {
        (self.0)(body)
    }
}

/// What a scripted upstream does with one call.
#[derive(Debug, Clone)]
pub enum Act {
    Result(Value),
    /// A JSON-RPC error object with this code and message.
    Error(i64, String),
    /// The whole request fails with this HTTP status and no JSON-RPC body.
    Status(u16),
    /// The whole request is answered only after this long (tokio time).
    After(Duration, Box<Act>),
    /// The whole request is never answered.
    Hang,
}

impl Act {
    pub fn result(v: Value) -> Act {
        Act::Result(v)
    }

    pub fn after(ms: u64, act: Act) -> Act {
        Act::After(Duration::from_millis(ms), Box::new(act))
    }
}

/// A scripted upstream, and how many requests it received.
pub struct Fake {
    pub upstream: Arc<Upstream>,
    pub requests: Arc<AtomicUsize>,
}

impl Fake {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Upstream `name` of operator `operator` on chain `chain`, answering every call with
/// `act(method, params)`. Health starts ready, as after its first chain-id check.
pub fn upstream(
    chain: &str,
    name: &str,
    operator: &str,
    act: impl Fn(&str, &Value) -> Act + Send + Sync + 'static,
) -> Fake {
    in_tier(chain, name, operator, 1, act)
}

/// As `upstream`, in `tier` (lower tiers are asked first).
pub fn in_tier(
    chain: &str,
    name: &str,
    operator: &str,
    tier: u8,
    act: impl Fn(&str, &Value) -> Act + Send + Sync + 'static,
) -> Fake {
    let config = config::load_str(&format!(
        "[[chains]]\nname = \"{chain}\"\nchain_id = 1\n\n[[chains.upstreams]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:9\"\noperator = \"{operator}\"\n"
    ))
    .unwrap_or_else(|e| panic!("the fake's config is valid: {e}"));
    let chain_name: Arc<str> = Arc::from(chain);
    let mut up = Upstream::new(
        &chain_name,
        &config.chains[0].upstreams[0],
        &config.routing,
        super::http_client(&config.routing),
    );
    up.tier = tier;
    let requests = Arc::new(AtomicUsize::new(0));
    let act = Arc::new(act);
    let counted = requests.clone();
    up.script = Some(Script(Arc::new(move |body: Bytes| {
        counted.fetch_add(1, Ordering::SeqCst);
        let act = act.clone();
        Box::pin(async move { play(&body, &*act).await })
    })));
    up.health.record_probe(Ok(1), 1, std::time::Instant::now());
    Fake {
        upstream: Arc::new(up),
        requests,
    }
}

/// Every call of `body` acted on; whole-request acts (status, delay, hang) apply to
/// the request as a whole, the first one met deciding.
async fn play(body: &[u8], act: &(dyn Fn(&str, &Value) -> Act + Send + Sync)) -> Reply {
    let request: Value = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::Transport(format!("fake: unreadable request: {e}")))?;
    let (batch, calls) = match request {
        Value::Array(calls) => (true, calls),
        call => (false, vec![call]),
    };
    let mut replies = Vec::with_capacity(calls.len());
    let mut delay = Duration::ZERO;
    for call in &calls {
        let method = call["method"].as_str().unwrap_or_default();
        let mut act = act(method, &call["params"]);
        while let Act::After(wait, inner) = act {
            delay = delay.max(wait);
            act = *inner;
        }
        let id = call["id"].clone();
        replies.push(match act {
            Act::Result(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Act::Error(code, message) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
            }
            Act::Status(code) => {
                tokio::time::sleep(delay).await;
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                return Ok((status, Bytes::new()));
            }
            Act::Hang => std::future::pending().await,
            Act::After(..) => unreachable!("unwrapped above"),
        });
    }
    tokio::time::sleep(delay).await;
    let reply = if batch {
        Value::Array(replies)
    } else {
        replies.pop().unwrap_or(Value::Null)
    };
    Ok((StatusCode::OK, Bytes::from(reply.to_string())))
}
