//! Step 8 of a request: answers that are checked before they are given.
//!
//! - **Proofs** (`verify = "proofs"`): a state read (balance, nonce, code, storage) at
//!   block N is answered from an `eth_getProof` verified against the state root of N's
//!   header — a header whose hash a quorum of distinct operators agree on and that hashes
//!   to itself. The proof is asked for *by that hash*, from any upstream, fastest first.
//!   The answer is built from the proven values.
//! - **Quorum** (`verify = "quorum"`, configured `quorum_methods`, and the fallback when
//!   no upstream can prove): the same call to independent operators; `quorum` of them
//!   must give the same answer.
//!
//! An upstream caught lying (a proof or header that does not verify, an answer against
//! an agreed quorum) is banned. When nothing can be verified the call gets `-33091`,
//! never the unverified value. The checks themselves are in `crate::verify`.

use std::{collections::HashSet, sync::Arc, time::Instant};

use alloy_primitives::{Address, B256, Bytes as AlloyBytes, U256};
use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::{Value, value::RawValue};

use super::{forward, health::Transition, resolve::Need, select};
use crate::{
    gateway::Chain,
    rpc::Call,
    upstream::{self, Answer, Upstream},
    verify::{self, body::Body, header::CheckedHeader},
};

/// How an answer was checked, weakest first (a batch is as strong as its weakest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Quorum,
    Proof,
}

impl Level {
    pub fn header_value(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Quorum => "quorum",
            Level::Proof => "proof",
        }
    }
}

/// A checked answer: who gave it and its raw JSON result (or error object).
pub struct Checked {
    pub upstream: Arc<str>,
    pub answer: Answer,
    pub level: Level,
}

/// Why nothing could be verified: the client gets `-33091` with these words.
#[derive(Debug, Clone)]
pub struct Unverified {
    pub what: String,
    pub why: String,
}

/// A state read that a proof can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateRead {
    Balance(Address),
    Nonce(Address),
    Code(Address),
    Storage(Address, B256),
}

impl StateRead {
    pub fn parse(method: &str, params: Option<&RawValue>) -> Option<StateRead> {
        let items: Vec<&RawValue> = serde_json::from_str(params?.get()).ok()?;
        let address: Address = serde_json::from_str(items.first()?.get()).ok()?;
        Some(match method {
            "eth_getBalance" => StateRead::Balance(address),
            "eth_getTransactionCount" => StateRead::Nonce(address),
            "eth_getCode" => StateRead::Code(address),
            "eth_getStorageAt" => {
                // Slots come as any quantity ("0x0"); proofs need 32-byte keys.
                let slot: U256 = serde_json::from_str(items.get(1)?.get()).ok()?;
                StateRead::Storage(address, B256::from(slot))
            }
            _ => return None,
        })
    }

    fn address(&self) -> Address {
        match self {
            StateRead::Balance(a)
            | StateRead::Nonce(a)
            | StateRead::Code(a)
            | StateRead::Storage(a, _) => *a,
        }
    }

    fn what(&self) -> String {
        match self {
            StateRead::Balance(a) => format!("the balance of {a}"),
            StateRead::Nonce(a) => format!("the nonce of {a}"),
            StateRead::Code(a) => format!("the code of {a}"),
            StateRead::Storage(a, s) => format!("storage slot {s} of {a}"),
        }
    }
}

/// A block asked for by number (its hash must be the one a quorum agrees on) or by
/// hash (its header must hash to it: self-certifying).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockId {
    Number(u64),
    Hash(B256),
}

impl BlockId {
    pub fn of(method: &str, params: Option<&RawValue>, need: Need) -> Option<BlockId> {
        match (method, need) {
            ("eth_getBlockByNumber", Need::Block(n)) => Some(BlockId::Number(n)),
            ("eth_getBlockByHash", _) => {
                let items: Vec<&RawValue> = serde_json::from_str(params?.get()).ok()?;
                serde_json::from_str(items.first()?.get())
                    .ok()
                    .map(BlockId::Hash)
            }
            _ => None,
        }
    }
}

