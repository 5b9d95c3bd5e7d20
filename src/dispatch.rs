//! One JSON-RPC request's way through Outlast, the design's steps in order:
//! parse → classify → resolve (pin tags to the consensus head) → answer locally what
//! the head tracker knows → cache (answer from it, or join an identical call in flight;
//! raw transactions are broadcast by `tx`) → select + send (`route::forward`), or for
//! calls to check, prove or agree (`route::verified`) → keep in cache, read-your-writes
//! → answer (`rpc::respond`, which restores each client id).
//! Limits on the body and the chain lookup happen before, in `server::http`.

use std::{sync::Arc, time::Duration};

use crate::{
    cache::{
        coalesce::{Follower, Joined, Leader},
        policy,
    },
    config::Verify,
    gateway::{Chain, Gateway},
    route::{
        self, Outcome, logs,
        resolve::{Need, Resolved, resolve},
        verified::{self, BlockId, Level, StateRead},
    },
    rpc::{self, Call, ReplyBody, Request, RpcError, parse::Rejected},
    upstream::Answer,
};

/// What the HTTP layer sends back.
pub struct Reply {
    /// `None`: only notifications, nothing to say.
    pub body: Option<Vec<u8>>,
    /// Who answered, for `x-outlast-upstream` (in call order, without repeats).
    pub upstreams: Vec<Arc<str>>,
    /// The weakest check among the answers, for `x-outlast-verified`.
    pub verified: Level,
    /// Set when a cached answer was served stale (`[cache] serve_stale`): the oldest
    /// one's age, for `x-outlast-stale-seconds`.
    pub stale_seconds: Option<u64>,
}

