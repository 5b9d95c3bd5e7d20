//! Identical calls in flight at once go upstream once: the first caller of a key leads
//! (sends it), later callers follow and get the leader's answer. A leader that is
//! dropped (its client went away) or got no answer lets its followers go on their own.
//! No I/O; never holds its lock across an await.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use crate::{upstream::Answer, verify::Level};

/// What a leader hands its followers: who answered, what, and how it was checked; or
/// `None` (ask yourself).
pub type Landed = Option<(Arc<str>, Answer, Level)>;

type Slot = watch::Receiver<Option<Landed>>;

#[derive(Default, Clone)]
pub struct Flights {
    map: Arc<Mutex<HashMap<String, Slot>>>,
}

pub enum Joined {
    Leader(Leader),
    Follower(Follower),
}

pub struct Leader {
    key: String,
    tx: watch::Sender<Option<Landed>>,
    map: Arc<Mutex<HashMap<String, Slot>>>,
}

pub struct Follower(Slot);

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        // Only inserts and removes of whole entries: a poisoned map is still whole.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Leads the call for `key`, or follows the one already in flight.
    pub fn join(&self, key: String) -> Joined {
        let mut map = self.lock();
        if let Some(rx) = map.get(&key) {
            return Joined::Follower(Follower(rx.clone()));
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Joined::Leader(Leader {
            key,
            tx,
            map: self.map.clone(),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.lock().len()
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
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
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
        let Joined::Leader(leader) = flights.join("k".into()) else {
            panic!("first caller leads")
        };
        let Joined::Follower(f) = flights.join("k".into()) else {
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

        let Joined::Leader(leader) = flights.join("k".into()) else {
            panic!("a new flight")
        };
        let Joined::Follower(f) = flights.join("k".into()) else {
            panic!("follows")
        };
        drop(leader);
        assert!(f.wait(Duration::from_secs(1)).await.is_none());
    }
}
