//! The latency histograms (`*_duration_seconds`), kept here rather than in the
//! Prometheus recorder. The recorder keeps every sample until its next upkeep and sorts
//! them into buckets then: memory written on every request and read back seconds later,
//! the largest single source of a forwarded call's last-level cache misses, and a few
//! hundred instructions a sample, two samples a forwarded call (bench/README.md). Here
//! the buckets are fixed and a sample is two atomic adds to counters on the recording
//! thread's own cache lines; a scrape sums them.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use super::text;

/// Upper bounds of the buckets, in seconds, from 1 ms to 30 s (`+Inf` follows).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How many threads record into a series without sharing a cache line: each thread
/// takes the next stripe the first time it records (more threads than stripes share
/// some, which only costs speed: the adds are atomic).
const STRIPES: usize = 8;

/// One thread's counts of one series, on cache lines of their own.
#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    /// Samples per bucket (not cumulative); the last one is above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// The samples' sum, in nanoseconds (584 years before it wraps).
    nanos: AtomicU64,
}

/// The histogram of one label set.
pub struct Series {
    labels: Vec<(&'static str, Box<str>)>,
    stripes: [Stripe; STRIPES],
}

/// The stripe this thread records into.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static MINE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES);
    // During the thread's teardown its index is gone: any stripe counts the same.
    MINE.try_with(|i| *i).unwrap_or(0)
}

impl Series {
    pub fn record(&self, took: Duration) {
        let stripe = &self.stripes[stripe()];
        let seconds = took.as_secs_f64();
        // Prometheus' buckets count the samples at or below their bound.
        let bucket = BUCKETS.partition_point(|&bound| bound < seconds);
        stripe.counts[bucket].fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        stripe.nanos.fetch_add(nanos, Relaxed);
    }

    /// Per bucket (not cumulative), and the sum in seconds, over every stripe.
    fn totals(&self) -> ([u64; BUCKETS.len() + 1], f64) {
        let mut counts = [0u64; BUCKETS.len() + 1];
        let mut nanos = 0u64;
        for s in &self.stripes {
            for (total, c) in counts.iter_mut().zip(&s.counts) {
                *total += c.load(Relaxed);
            }
            nanos = nanos.wrapping_add(s.nanos.load(Relaxed));
        }
        (counts, nanos as f64 / 1e9)
    }
}

/// A histogram family: its name, help and series. Label values are bounded as every
/// metric's are (config names), so the list is too.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    series: Mutex<Vec<Arc<Series>>>,
}

impl Histogram {
    pub const fn new(name: &'static str, help: &'static str) -> Histogram {
        Histogram {
            name,
            help,
            series: Mutex::new(Vec::new()),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The series of `labels`, made the first time (callers keep it: `super::Handles`).
    pub fn series(&self, labels: &[(&'static str, &str)]) -> Arc<Series> {
        let mut all = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let same = |s: &&Arc<Series>| {
            s.labels.len() == labels.len()
                && s.labels
                    .iter()
                    .zip(labels)
                    .all(|(a, b)| a.0 == b.0 && *a.1 == *b.1)
        };
        if let Some(found) = all.iter().find(same) {
            return found.clone();
        }
        let made = Arc::new(Series {
            labels: labels.iter().map(|&(k, v)| (k, Box::from(v))).collect(),
            stripes: Default::default(),
        });
        all.push(made.clone());
        made
    }

    /// The family in the text exposition format; nothing while it has no series.
    pub fn render(&self, out: &mut String) {
        let all: Vec<Arc<Series>> = self
            .series
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if all.is_empty() {
            return;
        }
        let name = self.name;
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        let bounds: Vec<String> = BUCKETS.iter().map(f64::to_string).collect();
        let les = bounds.iter().map(String::as_str).chain(["+Inf"]);
        let mut family = text::Family::typed(out, name, self.help, "histogram");
        for series in &all {
            let (counts, seconds) = series.totals();
            let labels: Vec<(&str, &str)> = series.labels.iter().map(|(k, v)| (*k, &**v)).collect();
            let mut cumulative = 0;
            for (n, le) in counts.iter().zip(les.clone()) {
                cumulative += n;
                let with_le: Vec<(&str, &str)> =
                    labels.iter().copied().chain([("le", le)]).collect();
                family.sample(&bucket, &with_le, cumulative as f64);
            }
            family.sample(&sum, &labels, seconds);
            family.sample(&count, &labels, cumulative as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_buckets_at_or_above_them_and_add_up_over_threads() {
        static F: Histogram = Histogram::new("test_duration_seconds", "A test.");
        let s = F.series(&[("chain", "a\"b")]);
        s.record(Duration::from_micros(500)); // 1 ms bucket
        s.record(Duration::from_millis(1)); // exactly a bound: in it
        let other = F.series(&[("chain", "a\"b")]);
        std::thread::spawn(move || other.record(Duration::from_secs(60)))
            .join()
            .expect("recorded on another thread");
        let mut out = String::new();
        F.render(&mut out);
        let line = |start: &str| {
            out.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("{start} in {out}"))
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        let labels = "chain=\"a\\\"b\"";
        assert_eq!(
            line(&format!(
                "test_duration_seconds_bucket{{{labels},le=\"0.001\"}}"
            )),
            "2"
        );
        assert_eq!(
            line(&format!(
                "test_duration_seconds_bucket{{{labels},le=\"30\"}}"
            )),
            "2"
        );
        assert_eq!(
            line(&format!(
                "test_duration_seconds_bucket{{{labels},le=\"+Inf\"}}"
            )),
            "3"
        );
        assert_eq!(
            line(&format!("test_duration_seconds_count{{{labels}}}")),
            "3"
        );
        assert_eq!(
            line(&format!("test_duration_seconds_sum{{{labels}}}")),
            "60.0015"
        );
        assert!(out.starts_with(
            "# HELP test_duration_seconds A test.\n# TYPE test_duration_seconds histogram\n"
        ));
        // One series per label set, however many times it is asked for.
        assert_eq!(F.series.lock().map(|s| s.len()).unwrap_or(0), 1);
    }

    #[test]
    fn a_family_without_series_renders_nothing() {
        static F: Histogram = Histogram::new("empty_duration_seconds", "Nothing yet.");
        let mut out = String::new();
        F.render(&mut out);
        assert_eq!(out, "");
    }
}
