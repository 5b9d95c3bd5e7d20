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

use smallvec::SmallVec;

use super::resolve::Need;
use crate::upstream::{health::Status, score};
use crate::{route::Chain, rpc::Attempt, upstream::Upstream};

pub struct Plan {
    pub order: Vec<Arc<Upstream>>,
    /// Upstreams not tried, with why: reported to the client if nothing answers.
    pub skipped: Vec<Attempt>,
}

/// Lists of a chain's upstreams, made for every call: a chain has a handful, so they
/// are kept on the stack (past eight, on the heap).
type Few<T> = SmallVec<[T; 8]>;

pub fn plan(chain: &Chain, need: Need, now: Instant) -> Plan {
    // Cordoned by a person (admin API): never chosen; the reason is reported.
    let upstreams = chain.upstreams();
    let (cordoned, open): (Few<&Arc<Upstream>>, Few<&Arc<Upstream>>) =
        upstreams.iter().partition(|u| u.cordon.is_set());
    let candidates: Few<Candidate> = open
        .iter()
        .map(|u| Candidate {
            tier: u.tier,
            status: u.health.status(),
            head: u.head.latest(),
            score: score::value(&u.health.stats(), u.limits.in_flight(), chain.lag(u)),
        })
        .collect();
    let rotation = chain.rotation.fetch_add(1, Ordering::Relaxed);
    let (order, skipped) = order(&candidates, need, chain.head.latest(), rotation, now);
    Plan {
        order: order.into_iter().map(|i| open[i].clone()).collect(),
        skipped: skipped
            .into_iter()
            .map(|(i, error)| Attempt {
                upstream: open[i].name.to_string(),
                error,
            })
            .chain(cordoned.iter().map(|u| Attempt {
                upstream: u.name.to_string(),
                error: format!("cordoned: {}", u.cordon.reason().unwrap_or_default()),
            }))
            .collect(),
    }
}

/// What `order` needs to know of one upstream.
#[derive(Debug, Clone)]
struct Candidate {
    tier: u8,
    status: Status,
    head: Option<u64>,
    /// Lower is better (`score::value`).
    score: f64,
}

/// A node this many blocks behind the consensus still counts as caught up for calls
/// that name no block, and is the last resort for a call that names the block just
/// past its head: heads are polled, so one block of skew is normal.
/// (Compared as `head >= wanted - FRESH_LAG`, saturating: a head is an upstream's
/// claim, and one at `u64::MAX` must not overflow.)
const FRESH_LAG: u64 = 1;

