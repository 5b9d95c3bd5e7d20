//! Identical calls in flight at once go upstream once: the first caller of a key leads
//! (sends it), later callers follow and get the leader's answer. A leader that is
//! dropped (its client went away) or got no answer lets its followers go on their own.
//! No I/O; never holds its lock across an await.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use rustc_hash::FxBuildHasher;
use tokio::sync::Notify;

use super::Key;
use crate::{upstream::Answer, verify::Level};

/// What a leader hands its followers: who answered, what, and how it was checked; or
/// `None` (ask yourself).
pub type Landed = Option<(Arc<str>, Answer, Level)>;

/// One flight: what it is for, and its outcome, set once: by its leader's `land`, or
/// `None` when the leader is dropped without one. A set-once cell and one `Notify`
/// rather than a `watch` channel: every forwarded call leads a flight, and `watch` woke
/// eight wait lists on each send (2% of a forwarded batch's CPU), almost always with
/// nobody waiting. One allocation per flight: the key is the caller's (shared with the
/// cache), and the table, the leader and the followers share this.
struct Landing {
    key: Arc<str>,
    head: Option<Arc<str>>,
    landed: OnceLock<Landed>,
    notify: Notify,
}

impl Landing {
    /// Sets the outcome unless one is set, and wakes the followers.
    fn set(&self, landed: Landed) {
        if self.landed.set(landed).is_ok() {
            self.notify.notify_waiters();
        }
    }
}

type Slot = Arc<Landing>;

/// Flights by the hash of their key and head (`Key::flight`, hashed once per call: a
/// forwarded batch spent 8% of its CPU re-hashing `key@head` strings here). Each keeps
/// its whole key, so two calls of one hash are never joined.
type Map = HashMap<u64, Slot, FxBuildHasher>;

/// In shards by hash: every forwarded call locks its flight's shard twice (join, land).
/// With one lock for all, the serving threads (`cores`) queued on it: in a forwarded
/// batch with two threads, its unlock (waking the other thread) and the table's removes
/// were 3% of the CPU (bench/profiles/final).
const SHARDS: usize = 64;

#[derive(Clone)]
pub struct Flights {
    shards: Arc<[Mutex<Map>]>,
}

