//! How much memory one cached answer really costs, against what the cache counts for
//! it: fills an unbounded memory tier with `N` distinct `eth_getBalance`-sized answers
//! and prints resident memory grown per entry beside the weight per entry; or (`bounded`)
//! offers a tier bounded to `[cache] size_bytes` = 32 MiB three times what fits and
//! prints how much resident memory grew against that bound.
//! `cargo run --example cache_weight [entries]`, `cargo run --example cache_weight
//! bounded` (bench/run.sh weighs the same through a running Outlast).

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use outlast::{
    cache::{Entry, Key, Reach, memory::Memory, policy::Lifetime},
    verify::Level,
};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

const IMMUTABLE: Reach = Reach {
    immutable: true,
    head_tied: false,
};

/// `n` distinct answers, numbered from `from`.
fn fill(memory: &Memory, from: u64, n: u64) {
    for i in from..from + n {
        let text: Arc<str> = Arc::from(format!("1:eth_getBalance:[\"0x{i:040x}\",\"0x1\"]"));
        let key = Key::new(text, IMMUTABLE, None);
        let entry = Entry {
            lifetime: Lifetime::Immutable,
            level: Level::None,
            stored: SystemTime::now(),
            body: Bytes::from(format!("\"0x{:x}\"", i.wrapping_mul(1_000_000_007))),
        };
        memory.insert(key.immutable(), entry);
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("bounded") => bounded(),
        other => per_entry(other.and_then(|a| a.parse().ok()).unwrap_or(200_000)),
    }
}

/// Resident memory per entry against the weight counted for it.
fn per_entry(n: u64) {
    let before = rss_bytes();
    let memory = Memory::new(1 << 40, Duration::from_secs(3600));
    fill(&memory, 0, n);
    let (entries, weighed) = memory.usage();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "entries {entries}  counted {} B/entry  resident {} B/entry  resident/counted {:.2}",
        weighed / entries.max(1),
        grown / entries.max(1),
        grown as f64 / weighed.max(1) as f64
    );
}

/// A tier bounded to 32 MiB, offered three times what fits: resident growth against
/// the bound.
fn bounded() {
    const BOUND: u64 = 32 << 20;
    let before = rss_bytes();
    let memory = Memory::new(BOUND, Duration::from_secs(3600));
    fill(&memory, 0, 3 * BOUND / 200);
    let (entries, weighed) = memory.usage();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "bounded to {} MiB: {entries} entries, counted {} MiB, resident grew {} MiB ({:.2} of the bound)",
        BOUND >> 20,
        weighed >> 20,
        grown >> 20,
        grown as f64 / BOUND as f64
    );
}