/// Indices to try in order, and indices skipped with the reason.
fn order(
    upstreams: &[Candidate],
    need: Need,
    consensus: Option<u64>,
    rotation: usize,
    now: Instant,
) -> (Few<usize>, Vec<(usize, String)>) {
    let mut ready: Few<usize> = Few::new();
    let mut cooling: Few<(Instant, usize)> = Few::new();
    let mut skipped = Vec::new();
    for (i, c) in upstreams.iter().enumerate() {
        match &c.status {
            Status::Ready => ready.push(i),
            Status::CoolingDown { until, .. } | Status::Banned { until, .. } => {
                cooling.push((*until, i))
            }
            Status::Unchecked => {
                skipped.push((i, "not yet checked (eth_chainId pending)".to_owned()))
            }
            Status::WrongChain { got, expected } => skipped.push((
                i,
                format!("disabled: serves chain id {got}, not {expected}"),
            )),
        }
    }
    // Split the ready ones by whether they can answer this call correctly; a head not
    // polled yet is given the benefit of the doubt, after those known to be able.
    let (able, behind): (Few<usize>, Few<usize>) =
        ready.iter().copied().partition(|&i| match need {
            Need::Any => true,
            Need::Block(n) => upstreams[i].head.is_none_or(|h| h >= n),
            Need::Fresh => match (consensus, upstreams[i].head) {
                (Some(c), Some(h)) => h >= c.saturating_sub(FRESH_LAG),
                _ => true,
            },
        });
    let (known, unknown): (Few<usize>, Few<usize>) = able
        .iter()
        .copied()
        .partition(|&i| upstreams[i].head.is_some());
    let mut order = Few::new();
    push_by_tier(&mut order, &known, upstreams, rotation);
    push_by_tier(&mut order, &unknown, upstreams, rotation);
    match need {
        // Nobody is known to have block N (just mined, or a future block): the highest
        // heads first, as the likeliest to have it by now.
        Need::Block(_) if able.is_empty() => {
            let mut behind = behind.clone();
            behind.sort_by_key(|&i| std::cmp::Reverse(upstreams[i].head));
            order.extend(behind);
        }
        // One poll behind block N: it most likely has N by now (every node got it at
        // about the same time; heads are polled), so it is the last resort, not left
        // out: when the ones known to have N all fail at once, it still answers. A
        // `null` from it means "not yet" (`forward`), never the answer.
        Need::Block(n) => {
            let (close, far): (Few<usize>, Few<usize>) = behind.iter().copied().partition(|&i| {
                upstreams[i]
                    .head
                    .is_some_and(|h| h >= n.saturating_sub(FRESH_LAG))
            });
            order.extend(close);
            for i in far {
                let head = upstreams[i]
                    .head
                    .map_or("unknown".to_owned(), |h| h.to_string());
                skipped.push((i, format!("behind: its head {head} is below block {n}")));
            }
        }
        // Lagging nodes may still answer when the caught-up ones fail.
        _ => push_by_tier(&mut order, &behind, upstreams, rotation),
    }
    cooling.sort();
    for (until, i) in cooling {
        let Some(why) = upstreams[i].status.why_out() else {
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

/// Two scores this close (within 25%, or 2 ms) are a tie: load is then spread rather
/// than piled on the one that happens to be a little faster.
const TIE: f64 = 1.25;
const TIE_MS: f64 = 2.0;

/// Appends `group` lowest tier first. Within a tier: power of two choices — of two
/// upstreams drawn at random, the better goes first (either, when they tie) — then the
/// rest by score, as fallbacks.
fn push_by_tier(order: &mut Few<usize>, group: &[usize], upstreams: &[Candidate], seed: usize) {
    let mut group = Few::from_slice(group);
    group.sort_by(|&a, &b| {
        (upstreams[a].tier, upstreams[a].score)
            .partial_cmp(&(upstreams[b].tier, upstreams[b].score))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut random = SplitMix(seed as u64);
    for tier in group.chunk_by(|&a, &b| upstreams[a].tier == upstreams[b].tier) {
        let mut tier = Few::from_slice(tier);
        if tier.len() >= 2 {
            let x = random.below(tier.len());
            let y = (x + 1 + random.below(tier.len() - 1)) % tier.len();
            let (sx, sy) = (upstreams[tier[x]].score, upstreams[tier[y]].score);
            let first = if sx.max(sy) <= sx.min(sy) * TIE || (sx - sy).abs() <= TIE_MS {
                if random.below(2) == 0 { x } else { y }
            } else if sx <= sy {
                x
            } else {
                y
            };
            let chosen = tier.remove(first);
            tier.insert(0, chosen);
        }
        order.extend(tier);
    }
}

/// A tiny deterministic generator (SplitMix64): selection needs spread, not secrecy, and
/// tests need to replay it.
struct SplitMix(u64);

impl SplitMix {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn c(tier: u8, status: Status, head: Option<u64>) -> Candidate {
        Candidate {
            tier,
            status,
            head,
            score: 10.0,
        }
    }

    fn ready(tier: u8) -> Candidate {
        c(tier, Status::Ready, Some(10))
    }

    fn cooling(now: Instant, ms: u64) -> Candidate {
        c(
            1,
            Status::CoolingDown {
                until: now + Duration::from_millis(ms),
                why: "refused".into(),
                cause: crate::upstream::health::Cause::Unreachable,
            },
            Some(10),
        )
    }

    fn check(
        ups: &[Candidate],
        need: Need,
        rotation: usize,
        expected: &[usize],
    ) -> Vec<(usize, String)> {
        let (got, skipped) = order(ups, need, Some(10), rotation, Instant::now());
        assert_eq!(got.as_slice(), expected, "{ups:?} {need:?}");
        skipped
    }

    #[test]
    fn lower_tiers_come_first_and_ties_spread_load() {
        let ups = [ready(2), ready(1), ready(1), c(1, Status::Unchecked, None)];
        let mut firsts = std::collections::BTreeSet::new();
        for seed in 0..50 {
            let (got, skipped) = order(&ups, Need::Any, Some(10), seed, Instant::now());
            assert_eq!(got.len(), 3);
            assert_eq!(got[2], 0, "tier 2 only after tier 1: {got:?}");
            firsts.insert(got[0]);
            assert_eq!(
                skipped,
                [(3, "not yet checked (eth_chainId pending)".to_owned())]
            );
        }
        assert_eq!(
            firsts.into_iter().collect::<Vec<_>>(),
            [1, 2],
            "equal upstreams share the load"
        );
    }

    #[test]
    fn the_better_scored_of_two_goes_first() {
        let mut slow = ready(1);
        slow.score = 100.0;
        let ups = [slow, ready(1)];
        for seed in 0..50 {
            check(&ups, Need::Any, seed, &[1, 0]);
        }
    }

    #[test]
    fn cooling_upstreams_are_only_a_last_resort() {
        let now = Instant::now();
        let skipped = check(&[cooling(now, 500), ready(1)], Need::Any, 0, &[1]);
        assert!(skipped[0].1.starts_with("cooling down for"), "{skipped:?}");
        check(
            &[cooling(now, 900), cooling(now, 100)],
            Need::Any,
            0,
            &[1, 0],
        );
    }

    #[test]
    fn wrong_chain_upstreams_are_never_tried() {
        let skipped = check(
            &[c(
                1,
                Status::WrongChain {
                    got: 5,
                    expected: 1,
                },
                None,
            )],
            Need::Any,
            0,
            &[],
        );
        assert_eq!(skipped[0].1, "disabled: serves chain id 5, not 1");
    }

    #[test]
    fn block_n_calls_go_only_to_upstreams_that_have_block_n() {
        let ups = [
            c(1, Status::Ready, Some(7)),
            c(2, Status::Ready, Some(10)),
            c(1, Status::Ready, None),
        ];
        // Known to have it first; a head not yet polled after them.
        let skipped = check(&ups, Need::Block(9), 0, &[1, 2]);
        assert_eq!(
            skipped[0],
            (0, "behind: its head 7 is below block 9".to_owned())
        );
        check(&ups, Need::Block(7), 0, &[0, 1, 2]);
        // A block nobody is known to have (a future block): the highest head first.
        check(&ups[..2], Need::Block(50), 0, &[1, 0]);
        // One block behind N (a poll behind): last, after everyone else, not left out.
        check(&ups, Need::Block(8), 0, &[1, 2, 0]);
    }

    #[test]
    fn lagging_upstreams_come_after_caught_up_ones_for_fresh_calls() {
        let ups = [
            c(1, Status::Ready, Some(5)),
            c(2, Status::Ready, Some(9)),
            c(1, Status::Ready, Some(10)),
        ];
        check(&ups, Need::Fresh, 0, &[2, 1, 0]);
    }

    #[test]
    fn a_head_at_the_top_of_u64_is_compared_without_overflow() {
        // An upstream's head is its claim: the largest number must not overflow (a
        // panic with overflow checks, "behind" where it wraps).
        let ups = [c(1, Status::Ready, Some(u64::MAX)), ready(1)];
        let (got, _) = order(&ups, Need::Fresh, Some(u64::MAX), 0, Instant::now());
        assert_eq!(got.as_slice(), &[0, 1], "the one at the consensus first");
        check(&ups, Need::Block(u64::MAX), 0, &[0]);
        check(&ups, Need::Block(11), 0, &[0, 1]);
    }
}
