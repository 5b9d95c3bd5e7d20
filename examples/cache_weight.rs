//! How much memory the answer cache really takes, against its bound: offers a memory
//! tier bounded to `[cache] size_bytes` (the default 64 MiB, or `MiB` given) three times
//! the final `eth_getBalance` answers that fit, and prints how many it holds, the bytes
//! each costs (the three quarters of the bound kept for final answers, over them; a
//! quarter is kept for answers tied to the head) and how much resident memory grew
//! against the bound. `cargo run --release --example cache_weight [MiB]` (bench/run.sh
//! weighs the same through a running Outlast).

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
        memory.insert(key.immutable(), &entry);
    }
}

fn main() {
    let mib: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let bound = mib << 20;
    let before = rss_bytes();
    let memory = Memory::new(bound, Duration::from_secs(3600));
    // A balance answer and its key take ~130 B: three times what fits.
    fill(&memory, 0, 3 * bound / 130);
    let (entries, weighed) = memory.usage();
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "bounded to {mib} MiB: {entries} entries, {} B each, counted {} MiB, resident grew {} MiB ({:.2} of the bound)",
        (bound - bound / 4) / entries.max(1),
        weighed >> 20,
        grown >> 20,
        grown as f64 / bound as f64
    );
}