/// Answers a block request with a block whose header is trusted: for a number, the
/// hash a quorum of operators agree on; for a hash, that hash. With full transactions,
/// the body must match the header too (`verify::body`). A provider serving a header
/// that does not hash to itself, or a body its header does not commit to, is banned.
/// A body of transaction types Outlast cannot decode (another chain's, such as OP
/// deposits) must instead be the same from a quorum of operators (`agreed`).
pub async fn block(chain: &Chain, call: &Call<'_>, id: BlockId) -> Result<Checked, Unverified> {
    let (expected, level, need) = match id {
        BlockId::Number(n) => {
            let (h, confirmed) = trusted_header(chain, n).await.map_err(|why| Unverified {
                what: format!("block {n}"),
                why: format!("no trusted header: {why}"),
            })?;
            let level = if confirmed {
                Level::Quorum
            } else {
                Level::None
            };
            (h.hash, level, Need::Block(n))
        }
        BlockId::Hash(h) => (h, Level::Proof, Need::Fresh),
    };
    let mut problems = Vec::new();
    let mut nulls = Vec::new();
    for up in select::plan(chain, need, Instant::now())
        .order
        .into_iter()
        .take(PROOF_ATTEMPTS)
    {
        let Ok(_guard) = up.admit() else { continue };
        match up.send(&[call]).await.map(|mut a| a.pop().flatten()) {
            Ok(Some(Answer::Result(raw))) if &raw[..] == b"null" => nulls.push(up.name.clone()),
            Ok(Some(Answer::Result(raw))) => match verify::header::check(&raw) {
                Ok(h) if h.hash == expected => match verify::body::check(&raw, &h) {
                    Ok(Body::Proven | Body::HashesOnly) => {
                        return Ok(Checked {
                            upstream: up.name.clone(),
                            answer: Answer::Result(raw),
                            level,
                        });
                    }
                    Ok(Body::ForeignTypes) => return agreed(chain, call, need).await,
                    Err(e) => {
                        ban(
                            chain,
                            &up,
                            "block body",
                            &format!("served a forged body: {e}"),
                        );
                        problems.push(format!("{}: forged body", up.name));
                    }
                },
                Ok(h) => problems.push(format!(
                    "{}: served block {} (hash {})",
                    up.name, h.number, h.hash
                )),
                Err(e @ verify::VerifyError::HeaderHash { .. }) => {
                    ban(
                        chain,
                        &up,
                        "header hash",
                        &format!("served a forged header: {e}"),
                    );
                    problems.push(format!("{}: forged header", up.name));
                }
                Err(e) => problems.push(format!("{}: {e}", up.name)),
            },
            Ok(Some(error @ Answer::Error { .. })) => {
                problems.push(format!("{}: {}", up.name, describe(Some(&error))))
            }
            Ok(None) => problems.push(format!("{}: no answer", up.name)),
            Err(e) => {
                forward::note_failure(&up, &e);
                problems.push(format!("{}: {e}", up.name));
            }
        }
    }
    // Nobody has a block with that hash: that is the answer, unverified by nature.
    if let (BlockId::Hash(_), Some(who)) = (id, nulls.first())
        && problems.is_empty()
    {
        return Ok(Checked {
            upstream: who.clone(),
            answer: Answer::Result(Bytes::from_static(b"null")),
            level: Level::None,
        });
    }
    Err(Unverified {
        what: match id {
            BlockId::Number(n) => format!("block {n}"),
            BlockId::Hash(h) => format!("block {h}"),
        },
        why: format!(
            "no upstream served a block with the trusted hash {expected} ({})",
            problems.join("; ")
        ),
    })
}

/// Upstreams asked for a proof before giving up on proofs for one read.
const PROOF_ATTEMPTS: usize = 4;

