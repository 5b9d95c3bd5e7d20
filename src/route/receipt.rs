//! Verified `eth_getTransactionReceipt` (`verify = "proofs"`): where a provider says the
//! transaction is (block hash and number) is only a claim; the block's header must be the
//! one a quorum of operators agree on at that height, its body must hash to the header's
//! transactions root, and its receipts to the receipts root. The answer is built from
//! those proven values (`verify::receipts`), so a provider cannot change a status, drop
//! a log or move a transfer, whatever the others do.
//!
//! A receipt nobody has yet is `null` only after two upstreams said so (one hiding a
//! mined transaction is not enough), marked `none`. A chain whose transactions Outlast
//! cannot decode (OP deposits) gets a quorum instead.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use alloy_primitives::B256;
use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::OnceCell;

use super::{
    ask::{Shape, ask},
    race::{Claim, NotProven, Unproven, race},
    resolve::Need,
    select,
    verified::{self, Checked, Level, Unverified},
};
use crate::{
    route::Chain,
    rpc::Call,
    upstream::Answer,
    verify::{self, body::Transactions, header::CheckedHeader},
};

/// Upstreams asked where a transaction is (a `null` from one is not the last word).
const LOCATE_ATTEMPTS: usize = 2;
/// Upstreams asked for a block's body and receipts before giving up.
const BODY_ATTEMPTS: usize = 3;

pub async fn receipt(chain: &Chain, call: &Call<'_>) -> Result<Checked, Unverified> {
    let what = "the receipt";
    let Some(tx_hash) = tx_hash(call.params) else {
        return verified::agreed(chain, call, Need::Fresh).await;
    };
    // 1. Where it is, by anyone's word.
    #[derive(serde::Deserialize)]
    struct Located {
        #[serde(rename = "blockHash")]
        block_hash: B256,
        #[serde(rename = "blockNumber")]
        block_number: alloy_primitives::U64,
    }
    let mut nulls: Vec<Arc<str>> = Vec::new();
    let calls = [call];
    let shape = Shape {
        width: 1,
        max: LOCATE_ATTEMPTS,
        wait_for_late: true,
    };
    let plan = select::plan(chain, Need::Fresh, Instant::now());
    let located = ask(chain, plan.order, shape, &calls, |up, reply| {
        match reply.ok()?.pop().flatten()? {
            Answer::Result(raw) if &raw[..] == b"null" => {
                nulls.push(up.name.clone());
                None
            }
            Answer::Result(raw) => serde_json::from_slice::<Located>(&raw).ok(),
            Answer::Error { .. } => None,
        }
    })
    .await;
    let located = match located {
        Ok(l) => l,
        Err(exhausted) => {
            if let Some(who) = nulls.first() {
                // Not mined (yet), as far as everyone asked can tell.
                return Ok(Checked {
                    upstream: who.clone(),
                    answer: Answer::Result(Bytes::from_static(b"null")),
                    level: Level::None,
                });
            }
            return Err(Unverified::Unreachable(exhausted.tried));
        }
    };
    let number = located.block_number.to::<u64>();
    // 2. The block there must be the agreed one.
    let (header, confirmed) = match verified::trusted_header(chain, number).await {
        Ok(h) => h,
        // A block past the consensus head that too few operators have yet: not seen,
        // as a node that has not seen it says — the client asks again.
        Err(_) if chain.head.latest().is_none_or(|head| number > head) => {
            return Ok(Checked {
                upstream: executed_label(),
                answer: Answer::Result(Bytes::from_static(b"null")),
                level: Level::None,
            });
        }
        Err(u) => return Err(u.about(what, &format!("no trusted header for block {number}: "))),
    };
    if header.hash != located.block_hash {
        // A reorg in between, or a provider placing it in a block nobody else has.
        return verified::agreed(chain, call, Need::Fresh).await;
    }
    // 3. The block's body and receipts, proven against it.
    let receipts = match block_receipts(chain, &header).await {
        Ok(BlockReceipts::Proven(r)) => r,
        Ok(BlockReceipts::Foreign) | Err(Failure::NoneServed) => {
            // Transactions Outlast cannot decode, or nobody serves eth_getBlockReceipts
            // (or full blocks) here: a quorum.
            return verified::agreed(chain, call, Need::Fresh).await;
        }
        Err(Failure::Lies(why)) => {
            return Err(Unverified::Disputed {
                what: what.into(),
                why: format!(
                    "no upstream served receipts that match block {number}'s header: {why}"
                ),
            });
        }
    };
    let Some(found) = receipts.iter().find(|r| r.transaction_hash == tx_hash) else {
        return Err(Unverified::Disputed {
            what: what.into(),
            why: format!("block {number} does not hold transaction {tx_hash}"),
        });
    };
    let body = serde_json::to_vec(found).map_err(|e| Unverified::Disputed {
        what: what.into(),
        why: format!("internal: {e}"),
    })?;
    Ok(Checked {
        upstream: executed_label(),
        answer: Answer::Result(Bytes::from(body)),
        level: if confirmed { Level::Proof } else { Level::None },
    })
}

