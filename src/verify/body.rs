//! A full block's body against its trusted header: every transaction re-encoded, its
//! hash recomputed and its sender recovered from the signature, each in its place
//! (block hash, number, index), and the transactions (and withdrawals) root rebuilt.
//! The fields outside the roots — `hash`, `from`, the position — are exactly what a
//! lying provider would change without touching the header, so each is checked.
//! A transaction type Outlast cannot decode (another chain's, e.g. OP deposits) leaves
//! the body unchecked, said as such (the caller then wants a quorum to agree on it); a
//! known type that does not decode is a lie.

use alloy_consensus::{TxEnvelope, proofs, transaction::SignerRecoverable};
use alloy_eips::{eip2718::Encodable2718, eip4895::Withdrawal};
use alloy_primitives::keccak256;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{VerifyError, header::CheckedHeader};

/// What a block's body came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Every transaction (and withdrawal) is the one the header commits to.
    Proven,
    /// Only transaction hashes were asked for: the root covers encodings, so the list
    /// is as served.
    HashesOnly,
    /// A transaction of a type Outlast cannot decode: the body is not checked here.
    ForeignTypes,
}

/// Transaction types of Ethereum's envelope: legacy, 2930, 1559, 4844, 7702.
const KNOWN_TYPES: [u64; 5] = [0, 1, 2, 3, 4];

fn lie(what: String) -> VerifyError {
    VerifyError::Body { what }
}

/// Checks the body of the RPC block `json` against `header` (already trusted).
pub fn check(json: &[u8], header: &CheckedHeader) -> Result<Body, VerifyError> {
    Ok(match transactions(json, header)? {
        Transactions::Proven(_) => Body::Proven,
        Transactions::HashesOnly => Body::HashesOnly,
        Transactions::ForeignTypes => Body::ForeignTypes,
    })
}

/// A body's transactions, once proven: each with its recovered sender.
pub enum Transactions {
    Proven(Vec<(TxEnvelope, alloy_primitives::Address)>),
    HashesOnly,
    ForeignTypes,
}

