//! `eth_sendRawTransaction` to several upstreams of distinct operators at once
//! (`[tx] broadcast_to`). The first acceptance answers the client, with the hash
//! Outlast computed from the raw transaction (an upstream answering another hash is
//! not believed); the other sends go on in the background so the transaction reaches every
//! operator's mempool. A duplicate is an acceptance in every wording providers use, and
//! so is "nonce too low" when that upstream has the very transaction. When nobody
//! accepts, the client gets the upstreams' own reason — never silence; `-32002` only
//! when no upstream answered at all. With `[tx] rebroadcast`, an accepted transaction is
//! kept (`tx::rebroadcast`) before the client is answered; its re-sends use `send`.

use std::{collections::HashSet, sync::Arc, time::Instant};

use alloy_consensus::{TxEnvelope, transaction::SignerRecoverable};
use alloy_eips::eip2718::Decodable2718;
use alloy_primitives::{B256, keccak256};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::{Ledger, Pending};
use crate::{
    route::Chain,
    route::{Outcome, forward::note_failure, resolve::Need, select},
    rpc::{Attempt, Blame, Call},
    upstream::{Answer, Upstream},
};

/// How an upstream took the transaction.
enum Verdict {
    Accepted,
    /// Its own reason, as it gave it: the caller's to read.
    Rejected(Answer),
    /// No usable answer (down, rate limited, internal error, a wrong hash).
    Failed(String),
}

/// Wordings of "I already have this transaction".
const DUPLICATE: [&str; 4] = [
    "already known",
    "already imported",
    "alreadyknown",
    "known transaction",
];

/// `rebroadcast` is the `[tx] rebroadcast` store (shared by every chain), `None` when off.
pub async fn broadcast(
    chain: &Chain,
    ledger: &Ledger,
    to: usize,
    rebroadcast: Option<&Pending>,
    call: &Call<'_>,
) -> Outcome {
    let raw_hex = call
        .params
        .and_then(|p| serde_json::from_str::<Vec<String>>(p.get()).ok())
        .and_then(|v| v.into_iter().next());
    let bytes = raw_hex
        .as_deref()
        .and_then(|h| alloy_primitives::hex::decode(h).ok());
    let envelope = bytes.as_deref().and_then(decoded);
    let hash = match (&envelope, bytes.as_deref()) {
        (Some(tx), _) => Some(*tx.tx_hash()),
        // Not a transaction Outlast can read: the hash of its bytes, what nodes answer
        // for every type but a blob transaction sent with its blobs.
        (None, bytes) => bytes.map(keccak256),
    };
    let params: Arc<RawValue> = match call.params {
        Some(p) => Arc::from(p.to_owned()),
        None => Arc::from(RawValue::from_string("[]".into()).unwrap_or_else(|_| {
            unreachable!("[] is JSON") // an empty array is valid JSON
        })),
    };
    match send(chain, to, params, hash).await {
        Sent::Accepted(upstream) => {
            let tx = envelope.and_then(|e| e.try_into_recovered().ok());
            if let Some(tx) = &tx {
                ledger.record(chain.chain_id, tx);
            }
            // Kept for re-sending before the client hears of it: a crash right after
            // the answer must not lose the transaction.
            if let Some(pending) = rebroadcast {
                pending
                    .accepted(chain, bytes.as_deref(), hash, tx.as_ref())
                    .await;
            }
            tracing::info!(chain = %chain.name, %upstream, hash = ?hash, "transaction accepted");
            let answer = match hash {
                Some(h) => Answer::Result(format!("\"{h:#x}\"").into()),
                None => Answer::Result("null".into()),
            };
            Outcome::Answered { upstream, answer }
        }
        Sent::Rejected(upstream, answer) => Outcome::Answered { upstream, answer },
        Sent::Unavailable(tried) => Outcome::Unavailable(tried),
    }
}

