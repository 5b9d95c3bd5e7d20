//! Heads: what each upstream reports as its newest, safe and finalized blocks, and the
//! chain's **consensus head** — the newest block that `quorum` distinct operators
//! report with the same hash. Pure bookkeeping, fed by `upstream::track`; read by
//! `resolve` (to pin `latest`) and `select` (to skip upstreams without a block).
//!
//! The consensus number never goes backwards, so `latest` through Outlast never does.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How many recent (number, hash) pairs each upstream remembers, so a quorum can be
/// found at a height that faster upstreams have already passed.
const RECENT: usize = 64;

/// One upstream's view, as last polled.
#[derive(Debug, Clone, Default)]
pub struct HeadView {
    pub latest: Option<u64>,
    pub safe: Option<u64>,
    pub finalized: Option<u64>,
    pub updated: Option<Instant>,
    /// When `latest` last changed: a node whose head stopped while others moved on is
    /// stuck, and its old head must not hold the consensus back.
    pub changed: Option<Instant>,
    recent: VecDeque<(u64, String)>,
}

impl HeadView {
    fn hash_at(&self, number: u64) -> Option<&str> {
        self.recent
            .iter()
            .rev()
            .find(|(n, _)| *n == number)
            .map(|(_, h)| h.as_str())
    }
}

/// Per-upstream head state, shared between the tracker (writer) and routing (readers).
#[derive(Debug, Default)]
pub struct UpstreamHead {
    view: Mutex<HeadView>,
}

impl UpstreamHead {
    fn lock(&self) -> std::sync::MutexGuard<'_, HeadView> {
        // Plain data replaced in one step: a poisoned lock still holds a whole value.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn view(&self) -> HeadView {
        self.lock().clone()
    }

    pub fn latest(&self) -> Option<u64> {
        self.lock().latest
    }

    /// Records a poll. A head lower than before (a restarted or reorged node) is taken
    /// as is: this is the upstream's own view, not the chain's.
    pub fn record(
        &self,
        latest: (u64, String),
        safe: Option<u64>,
        finalized: Option<u64>,
        now: Instant,
    ) {
        let mut v = self.lock();
        if v.recent.back().map(|(n, h)| (*n, h.as_str())) != Some((latest.0, latest.1.as_str())) {
            v.recent.push_back(latest.clone());
            if v.recent.len() > RECENT {
                v.recent.pop_front();
            }
        }
        if v.latest != Some(latest.0) {
            v.changed = Some(now);
        }
        v.latest = Some(latest.0);
        v.safe = safe.or(v.safe);
        v.finalized = finalized.or(v.finalized);
        v.updated = Some(now);
    }
}

/// The chain's agreed head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consensus {
    pub number: u64,
    pub hash: Arc<str>,
    /// `quorum` distinct operators agree on `hash`; false while only the best
    /// available guess exists (too few operators report, or they disagree).
    pub confirmed: bool,
}

#[derive(Debug, Default)]
pub struct ChainHead {
    state: Mutex<ChainHeadState>,
}

#[derive(Debug, Clone, Default)]
pub struct ChainHeadState {
    pub consensus: Option<Consensus>,
    pub safe: Option<u64>,
    pub finalized: Option<u64>,
}

impl ChainHead {
    fn lock(&self) -> std::sync::MutexGuard<'_, ChainHeadState> {
        // Plain data replaced in one step: a poisoned lock still holds a whole value.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self) -> ChainHeadState {
        self.lock().clone()
    }

    pub fn latest(&self) -> Option<u64> {
        self.lock().consensus.as_ref().map(|c| c.number)
    }

    /// Recomputes from the upstreams' views (operator, view) and keeps every number
    /// monotonic. Returns the new consensus when it moved.
    pub fn update(&self, views: &[(&str, HeadView)], quorum: usize) -> Option<Consensus> {
        let next = consensus(views, quorum);
        let (safe, finalized) = (
            quorum_number(views, quorum, |v| v.safe),
            quorum_number(views, quorum, |v| v.finalized),
        );
        let mut s = self.lock();
        s.safe = max_opt(s.safe, safe);
        s.finalized = max_opt(s.finalized, finalized);
        let moved = match (&s.consensus, next) {
            (_, None) => None,
            (None, Some(n)) => Some(n),
            (Some(old), Some(n)) if n.number > old.number => Some(n),
            // Same height: a confirmation, or a same-height reorg agreed by a quorum.
            (Some(old), Some(n))
                if n.number == old.number && n != *old && (n.confirmed || !old.confirmed) =>
            {
                Some(n)
            }
            _ => None,
        };
        if let Some(n) = &moved {
            s.consensus = Some(n.clone());
        }
        moved
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    a.max(b)
}

