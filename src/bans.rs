//! One judgement for every instance: with `[redis]`, an upstream caught lying on one
//! Outlast is banned on all of them, with its evidence. Each instance publishes the bans
//! it records (a signed note per upstream, kept as long as the ban) and reads the
//! others' every `EVERY`; a ban read is recorded in local health like one seen here, so
//! routing skips the liar and incidents show the evidence.
//!
//! Notes are authenticated like cache entries (`[redis] secret`): whoever can write to
//! Redis cannot ban an honest provider everywhere by hand.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    cache::redis::RedisTier,
    route::Chain,
    upstream::{
        Upstream,
        health::{Evidence, Status},
        log_transition,
    },
};

/// How often bans are published and read.
const EVERY: Duration = Duration::from_secs(1);

/// What one instance says of a liar.
#[derive(Debug, Serialize, Deserialize)]
struct Note {
    /// Until when (Unix ms): clocks of instances agree well enough for bans of minutes.
    until_ms: u64,
    evidence: Evidence,
}

fn key(chain: &str, upstream: &str) -> String {
    format!("ban:{chain}:{upstream}")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs until `stop`, when the gateway has a shared tier.
pub async fn share(redis: Arc<RedisTier>, chains: Vec<Arc<Chain>>, stop: CancellationToken) {
    // The ban (its end) each note was written for, so each is published once.
    let mut published: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Read each round: a reload may have added or removed upstreams.
        let upstreams: Vec<(String, Arc<Upstream>)> = chains
            .iter()
            .flat_map(|c| {
                c.upstreams()
                    .iter()
                    .map(|u| (key(&c.name, &u.name), u.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        publish(&redis, &upstreams, &mut published).await;
        adopt(&redis, &upstreams, &mut published).await;
    }
}

/// Writes a note for each ban recorded here and not yet published.
async fn publish(
    redis: &RedisTier,
    upstreams: &[(String, Arc<Upstream>)],
    published: &mut HashMap<String, Instant>,
) {
    let now = Instant::now();
    for (key, up) in upstreams {
        let Status::Banned { until, evidence } = up.health.status() else {
            continue;
        };
        let left = until.saturating_duration_since(now);
        if left.is_zero() || published.get(key) == Some(&until) {
            continue;
        }
        let note = Note {
            until_ms: unix_ms(SystemTime::now() + left),
            evidence,
        };
        if let Ok(bytes) = serde_json::to_vec(&note) {
            redis.put_note(key, &bytes, left).await;
            published.insert(key.clone(), until);
        }
    }
}

/// Records the bans other instances published that this one does not have yet.
async fn adopt(
    redis: &RedisTier,
    upstreams: &[(String, Arc<Upstream>)],
    published: &mut HashMap<String, Instant>,
) {
    let keys: Vec<String> = upstreams.iter().map(|(k, _)| k.clone()).collect();
    let notes = redis.get_notes(&keys).await;
    let now_ms = unix_ms(SystemTime::now());
    for ((key, up), note) in upstreams.iter().zip(notes) {
        let Some(note) = note.and_then(|n| serde_json::from_slice::<Note>(&n).ok()) else {
            continue;
        };
        let left = Duration::from_millis(note.until_ms.saturating_sub(now_ms));
        let banned_here = matches!(up.health.status(), Status::Banned { .. });
        if left.is_zero() || banned_here {
            continue;
        }
        let evidence = Evidence {
            summary: format!("(on another instance) {}", note.evidence.summary),
            ..note.evidence
        };
        let transition = up.health.record_lie(evidence, left, Instant::now());
        log_transition(up, &transition);
        // Published already: it is the same ban, not one to tell the others about.
        if let Status::Banned { until, .. } = up.health.status() {
            published.insert(key.clone(), until);
        }
    }
}
