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