/// Drops the views of upstreams that are stuck: behind the newest head reported, with a
/// head unchanged for `stall_after`. They still serve what they have; they just do not
/// vote on the head, so one stuck node cannot freeze `latest` for everyone. Unless the
/// stuck ones are more operators than the others: then the chain has most likely no new
/// block, and the few ahead (one upstream on a branch of its own, say) are not believed.
pub fn without_stalled(
    views: Vec<(&str, HeadView)>,
    stall_after: Duration,
    now: Instant,
) -> Vec<(&str, HeadView)> {
    let top = views.iter().filter_map(|(_, v)| v.latest).max();
    let stuck = |v: &HeadView| {
        let behind = v.latest < top;
        let still = v
            .changed
            .is_none_or(|c| now.duration_since(c) > stall_after);
        behind && still
    };
    let operators = |want_stuck: bool| {
        views
            .iter()
            .filter(|(_, v)| stuck(v) == want_stuck)
            .map(|(op, _)| *op)
            .collect::<HashSet<_>>()
            .len()
    };
    if operators(true) > operators(false) {
        return views;
    }
    views.into_iter().filter(|(_, v)| !stuck(v)).collect()
}

/// The newest (number, hash) that enough distinct operators have reported among their
/// recent heads: `quorum` of them, or all voting operators when fewer vote (then the head
/// is not `confirmed`). Without any agreement, the lower median of the operators' newest
/// heads, unconfirmed: not the newest, since the head never goes back, and one operator
/// claiming a block far above the chain would have set `latest` there for good (every
/// read pinned to a block nobody has).
pub fn consensus(views: &[(&str, HeadView)], quorum: usize) -> Option<Consensus> {
    let mut support: BTreeMap<(u64, &str), HashSet<&str>> = BTreeMap::new();
    for (operator, view) in views {
        for (n, h) in &view.recent {
            support
                .entry((*n, h.as_str()))
                .or_default()
                .insert(operator);
        }
    }
    let quorum = quorum.max(1);
    let voters = views
        .iter()
        .map(|(op, _)| *op)
        .collect::<HashSet<_>>()
        .len();
    let needed = quorum.min(voters).max(1);
    let agreed = support
        .iter()
        .rev()
        .find(|(_, ops)| ops.len() >= needed)
        .map(|((n, h), ops)| Consensus {
            number: *n,
            hash: Arc::from(*h),
            confirmed: ops.len() >= quorum,
        });
    agreed.or_else(|| {
        // Best available: the lower median of each operator's newest head, with the
        // hash most operators give at that height.
        let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
        for (operator, view) in views {
            if let Some(n) = view.latest {
                let e = newest.entry(operator).or_insert(n);
                *e = (*e).max(n);
            }
        }
        let mut tops: Vec<u64> = newest.into_values().collect();
        tops.sort_unstable();
        let top = *tops.get(tops.len().checked_sub(1)? / 2)?;
        let (hash, _) = support
            .range((top, "")..)
            .filter(|((n, _), _)| *n == top)
            .max_by_key(|(_, ops)| ops.len())
            .map(|((_, h), ops)| (*h, ops.len()))?;
        Some(Consensus {
            number: top,
            hash: Arc::from(hash),
            confirmed: false,
        })
    })
}

/// The highest number that at least `quorum` operators have reached (by `field`).
fn quorum_number(
    views: &[(&str, HeadView)],
    quorum: usize,
    field: fn(&HeadView) -> Option<u64>,
) -> Option<u64> {
    let mut best: BTreeMap<&str, u64> = BTreeMap::new();
    for (operator, view) in views {
        if let Some(n) = field(view) {
            let e = best.entry(operator).or_insert(n);
            *e = (*e).max(n);
        }
    }
    let mut numbers: Vec<u64> = best.into_values().collect();
    numbers.sort_unstable_by(|a, b| b.cmp(a));
    numbers
        .get(quorum.max(1).min(numbers.len()).checked_sub(1)?)
        .copied()
}

