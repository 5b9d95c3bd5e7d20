//! One JSON-RPC request's way through Outlast, the design's steps in order:
//! parse → classify → (resolve, cache: later) → select + send (`route::forward`) →
//! (verify: later) → answer (`rpc::respond`, which restores each client id).
//! Limits on the body and the chain lookup happen before, in `server::http`.

use std::sync::Arc;

use crate::{
    gateway::{Chain, Gateway},
    route::{self, Outcome},
    rpc::{self, Call, ReplyBody, Request, RpcError, parse::Rejected},
    upstream::Answer,
};

/// What the HTTP layer sends back.
pub struct Reply {
    /// `None`: only notifications, nothing to say.
    pub body: Option<Vec<u8>>,
    /// Who answered, for `x-outlast-upstream` (in call order, without repeats).
    pub upstreams: Vec<Arc<str>>,
}

pub async fn handle(gw: &Gateway, chain: &Chain, body: &[u8]) -> Reply {
    // 1. parse
    let request = match rpc::parse::parse(body, gw.parse_limits()) {
        Ok(r) => r,
        Err(e) => {
            return Reply {
                body: Some(rpc::respond::whole_request_error(&e)),
                upstreams: Vec::new(),
            };
        }
    };
    let (batch, entries) = match request {
        Request::Single(e) => (false, vec![e]),
        Request::Batch(es) => (true, es),
    };

    // 2. classify: refuse what is not allowed here; everything else goes upstream.
    let entries: Vec<Result<Call<'_>, Rejected<'_>>> = entries
        .into_iter()
        .map(|entry| match entry {
            Ok(call) if gw.policy.is_denied(&call.method) => Err(Rejected {
                id: call.id.or(Some(rpc::parse::null())),
                error: RpcError::Denied {
                    method: call.method.into_owned(),
                },
            }),
            other => other,
        })
        .collect();

    // 6-7. select and send, with failover.
    let calls: Vec<&Call<'_>> = entries.iter().filter_map(|e| e.as_ref().ok()).collect();
    let mut outcomes = if calls.is_empty() {
        Vec::new()
    } else {
        route::forward(chain, &calls).await
    }
    .into_iter();

    // 9. answer, in request order; notifications get nothing.
    let mut reply = ReplyBody::new(batch, 256);
    let mut upstreams: Vec<Arc<str>> = Vec::new();
    for entry in &entries {
        match entry {
            Err(rejected) => {
                if let Some(id) = rejected.id {
                    reply.error(id, &rejected.error);
                }
            }
            Ok(call) => {
                let Some(outcome) = outcomes.next() else {
                    continue;
                };
                if let Outcome::Answered { upstream, .. } = &outcome
                    && !upstreams.contains(upstream)
                {
                    upstreams.push(upstream.clone());
                }
                let Some(id) = call.id else { continue };
                match outcome {
                    Outcome::Answered {
                        answer: Answer::Result(raw),
                        ..
                    } => reply.result(id, &raw),
                    Outcome::Answered {
                        answer: Answer::Error { raw, .. },
                        ..
                    } => reply.raw_error(id, &raw),
                    Outcome::Unavailable(tried) => reply.error(
                        id,
                        &RpcError::Unavailable {
                            chain: chain.name.to_string(),
                            tried,
                        },
                    ),
                }
            }
        }
    }
    Reply {
        body: reply.finish(),
        upstreams,
    }
}
