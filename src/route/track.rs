//! Head tracking for one upstream: polls its newest block (and now and then its `safe`
//! and `finalized` blocks, `Upstream::poll_head`) and reports them to the chain, which
//! recomputes the consensus head. Polls only while the upstream is in rotation; a failed
//! poll counts as a failure of the upstream like any failed call.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::Chain;
use crate::upstream::{Upstream, UpstreamError, log_transition};

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
                .min(up.timeout());
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