/// Answers `read` at block `number` from a verified proof; falls back to a quorum when
/// no upstream can give a proof (old state on full nodes, no `eth_getProof`).
pub async fn proven(
    chain: &Chain,
    call: &Call<'_>,
    read: &StateRead,
    number: u64,
) -> Result<Checked, Unverified> {
    let unverified = |why: String| Unverified {
        what: read.what(),
        why,
    };
    let (header, confirmed) = trusted_header(chain, number)
        .await
        .map_err(|why| unverified(format!("no trusted header for block {number}: {why}")))?;
    let slots: Vec<B256> = match read {
        StateRead::Storage(_, slot) => vec![*slot],
        _ => Vec::new(),
    };
    let at = serde_json::json!({ "blockHash": header.hash });
    let proof_params = raw(&serde_json::json!([read.address(), slots, at]));
    let code_params = raw(&serde_json::json!([read.address(), at]));
    let mut calls = vec![Call {
        id: None,
        method: "eth_getProof".into(),
        params: proof_params.as_deref(),
    }];
    if matches!(read, StateRead::Code(_)) {
        calls.push(Call {
            id: None,
            method: "eth_getCode".into(),
            params: code_params.as_deref(),
        });
    }
    let refs: Vec<&Call<'_>> = calls.iter().collect();
    if header.state_root == alloy_trie::EMPTY_ROOT_HASH {
        // An empty state root proves only absence; dev chains' genesis headers carry it
        // over real state (Anvil's block 0). Nothing to prove against: ask a quorum.
        return agreed(chain, call, Need::Block(number)).await;
    }
    let mut problems = Vec::new();
    // Upstreams whose proof failed: liars once another upstream's proof verifies. Until
    // then the fault may be ours (a header field we do not know yet), so nobody is banned.
    let mut suspects: Vec<(Arc<Upstream>, String)> = Vec::new();
    for up in select::plan(chain, Need::Block(number), Instant::now())
        .order
        .into_iter()
        .take(PROOF_ATTEMPTS)
    {
        let Ok(_guard) = up.admit() else { continue };
        let answers = match up.send(&refs).await {
            Ok(a) => a,
            Err(e) => {
                forward::note_failure(&up, &e);
                problems.push(format!("{}: {e}", up.name));
                continue;
            }
        };
        match check_proof(&header, read, &answers) {
            Ok(result) => {
                for (liar, why) in &suspects {
                    ban(
                        chain,
                        liar,
                        "proof",
                        &format!("served a false proof of {}: {why}", read.what()),
                    );
                }
                return Ok(Checked {
                    upstream: up.name.clone(),
                    answer: Answer::Result(result),
                    level: if confirmed { Level::Proof } else { Level::None },
                });
            }
            Err(ProofProblem::Lie(why)) => {
                problems.push(format!("{}: false proof ({why})", up.name));
                suspects.push((up, why));
            }
            Err(ProofProblem::NoProof(why)) => {
                problems.push(format!("{}: no proof ({why})", up.name))
            }
        }
    }
    if suspects.is_empty() {
        // Nobody could prove it (e.g. state older than full nodes keep): a quorum then.
        return agreed(chain, call, Need::Block(number)).await;
    }
    Err(unverified(format!(
        "no upstream gave a valid proof: {}",
        problems.join("; ")
    )))
}

enum ProofProblem {
    /// The upstream answered, and the answer is false.
    Lie(String),
    /// The upstream could not answer (error, unsupported, pruned).
    NoProof(String),
}

fn check_proof(
    header: &CheckedHeader,
    read: &StateRead,
    answers: &[Option<Answer>],
) -> Result<Bytes, ProofProblem> {
    let result = |i: usize| match answers.get(i) {
        Some(Some(Answer::Result(raw))) => Ok(raw.clone()),
        Some(Some(Answer::Error { message, .. })) => Err(ProofProblem::NoProof(message.clone())),
        _ => Err(ProofProblem::NoProof("no answer".into())),
    };
    let raw_proof = result(0)?;
    let proof: alloy_rpc_types_eth::EIP1186AccountProofResponse =
        serde_json::from_slice(&raw_proof)
            .map_err(|e| ProofProblem::Lie(format!("unreadable proof: {e}")))?;
    let slots: Vec<B256> = match read {
        StateRead::Storage(_, s) => vec![*s],
        _ => Vec::new(),
    };
    let account = verify::proof::account(header.state_root, read.address(), &slots, &proof)
        .map_err(|e| ProofProblem::Lie(e.to_string()))?;
    let json = match read {
        StateRead::Balance(_) => format!("\"{:#x}\"", account.balance),
        StateRead::Nonce(_) => format!("\"{:#x}\"", account.nonce),
        StateRead::Storage(..) => format!(
            "\"{}\"",
            B256::from(account.slots.first().map_or(U256::ZERO, |s| s.1))
        ),
        StateRead::Code(_) => {
            let code: AlloyBytes = serde_json::from_slice(&result(1)?)
                .map_err(|e| ProofProblem::Lie(format!("unreadable code: {e}")))?;
            verify::proof::code(&account, &code).map_err(|e| ProofProblem::Lie(e.to_string()))?;
            format!("\"{code}\"")
        }
    };
    Ok(Bytes::from(json))
}

