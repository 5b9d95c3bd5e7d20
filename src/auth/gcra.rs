//! The generic cell rate algorithm, as one pure function: a budget is one number, the
//! theoretical arrival time (TAT) of the next call, so it is checked and advanced in
//! one step — in memory here, or in one Redis script (`shared`) with the same rule.
//! `Table` keeps the budgets of one instance (the local limits, and the fallback while
//! Redis is away).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// A budget's pace: one call per `interval_us`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub interval_us: u64,
    pub burst: u64,
}

impl Rate {
    pub fn new(per_sec: u32, burst: Option<u32>) -> Rate {
        let per_sec = u64::from(per_sec.max(1));
        Rate {
            interval_us: (1_000_000 / per_sec).max(1),
            burst: burst.map_or(per_sec * 2, u64::from).max(1),
        }
    }
}

/// `cost` calls at `now` (µs) against a budget whose TAT is `tat`: the new TAT if
/// allowed, else how long until they would be. Calls beyond the burst wait their pace.
pub fn gcra(tat: u64, now: u64, rate: Rate, cost: u64) -> Result<u64, Duration> {
    let next = tat
        .max(now)
        .saturating_add(cost.saturating_mul(rate.interval_us));
    let limit = now.saturating_add(rate.burst.saturating_mul(rate.interval_us));
    if next <= limit {
        Ok(next)
    } else {
        Err(Duration::from_micros(next - limit))
    }
}

/// Budgets kept in this process, by name. Bounded: once it holds `MAX_BUDGETS`, the
/// budgets back at full burst (TAT in the past) are forgotten, as they equal new ones.
pub struct Table {
    start: Instant,
    tats: Mutex<HashMap<String, u64>>,
}

const MAX_BUDGETS: usize = 100_000;

impl Default for Table {
    fn default() -> Self {
        Table {
            start: Instant::now(),
            tats: Mutex::new(HashMap::new()),
        }
    }
}

impl Table {
    pub fn charge(&self, budget: &str, rate: Rate, cost: u64) -> Result<(), Duration> {
        let now = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        // Each change is one insert under the lock: a poisoned lock holds whole values.
        let mut tats = self.tats.lock().unwrap_or_else(|e| e.into_inner());
        if tats.len() >= MAX_BUDGETS && !tats.contains_key(budget) {
            tats.retain(|_, tat| *tat > now);
            if tats.len() >= MAX_BUDGETS {
                forget_nearest_full(&mut tats);
            }
        }
        let tat = tats.get(budget).copied().unwrap_or(now);
        let next = gcra(tat, now, rate, cost)?;
        tats.insert(budget.to_owned(), next);
        Ok(())
    }
}

/// With every budget in use, the tenth nearest to full burst (the earliest TATs) are
/// forgotten: such a caller starts again with a little more than it had, and the next
/// tenth of `MAX_BUDGETS` new callers each cost an insert, where each cost a pass over
/// the whole table and the table grew past its bound.
fn forget_nearest_full(tats: &mut HashMap<String, u64>) {
    let mut all: Vec<u64> = tats.values().copied().collect();
    let cut = all.len() / 10;
    let (_, &mut below, _) = all.select_nth_unstable(cut);
    tats.retain(|_, tat| *tat > below);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_its_burst_at_once_then_its_pace() {
        let rate = Rate::new(10, Some(3)); // one per 100 ms, three at once
        assert_eq!(rate.interval_us, 100_000);
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra(tat, 0, rate, 1).expect("within the burst");
        }
        assert_eq!(gcra(tat, 0, rate, 1), Err(Duration::from_millis(100)));
        assert_eq!(
            gcra(tat, 50_000, rate, 1),
            Err(Duration::from_millis(50)),
            "half-way to the next call"
        );
        assert!(gcra(tat, 100_000, rate, 1).is_ok(), "one call later");
        assert_eq!(
            gcra(0, 0, rate, 4),
            Err(Duration::from_millis(100)),
            "a batch over the burst"
        );
    }

    #[test]
    fn burst_defaults_to_twice_the_rate() {
        assert_eq!(Rate::new(50, None).burst, 100);
        assert_eq!(Rate::new(50, Some(7)).burst, 7);
        assert_eq!(Rate::new(2_000_000, None).interval_us, 1);
    }

    #[test]
    fn the_table_keeps_one_budget_per_name() {
        let t = Table::default();
        let rate = Rate::new(1, Some(2));
        assert!(t.charge("a", rate, 1).is_ok());
        assert!(t.charge("a", rate, 1).is_ok());
        assert!(t.charge("a", rate, 1).is_err());
        assert!(t.charge("b", rate, 2).is_ok());
    }

    #[test]
    fn a_table_of_budgets_all_in_use_stays_within_its_bound() {
        let table = Table::default();
        let rate = Rate::new(1, Some(1_000)); // every budget stays in use for the test
        for i in 0..MAX_BUDGETS + 5_000 {
            assert!(table.charge(&format!("ip:{i}"), rate, 1).is_ok(), "{i}");
        }
        let kept = table.tats.lock().expect("lock").len();
        assert!(kept <= MAX_BUDGETS, "{kept} budgets kept");
        assert!(
            kept >= MAX_BUDGETS * 9 / 10,
            "only a tenth forgotten: {kept}"
        );
    }
}