/// The transactions of the RPC block `json`, proven against `header` (see `check`).
pub fn transactions(json: &[u8], header: &CheckedHeader) -> Result<Transactions, VerifyError> {
    #[derive(Deserialize)]
    struct Block<'a> {
        #[serde(borrow, default)]
        transactions: Vec<&'a RawValue>,
        #[serde(default)]
        withdrawals: Option<Vec<Withdrawal>>,
    }
    #[derive(Deserialize)]
    struct Typed {
        #[serde(default, rename = "type")]
        kind: Option<alloy_primitives::U64>,
    }
    let malformed = |e: serde_json::Error| VerifyError::Malformed {
        what: "block body",
        detail: e.to_string(),
    };
    let block: Block<'_> = serde_json::from_slice(json).map_err(malformed)?;
    if block
        .transactions
        .first()
        .is_some_and(|t| t.get().starts_with('"'))
    {
        return Ok(Transactions::HashesOnly);
    }
    // Hashes first, signatures last: a body padded with validly signed transactions
    // fails at the root after a keccak each, not after a sender recovery each (~0.1 ms,
    // the bulk of the check).
    let mut envelopes: Vec<TxEnvelope> = Vec::with_capacity(block.transactions.len());
    let mut claimed = Vec::with_capacity(block.transactions.len());
    for (i, raw) in block.transactions.iter().enumerate() {
        let typed: Typed = serde_json::from_str(raw.get()).map_err(malformed)?;
        let kind = typed.kind.map_or(0, |k| k.to::<u64>());
        if !KNOWN_TYPES.contains(&kind) {
            return Ok(Transactions::ForeignTypes);
        }
        let tx: alloy_rpc_types_eth::Transaction = serde_json::from_str(raw.get())
            .map_err(|e| lie(format!("transaction {i} does not decode: {e}")))?;
        let envelope = tx.inner.inner();
        // alloy keeps the hash the JSON claims; the real one is the encoding's keccak.
        let hash = keccak256(envelope.encoded_2718());
        if hash != *envelope.tx_hash() {
            return Err(lie(format!(
                "transaction {i} claims hash {}, its fields hash to {hash}",
                envelope.tx_hash()
            )));
        }
        let placed = (tx.block_hash, tx.block_number, tx.transaction_index);
        if placed != (Some(header.hash), Some(header.number), Some(i as u64)) {
            return Err(lie(format!(
                "transaction {i} claims to be at {placed:?} of block {} ({})",
                header.number, header.hash
            )));
        }
        envelopes.push(envelope.clone());
        claimed.push(tx.inner.signer());
    }
    let root = proofs::calculate_transaction_root(&envelopes);
    if root != header.transactions_root {
        return Err(lie(format!(
            "the transactions hash to root {root}, the header says {}",
            header.transactions_root
        )));
    }
    let mut senders = Vec::with_capacity(envelopes.len());
    for (i, (envelope, claimed)) in envelopes.iter().zip(claimed).enumerate() {
        let sender = envelope
            .recover_signer()
            .map_err(|e| lie(format!("transaction {i}'s signature: {e}")))?;
        if sender != claimed {
            return Err(lie(format!(
                "transaction {i} claims sender {claimed}, its signature is {sender}'s"
            )));
        }
        senders.push(sender);
    }
    if let (Some(ws), Some(expected)) = (&block.withdrawals, header.withdrawals_root) {
        let root = proofs::calculate_withdrawals_root(ws);
        if root != expected {
            return Err(lie(format!(
                "the withdrawals hash to root {root}, the header says {expected}"
            )));
        }
    }
    Ok(Transactions::Proven(
        envelopes.into_iter().zip(senders).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::header;
    use serde_json::Value;

    /// Block 1 of the test bed's chain with two transfers (a legacy one and an EIP-1559
    /// one), as Anvil 1.7.1 serves it with full transactions.
    const FULL: &str = include_str!("fixtures/anvil-block-1-full.json");

    fn checked(block: &Value) -> Result<Body, VerifyError> {
        let json = block.to_string();
        let h = header::check(json.as_bytes()).expect("the header is honest");
        check(json.as_bytes(), &h)
    }

    fn tampered(edit: impl FnOnce(&mut Value)) -> Result<Body, VerifyError> {
        let mut block: Value = serde_json::from_str(FULL).expect("fixture");
        edit(&mut block);
        checked(&block)
    }

    #[test]
    fn an_honest_body_is_proven() {
        assert_eq!(tampered(|_| {}), Ok(Body::Proven));
    }

    #[test]
    fn every_field_a_liar_would_change_is_caught() {
        type Lie = fn(&mut Value);
        let lies: [(&str, Lie); 5] = [
            ("value", |b| b["transactions"][1]["value"] = "0x3".into()),
            ("sender", |b| {
                b["transactions"][0]["from"] = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8".into()
            }),
            ("hash", |b| {
                b["transactions"][0]["hash"] = format!("0x{}", "ab".repeat(32)).into()
            }),
            ("position", |b| {
                b["transactions"][1]["transactionIndex"] = "0x0".into()
            }),
            ("missing", |b| {
                if let Some(txs) = b["transactions"].as_array_mut() {
                    txs.pop();
                }
            }),
        ];
        for (what, lie) in lies {
            assert!(
                matches!(tampered(lie), Err(VerifyError::Body { .. })),
                "a forged {what} passed"
            );
        }
    }

    #[test]
    fn hashes_only_and_foreign_types_are_said_to_be_unchecked() {
        let hashes = tampered(|b| {
            let txs = b["transactions"].as_array().expect("txs").clone();
            b["transactions"] = txs.iter().map(|t| t["hash"].clone()).collect();
        });
        assert_eq!(hashes, Ok(Body::HashesOnly));
        let foreign = tampered(|b| b["transactions"][0]["type"] = "0x7e".into());
        assert_eq!(foreign, Ok(Body::ForeignTypes));
    }
}