/// A block's receipts, proven, or why not.
#[derive(Clone)]
pub(super) enum BlockReceipts {
    Proven(Arc<[alloy_rpc_types_eth::TransactionReceipt]>),
    /// Transaction types Outlast cannot decode (OP deposits): not proven here.
    Foreign,
}

#[derive(Clone)]
pub(super) enum Failure {
    /// Nobody served the block's body and receipts.
    NoneServed,
    /// What was served does not match the header (the liars are banned): why.
    Lies(String),
}

/// The proven receipts of the last few blocks asked for, and of those being proven, by
/// block hash. A batch of receipts from one block (an indexer's, a wallet's after a
/// send) or log queries over the same blocks then fetch and prove each block once,
/// where each call fetched its whole block again and proved it again (~50 ms of CPU
/// for a mainnet block). A failure is not kept: the next call tries anew.
#[derive(Default)]
pub struct RecentReceipts(Mutex<VecDeque<(B256, Arc<ReceiptsCell>)>>);

type ReceiptsCell = OnceCell<Result<BlockReceipts, Failure>>;

/// Blocks whose proven receipts are kept (a mainnet block's are a few MB).
const RECENT_BLOCKS: usize = 4;

impl RecentReceipts {
    fn cell(&self, hash: B256) -> Arc<ReceiptsCell> {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, cell)) = recent.iter().find(|(h, _)| *h == hash) {
            return cell.clone();
        }
        if recent.len() >= RECENT_BLOCKS {
            recent.pop_front();
        }
        let cell = Arc::new(OnceCell::new());
        recent.push_back((hash, cell.clone()));
        cell
    }

    fn forget(&self, cell: &Arc<ReceiptsCell>) {
        let mut recent = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|(_, c)| !Arc::ptr_eq(c, cell));
    }
}

/// The body (full transactions) and receipts of the trusted block `header`, from the
/// first upstream whose both match it (transactions root, senders, receipts root); one
/// that serves a false body or false receipts is banned once another's check. Calls
/// about one block share one fetch and one proof (`RecentReceipts`).
pub(super) async fn block_receipts(
    chain: &Chain,
    header: &CheckedHeader,
) -> Result<BlockReceipts, Failure> {
    let cell = chain.receipts.cell(header.hash);
    let proven = cell
        .get_or_init(|| prove_receipts(chain, header))
        .await
        .clone();
    if proven.is_err() {
        chain.receipts.forget(&cell);
    }
    proven
}

async fn prove_receipts(chain: &Chain, header: &CheckedHeader) -> Result<BlockReceipts, Failure> {
    let by_hash = raw(&serde_json::json!([header.hash, true]));
    let receipts_at = raw(&serde_json::json!([header.hash]));
    let fetch = [
        Call {
            id: None,
            method: "eth_getBlockByHash".into(),
            params: by_hash.as_deref(),
        },
        Call {
            id: None,
            method: "eth_getBlockReceipts".into(),
            params: receipts_at.as_deref(),
        },
    ];
    let refs: Vec<&Call<'_>> = fetch.iter().collect();
    let claim = Claim {
        check: "block",
        about: "block",
    };
    let header = *header;
    let proven = race(
        chain,
        header.number,
        &refs,
        BODY_ATTEMPTS,
        claim,
        move |answers| {
            let (Some(Some(Answer::Result(block))), Some(Some(Answer::Result(receipts)))) =
                (answers.first(), answers.get(1))
            else {
                return Err(NotProven::Missing("no block and receipts".into()));
            };
            let txs = match verify::body::transactions(block, &header) {
                Ok(Transactions::Proven(txs)) => txs,
                Ok(Transactions::ForeignTypes) => return Ok(BlockReceipts::Foreign),
                Ok(Transactions::HashesOnly) => {
                    return Err(NotProven::Missing("transaction hashes only".into()));
                }
                Err(e) => return Err(NotProven::False(format!("block body: {e}"))),
            };
            verify::receipts::check(receipts, &header, &txs)
                .map(|r| BlockReceipts::Proven(r.into()))
                .map_err(|e| NotProven::False(format!("receipts: {e}")))
        },
    )
    .await;
    match proven {
        Ok((_, found)) => Ok(found),
        Err(Unproven::Missing) => Err(Failure::NoneServed),
        Err(Unproven::False { problems }) => Err(Failure::Lies(problems.join("; "))),
    }
}

/// The `x-outlast-upstream` of answers Outlast built from proven values.
pub(super) fn executed_label() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("proven"));
    LABEL.clone()
}

fn tx_hash(params: Option<&RawValue>) -> Option<B256> {
    let items: Vec<&RawValue> = serde_json::from_str(params?.get()).ok()?;
    serde_json::from_str(items.first()?.get()).ok()
}

fn raw(value: &serde_json::Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value).ok()
}