/// What sending one raw transaction to upstreams of distinct operators came to.
pub enum Sent {
    /// This upstream took it first; the other sends go on in the background.
    Accepted(Arc<str>),
    /// Nobody took it; the first refusal, with that upstream's own reason.
    Rejected(Arc<str>, Answer),
    /// Nobody answered at all: every attempt and skip, with why.
    Unavailable(Vec<Attempt>),
}

/// Sends `eth_sendRawTransaction(params)` to `to` upstreams of distinct operators at
/// once, and to the next upstream in `route::select`'s order while nobody has said yes
/// or no. Returns at the first acceptance. `hash`, when known, is the only hash an
/// upstream may answer. Shared by the client's send (`broadcast`) and the re-sends of
/// `[tx] rebroadcast`, so both reach the same operators the same way.
pub async fn send(chain: &Chain, to: usize, params: Arc<RawValue>, hash: Option<B256>) -> Sent {
    let plan = select::plan(chain, Need::Any, Instant::now());
    let mut tried = plan.skipped;
    let (first, rest): (Vec<_>, Vec<_>) = {
        let mut operators = HashSet::new();
        let mut first = Vec::new();
        let mut rest = Vec::new();
        for up in plan.order {
            if first.len() < to.max(1) && operators.insert(up.operator.clone()) {
                first.push(up);
            } else {
                rest.push(up);
            }
        }
        (first, rest)
    };
    let mut rest = rest.into_iter();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut running = 0usize;
    for up in first {
        spawn_send(up, params.clone(), hash, tx.clone());
        running += 1;
    }
    let mut rejection: Option<(Arc<str>, Answer)> = None;
    while running > 0 {
        let Some((up, verdict)) = rx.recv().await else {
            break;
        };
        running -= 1;
        match verdict {
            Verdict::Accepted => return Sent::Accepted(up.name.clone()),
            Verdict::Rejected(answer) => {
                if let Answer::Error { message, .. } = &answer {
                    tried.push(Attempt {
                        upstream: up.name.to_string(),
                        error: format!("rejected: {message}"),
                    });
                }
                rejection.get_or_insert((up.name.clone(), answer));
            }
            Verdict::Failed(why) => {
                tried.push(Attempt {
                    upstream: up.name.to_string(),
                    error: why,
                });
                // Nobody has said yes or no yet: the next upstream gets its turn.
                if running == 0
                    && rejection.is_none()
                    && let Some(next) = rest.next()
                {
                    spawn_send(next, params.clone(), hash, tx.clone());
                    running += 1;
                }
            }
        }
    }
    match rejection {
        Some((upstream, answer)) => Sent::Rejected(upstream, answer),
        None => Sent::Unavailable(tried),
    }
}

/// The transaction in `raw` with its signer, when alloy can decode and recover it.
pub fn recovered(raw: &[u8]) -> Option<alloy_consensus::transaction::Recovered<TxEnvelope>> {
    decoded(raw)?.try_into_recovered().ok()
}

/// The transaction in `raw` (EIP-2718; a blob transaction with or without its blobs).
/// Its `tx_hash` is what nodes answer and index it by: for a blob transaction sent with
/// its blobs, the hash without them, not the hash of the bytes sent.
fn decoded(raw: &[u8]) -> Option<TxEnvelope> {
    TxEnvelope::decode_2718(&mut &raw[..]).ok()
}

/// Sends on its own task: the send goes on after the client has its answer.
fn spawn_send(
    up: Arc<Upstream>,
    params: Arc<RawValue>,
    hash: Option<B256>,
    report: mpsc::UnboundedSender<(Arc<Upstream>, Verdict)>,
) {
    tokio::spawn(crate::telemetry::carry(async move {
        let verdict = send_one(&up, &params, hash).await;
        match &verdict {
            Verdict::Accepted => {}
            Verdict::Rejected(Answer::Error { message, .. }) => {
                tracing::debug!(upstream = %up.name, %message, "transaction rejected")
            }
            Verdict::Rejected(_) => {}
            Verdict::Failed(why) => {
                tracing::debug!(upstream = %up.name, %why, "transaction not sent")
            }
        }
        let _ = report.send((up, verdict));
    }));
}

