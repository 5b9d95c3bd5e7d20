//! Identical calls in flight at once go upstream once: the first caller of a key leads
//! (sends it), later callers follow and get the leader's answer. A leader that is
//! dropped (its client went away) or got no answer lets its followers go on their own.
//! No I/O; never holds its lock across an await.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rustc_hash::FxBuildHasher;
use tokio::sync::watch;

use crate::{upstream::Answer, verify::Level};

/// What a leader hands its followers: who answered, what, and how it was checked; or
/// `None` (ask yourself).
pub type Landed = Option<(Arc<str>, Answer, Level)>;

type Slot = watch::Receiver<Option<Landed>>;

/// Flights by the hash of their key and head (`super::keyed_hash`, computed once per
/// call: a forwarded batch spent 8% of its CPU re-hashing `key@head` strings here).
/// Each keeps its whole key, so two calls of one hash are never joined.
type Map = HashMap<u64, Flight, FxBuildHasher>;

struct Flight {
    key: Box<str>,
    head: Box<str>,
    rx: Slot,
}

#[derive(Default, Clone)]
pub struct Flights {
    map: Arc<Mutex<Map>>,
}

pub enum Joined {
    Leader(Leader),
    Follower(Follower),
}

pub struct Leader {
    /// `None`: another call of this hash is in flight; this one leads alone.
    hash: Option<u64>,
    tx: watch::Sender<Option<Landed>>,
    map: Arc<Mutex<Map>>,
}

pub struct Follower(Slot);

fn lock(map: &Mutex<Map>) -> std::sync::MutexGuard<'_, Map> {
    // Only inserts and removes of whole entries: a poisoned map is still whole.
    map.lock().unwrap_or_else(|e| e.into_inner())
}

impl Flights {
    /// Leads the call for `key` at head `head` (a block hash, or "" for none), or
    /// follows the one already in flight.
    pub fn join(&self, key: &str, head: &str) -> Joined {
        self.join_at(super::keyed_hash((key, head)), key, head)
    }

    fn join_at(&self, hash: u64, key: &str, head: &str) -> Joined {
        let mut map = lock(&self.map);
        let (tx, rx) = match map.get(&hash) {
            Some(f) if *f.key == *key && *f.head == *head => {
                return Joined::Follower(Follower(f.rx.clone()));
            }
            // Another key of the same hash: this call goes on its own, unrecorded.
            Some(_) => {
                let (tx, _) = watch::channel(None);
                return Joined::Leader(Leader {
                    hash: None,
                    tx,
                    map: self.map.clone(),
                });
            }
            None => watch::channel(None),
        };
        map.insert(
            hash,
            Flight {
                key: key.into(),
                head: head.into(),
                rx,
            },
        );
        Joined::Leader(Leader {
            hash: Some(hash),
            tx,
            map: self.map.clone(),
        })
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.map).len()
    }
}

impl Leader {
    /// Hands the answer to every follower and ends the flight.
    pub fn land(self, landed: Landed) {
        let _ = self.tx.send(Some(landed));
        // `Drop` removes the flight; followers already hold the value.
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(hash) = self.hash {
            lock(&self.map).remove(&hash);
        }
        self.tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(None);
                true
            } else {
                false
            }
        });
    }
}

impl Follower {
    /// The leader's answer; `None` when it had none or took longer than `within`.
    pub async fn wait(mut self, within: Duration) -> Landed {
        let landed = tokio::time::timeout(within, self.0.wait_for(Option::is_some)).await;
        match landed {
            Ok(Ok(v)) => v.clone().flatten(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_answer_and_a_dropped_leader_frees_them() {
        let flights = Flights::default();
        let Joined::Leader(leader) = flights.join("k", "h") else {
            panic!("first caller leads")
        };
        let Joined::Follower(f) = flights.join("k", "h") else {
            panic!("second caller follows")
        };
        leader.land(Some((
            Arc::from("u0"),
            Answer::Result("\"0x1\"".into()),
            Level::Proof,
        )));
        assert!(matches!(
            f.wait(Duration::from_secs(1)).await,
            Some((u, _, Level::Proof)) if &*u == "u0"
        ));
        assert_eq!(flights.in_flight(), 0);

        let Joined::Leader(leader) = flights.join("k", "h") else {
            panic!("a new flight")
        };
        let Joined::Follower(f) = flights.join("k", "h") else {
            panic!("follows")
        };
        drop(leader);
        assert!(f.wait(Duration::from_secs(1)).await.is_none());
    }

    #[test]
    fn calls_of_one_hash_but_different_keys_are_never_joined() {
        let flights = Flights::default();
        let Joined::Leader(_a) = flights.join_at(7, "a", "h") else {
            panic!("first caller leads")
        };
        assert!(matches!(flights.join_at(7, "b", "h"), Joined::Leader(_)));
        assert!(matches!(flights.join_at(7, "a", "h2"), Joined::Leader(_)));
        // The alone leaders left `a`'s flight in place.
        assert!(matches!(flights.join_at(7, "a", "h"), Joined::Follower(_)));
        assert_eq!(flights.in_flight(), 1);
    }
}
