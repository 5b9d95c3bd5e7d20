//! Uptime per series (an upstream `chain/name`, or a `chain`): time observed up and time
//! observed at all, in 15-minute buckets for the last 24 hours and daily buckets (UTC)
//! for the last 90 days. Pure bookkeeping; time Outlast did not observe (it was stopped)
//! is "no data", never "down". Read back from `uptime.json`, so every sum saturates and
//! a share is at most 1: a damaged but parseable file cannot make it panic or show more
//! than 100%.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::Time;

const FINE_MS: u64 = 15 * 60_000;
const DAY_MS: u64 = 86_400_000;
/// Bars on the page: 24 h of 15 minutes, 90 days.
pub const BARS_24H: usize = 96;
pub const BARS_90D: usize = 90;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Uptime {
    series: BTreeMap<String, Series>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Series {
    fine: VecDeque<Bucket>,
    daily: VecDeque<Bucket>,
}

/// `[start_ms, up_ms, seen_ms]` on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket(u64, u64, u64);

/// One bar: a period and the share of its observed time that was up (`None`: no data).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bar {
    pub start: Time,
    pub end: Time,
    pub up: Option<f64>,
}

/// What the page and the API show for one series.
#[derive(Debug, Clone, Default, Serialize)]
pub struct View {
    /// Oldest first.
    pub last_24h: Vec<Bar>,
    pub last_90d: Vec<Bar>,
    pub ratio_24h: Option<f64>,
    pub ratio_90d: Option<f64>,
}

impl Uptime {
    /// Counts `observed_ms` ending at `now` as up or down (`None`: unknown, not counted).
    pub fn record(&mut self, key: &str, up: Option<bool>, now: Time, observed_ms: u64) {
        let Some(up) = up else { return };
        if observed_ms == 0 {
            return;
        }
        let series = self.series.entry(key.to_owned()).or_default();
        let up_ms = if up { observed_ms } else { 0 };
        add(&mut series.fine, FINE_MS, now.0, up_ms, observed_ms);
        add(&mut series.daily, DAY_MS, now.0, up_ms, observed_ms);
        let day_ago = now.0.saturating_sub(DAY_MS + FINE_MS);
        while series.fine.front().is_some_and(|b| b.0 < day_ago) {
            series.fine.pop_front();
        }
        let days_ago = now.0.saturating_sub(DAY_MS * (BARS_90D as u64 + 1));
        while series.daily.front().is_some_and(|b| b.0 < days_ago) {
            series.daily.pop_front();
        }
    }

    pub fn view(&self, key: &str, now: Time) -> View {
        let Some(series) = self.series.get(key) else {
            return View {
                last_24h: bars(&VecDeque::new(), FINE_MS, BARS_24H, now),
                last_90d: bars(&VecDeque::new(), DAY_MS, BARS_90D, now),
                ..View::default()
            };
        };
        let ratio = |buckets: &VecDeque<Bucket>, span: u64| {
            let from = now.0.saturating_sub(span);
            let (up, seen) = buckets
                .iter()
                .filter(|b| b.0 >= from)
                .fold((0u64, 0u64), |(u, s), b| {
                    (u.saturating_add(b.1), s.saturating_add(b.2))
                });
            (seen > 0).then(|| up.min(seen) as f64 / seen as f64)
        };
        View {
            last_24h: bars(&series.fine, FINE_MS, BARS_24H, now),
            last_90d: bars(&series.daily, DAY_MS, BARS_90D, now),
            ratio_24h: ratio(&series.fine, DAY_MS),
            ratio_90d: ratio(&series.daily, DAY_MS * BARS_90D as u64),
        }
    }
}

fn add(buckets: &mut VecDeque<Bucket>, width: u64, now: u64, up: u64, seen: u64) {
    let start = now - now % width;
    match buckets.back_mut() {
        Some(b) if b.0 == start => {
            b.1 = b.1.saturating_add(up);
            b.2 = b.2.saturating_add(seen);
        }
        _ => buckets.push_back(Bucket(start, up, seen)),
    }
}

/// `count` bars of `width`, the last one holding `now`.
fn bars(buckets: &VecDeque<Bucket>, width: u64, count: usize, now: Time) -> Vec<Bar> {
    let last = now.0 - now.0 % width;
    (0..count as u64)
        .rev()
        .map(|i| {
            let start = last.saturating_sub(i * width);
            let up = buckets
                .iter()
                .find(|b| b.0 == start)
                .filter(|b| b.2 > 0)
                .map(|b| b.1.min(b.2) as f64 / b.2 as f64);
            Bar {
                start: Time(start),
                end: Time(start.saturating_add(width)),
                up,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_show_the_share_up_and_no_data_where_nothing_was_seen() {
        let mut u = Uptime::default();
        let t0 = DAY_MS * 100; // midnight, UTC
        u.record("c/a", Some(true), Time(t0 + 1_000), 1_000);
        u.record("c/a", Some(false), Time(t0 + 2_000), 1_000);
        u.record("c/a", None, Time(t0 + 3_000), 1_000);
        u.record("c/a", Some(true), Time(t0 + FINE_MS + 1_000), 2_000);
        let v = u.view("c/a", Time(t0 + FINE_MS + 5_000));
        assert_eq!(v.last_24h.len(), BARS_24H);
        assert_eq!(v.last_90d.len(), BARS_90D);
        let n = v.last_24h.len();
        assert_eq!(v.last_24h[n - 1].up, Some(1.0));
        assert_eq!(v.last_24h[n - 2].up, Some(0.5));
        assert_eq!(v.last_24h[n - 3].up, None);
        assert_eq!(v.ratio_24h, Some(0.75));
        assert_eq!(v.last_90d[BARS_90D - 1].up, Some(0.75));
        assert_eq!(v.last_90d[0].up, None);
        assert_eq!(u.view("nothing", Time(t0)).ratio_90d, None);
    }

    #[test]
    fn old_buckets_are_dropped() {
        let mut u = Uptime::default();
        u.record("c", Some(true), Time(DAY_MS), 1_000);
        u.record("c", Some(true), Time(DAY_MS * 200), 1_000);
        let s = &u.series["c"];
        assert_eq!(s.fine.len(), 1);
        assert_eq!(s.daily.len(), 1);
    }

    #[test]
    fn absurd_numbers_from_disk_neither_panic_nor_exceed_one() {
        let now = DAY_MS * 100;
        let start = now - now % FINE_MS;
        let text = format!(
            r#"{{"series":{{"c":{{"fine":[[{start},{max},{max}],[{max},{max},1]],"daily":[[{day},{max},1]]}}}}}}"#,
            max = u64::MAX,
            day = now - now % DAY_MS,
        );
        let mut u: Uptime = serde_json::from_str(&text).expect("parses");
        let v = u.view("c", Time(now));
        assert!(v.ratio_24h.is_some_and(|r| r <= 1.0), "{v:?}");
        assert!(v.last_90d.iter().all(|b| b.up.is_none_or(|r| r <= 1.0)));
        u.record("c", Some(true), Time(now), 1_000);
        let v = u.view("c", Time(u64::MAX));
        assert!(v.last_24h.iter().all(|b| b.end >= b.start));
    }
}