async fn send_one(up: &Arc<Upstream>, params: &RawValue, hash: Option<B256>) -> Verdict {
    let _guard = match up.admit() {
        Ok(g) => g,
        Err(limit) => return Verdict::Failed(format!("not tried: {limit}")),
    };
    let call = Call {
        id: None,
        method: "eth_sendRawTransaction".into(),
        params: Some(params),
    };
    let started = Instant::now();
    let answer = match up.send(&[&call]).await {
        Ok(mut answers) => answers.pop().flatten(),
        Err(e) => {
            note_failure(up, &e);
            return Verdict::Failed(e.to_string());
        }
    };
    let _ = up.health.record_success(started.elapsed());
    let Some(answer) = answer else {
        return Verdict::Failed("left the call out of its reply".into());
    };
    match &answer {
        Answer::Result(raw) => {
            let said = serde_json::from_slice::<B256>(raw).ok();
            match (hash, said) {
                (Some(h), Some(s)) if h != s => Verdict::Failed(format!(
                    "answered hash {s:#x}, but the transaction's hash is {h:#x}"
                )),
                _ => Verdict::Accepted,
            }
        }
        Answer::Error { message, .. } => {
            let lower = message.to_ascii_lowercase();
            if DUPLICATE.iter().any(|d| lower.contains(d)) {
                return Verdict::Accepted;
            }
            if lower.contains("nonce too low")
                && let Some(h) = hash
                && has_transaction(up, h).await
            {
                return Verdict::Accepted;
            }
            match answer.blame() {
                Some(Blame::Upstream) => Verdict::Failed(format!("error: {message}")),
                _ => Verdict::Rejected(answer),
            }
        }
    }
}

/// Whether `up` knows transaction `hash` (mined or pending).
async fn has_transaction(up: &Upstream, hash: B256) -> bool {
    let Ok(params) = RawValue::from_string(format!("[\"{hash:#x}\"]")) else {
        return false;
    };
    let call = Call {
        id: None,
        method: "eth_getTransactionByHash".into(),
        params: Some(&params),
    };
    matches!(
        up.send(&[&call]).await.ok().and_then(|mut a| a.pop().flatten()),
        Some(Answer::Result(raw)) if &raw[..] != b"null"
    )
}

#[cfg(test)]
mod seam_tests {
    use serde_json::json;

    use super::*;
    use crate::{
        route::testing::chain,
        upstream::fake::{self, Act},
    };

    const HASH: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";