/// The header of block `number`, trusted: its hash agreed by a quorum of distinct
/// operators (the consensus head, their reported heads, or asked now) and recomputed
/// from its fields.
///
/// While fewer independent operators can be reached than the quorum needs (the others
/// are down, not disagreeing), the ones reachable must all agree, and the header comes
/// back *unconfirmed* (`false`): answers built on it are marked `none`, not `proof`, and
/// it is not remembered. That keeps answering through an outage, and says so.
async fn trusted_header(chain: &Chain, number: u64) -> Result<(CheckedHeader, bool), String> {
    if let Some(h) = chain.trusted_header(number) {
        return Ok((h, true));
    }
    let params = raw(&serde_json::json!([format!("{number:#x}"), false]));
    let call = Call {
        id: None,
        method: "eth_getBlockByNumber".into(),
        params: params.as_deref(),
    };
    // One upstream per operator, the best first; ask a quorum of them at once.
    let candidates = independent(chain, Need::Block(number));
    if candidates.is_empty() {
        return Err("no upstream can be asked".into());
    }
    let full = chain.effective_quorum();
    let quorum = full.min(candidates.len());
    let mut votes: Vec<(String, CheckedHeader)> = Vec::new();
    let mut problems = Vec::new();
    let mut next = candidates.iter();
    let mut batch: Vec<&Arc<Upstream>> = next.by_ref().take(quorum).collect();
    while !batch.is_empty() {
        let replies = ask(&batch, &call).await;
        for (up, reply) in replies {
            match reply.map(|mut a| a.pop().flatten()) {
                Ok(Some(Answer::Result(raw))) => match verify::header::check(&raw) {
                    Ok(h) if h.number == number => votes.push((up.operator.clone(), h)),
                    Ok(h) => {
                        problems.push(format!("{}: sent block {} for {number}", up.name, h.number))
                    }
                    Err(e @ verify::VerifyError::HeaderHash { .. }) => {
                        ban(
                            chain,
                            up,
                            "header hash",
                            &format!("served a forged header for block {number}: {e}"),
                        );
                        problems.push(format!("{}: forged header", up.name));
                    }
                    Err(e) => problems.push(format!("{}: {e}", up.name)),
                },
                Ok(other) => problems.push(format!("{}: {:?}", up.name, other.map(|_| "error"))),
                Err(e) => {
                    forward::note_failure(up, &e);
                    problems.push(format!("{}: {e}", up.name));
                }
            }
        }
        if let Some(h) = decide(&votes, quorum) {
            let confirmed = quorum >= full;
            if confirmed {
                chain.remember_header(h);
            }
            return Ok((h, confirmed));
        }
        batch = next.by_ref().take(1).collect();
    }
    Err(format!(
        "no {quorum} operators agree on its hash ({})",
        problems.join("; ")
    ))
}

fn decide(votes: &[(String, CheckedHeader)], quorum: usize) -> Option<CheckedHeader> {
    votes.iter().find_map(|(_, h)| {
        let ops: HashSet<&str> = votes
            .iter()
            .filter(|(_, v)| v.hash == h.hash)
            .map(|(op, _)| op.as_str())
            .collect();
        (ops.len() >= quorum).then_some(*h)
    })
}

