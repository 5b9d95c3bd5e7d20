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
//! An upstream caught lying is banned: a header or body that does not hash to itself at
//! once; a false proof or an answer against an agreed quorum once it says it again when
//! asked alone (`race`: a node busy with its next block can be wrong once). When
//! nothing can be verified the call gets `-33091`, never the unverified value. The
//! checks themselves are in `crate::verify`.

use std::{collections::HashSet, sync::Arc, time::Instant};

use alloy_primitives::{Address, B256, Bytes as AlloyBytes, U256};
use bytes::Bytes;
use serde_json::{Value, value::RawValue};

use super::{
    ask::{Reply, Shape, ask},
    race::{Claim, NotProven, Unproven, again, race},
    resolve::Need,
    select,
};
use crate::{
    route::Chain,
    rpc::{Attempt, Call},
    upstream::{self, Answer, Upstream},
    verify::{self, body::Body, header::CheckedHeader},
};

pub use crate::verify::Level;

/// A checked answer: who gave it and its raw JSON result (or error object).
pub struct Checked {
    pub upstream: Arc<str>,
    pub answer: Answer,
    pub level: Level,
}

/// Why a call got no verified answer.
#[derive(Debug, Clone)]
pub enum Unverified {
    /// Answers came back and could not be verified (operators disagree, proofs are
    /// false): the client gets `-33091` with these words.
    Disputed { what: String, why: String },
    /// No upstream could be asked, or none answered: `-32002`, with what was tried.
    Unreachable(Vec<Attempt>),
}

impl Unverified {
    fn disputed(what: impl Into<String>, why: impl Into<String>) -> Self {
        Unverified::Disputed {
            what: what.into(),
            why: why.into(),
        }
    }

    /// The same failure, about `what` (a trusted header's failure, said of a read).
    pub(super) fn about(self, what: &str, prefix: &str) -> Self {
        match self {
            Unverified::Disputed { why, .. } => {
                Unverified::disputed(what, format!("{prefix}{why}"))
            }
            unreachable => unreachable,
        }
    }
}

/// "one operator", "two operators", "5 operators": messages read well for any count.
fn operators(n: usize) -> String {
    match n {
        1 => "one operator".into(),
        2 => "two operators".into(),
        3 => "three operators".into(),
        n => format!("{n} operators"),
    }
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
    let what = match id {
        BlockId::Number(n) => format!("block {n}"),
        BlockId::Hash(h) => format!("block {h}"),
    };
    let (expected, level, need) = match id {
        BlockId::Number(n) => {
            let (h, confirmed) = trusted_header(chain, n)
                .await
                .map_err(|u| u.about(&what, "no trusted header: "))?;
            let level = if confirmed {
                Level::Quorum
            } else {
                Level::None
            };
            (h.hash, level, Need::Block(n))
        }
        BlockId::Hash(h) => (h, Level::Proof, Need::Fresh),
    };
    enum Found {
        Block(Checked),
        /// Transaction types Outlast cannot decode: a quorum must agree instead.
        Foreign,
    }
    let mut problems = Vec::new();
    let mut nulls = Vec::new();
    let mut answered = false;
    let calls = [call];
    let plan = select::plan(chain, need, Instant::now());
    let shape = Shape {
        width: 1,
        max: PROOF_ATTEMPTS,
        wait_for_late: true,
    };
    let found = ask(chain, plan.order, shape, &calls, |up, reply| {
        let answer = match one(reply) {
            Ok(Some(a)) => a,
            Ok(None) => {
                answered = true;
                problems.push(format!("{}: no answer", up.name));
                return None;
            }
            Err(_) => return None,
        };
        answered = true;
        let raw = match answer {
            Answer::Result(raw) if &raw[..] == b"null" => {
                nulls.push(up.name.clone());
                return None;
            }
            Answer::Result(raw) => raw,
            error @ Answer::Error { .. } => {
                problems.push(format!("{}: {}", up.name, describe(Some(&error))));
                return None;
            }
        };
        match verify::header::check(&raw) {
            Ok(h) if h.hash == expected => match verify::body::check(&raw, &h) {
                Ok(Body::Proven | Body::HashesOnly) => Some(Found::Block(Checked {
                    upstream: up.name.clone(),
                    answer: Answer::Result(raw),
                    level,
                })),
                Ok(Body::ForeignTypes) => Some(Found::Foreign),
                Err(e) => {
                    ban(
                        chain,
                        up,
                        "block body",
                        &format!("served a forged body: {e}"),
                    );
                    problems.push(format!("{}: forged body", up.name));
                    None
                }
            },
            Ok(h) => {
                problems.push(format!(
                    "{}: served block {} (hash {})",
                    up.name, h.number, h.hash
                ));
                None
            }
            Err(e @ verify::VerifyError::HeaderHash { .. }) => {
                ban(
                    chain,
                    up,
                    "header hash",
                    &format!("served a forged header: {e}"),
                );
                problems.push(format!("{}: forged header", up.name));
                None
            }
            Err(e) => {
                problems.push(format!("{}: {e}", up.name));
                None
            }
        }
    })
    .await;
    let exhausted = match found {
        Ok(Found::Block(checked)) => return Ok(checked),
        Ok(Found::Foreign) => return agreed(chain, call, need).await,
        Err(exhausted) => exhausted,
    };
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
    if !answered {
        return Err(Unverified::Unreachable(with_skipped(
            plan.skipped,
            exhausted.tried,
        )));
    }
    problems.extend(nulls.iter().map(|n| format!("{n}: null")));
    Err(Unverified::disputed(
        what,
        format!(
            "no upstream served a block with the trusted hash {expected} ({})",
            problems.join("; ")
        ),
    ))
}

