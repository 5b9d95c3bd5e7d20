//! Head tracking for one upstream: polls its newest block (and now and then its `safe`
//! and `finalized` blocks) and reports them to the chain, which recomputes the
//! consensus head. Polls only while the upstream is in rotation; a failed poll counts
//! as a failure of the upstream like any failed call.

use std::{
    borrow::Cow,
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use super::{Answer, Upstream, UpstreamError, log_transition};
use crate::{gateway::Chain, rpc::Call};

/// How soon to look again at an upstream that is out of rotation.
const NOT_READY_RECHECK: Duration = Duration::from_millis(50);

/// `safe` and `finalized` move once per epoch: asked every this many polls.
const FINALITY_EVERY: u32 = 10;

/// A head poll waits at least this long (and two poll intervals), at most the request
/// timeout: a hung upstream is seen as unresponsive within a few seconds even when no
/// client call goes its way.
const MIN_POLL_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn track(up: Arc<Upstream>, chain: Arc<Chain>, stop: CancellationToken) {
    let mut polls: u32 = 0;
    loop {
        let ready = up.health.is_ready();
        if ready {
            let with_finality = polls.is_multiple_of(FINALITY_EVERY);
            polls = polls.wrapping_add(1);
            let started = Instant::now();
            let timeout = (chain.poll_interval() * 2)
                .max(MIN_POLL_TIMEOUT)
                .min(up.timeout);
            let poll = tokio::select! {
                _ = stop.cancelled() => return,
                p = up.poll_head(with_finality, timeout) => p,
            };
            match poll {
                Ok(head) => {
                    // A poll is a call like any other: its latency feeds the score.
                    up.health.record_success(started.elapsed());
                    up.head.record(
                        (head.number, head.hash),
                        head.safe,
                        head.finalized,
                        Instant::now(),
                    );
                    chain.refresh_head();
                }
                Err(e) => {
                    let why = format!("head poll: {e}");
                    let transition = match e {
                        UpstreamError::ForeignReply(_) => {
                            up.health.record_foreign_reply(&why, Instant::now())
                        }
                        _ => up.health.record_failure(&why, e.cause(), Instant::now()),
                    };
                    log_transition(&up, &transition);
                }
            }
        }
        // Out of rotation: look again soon, so the head is known as soon as it is back.
        let wait = if ready {
            chain.poll_interval()
        } else {
            NOT_READY_RECHECK
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

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
                method: Cow::Borrowed("eth_getBlockByNumber"),
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
    let number = u64::from_str_radix(h.number.strip_prefix("0x")?, 16).ok()?;
    Some((number, h.hash))
}

/// Poll interval from the observed block time: a third of it, within [min, max].
pub fn poll_interval(block_time: Option<Duration>, min: Duration, max: Duration) -> Duration {
    block_time.map_or(max, |bt| (bt / 3).clamp(min, max))
}