    fn raw_params() -> Arc<RawValue> {
        Arc::from(RawValue::from_string(r#"["0x02f8"]"#.into()).expect("JSON"))
    }

    #[tokio::test(start_paused = true)]
    async fn every_operator_hears_of_it_and_an_acceptance_beats_a_faster_rejection() {
        let slow_yes = fake::upstream("test", "yes", "op-a", |_, _| {
            Act::after(200, Act::result(json!(HASH)))
        });
        let quick_no = fake::upstream("test", "no", "op-b", |_, _| {
            Act::Error(-32000, "insufficient funds for gas".into())
        });
        let broken = fake::upstream("test", "broken", "op-c", |_, _| Act::Status(502));
        let chain = chain("off", 1, &[&slow_yes, &quick_no, &broken]);
        let hash: B256 = HASH.parse().expect("hash");
        let sent = send(&chain, 3, raw_params(), Some(hash)).await;
        assert!(matches!(&sent, Sent::Accepted(up) if &**up == "yes"));
        for f in [&slow_yes, &quick_no, &broken] {
            assert_eq!(
                f.requests(),
                1,
                "{} was sent the transaction once",
                f.upstream.name
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_made_up_hash_is_not_an_acceptance() {
        let liar = fake::upstream("test", "liar", "op-a", |_, _| {
            Act::result(json!(
                "0x2222222222222222222222222222222222222222222222222222222222222222"
            ))
        });
        let chain = chain("off", 1, &[&liar]);
        let hash: B256 = HASH.parse().expect("hash");
        let Sent::Unavailable(tried) = send(&chain, 2, raw_params(), Some(hash)).await else {
            panic!("a wrong hash was taken as an acceptance")
        };
        assert!(
            tried.iter().any(|t| t.error.contains("answered hash")),
            "{tried:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejection_by_everyone_comes_back_with_their_reason() {
        let no = |_: &str, _: &serde_json::Value| Act::Error(-32000, "nonce too low".into());
        let a = fake::upstream("test", "a", "op-a", no);
        let b = fake::upstream("test", "b", "op-b", no);
        let chain = chain("off", 1, &[&a, &b]);
        // Neither knows the transaction (eth_getTransactionByHash is answered with the
        // same error): a real rejection, not a duplicate.
        let sent = send(&chain, 2, raw_params(), Some(HASH.parse().expect("hash"))).await;
        assert!(
            matches!(&sent, Sent::Rejected(_, Answer::Error { message, .. }) if message == "nonce too low"),
            "{}",
            match &sent {
                Sent::Accepted(u) => format!("accepted by {u}"),
                Sent::Rejected(u, _) => format!("rejected by {u}"),
                Sent::Unavailable(t) => format!("unavailable: {t:?}"),
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_blob_transaction_sent_with_its_blobs_is_known_by_its_hash_without_them() {
        use alloy_consensus::{
            SignableTransaction, Signed, TxEip4844, TxEip4844Variant, TxEip4844WithSidecar,
        };
        use alloy_eips::{
            eip2718::Encodable2718,
            eip4844::{Blob, BlobTransactionSidecar, Bytes48},
            eip7594::BlobTransactionSidecarVariant,
        };
        let tx = TxEip4844 {
            chain_id: 1,
            blob_versioned_hashes: vec![B256::repeat_byte(1)],
            ..TxEip4844::default()
        };
        let signature = alloy_primitives::Signature::test_signature();
        // What nodes answer and index it by: the transaction without its blobs.
        let hash = *tx.clone().into_signed(signature).hash();
        let sidecar = BlobTransactionSidecarVariant::Eip4844(BlobTransactionSidecar {
            blobs: vec![Blob::default()],
            commitments: vec![Bytes48::default()],
            proofs: vec![Bytes48::default()],
        });
        let with_blobs = TxEip4844Variant::TxEip4844WithSidecar(
            TxEip4844WithSidecar::from_tx_and_sidecar(tx, sidecar),
        );
        let raw =
            TxEnvelope::Eip4844(Signed::new_unchecked(with_blobs, signature, hash)).encoded_2718();
        assert_ne!(keccak256(&raw), hash, "the blobs are in what is sent");

        let answered = format!("{hash:#x}");
        let node = fake::upstream("test", "node", "op-a", move |_, _| {
            Act::result(json!(answered))
        });
        let chain = chain("off", 1, &[&node]);
        let params = RawValue::from_string(
            json!([alloy_primitives::hex::encode_prefixed(&raw)]).to_string(),
        )
        .expect("JSON");
        let call = Call {
            id: None,
            method: "eth_sendRawTransaction".into(),
            params: Some(&params),
        };
        let ledger = Ledger::new(std::time::Duration::from_secs(60));
        match broadcast(&chain, &ledger, 1, None, &call).await {
            Outcome::Answered {
                answer: Answer::Result(r),
                ..
            } => assert_eq!(&r[..], format!("\"{hash:#x}\"").as_bytes()),
            _ => panic!("the node's answer, its real hash, was not taken"),
        }
    }
}