/// A single call's answer from a reply (`Ok(None)`: left out of the reply).
fn one(reply: Reply) -> Result<Option<Answer>, upstream::UpstreamError> {
    reply.map(|mut a| a.pop().flatten())
}

/// What was tried for a failure nobody answered: the upstreams not even asked first.
fn with_skipped(mut skipped: Vec<Attempt>, tried: Vec<Attempt>) -> Vec<Attempt> {
    skipped.extend(tried);
    skipped
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
    let (header, confirmed) = trusted_header(chain, number).await.map_err(|u| {
        u.about(
            &read.what(),
            &format!("no trusted header for block {number}: "),
        )
    })?;
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
    let claim = Claim {
        check: "proof",
        about: &format!("proof of {}", read.what()),
    };
    let owned = read.clone();
    let proven = race(
        chain,
        number,
        &refs,
        PROOF_ATTEMPTS,
        claim,
        move |answers| check_proof(&header, &owned, answers),
    )
    .await;
    match proven {
        Ok((upstream, result)) => Ok(Checked {
            upstream: upstream.name.clone(),
            answer: Answer::Result(result),
            level: if confirmed { Level::Proof } else { Level::None },
        }),
        // Nobody could prove it (e.g. state older than full nodes keep, or nobody
        // answered at all): a quorum then, which says -32002 if nobody answers it either.
        Err(Unproven::Missing) => agreed(chain, call, Need::Block(number)).await,
        Err(Unproven::False { problems }) => Err(Unverified::disputed(
            read.what(),
            format!("no upstream gave a valid proof: {}", problems.join("; ")),
        )),
    }
}

