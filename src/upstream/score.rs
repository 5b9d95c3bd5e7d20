//! How good an upstream is right now, as one number and the reasons behind it, so an
//! operator can see why a provider was (or was not) chosen. Pure: fed by `health`
//! with each call's outcome, read by `select`.
//!
//! Lower is better. The score is the expected latency, inflated by recent errors, by
//! calls already in flight there, and by lag; an upstream never measured scores as
//! `UNMEASURED` so it gets tried and measured.

use std::time::Duration;

/// Weight of the newest sample in the moving averages: about the last 10–20 calls.
const ALPHA: f64 = 0.15;

/// What an unmeasured upstream is assumed to cost, in ms.
const UNMEASURED_MS: f64 = 100.0;

/// Moving averages of one upstream's answers.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Mean latency of successful calls (ms), and its mean deviation: together they give
    /// a tail estimate the way TCP estimates its retransmission timeout.
    latency_ms: Option<f64>,
    deviation_ms: f64,
    /// Share of recent calls that failed for the upstream's reasons (0..1).
    error_rate: f64,
    pub samples: u64,
}

impl Stats {
    pub fn record_success(&mut self, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        match self.latency_ms {
            None => {
                self.latency_ms = Some(ms);
                self.deviation_ms = ms / 2.0;
            }
            Some(mean) => {
                self.deviation_ms += ALPHA * ((ms - mean).abs() - self.deviation_ms);
                self.latency_ms = Some(mean + ALPHA * (ms - mean));
            }
        }
        self.error_rate *= 1.0 - ALPHA;
        self.samples += 1;
    }

    pub fn record_failure(&mut self) {
        self.error_rate += ALPHA * (1.0 - self.error_rate);
        self.samples += 1;
    }

    pub fn error_rate(&self) -> f64 {
        self.error_rate
    }

    /// Latency that few successful calls exceed: mean + 4 × deviation.
    pub fn tail(&self) -> Option<Duration> {
        self.latency_ms
            .map(|m| Duration::from_secs_f64((m + 4.0 * self.deviation_ms) / 1000.0))
    }

    pub fn latency(&self) -> Option<Duration> {
        self.latency_ms.map(|m| Duration::from_secs_f64(m / 1000.0))
    }

    /// After how long an unanswered request is worth asking elsewhere too: the tail
    /// latency, within `[min, max]` (`min` until it has been measured). One rule for
    /// RPC upstreams (`Health::hedge_delay`) and storage gateways.
    pub fn hedge_delay(&self, min: Duration, max: Duration) -> Duration {
        self.tail().unwrap_or(min).clamp(min, max.max(min))
    }
}

/// A score and the words that explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    pub value: f64,
    pub reasons: Vec<String>,
}

pub fn score(stats: &Stats, in_flight: usize, lag: u64) -> Score {
    let mut reasons = Vec::new();
    let value = rate(stats, in_flight, lag, |why| reasons.push(why.to_string()));
    Score { value, reasons }
}

/// The score's number alone, for choosing: `select` asks it for every upstream of every
/// call, and words would be a few allocations each time.
pub fn value(stats: &Stats, in_flight: usize, lag: u64) -> f64 {
    rate(stats, in_flight, lag, |_| {})
}

/// The one home of the formula; `say` is told each reason as it applies.
fn rate(
    stats: &Stats,
    in_flight: usize,
    lag: u64,
    mut say: impl FnMut(std::fmt::Arguments<'_>),
) -> f64 {
    let latency = match stats.latency_ms {
        Some(ms) => {
            say(format_args!("latency {ms:.0} ms"));
            ms.max(0.1)
        }
        None => {
            say(format_args!("not measured yet"));
            UNMEASURED_MS
        }
    };
    let mut value = latency;
    if stats.error_rate >= 0.01 {
        say(format_args!(
            "{:.0}% recent errors",
            stats.error_rate * 100.0
        ));
        value *= 1.0 + 8.0 * stats.error_rate;
    }
    if in_flight > 0 {
        say(format_args!("{in_flight} in flight"));
        value *= 1.0 + in_flight as f64 / 8.0;
    }
    if lag > 0 {
        say(format_args!("{lag} blocks behind"));
        value += 50.0 * lag as f64;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(ms: u64, failures: usize) -> Stats {
        let mut s = Stats::default();
        for _ in 0..10 {
            s.record_success(Duration::from_millis(ms));
        }
        for _ in 0..failures {
            s.record_failure();
        }
        s
    }

    #[test]
    fn faster_fewer_errors_less_load_and_no_lag_score_better() {
        let fast = score(&measured(10, 0), 0, 0);
        assert!(fast.value < score(&measured(40, 0), 0, 0).value);
        assert!(fast.value < score(&measured(10, 3), 0, 0).value);
        assert!(fast.value < score(&measured(10, 0), 8, 0).value);
        assert!(fast.value < score(&measured(10, 0), 0, 2).value);
        assert_eq!(fast.reasons, ["latency 10 ms"]);
        let worst = (measured(10, 3), 8, 2);
        assert_eq!(
            value(&worst.0, worst.1, worst.2),
            score(&worst.0, worst.1, worst.2).value
        );
    }

    #[test]
    fn reasons_name_every_penalty() {
        let s = score(&measured(20, 2), 3, 4);
        assert_eq!(s.reasons.len(), 4, "{:?}", s.reasons);
        assert!(s.reasons[1].ends_with("% recent errors"), "{:?}", s.reasons);
        assert_eq!(s.reasons[2..], ["3 in flight", "4 blocks behind"]);
    }

    #[test]
    fn tail_tracks_jitter() {
        let steady = measured(10, 0);
        let mut jittery = Stats::default();
        for ms in [5, 40, 5, 40, 5, 40, 5, 40] {
            jittery.record_success(Duration::from_millis(ms));
        }
        assert!(
            jittery.tail() > steady.tail(),
            "{:?} vs {:?}",
            jittery.tail(),
            steady.tail()
        );
    }
}
