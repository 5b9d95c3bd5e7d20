//! Verified `eth_getLogs` over a short range (`verify = "proofs"`): the range's headers
//! are proven — the last one agreed by a quorum of operators, each earlier one hashing to
//! itself and to the next one's `parentHash` — their blooms say which blocks may hold a
//! match, and each of those blocks' receipts is proven against its receipts root
//! (`receipt::block_receipts`). The answer is every matching log of those proven
//! receipts, so a provider can neither forge a log nor leave one out.
//!
//! Longer ranges are fetched as before (split to what providers take, `none`): proving
//! them block by block would cost a full block's receipts for almost every block of a
//! popular contract.

use std::{future::Future, pin::Pin, time::Instant};

use alloy_rpc_types_eth::{Filter, Log};
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use serde_json::value::RawValue;

use super::{
    ask::{Shape, ask},
    receipt::{BlockReceipts, Failure, block_receipts, executed_label},
    resolve::Need,
    select,
    verified::{self, Checked, Level, Unverified},
};
use crate::{
    route::Chain,
    rpc::Call,
    upstream::Answer,
    verify::{self, header::CheckedHeader},
};

/// Blocks one `eth_getLogs` may span and still be proven; longer ranges pass through.
pub const MAX_PROVEN_BLOCKS: u64 = 32;
/// Blocks whose receipts are fetched at once.
const PARALLEL: usize = 4;
/// Upstreams asked for the range's headers.
const HEADER_ATTEMPTS: usize = 3;

pub async fn logs(
    chain: &Chain,
    call: &Call<'_>,
    from: u64,
    to: u64,
) -> Result<Checked, Unverified> {
    let what = "the logs";
    let Some(filter) = filter(call.params) else {
        return verified::agreed(chain, call, Need::Block(to)).await;
    };
    let (top, confirmed) = verified::trusted_header(chain, to)
        .await
        .map_err(|u| u.about(what, &format!("no trusted header for block {to}: ")))?;
    let headers = match chain_to(chain, &top, from).await {
        Some(h) => h,
        None => return verified::agreed(chain, call, Need::Block(to)).await,
    };
    let maybe: Vec<&CheckedHeader> = headers
        .iter()
        .filter(|h| filter.matches_bloom(h.logs_bloom))
        .collect();
    // Boxed: a plain `map` over borrowed headers trips the compiler's `Send` inference
    // for the request's task (a higher-ranked lifetime it cannot prove).
    type Fetch<'a> = Pin<Box<dyn Future<Output = Result<BlockReceipts, Failure>> + Send + 'a>>;
    let fetches: Vec<Fetch<'_>> = maybe
        .into_iter()
        .map(|h| Box::pin(block_receipts(chain, h)) as Fetch<'_>)
        .collect();
    let fetched: Vec<Result<BlockReceipts, Failure>> =
        stream::iter(fetches).buffered(PARALLEL).collect().await;
    let mut logs: Vec<Log> = Vec::new();
    for result in fetched {
        match result {
            Ok(BlockReceipts::Proven(receipts)) => logs.extend(
                receipts
                    .iter()
                    .flat_map(|r| r.inner.logs().to_vec())
                    .filter(|l| filter.matches(&l.inner)),
            ),
            Ok(BlockReceipts::Foreign) | Err(Failure::NoneServed) => {
                return verified::agreed(chain, call, Need::Block(to)).await;
            }
            Err(Failure::Lies(why)) => {
                return Err(Unverified::Disputed {
                    what: what.into(),
                    why: format!("no upstream served receipts that match the headers: {why}"),
                });
            }
        }
    }
    let body = serde_json::to_vec(&logs).map_err(|e| Unverified::Disputed {
        what: what.into(),
        why: format!("internal: {e}"),
    })?;
    Ok(Checked {
        upstream: executed_label(),
        answer: Answer::Result(Bytes::from(body)),
        level: if confirmed { Level::Proof } else { Level::None },
    })
}

fn filter(params: Option<&RawValue>) -> Option<Filter> {
    let items: Vec<&RawValue> = serde_json::from_str(params?.get()).ok()?;
    serde_json::from_str(items.first()?.get()).ok()
}

/// The headers of `from..=top`, proven by linking back from the trusted `top`: each
/// hashes to itself and is the next one's parent. `None` when nobody serves a chain
/// that links.
async fn chain_to(chain: &Chain, top: &CheckedHeader, from: u64) -> Option<Vec<CheckedHeader>> {
    if from >= top.number {
        return Some(vec![*top]);
    }
    let params: Vec<Option<Box<RawValue>>> = (from..top.number)
        .map(|n| {
            serde_json::value::to_raw_value(&serde_json::json!([format!("{n:#x}"), false])).ok()
        })
        .collect();
    let calls: Vec<Call<'_>> = params
        .iter()
        .map(|p| Call {
            id: None,
            method: "eth_getBlockByNumber".into(),
            params: p.as_deref(),
        })
        .collect();
    let refs: Vec<&Call<'_>> = calls.iter().collect();
    let plan = select::plan(chain, Need::Block(top.number), Instant::now());
    let shape = Shape {
        width: 1,
        max: HEADER_ATTEMPTS,
        wait_for_late: true,
    };
    ask(chain, plan.order, shape, &refs, |_, reply| {
        let answers = reply.ok()?;
        let mut headers = Vec::with_capacity(answers.len() + 1);
        for (i, answer) in answers.iter().enumerate() {
            let Some(Answer::Result(raw)) = answer else {
                return None;
            };
            let h = verify::header::check(raw).ok()?;
            if h.number != from + i as u64 {
                return None;
            }
            headers.push(h);
        }
        headers.push(*top);
        headers
            .windows(2)
            .all(|w| w[1].parent_hash == w[0].hash)
            .then_some(headers)
    })
    .await
    .ok()
}