fn check_proof(
    header: &CheckedHeader,
    read: &StateRead,
    answers: &[Option<Answer>],
) -> Result<Bytes, NotProven> {
    let result = |i: usize| match answers.get(i) {
        Some(Some(Answer::Result(raw))) => Ok(raw.clone()),
        Some(Some(Answer::Error { message, .. })) => Err(NotProven::Missing(message.clone())),
        _ => Err(NotProven::Missing("no answer".into())),
    };
    let raw_proof = result(0)?;
    let proof: alloy_rpc_types_eth::EIP1186AccountProofResponse =
        serde_json::from_slice(&raw_proof)
            .map_err(|e| NotProven::False(format!("unreadable proof: {e}")))?;
    let slots: Vec<B256> = match read {
        StateRead::Storage(_, s) => vec![*s],
        _ => Vec::new(),
    };
    let account = verify::proof::account(header.state_root, read.address(), &slots, &proof)
        .map_err(|e| NotProven::False(e.to_string()))?;
    let json = match read {
        StateRead::Balance(_) => format!("\"{:#x}\"", account.balance),
        StateRead::Nonce(_) => format!("\"{:#x}\"", account.nonce),
        StateRead::Storage(..) => format!(
            "\"{}\"",
            B256::from(account.slots.first().map_or(U256::ZERO, |s| s.1))
        ),
        StateRead::Code(_) => {
            let code: AlloyBytes = serde_json::from_slice(&result(1)?)
                .map_err(|e| NotProven::False(format!("unreadable code: {e}")))?;
            verify::proof::code(&account, &code).map_err(|e| NotProven::False(e.to_string()))?;
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
pub(super) async fn trusted_header(
    chain: &Chain,
    number: u64,
) -> Result<(CheckedHeader, bool), Unverified> {
    if let Some(h) = chain.trusted_header(number) {
        return Ok((h, true));
    }
    let params = raw(&serde_json::json!([format!("{number:#x}"), false]));
    let call = Call {
        id: None,
        method: "eth_getBlockByNumber".into(),
        params: params.as_deref(),
    };
    // One upstream per operator, the best first; a quorum of them asked at once.
    let (voters, skipped) = header_voters(chain, number);
    let full = chain.effective_quorum();
    let mut votes: Vec<(String, CheckedHeader)> = Vec::new();
    let mut problems = Vec::new();
    let mut answered = false;
    let calls = [&call];
    let shape = Shape {
        width: full,
        max: voters.len(),
        wait_for_late: false,
    };
    let agreed = ask(chain, voters, shape, &calls, |up, reply| {
        let answer = one(reply).ok()?;
        match answer {
            // It does not have that block yet: absent, not dissenting.
            Some(Answer::Result(raw)) if &raw[..] == b"null" => return None,
            _ => answered = true,
        }
        match answer {
            Some(Answer::Result(raw)) => match verify::header::check(&raw) {
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
            other => problems.push(format!("{}: {}", up.name, describe(other.as_ref()))),
        }
        decide(&votes, full)
    })
    .await;
    let exhausted = match agreed {
        Ok(h) => {
            chain.remember_header(h);
            return Ok((h, true));
        }
        Err(exhausted) => exhausted,
    };
    // Fewer operators answered than the quorum needs (the others are down or silent:
    // absent, not dissenting): if every one that answered agrees, the header serves,
    // unconfirmed, and answers built on it are marked `none`.
    if let Some((_, first)) = votes.first()
        && votes.iter().all(|(_, h)| h.hash == first.hash)
        && problems.iter().all(|p| !p.ends_with("forged header"))
    {
        return Ok((*first, false));
    }
    if !answered {
        return Err(Unverified::Unreachable(with_skipped(
            skipped,
            exhausted.tried,
        )));
    }
    let mut said: Vec<String> = votes
        .iter()
        .map(|(op, h)| format!("{op}: {}", h.hash))
        .collect();
    said.extend(problems);
    Err(Unverified::disputed(
        format!("block {number}"),
        format!(
            "no {} agree on its hash ({})",
            operators(full),
            said.join("; ")
        ),
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

/// Answers `call` with what a quorum of distinct operators agree on. With fewer
/// operators answering than the quorum (the rest down or silent), an answer all of
/// them agree on is given, marked `none`.
pub async fn agreed(chain: &Chain, call: &Call<'_>, need: Need) -> Result<Checked, Unverified> {
    let quorum = chain.effective_quorum();
    let what = format!("the answer to {}", call.method);
    let (voters, skipped) = independent(chain, need);
    let mut answers: Vec<(Arc<Upstream>, Value, Answer)> = Vec::new();
    let mut problems = Vec::new();
    let calls = [call];
    let shape = Shape {
        width: quorum,
        max: voters.len(),
        wait_for_late: false,
    };
    let decided = ask(chain, voters, shape, &calls, |up, reply| {
        match one(reply) {
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
            Err(_) => return None,
        }
        // Borrowed: every reply asks again, and cloning every answer so far each time
        // was quadratic in large answers (blocks, logs).
        let votes: Vec<(&str, &Value)> = answers
            .iter()
            .map(|(u, v, _)| (u.operator.as_str(), v))
            .collect();
        verify::quorum::agree(&votes, quorum).map(|(value, dissenters)| {
            (
                value.clone(),
                dissenters
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<String>>(),
            )
        })
    })
    .await;
    match decided {
        Ok((value, dissenters)) => {
            let about = format!(
                "answer to {}, against {} that agree",
                call.method,
                operators(quorum)
            );
            let claim = Claim {
                check: "quorum",
                about: &about,
            };
            // A dissenter is asked again before it is banned (`race::again`): a node
            // busy with its next block can answer from another state for a moment.
            let agreed = value.clone();
            let same_again = Arc::new(move |answers: &[Option<Answer>]| match answers.first() {
                Some(Some(answer)) => match comparable(answer) {
                    Some(v) if v == agreed => Ok(()),
                    Some(v) => Err(NotProven::False(format!("said {v}"))),
                    None => Err(NotProven::Missing("unreadable".into())),
                },
                _ => Err(NotProven::Missing("no answer".into())),
            });
            for (up, v, _) in &answers {
                if dissenters.contains(&up.operator) && *v != value {
                    again(chain, up, &calls, &claim, &same_again, &format!("said {v}")).await;
                }
            }
            let (up, _, answer) = answers
                .into_iter()
                .find(|(_, v, _)| *v == value)
                .ok_or_else(|| Unverified::disputed(&what, "internal: agreed value vanished"))?;
            Ok(Checked {
                upstream: up.name.clone(),
                answer,
                level: Level::Quorum,
            })
        }
        Err(exhausted) => {
            if let Some((up, first, _)) = answers.first()
                && answers.iter().all(|(_, v, _)| v == first)
            {
                let upstream = up.name.clone();
                let (_, _, answer) = answers.swap_remove(0);
                return Ok(Checked {
                    upstream,
                    answer,
                    level: Level::None,
                });
            }
            if answers.is_empty() && problems.is_empty() {
                return Err(Unverified::Unreachable(with_skipped(
                    skipped,
                    exhausted.tried,
                )));
            }
            let why = if answers.len() >= 2 {
                let said: Vec<String> = answers
                    .iter()
                    .map(|(u, v, _)| format!("{} said {v}", u.name))
                    .collect();
                format!("independent operators disagree ({})", said.join(", "))
            } else {
                problems.extend(
                    exhausted
                        .tried
                        .iter()
                        .map(|a| format!("{}: {}", a.upstream, a.error)),
                );
                format!(
                    "fewer than {} could answer ({})",
                    operators(quorum),
                    problems.join("; ")
                )
            };
            Err(Unverified::disputed(what, why))
        }
    }
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

/// One upstream per operator, best first: the voters for a quorum; and the upstreams
/// not in the running, with why.
fn independent(chain: &Chain, need: Need) -> (Vec<Arc<Upstream>>, Vec<Attempt>) {
    let mut seen = HashSet::new();
    let plan = select::plan(chain, need, Instant::now());
    let voters = plan
        .order
        .into_iter()
        .filter(|u| seen.insert(u.operator.clone()))
        .collect();
    (voters, plan.skipped)
}

/// The voters on block `number`'s header: `independent`'s, then one upstream of each
/// operator left out only because its last polled head is below the block. Heads are
/// polled, so a node may have the block before Outlast has seen it; when a liar and an
/// honest node disagree, asking it breaks the tie (one without the block answers null,
/// counted absent). Without this, a call right after a block was mined found only a
/// liar and one honest operator caught up, and got no answer (tests/chaos.rs).
fn header_voters(chain: &Chain, number: u64) -> (Vec<Arc<Upstream>>, Vec<Attempt>) {
    let (mut voters, skipped) = independent(chain, Need::Block(number));
    let mut seen: HashSet<String> = voters.iter().map(|u| u.operator.clone()).collect();
    let everyone = select::plan(chain, Need::Any, Instant::now()).order;
    voters.extend(
        everyone
            .into_iter()
            .filter(|u| seen.insert(u.operator.clone())),
    );
    (voters, skipped)
}

/// Takes a liar out of rotation for the chain's ban period, with the evidence in its
/// health state (incidents and the shared bans read it there), and says so loudly.
pub(super) fn ban(chain: &Chain, up: &Upstream, check: &str, why: &str) {
    let evidence = upstream::health::Evidence {
        summary: why.to_owned(),
        check: Some(check.to_owned()),
        ..Default::default()
    };
    let transition = up
        .health
        .record_lie(evidence, chain.ban_for, Instant::now());
    upstream::log_transition(up, &transition);
}

fn raw(value: &Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value).ok()
}

#[cfg(test)]
mod seam_tests {
    use serde_json::json;

    use super::*;
    use crate::{
        route::testing::{call, chain, params},
        upstream::{
            fake::{self, Act},
            health::Status,
        },
    };

    #[tokio::test(start_paused = true)]
    async fn a_quorum_answers_and_the_dissenter_is_banned_with_evidence() {
        // The dissenter is in the preferred tier, so it is among the first two asked:
        // the vote needs the third, which sides with the honest one.
        let liar = fake::in_tier("test", "liar", "op-c", 1, |_, _| Act::result(json!("0x6")));
        let a = fake::in_tier("test", "a", "op-a", 2, |_, _| Act::result(json!("0x5")));
        let b = fake::in_tier("test", "b", "op-b", 2, |_, _| Act::result(json!("0x5")));
        let chain = chain("quorum", 2, &[&liar, &a, &b]);
        let p = params(r#"["0x0000000000000000000000000000000000000001", "0x1"]"#);
        let checked = agreed(&chain, &call("eth_getBalance", &p), Need::Block(1))
            .await
            .unwrap_or_else(|e| panic!("no quorum: {e:?}"));
        assert_eq!(checked.level, Level::Quorum);
        assert!(matches!(&checked.answer, Answer::Result(r) if &r[..] == b"\"0x5\""));
        // Asked again before it is banned, and dissenting again.
        assert_eq!(liar.requests(), 2);
        let Status::Banned { evidence, .. } = liar.upstream.health.status() else {
            panic!(
                "the dissenter is not banned: {:?}",
                liar.upstream.health.status()
            )
        };
        assert_eq!(evidence.check.as_deref(), Some("quorum"));
        assert!(a.upstream.health.is_ready() && b.upstream.health.is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_dissenter_that_agrees_when_asked_again_is_not_banned() {
        // Its first answer came from another state (a node busy with its next block);
        // asked again it answers what the others agree on.
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let moment = fake::in_tier("test", "moment", "op-c", 1, move |_, _| {
            match asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Act::result(json!("0x6")),
                _ => Act::result(json!("0x5")),
            }
        });
        let a = fake::in_tier("test", "a", "op-a", 2, |_, _| Act::result(json!("0x5")));
        let b = fake::in_tier("test", "b", "op-b", 2, |_, _| Act::result(json!("0x5")));
        let chain = chain("quorum", 2, &[&moment, &a, &b]);
        let p = params(r#"["0x0000000000000000000000000000000000000001", "0x1"]"#);
        let checked = agreed(&chain, &call("eth_getBalance", &p), Need::Block(1))
            .await
            .unwrap_or_else(|e| panic!("no quorum: {e:?}"));
        assert!(matches!(&checked.answer, Answer::Result(r) if &r[..] == b"\"0x5\""));
        assert_eq!(moment.requests(), 2);
        assert!(
            !matches!(moment.upstream.health.status(), Status::Banned { .. }),
            "{:?}",
            moment.upstream.health.status()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn operators_that_disagree_with_no_majority_get_no_answer() {
        let a = fake::upstream("test", "a", "op-a", |_, _| Act::result(json!("0x5")));
        let b = fake::upstream("test", "b", "op-b", |_, _| Act::result(json!("0x6")));
        let chain = chain("quorum", 2, &[&a, &b]);
        let p = params(r#"["0x0000000000000000000000000000000000000001", "0x1"]"#);
        match agreed(&chain, &call("eth_getBalance", &p), Need::Block(1)).await {
            Err(Unverified::Disputed { why, .. }) => assert!(why.contains("disagree"), "{why}"),
            other => panic!("{:?}", other.map(|c| c.upstream)),
        }
    }
}