/// Hash of block `number` as the upstream reported it, if remembered.
pub fn reported_hash(view: &HeadView, number: u64) -> Option<&str> {
    view.hash_at(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(heads: &[(u64, &str)]) -> HeadView {
        let h = UpstreamHead::default();
        for (n, hash) in heads {
            h.record((*n, (*hash).to_owned()), None, None, Instant::now());
        }
        h.view()
    }

    fn check(views: &[(&str, &[(u64, &str)])], quorum: usize, expected: Option<(u64, &str, bool)>) {
        let views: Vec<(&str, HeadView)> =
            views.iter().map(|(op, heads)| (*op, view(heads))).collect();
        let got = consensus(&views, quorum).map(|c| (c.number, c.hash, c.confirmed));
        assert_eq!(
            got,
            expected.map(|(n, h, c)| (n, Arc::from(h), c)),
            "{views:?}"
        );
    }

    #[test]
    fn consensus_is_the_newest_block_a_quorum_of_operators_agree_on() {
        // a is ahead; b and c agree on 11; a also saw 11 with the same hash.
        check(
            &[
                ("a", &[(11, "x"), (12, "y")]),
                ("b", &[(11, "x")]),
                ("c", &[(10, "w")]),
            ],
            2,
            Some((11, "x", true)),
        );
        // Two upstreams of the same operator are one vote: no agreement, and then the
        // lower of the two operators' heads.
        check(
            &[
                ("a", &[(12, "y")]),
                ("a", &[(12, "y")]),
                ("b", &[(11, "x")]),
            ],
            2,
            Some((11, "x", false)),
        );
        // Disagreeing hashes at the top: the quorum falls back to the last agreed block.
        check(
            &[
                ("a", &[(5, "p"), (6, "liar")]),
                ("b", &[(5, "p"), (6, "q")]),
            ],
            2,
            Some((5, "p", true)),
        );
        check(&[], 2, None);
    }

    #[test]
    fn a_stuck_upstream_loses_its_vote() {
        let now = Instant::now();
        let stuck = view(&[(5, "x")]);
        let moving = view(&[(5, "x"), (9, "z")]);
        let views = vec![("a", stuck), ("b", moving)];
        let later = now + Duration::from_secs(5);
        let voting = without_stalled(views.clone(), Duration::from_secs(1), later);
        assert_eq!(voting.iter().map(|(op, _)| *op).collect::<Vec<_>>(), ["b"]);
        assert_eq!(
            consensus(&voting, 2).map(|c| (c.number, c.confirmed)),
            Some((9, false))
        );
        // Not yet stuck for long: it still votes, and the head waits for it.
        let voting = without_stalled(views, Duration::from_secs(60), later);
        assert_eq!(consensus(&voting, 2).map(|c| c.number), Some(5));
        // Fewer voters than the quorum: all must agree, and the head is unconfirmed.
        assert_eq!(
            consensus(&[("a", view(&[(4, "x")]))], 2).map(|c| (c.number, c.confirmed)),
            Some((4, false))
        );
    }

    #[test]
    fn a_lone_upstream_ahead_of_a_stuck_majority_does_not_set_the_head() {
        let now = Instant::now();
        // b and c see no new block; a alone runs ahead on blocks of its own.
        let still = view(&[(5, "x")]);
        let views = vec![
            ("a", view(&[(5, "x"), (6, "f"), (7, "g")])),
            ("b", still.clone()),
            ("c", still),
        ];
        let later = now + Duration::from_secs(5);
        let voting = without_stalled(views, Duration::from_secs(1), later);
        assert_eq!(voting.len(), 3, "nobody loses a vote");
        assert_eq!(
            consensus(&voting, 2).map(|c| (c.number, c.hash, c.confirmed)),
            Some((5, Arc::from("x"), true))
        );
    }

    #[test]
    fn one_operator_claiming_a_block_far_ahead_does_not_move_the_head_there() {
        let head = ChainHead::default();
        let honest = |n: u64| ("a", view(&[(n, "x")]));
        let liar = ("liar", view(&[(u64::MAX - 1, "forged")]));
        let moved = head.update(&[honest(100), liar.clone()], 2);
        assert_eq!(moved.map(|c| (c.number, c.confirmed)), Some((100, false)));
        // The honest chain still moves it; the liar's height never becomes `latest`.
        head.update(&[honest(101), liar.clone()], 2);
        assert_eq!(head.latest(), Some(101));
        // Among three, the lower median: the honest pair's heads, not the liar's.
        let three = [("a", view(&[(102, "p")])), ("b", view(&[(103, "q")])), liar];
        assert_eq!(consensus(&three, 2).map(|c| c.number), Some(103));
    }

    #[test]
    fn consensus_never_goes_backwards() {
        let head = ChainHead::default();
        let ahead = [("a", view(&[(10, "x")])), ("b", view(&[(10, "x")]))];
        assert_eq!(head.update(&ahead, 2).map(|c| c.number), Some(10));
        let behind = [("a", view(&[(8, "u")])), ("b", view(&[(8, "u")]))];
        assert_eq!(head.update(&behind, 2), None);
        assert_eq!(head.latest(), Some(10));
    }

    #[test]
    fn finalized_needs_a_quorum_too() {
        let h = |fin| {
            let u = UpstreamHead::default();
            u.record((100, "x".into()), Some(fin + 32), Some(fin), Instant::now());
            u.view()
        };
        let views = [("a", h(64)), ("b", h(60)), ("c", h(90))];
        assert_eq!(quorum_number(&views, 2, |v| v.finalized), Some(64));
        assert_eq!(quorum_number(&views, 3, |v| v.finalized), Some(60));
    }
}
