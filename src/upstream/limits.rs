//! A provider's own limits, kept on our side: `max_rps` (its plan's rate) and
//! `max_concurrency`. Checked when an attempt is about to be made, never waited on:
//! an upstream at its limit is passed over for this call, which goes elsewhere.

use std::{
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

pub struct Limits {
    rate: Option<DefaultDirectRateLimiter>,
    max_concurrency: Option<usize>,
    in_flight: AtomicUsize,
}

/// Counts one call in flight at an upstream until dropped (also when a hedged call is
/// cancelled), so it can travel inside the future that makes the call.
pub struct InFlight(Arc<super::Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.limits.release();
    }
}

impl super::Upstream {
    /// Admits one call here, or says which of the provider's limits stops it.
    pub fn admit(self: &Arc<Self>) -> Result<InFlight, &'static str> {
        self.limits.acquire()?;
        Ok(InFlight(self.clone()))
    }
}

impl Limits {
    pub fn new(max_rps: Option<u32>, max_concurrency: Option<u32>) -> Self {
        Limits {
            rate: max_rps
                .and_then(NonZeroU32::new)
                .map(|rps| RateLimiter::direct(Quota::per_second(rps))),
            max_concurrency: max_concurrency.map(|c| c as usize),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts one more call in flight, or says which limit stops it (counting nothing).
    fn acquire(&self) -> Result<(), &'static str> {
        let before = self.in_flight.fetch_add(1, Ordering::Relaxed);
        let refused = if self.max_concurrency.is_some_and(|max| before >= max) {
            Some("at its max_concurrency")
        } else if self.rate.as_ref().is_some_and(|r| r.check().is_err()) {
            Some("at its max_rps")
        } else {
            None
        };
        match refused {
            Some(why) => {
                self.in_flight.fetch_sub(1, Ordering::Relaxed);
                Err(why)
            }
            None => Ok(()),
        }
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_limit_frees_a_slot_when_a_call_ends() {
        let limits = Limits::new(None, Some(1));
        limits.acquire().expect("first call admitted");
        assert_eq!(limits.acquire().err(), Some("at its max_concurrency"));
        assert_eq!(limits.in_flight(), 1, "a refusal counts nothing");
        limits.release();
        assert!(limits.acquire().is_ok());
    }

    #[test]
    fn rate_limit_admits_a_burst_of_max_rps_then_refuses() {
        let limits = Limits::new(Some(3), None);
        for _ in 0..3 {
            limits.acquire().expect("within the rate");
            limits.release();
        }
        assert_eq!(limits.acquire().err(), Some("at its max_rps"));
    }
}

/// The largest `eth_getLogs` block range a provider takes: set in config (believed as
/// is), or learned from its refusals. A learned limit is held to a floor, so one
/// refusal naming a tiny number (a bug, or a provider that lies) cannot make every
/// later query cost hundreds of calls; and it expires, so a provider that raised its
/// limit (or refused once under load) gets larger ranges again.
pub struct LogsRange {
    configured: Option<u64>,
    /// (blocks, learned at).
    learned: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
}

/// No learned limit is smaller than this: the smallest real providers use (free
/// tiers) is 5 blocks.
pub const MIN_LEARNED_LOGS_RANGE: u64 = 5;
/// A learned limit is forgotten after this long, and learned again if still true.
pub const LEARNED_LOGS_RANGE_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl LogsRange {
    pub fn new(configured: Option<u64>) -> Self {
        LogsRange {
            configured: configured.filter(|&n| n > 0),
            learned: std::sync::Mutex::new(None),
        }
    }

    fn learned(&self) -> std::sync::MutexGuard<'_, Option<(u64, std::time::Instant)>> {
        // One value set whole; a poisoned lock still holds a valid one.
        self.learned.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limit in force at `now`; `None` while unknown.
    pub fn get(&self, now: std::time::Instant) -> Option<u64> {
        let learned = self
            .learned()
            .filter(|(_, at)| now.saturating_duration_since(*at) < LEARNED_LOGS_RANGE_FOR)
            .map(|(n, _)| n);
        match (self.configured, learned) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
    }

    /// Remembers a refusal of ranges larger than `size`; returns the limit now learned,
    /// or `None` when it changes nothing (not smaller than what is known).
    pub fn learn(&self, size: u64, now: std::time::Instant) -> Option<u64> {
        let size = size.max(MIN_LEARNED_LOGS_RANGE);
        let current = self.get(now);
        if current.is_some_and(|c| c <= size) {
            return None;
        }
        *self.learned() = Some((size, now));
        Some(size)
    }
}

#[cfg(test)]
mod logs_range_tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn a_learned_limit_has_a_floor_expires_and_never_raises_the_configured_one() {
        let now = Instant::now();
        let r = LogsRange::new(None);
        assert_eq!(r.get(now), None);
        assert_eq!(r.learn(1, now), Some(MIN_LEARNED_LOGS_RANGE), "floored");
        assert_eq!(r.get(now), Some(MIN_LEARNED_LOGS_RANGE));
        assert_eq!(r.learn(1_000, now), None, "never raised by a refusal");
        let later = now + LEARNED_LOGS_RANGE_FOR + Duration::from_secs(1);
        assert_eq!(
            r.get(later),
            None,
            "forgotten: larger ranges are tried again"
        );

        let configured = LogsRange::new(Some(100));
        assert_eq!(configured.learn(500, now), None);
        assert_eq!(configured.learn(50, now), Some(50));
        assert_eq!(
            configured.get(later),
            Some(100),
            "back to the configured limit"
        );
    }
}