/// Answers `call` with what a quorum of distinct operators agree on.
pub async fn agreed(chain: &Chain, call: &Call<'_>, need: Need) -> Result<Checked, Unverified> {
    let quorum = chain.effective_quorum();
    let what = format!("the answer to {}", call.method);
    let candidates = independent(chain, need);
    let mut answers: Vec<(Arc<Upstream>, Value, Answer)> = Vec::new();
    let mut problems = Vec::new();
    let mut next = candidates.iter();
    let mut batch: Vec<&Arc<Upstream>> = next.by_ref().take(quorum).collect();
    while !batch.is_empty() {
        let replies = ask(&batch, call).await;
        for (up, reply) in replies {
            match reply.map(|mut a| a.pop().flatten()) {
                Ok(Some(answer)) if answer.blame() != Some(crate::rpc::Blame::Upstream) => {
                    if let Some(value) = comparable(&answer) {
                        answers.push((up.clone(), value, answer));
                    }
                }
                Ok(other) => problems.push(format!(
                    "{}: could not answer ({})",
                    up.name,
                    describe(other.as_ref())
                )),
                Err(e) => {
                    forward::note_failure(up, &e);
                    problems.push(format!("{}: {e}", up.name));
                }
            }
        }
        let votes: Vec<(&str, Value)> = answers
            .iter()
            .map(|(u, v, _)| (u.operator.as_str(), v.clone()))
            .collect();
        if let Some((value, dissenters)) = verify::quorum::agree(&votes, quorum) {
            for (up, v, _) in &answers {
                if dissenters.contains(&up.operator.as_str()) && *v != value {
                    ban(
                        chain,
                        up,
                        "quorum",
                        &format!(
                            "disagreed with {quorum} independent operators on {}",
                            call.method
                        ),
                    );
                }
            }
            let (up, _, answer) = answers
                .into_iter()
                .find(|(_, v, _)| *v == value)
                .ok_or_else(|| Unverified {
                    what: what.clone(),
                    why: "internal: agreed value vanished".into(),
                })?;
            return Ok(Checked {
                upstream: up.name.clone(),
                answer,
                level: Level::Quorum,
            });
        }
        batch = next.by_ref().take(1).collect();
    }
    let why = if answers.len() >= 2 {
        let said: Vec<String> = answers
            .iter()
            .map(|(u, v, _)| format!("{} said {v}", u.name))
            .collect();
        format!("independent operators disagree ({})", said.join(", "))
    } else {
        format!(
            "{} of {quorum} independent operators needed could answer ({})",
            answers.len(),
            problems.join("; ")
        )
    };
    Err(Unverified { what, why })
}

/// An answer as a value to compare: results and caller-blamed errors alike.
fn comparable(answer: &Answer) -> Option<Value> {
    match answer {
        Answer::Result(raw) => serde_json::from_slice(raw).ok(),
        Answer::Error { code, message, .. } => {
            Some(serde_json::json!({ "error": { "code": code, "message": message } }))
        }
    }
}

fn describe(answer: Option<&Answer>) -> String {
    match answer {
        Some(Answer::Error { code, message, .. }) => format!("error {code}: {message}"),
        Some(Answer::Result(_)) => "result".into(),
        None => "no answer".into(),
    }
}

/// One upstream per operator, best first: the voters for a quorum.
fn independent(chain: &Chain, need: Need) -> Vec<Arc<Upstream>> {
    let mut seen = HashSet::new();
    select::plan(chain, need, Instant::now())
        .order
        .into_iter()
        .filter(|u| seen.insert(u.operator.clone()))
        .collect()
}

/// Sends `call` to each of `batch` at once; each reply with its upstream.
async fn ask<'u>(
    batch: &[&'u Arc<Upstream>],
    call: &Call<'_>,
) -> Vec<(
    &'u Arc<Upstream>,
    Result<Vec<Option<Answer>>, upstream::UpstreamError>,
)> {
    join_all(
        batch
            .iter()
            .map(|up| async move { (*up, up.send(&[call]).await) }),
    )
    .await
}

/// Takes a liar out of rotation for the chain's ban period, says so loudly, and hands
/// the evidence to the incident engine.
fn ban(chain: &Chain, up: &Upstream, check: &str, why: &str) {
    let transition = up.health.record_lie(why, chain.ban_for, Instant::now());
    if transition == Transition::None {
        return;
    }
    upstream::log_transition(up, &transition);
    let evidence = crate::incidents::Evidence {
        summary: why.to_owned(),
        check: Some(check.to_owned()),
        ..Default::default()
    };
    chain
        .incidents
        .upstream_lied(&chain.name, &up.name, evidence, chain.ban_for);
}

fn raw(value: &Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value).ok()
}
