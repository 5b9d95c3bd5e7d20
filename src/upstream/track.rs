//! One head poll of one upstream: its newest block, and with it now and then its `safe`
//! and `finalized` blocks; and how often to poll. The loop that polls and reports to
//! the chain is `route::track`.

use std::time::Duration;

use serde_json::value::RawValue;

use super::{Answer, Upstream, UpstreamError};
use crate::rpc::Call;

pub struct PolledHead {
    pub number: u64,
    pub hash: String,
    pub safe: Option<u64>,
    pub finalized: Option<u64>,
}

#[derive(serde::Deserialize)]
struct BlockHeader {
    number: String,
    hash: String,
}

impl Upstream {
    /// One request: the latest block, and with `with_finality` the safe and finalized ones
    /// in the same batch (nodes without those tags simply leave them unknown).
    pub async fn poll_head(
        &self,
        with_finality: bool,
        timeout: Duration,
    ) -> Result<PolledHead, UpstreamError> {
        let tags: &[&str] = if with_finality {
            &[
                r#"["latest",false]"#,
                r#"["safe",false]"#,
                r#"["finalized",false]"#,
            ]
        } else {
            &[r#"["latest",false]"#]
        };
        let params: Vec<Box<RawValue>> = tags
            .iter()
            .filter_map(|t| RawValue::from_string((*t).to_owned()).ok())
            .collect();
        let calls: Vec<Call<'_>> = params
            .iter()
            .map(|p| Call {
                id: None,
                method: "eth_getBlockByNumber".into(),
                params: Some(p),
            })
            .collect();
        let refs: Vec<&Call<'_>> = calls.iter().collect();
        let mut answers = self
            .send_within(&refs, timeout)
            .await?
            .into_iter()
            .map(|a| a.and_then(|a| header(&a)));
        let latest = answers.next().flatten().ok_or_else(|| {
            UpstreamError::Malformed("eth_getBlockByNumber(latest) gave no block".into())
        })?;
        let (safe, finalized) = (answers.next().flatten(), answers.next().flatten());
        Ok(PolledHead {
            number: latest.0,
            hash: latest.1,
            safe: safe.map(|s| s.0),
            finalized: finalized.map(|f| f.0),
        })
    }
}

fn header(answer: &Answer) -> Option<(u64, String)> {
    let Answer::Result(raw) = answer else {
        return None;
    };
    let h: BlockHeader = serde_json::from_slice(raw).ok()?;
    let number = crate::rpc::quantity::parse(&h.number)?;
    Some((number, h.hash))
}

/// Poll interval from the observed block time: a third of it, within [min, max].
pub fn poll_interval(block_time: Option<Duration>, min: Duration, max: Duration) -> Duration {
    block_time.map_or(max, |bt| (bt / 3).clamp(min, max))
}
