//! The background check of one upstream: `eth_chainId` at start, periodically, and when a
//! cool-down ends (which is how a failed upstream is probed back in). It logs each
//! change of state once, in words an operator can act on.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use super::{Answer, Upstream, UpstreamError};
use crate::{rpc::Call, upstream::health::Transition};

/// Runs until `stop` is cancelled.
pub async fn watch(up: Arc<Upstream>, expected: u64, every: Duration, stop: CancellationToken) {
    loop {
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = up.chain_id() => r,
        };
        let now = Instant::now();
        // A mixed-up answer counts towards a ban whatever the upstream's state.
        let banned = match &result {
            Err(e @ UpstreamError::ForeignReply(_)) => up
                .health
                .count_foreign_reply(&format!("chain-id probe: {e}"), now),
            _ => None,
        };
        let transition = banned.unwrap_or_else(|| {
            let result = result.map_err(|e| (e.to_string(), e.cause()));
            up.health.record_probe(result, expected, now)
        });
        log_transition(&up, &transition);
        // Sleep until the next probe is due; a cool-down started by live traffic wakes
        // us early only to re-plan that time, not to probe at once.
        loop {
            let wait = up.health.next_probe(Instant::now(), every);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => break,
                _ = up.health.changed.notified() => {}
            }
        }
    }
}

/// One line per change of an upstream's state; names, never URLs.
pub fn log_transition(up: &Upstream, transition: &Transition) {
    let (chain, upstream) = (&*up.chain, &*up.name);
    match transition {
        Transition::None => {}
        Transition::Ready => tracing::info!(chain, upstream, "upstream is serving"),
        Transition::CooledDown { why, for_ } => tracing::warn!(
            chain,
            upstream,
            error = %why,
            "upstream unreachable or failing; out of rotation for {} ms, then probed again",
            for_.as_millis()
        ),
        Transition::WrongChain { got, expected } => tracing::error!(
            chain,
            upstream,
            "upstream serves chain id {got}, not {expected}: disabled; fix its url in the config"
        ),
        Transition::Banned { why, for_ } => tracing::error!(
            chain,
            upstream,
            "upstream caught lying: {why}; banned for {} s",
            for_.as_secs()
        ),
    }
}

impl Upstream {
    pub async fn chain_id(&self) -> Result<u64, UpstreamError> {
        let call = Call {
            id: None,
            method: "eth_chainId".into(),
            params: None,
        };
        let answer = self.send(&[&call]).await?.pop().flatten();
        let malformed = |what: String| UpstreamError::Malformed(format!("eth_chainId: {what}"));
        match answer {
            Some(Answer::Result(raw)) => {
                let hex: String =
                    serde_json::from_slice(&raw).map_err(|e| malformed(e.to_string()))?;
                crate::rpc::quantity::parse(&hex)
                    .ok_or_else(|| malformed(format!("{hex:?} is not a quantity")))
            }
            Some(Answer::Error { message, .. }) => Err(malformed(message)),
            None => Err(malformed("no answer".into())),
        }
    }
}
