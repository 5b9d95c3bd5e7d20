//! The retry budget of one chain: every call earns a fraction of a retry, and every
//! retry or hedge spends one. When upstreams fail wholesale, retries stop instead of
//! multiplying the load on providers that are already failing (Finagle's design).

use std::{sync::Mutex, time::Instant};

pub struct RetryBudget {
    state: Mutex<State>,
    ratio: f64,
    per_sec: f64,
    cap: f64,
}

struct State {
    tokens: f64,
    refilled: Instant,
}

impl RetryBudget {
    pub fn new(ratio: f64, per_sec: f64) -> Self {
        let cap = (per_sec * 10.0).max(10.0);
        RetryBudget {
            state: Mutex::new(State {
                tokens: cap,
                refilled: Instant::now(),
            }),
            ratio,
            per_sec,
            cap,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Two numbers updated together; a poisoned lock still holds valid ones.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call arrived: it earns `ratio` of a retry.
    pub fn deposit(&self) {
        let mut s = self.lock();
        s.tokens = (s.tokens + self.ratio).min(self.cap);
    }

    /// Takes one retry if the budget has it.
    pub fn withdraw(&self, now: Instant) -> bool {
        self.withdraw_many(1, now)
    }

    /// Takes `n` retries at once, or none when the budget has fewer: extra upstream
    /// calls one request makes by itself (an `eth_getLogs` split into pieces) are paid
    /// for like retries, so one client cannot multiply the load on providers at will.
    pub fn withdraw_many(&self, n: u64, now: Instant) -> bool {
        let mut s = self.lock();
        let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
        s.tokens = (s.tokens + elapsed * self.per_sec).min(self.cap);
        s.refilled = now;
        // u64 -> f64 rounds above 2^53; any such n is far over the cap anyway.
        let n = n as f64;
        if s.tokens >= n {
            s.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_what_calls_earned() {
        let budget = RetryBudget::new(0.5, 0.0);
        let now = Instant::now();
        while budget.withdraw(now) {}
        assert!(!budget.withdraw(now), "spent");
        budget.deposit();
        assert!(!budget.withdraw(now), "half a retry is not a retry");
        budget.deposit();
        assert!(budget.withdraw(now), "two calls earned one retry");
    }

    #[test]
    fn many_retries_are_taken_whole_or_not_at_all() {
        let budget = RetryBudget::new(0.0, 0.0);
        let now = Instant::now();
        assert!(!budget.withdraw_many(u64::MAX, now));
        assert!(budget.withdraw_many(7, now), "the cap (10) covers 7");
        assert!(!budget.withdraw_many(4, now), "3 left: nothing taken");
        assert!(budget.withdraw_many(3, now));
    }

    #[test]
    fn the_budget_refills_with_time() {
        let budget = RetryBudget::new(0.0, 2.0);
        let now = Instant::now();
        while budget.withdraw(now) {}
        assert!(budget.withdraw(now + std::time::Duration::from_secs(1)));
    }
}