pub async fn handle(gw: &Gateway, chain: &Chain, body: &[u8]) -> Reply {
    // 1. parse
    let request = match rpc::parse::parse(body, gw.parse_limits()) {
        Ok(r) => r,
        Err(e) => {
            return Reply {
                body: Some(rpc::respond::whole_request_error(&e)),
                upstreams: Vec::new(),
                verified: Level::None,
                stale_seconds: None,
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

    // 4. resolve: pin block tags to the consensus head; learn which block each call needs.
    let heads = chain.head.get();
    let calls: Vec<&Call<'_>> = entries.iter().filter_map(|e| e.as_ref().ok()).collect();
    let resolved: Vec<Resolved> = calls
        .iter()
        .map(|c| resolve(&c.method, c.params, &heads))
        .collect();
    let pinned: Vec<Call<'_>> = calls
        .iter()
        .zip(&resolved)
        .map(|(c, r)| Call {
            id: c.id,
            method: c.method.clone(),
            params: r.params.as_deref().or(c.params),
        })
        .collect();

    // 5. answer locally what the gateway itself knows best; log ranges known to be too
    //    big for the upstreams are split instead of sent whole.
    let mut outcomes: Vec<Option<Outcome>> =
        pinned.iter().map(|c| local_answer(chain, c)).collect();

    // 5b. cache: what is cached for good, or for this very head, is answered here; raw
    //     transactions are broadcast to distinct operators instead of forwarded.
    //     Calls verified in step 8 are not cached (FIXME: keep their level with them).
    let head_hash = heads.consensus.as_ref().map(|c| c.hash.as_str());
    let live = chain.upstreams.iter().any(|u| u.health.is_ready());
    let keys: Vec<Option<String>> = pinned
        .iter()
        .zip(&resolved)
        .map(|(c, r)| {
            (gw.cache.enabled() && matches!(check_for(chain, c, r.need), Check::None))
                .then(|| policy::key(chain.chain_id, &c.method, c.params))
                .flatten()
        })
        .collect();
    for (i, call) in pinned.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        if call.method == "eth_sendRawTransaction" {
            outcomes[i] =
                Some(crate::tx::broadcast(chain, &gw.ledger, gw.broadcast_to, call).await);
        } else if let Some(key) = &keys[i]
            && let Some(body) = gw.cache.fresh(key, head_hash, live).await
        {
            outcomes[i] = Some(Outcome::Answered {
                upstream: cache_label(),
                answer: Answer::Result(body),
            });
        }
    }
    let checks: Vec<Check> = pinned
        .iter()
        .zip(&resolved)
        .zip(&outcomes)
        .map(|((c, r), local)| {
            if local.is_some() {
                Check::None
            } else {
                check_for(chain, c, r.need)
            }
        })
        .collect();
    let limit = logs::known_limit(chain);
    let mut split: Vec<Option<(u64, u64, u64)>> = pinned
        .iter()
        .map(|c| {
            log_range(c)
                .filter(|&(f, t)| limit.is_some_and(|l| t - f + 1 > l))
                .zip(limit)
                .map(|((f, t), l)| (f, t, l))
        })
        .collect();

    // 5c. coalesce: a call identical to one in flight waits for that one's answer
    //     (held by a placeholder meanwhile, so the steps below pass it by).
    let mut leaders: Vec<(usize, Leader)> = Vec::new();
    let mut followers: Vec<(usize, Follower)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if let Some(key) = key
            && outcomes[i].is_none()
            && split[i].is_none()
            && matches!(checks[i], Check::None)
        {
            match gw
                .cache
                .flights
                .join(policy::at_head(key, head_hash.unwrap_or("")))
            {
                Joined::Leader(l) => leaders.push((i, l)),
                Joined::Follower(f) => {
                    followers.push((i, f));
                    outcomes[i] = Some(Outcome::Unavailable(Vec::new()));
                }
            }
        }
    }

    // 6-7. select and send the rest, with failover.
    let (to_send, need): (Vec<&Call<'_>>, Need) = pinned
        .iter()
        .zip(&resolved)
        .zip(outcomes.iter().zip(&split).zip(&checks))
        .filter(|(_, ((local, split), check))| {
            local.is_none() && split.is_none() && matches!(check, Check::None)
        })
        .fold((Vec::new(), Need::Any), |(mut v, need), ((c, r), _)| {
            v.push(c);
            (v, need.combine(r.need))
        });
    if !to_send.is_empty() {
        let mut sent = route::forward(chain, &to_send, need).await.into_iter();
        for ((slot, _), _) in outcomes
            .iter_mut()
            .zip(&split)
            .zip(&checks)
            .filter(|((o, s), c)| o.is_none() && s.is_none() && matches!(c, Check::None))
        {
            *slot = sent.next();
        }
    }

    // 7b. a provider refused a log range as too big: remember its limit, then split.
    for (i, call) in pinned.iter().enumerate() {
        if let (Some((from, to)), Some(Outcome::Answered { upstream, answer })) =
            (log_range(call), &outcomes[i])
            && let Some(size) = logs::refused_range(answer, to - from + 1)
        {
            chain.learn_logs_range(upstream, size);
            split[i] = Some((from, to, size));
        }
    }
    for (i, call) in pinned.iter().enumerate() {
        if let Some((from, to, size)) = split[i] {
            outcomes[i] = Some(logs::split(chain, call, from, to, size).await);
        }
    }

    // 8. verified calls: proven from Merkle proofs, or agreed by a quorum.
    let checked = futures_util::future::join_all(checks.iter().zip(&pinned).map(
        |(check, call)| async move {
            match check {
                Check::None => None,
                Check::Proof(read, n) => Some(verified::proven(chain, call, read, *n).await),
                Check::Quorum(need) => Some(verified::agreed(chain, call, *need).await),
                Check::Block(id) => Some(verified::block(chain, call, *id).await),
            }
        },
    ))
    .await;
    let mut levels = vec![Level::None; pinned.len()];
    for (i, result) in checked.into_iter().enumerate() {
        let mode = match checks[i] {
            Check::Proof(..) | Check::Block(BlockId::Hash(_)) => "proof",
            _ => "quorum",
        };
        if let Some(r) = &result {
            let outcome = match r {
                Ok(c) if c.level == Level::None => "unconfirmed",
                Ok(_) => "verified",
                Err(_) => "unverifiable",
            };
            crate::metrics::verification(&chain.name, &pinned[i].method, mode, outcome);
        }
        outcomes[i] = match result {
            None => continue,
            Some(Ok(c)) => {
                levels[i] = c.level;
                Some(Outcome::Answered {
                    upstream: c.upstream,
                    answer: c.answer,
                })
            }
            Some(Err(u)) => Some(Outcome::Unverified {
                what: u.what,
                why: u.why,
            }),
        };
    }
    let verified = levels.iter().copied().min().unwrap_or(Level::None);

    // 8b. cache what may be kept (answers, never errors, nothing verified), hand the
    //     answers to the calls that joined ours, then take theirs.
    for (i, key) in keys.iter().enumerate() {
        if let (
            Some(key),
            Some(Outcome::Answered {
                upstream,
                answer: Answer::Result(body),
            }),
        ) = (key, &outcomes[i])
            && *upstream != cache_label()
            && matches!(checks[i], Check::None)
            && let Some(lifetime) =
                policy::lifetime(&pinned[i].method, resolved[i].need, &heads, body)
        {
            gw.cache.store(key, head_hash, lifetime, body.clone());
        }
    }
    for (i, leader) in leaders {
        leader.land(match &outcomes[i] {
            Some(Outcome::Answered { upstream, answer }) => {
                Some((upstream.clone(), answer.clone()))
            }
            _ => None,
        });
    }
    for (i, follower) in followers {
        outcomes[i] = Some(match follower.wait(FOLLOW_AT_MOST).await {
            Some((upstream, answer)) => Outcome::Answered { upstream, answer },
            None => route::forward(chain, &[&pinned[i]], resolved[i].need)
                .await
                .into_iter()
                .next()
                .unwrap_or(Outcome::Unavailable(Vec::new())),
        });
    }
    //     No upstream could answer: a head-tied answer may be served stale, if configured.
    let mut stale_seconds: Option<u64> = None;
    for (i, key) in keys.iter().enumerate() {
        if let (Some(key), Some(Outcome::Unavailable(_))) = (key, &outcomes[i])
            && let Some((body, age)) = gw.cache.stale(key, head_hash).await
        {
            stale_seconds = stale_seconds.max(Some(age.as_secs()));
            outcomes[i] = Some(Outcome::Answered {
                upstream: cache_label(),
                answer: Answer::Result(body),
            });
        }
    }

    // 8c. read-your-writes: the pending nonce and transactions Outlast broadcast itself.
    for (call, outcome) in pinned.iter().zip(outcomes.iter_mut()) {
        if let Some(outcome) = outcome {
            gw.ledger.read_your_writes(chain.chain_id, call, outcome);
        }
    }
    let mut outcomes = outcomes.into_iter().flatten();

    // 9. answer, in request order; notifications get nothing.
    let mut reply = ReplyBody::new(batch, 256);
    let mut upstreams: Vec<Arc<str>> = Vec::new();
    for entry in &entries {
        match entry {
            Err(rejected) => {
                crate::metrics::rejected(&chain.name, &rejected.error);
                if let Some(id) = rejected.id {
                    reply.error(id, &rejected.error);
                }
            }
            Ok(call) => {
                let Some(outcome) = outcomes.next() else {
                    continue;
                };
                crate::metrics::answered(&chain.name, &call.method, &outcome);
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
                    Outcome::Unverified { what, why } => {
                        reply.error(id, &RpcError::Unverifiable { what, why })
                    }
                }
            }
        }
    }
    Reply {
        body: reply.finish(),
        upstreams,
        verified,
        stale_seconds,
    }
}

/// How one call is checked (step 8), decided by the chain's `verify` mode.
enum Check {
    None,
    /// A state read at a known block: answered from a verified Merkle proof.
    Proof(StateRead, u64),
    /// Answered only when a quorum of independent operators agree.
    Quorum(Need),
    /// A block whose header must hash to the agreed (or asked-for) hash.
    Block(BlockId),
}

fn check_for(chain: &Chain, call: &Call<'_>, need: Need) -> Check {
    if chain.verify == Verify::Off && chain.quorum_methods.is_empty() {
        return Check::None;
    }
    let read = StateRead::parse(&call.method, call.params);
    let listed = chain
        .quorum_methods
        .iter()
        .any(|m| m == call.method.as_ref());
    if chain.verify != Verify::Off
        && let Some(id) = BlockId::of(&call.method, call.params, need)
    {
        return Check::Block(id);
    }
    match (chain.verify, read, need) {
        (Verify::Off, ..) => Check::None,
        (Verify::Proofs, Some(read), Need::Block(n)) => Check::Proof(read, n),
        (_, Some(_), _) => Check::Quorum(need),
        (_, None, _) if listed => Check::Quorum(need),
        _ => Check::None,
    }
}

/// The block range of an `eth_getLogs` call with numeric (or pinned) bounds.
fn log_range(call: &Call<'_>) -> Option<(u64, u64)> {
    (call.method == "eth_getLogs")
        .then(|| logs::range(call.params))
        .flatten()
}

/// `eth_blockNumber` is the consensus head: answered here, so it never goes backwards
/// whichever upstream would have been asked. Only while some upstream is serving, so
/// an outage is not hidden behind a frozen number.
fn local_answer(chain: &Chain, call: &Call<'_>) -> Option<Outcome> {
    if call.method != "eth_blockNumber" || !chain.upstreams.iter().any(|u| u.health.is_ready()) {
        return None;
    }
    let number = chain.head.latest()?;
    Some(Outcome::Answered {
        upstream: consensus_label(),
        answer: Answer::Result(format!("\"{number:#x}\"").into()),
    })
}

/// The `x-outlast-upstream` of answers taken from the cache.
fn cache_label() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("cache"));
    LABEL.clone()
}

/// A call joined to an identical one in flight waits this long at most, then asks itself.
const FOLLOW_AT_MOST: Duration = Duration::from_secs(30);

/// The `x-outlast-upstream` of answers taken from the consensus head.
fn consensus_label() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from("consensus"));
    LABEL.clone()
}