impl Default for Flights {
    fn default() -> Flights {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

pub enum Joined {
    Leader(Leader),
    Follower(Follower),
}

pub struct Leader {
    /// `None`: another call of this hash is in flight; this one leads alone.
    hash: Option<u64>,
    landing: Slot,
    shards: Arc<[Mutex<Map>]>,
}

pub struct Follower(Slot);

/// The shard of `hash`, locked.
fn lock(shards: &[Mutex<Map>], hash: u64) -> std::sync::MutexGuard<'_, Map> {
    // The map's own table takes the low bits; the shard, the high ones.
    let shard = &shards[(hash >> 58) as usize % shards.len()];
    // Only inserts and removes of whole entries: a poisoned map is still whole.
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

impl Flights {
    /// Leads the call for `key` (at the head its answer is tied to, if it may be), or
    /// follows the one already in flight.
    pub fn join(&self, key: &Key) -> Joined {
        let at = key.flight();
        let hash = at.hash;
        let mut map = lock(&self.shards, hash);
        let recorded = match map.get(&hash) {
            Some(f) if at.is(&f.key, f.head.as_deref()) => {
                return Joined::Follower(Follower(f.clone()));
            }
            // Another key of the same hash: this call goes on its own, unrecorded.
            Some(_) => None,
            None => Some(hash),
        };
        let landing = Arc::new(Landing {
            key: at.text.clone(),
            head: at.head.cloned(),
            landed: OnceLock::new(),
            notify: Notify::new(),
        });
        if let Some(hash) = recorded {
            map.insert(hash, landing.clone());
        }
        Joined::Leader(Leader {
            hash: recorded,
            landing,
            shards: self.shards.clone(),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

impl Leader {
    /// Ends the flight and hands what `landed` makes to every call that joined it. Made
    /// only when one did: most flights have no follower, and cloning the answer and
    /// waking nobody were ~400 instructions of every forwarded call (bench/profiles).
    pub fn land(mut self, landed: impl FnOnce() -> Landed) {
        if self.leave() {
            self.landing.set(landed());
        }
    }

    /// Takes the flight out of the table; whether any call joined it. Followers take
    /// their share of the landing under the shard's lock, so once the flight is out
    /// none can join, and the count read under that lock is final.
    fn leave(&mut self) -> bool {
        match self.hash.take() {
            Some(hash) => {
                let mut map = lock(&self.shards, hash);
                map.remove(&hash);
                Arc::strong_count(&self.landing) > 1
            }
            // Never in the table (its slot was another key's): nobody could join.
            None => Arc::strong_count(&self.landing) > 1,
        }
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        // Landed already (then this changes nothing), or nothing: followers ask
        // themselves.
        if self.leave() {
            self.landing.set(None);
        }
    }
}

impl Follower {
    /// The leader's answer; `None` when it had none or took longer than `within`.
    pub async fn wait(self, within: Duration) -> Landed {
        let landing = self.0;
        let landed = async {
            loop {
                // Listening before looking: a landing between the two still wakes us.
                let notified = landing.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(landed) = landing.landed.get() {
                    return landed.clone();
                }
                notified.await;
            }
        };
        tokio::time::timeout(within, landed).await.unwrap_or(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A leader of `k`@`h` and a follower of it.
    fn flight(flights: &Flights) -> (Leader, Follower) {
        let k = Key::colliding("k", Some("h"), 1);
        let Joined::Leader(leader) = flights.join(&k) else {
            panic!("the first caller leads")
        };
        let Joined::Follower(follower) = flights.join(&k) else {
            panic!("the second caller follows")
        };
        (leader, follower)
    }

    #[tokio::test]
    async fn followers_get_the_leaders_answer_and_a_dropped_leader_frees_them() {
        let flights = Flights::default();
        let (leader, f) = flight(&flights);
        leader.land(|| {
            Some((
                Arc::from("u0"),
                Answer::Result("\"0x1\"".into()),
                Level::Proof,
            ))
        });
        assert!(matches!(
            f.wait(Duration::from_secs(1)).await,
            Some((u, _, Level::Proof)) if &*u == "u0"
        ));
        assert_eq!(flights.in_flight(), 0);

        let (leader, f) = flight(&flights);
        drop(leader);
        assert!(f.wait(Duration::from_secs(1)).await.is_none());
    }

    #[tokio::test]
    async fn a_follower_already_waiting_is_woken_by_the_landing() {
        let flights = Flights::default();
        let (leader, f) = flight(&flights);
        let waiting = tokio::spawn(f.wait(Duration::from_secs(30)));
        // The follower runs until it listens; only then does the leader land.
        tokio::task::yield_now().await;
        leader.land(|| {
            Some((
                Arc::from("u1"),
                Answer::Result("\"0x2\"".into()),
                Level::None,
            ))
        });
        let landed = waiting.await.expect("the follower's task");
        assert!(matches!(landed, Some((u, _, Level::None)) if &*u == "u1"));
    }

    #[test]
    fn an_answer_is_handed_over_only_when_a_call_joined() {
        let flights = Flights::default();
        let k = Key::colliding("k", Some("h"), 1);
        let Joined::Leader(alone) = flights.join(&k) else {
            panic!("the first caller leads")
        };
        let made = std::cell::Cell::new(0);
        alone.land(|| {
            made.set(made.get() + 1);
            None
        });
        assert_eq!((made.get(), flights.in_flight()), (0, 0));

        let (leader, f) = flight(&flights);
        leader.land(|| {
            made.set(made.get() + 1);
            None
        });
        assert_eq!((made.get(), flights.in_flight()), (1, 0));
        drop(f);
        // A follower that gave up before the landing is no longer counted.
        let (leader, f) = flight(&flights);
        drop(f);
        leader.land(|| {
            made.set(made.get() + 1);
            None
        });
        assert_eq!(made.get(), 1);
    }

    #[test]
    fn calls_of_one_hash_but_different_keys_are_never_joined() {
        let flights = Flights::default();
        let at = |text, head| Key::colliding(text, head, 7);
        let Joined::Leader(_a) = flights.join(&at("a", Some("h"))) else {
            panic!("first caller leads")
        };
        assert!(matches!(
            flights.join(&at("b", Some("h"))),
            Joined::Leader(_)
        ));
        assert!(matches!(
            flights.join(&at("a", Some("h2"))),
            Joined::Leader(_)
        ));
        assert!(matches!(flights.join(&at("a", None)), Joined::Leader(_)));
        // The alone leaders left `a`'s flight in place.
        assert!(matches!(
            flights.join(&at("a", Some("h"))),
            Joined::Follower(_)
        ));
        assert_eq!(flights.in_flight(), 1);
    }
}
