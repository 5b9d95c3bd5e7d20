//! The order in which to try a chain's upstreams for one call. Never waits, never sends:
//! it reads health snapshots and returns a plan, so it is tested with tables.
//!
//! Ready upstreams come first, the lowest tier first, rotated within a tier to spread
//! load. Upstreams cooling down come last, as a last resort (a node that just came back
//! answers at once). Unchecked and wrong-chain upstreams are never tried.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Instant,
};

use super::health::Status;
use crate::{gateway::Chain, rpc::Attempt, upstream::Upstream};

pub struct Plan {
    pub order: Vec<Arc<Upstream>>,
    /// Upstreams not tried, with why: reported to the client if nothing answers.
    pub skipped: Vec<Attempt>,
}

pub fn plan(chain: &Chain, now: Instant) -> Plan {
    let statuses: Vec<(u8, Status)> = chain
        .upstreams
        .iter()
        .map(|u| (u.tier, u.health.status()))
        .collect();
    let rotation = chain.rotation.fetch_add(1, Ordering::Relaxed);
    let (order, skipped) = order(&statuses, rotation, now);
    Plan {
        order: order
            .into_iter()
            .map(|i| chain.upstreams[i].clone())
            .collect(),
        skipped: skipped
            .into_iter()
            .map(|(i, error)| Attempt {
                upstream: chain.upstreams[i].name.to_string(),
                error,
            })
            .collect(),
    }
}

/// Indices to try in order, and indices skipped with the reason.
fn order(
    upstreams: &[(u8, Status)],
    rotation: usize,
    now: Instant,
) -> (Vec<usize>, Vec<(usize, String)>) {
    let mut ready: Vec<usize> = Vec::new();
    let mut cooling: Vec<(Instant, usize)> = Vec::new();
    let mut skipped = Vec::new();
    for (i, (_, status)) in upstreams.iter().enumerate() {
        match status {
            Status::Ready => ready.push(i),
            Status::CoolingDown { until, .. } => cooling.push((*until, i)),
            Status::Unchecked => {
                skipped.push((i, "not yet checked (eth_chainId pending)".to_owned()))
            }
            Status::WrongChain { got, expected } => skipped.push((
                i,
                format!("disabled: serves chain id {got}, not {expected}"),
            )),
        }
    }
    ready.sort_by_key(|&i| upstreams[i].0);
    let mut order = Vec::with_capacity(upstreams.len());
    for tier in ready.chunk_by(|&a, &b| upstreams[a].0 == upstreams[b].0) {
        let start = rotation % tier.len();
        order.extend(tier[start..].iter().chain(&tier[..start]));
    }
    cooling.sort();
    for (until, i) in cooling {
        let Status::CoolingDown { why, .. } = &upstreams[i].1 else {
            continue;
        };
        let left = until.saturating_duration_since(now).as_millis();
        if ready.is_empty() {
            order.push(i);
        } else {
            skipped.push((i, format!("cooling down for {left} ms more after: {why}")));
        }
    }
    (order, skipped)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn cooling(now: Instant, ms: u64) -> Status {
        Status::CoolingDown {
            until: now + Duration::from_millis(ms),
            why: "refused".into(),
        }
    }

    #[test]
    fn ready_upstreams_rotate_within_the_lowest_tier_first() {
        let now = Instant::now();
        let ups = [
            (2, Status::Ready),
            (1, Status::Ready),
            (1, Status::Ready),
            (1, Status::Unchecked),
        ];
        assert_eq!(order(&ups, 0, now).0, [1, 2, 0]);
        assert_eq!(order(&ups, 1, now).0, [2, 1, 0]);
        assert_eq!(
            order(&ups, 1, now).1,
            [(3, "not yet checked (eth_chainId pending)".to_owned())]
        );
    }

    #[test]
    fn cooling_upstreams_are_only_a_last_resort() {
        let now = Instant::now();
        let ups = [(1, cooling(now, 500)), (1, Status::Ready)];
        let (order_, skipped) = order(&ups, 0, now);
        assert_eq!(order_, [1]);
        assert_eq!(
            skipped,
            [(0, "cooling down for 500 ms more after: refused".to_owned())]
        );
        let ups = [(1, cooling(now, 900)), (1, cooling(now, 100))];
        assert_eq!(order(&ups, 0, now).0, [1, 0], "soonest back first");
    }

    #[test]
    fn wrong_chain_upstreams_are_never_tried() {
        let now = Instant::now();
        let ups = [(
            1,
            Status::WrongChain {
                got: 5,
                expected: 1,
            },
        )];
        let (order_, skipped) = order(&ups, 0, now);
        assert!(order_.is_empty());
        assert_eq!(skipped[0].1, "disabled: serves chain id 5, not 1");
    }
}
