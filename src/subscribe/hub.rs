//! Fan-out for one chain: each WebSocket connection registers with a bounded queue and
//! the kinds it subscribes to; each event is queued, as one shared `Arc`, for every
//! client that wants its kind. A client whose queue is full is cut off (its `kicked`
//! token fires, the session tells it and closes) instead of growing memory.
//!
//! Never waits and never does I/O: `publish` only `try_send`s, so one slow client
//! cannot hold up the feed or the others.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::filter::{HEADS, LOGS, PENDING};

/// One log of a block, as the upstream sent it, with what filters look at.
#[derive(Debug)]
pub struct Log {
    /// Lowercased.
    pub address: String,
    /// Lowercased, in order.
    pub topics: Vec<String>,
    /// The log object, raw (with `"removed": true` in a `Removed` event).
    pub raw: Bytes,
}

#[derive(Debug)]
pub enum Event {
    /// A block joined the consensus chain: events come in chain order, each block once;
    /// after a reorg the blocks of the new branch follow the `Removed` events. `logs` is
    /// `None` when nobody listened to logs when it was fetched; else the block's logs
    /// within the `LogScope` of subscription epoch `logs_as_of`, so only logs
    /// subscriptions of that epoch or before may read them.
    Block {
        number: u64,
        header: Bytes,
        logs: Option<Arc<[Log]>>,
        logs_as_of: u64,
    },
    /// The logs of one block that left the consensus chain, marked `removed: true`;
    /// `of` is that block's `logs_as_of`, so a subscription that never saw them is not
    /// told to remove them.
    Removed { of: u64, logs: Arc<[Log]> },
    /// A transaction hash, as a raw JSON string, seen for the first time.
    Pending { hash: Bytes },
}

impl Event {
    fn bits(&self) -> u8 {
        match self {
            Event::Block { logs, .. } => {
                HEADS
                    | if logs.as_ref().is_some_and(|l| !l.is_empty()) {
                        LOGS
                    } else {
                        0
                    }
            }
            Event::Removed { .. } => LOGS,
            Event::Pending { .. } => PENDING,
        }
    }
}

/// Counters for tests, the benchmark and (later) metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub published: AtomicU64,
    pub queued: AtomicU64,
    pub cut_off: AtomicU64,
}

/// An event with its sequence number: a subscription made later skips it.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub event: Event,
}

struct Entry {
    tx: mpsc::Sender<Arc<Published>>,
    kinds: u8,
    /// Addresses its logs subscriptions name; `None` when one names none (all logs).
    log_addresses: Option<Vec<String>>,
    kicked: CancellationToken,
}

/// Which logs of a block the clients need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogScope {
    All,
    Addresses(Vec<String>),
}

/// More addresses than this in all subscriptions together: every log is fetched.
const MAX_SCOPE_ADDRESSES: usize = 1_000;

pub struct Hub {
    /// Union of the kinds any client subscribes to: feeders work only while wanted.
    wanted: watch::Sender<u8>,
    clients: Mutex<HashMap<u64, Entry>>,
    next_client: AtomicU64,
    /// Sequence number of the next event published.
    seq: AtomicU64,
    /// Counts changes of subscriptions (under the `clients` lock), to tell which
    /// subscriptions a `LogScope` took into account.
    epoch: AtomicU64,
    /// Events queued per client before it is cut off (`[limits] ws_client_buffer`).
    buffer: usize,
    /// Fires when the gateway stops: sessions close with 1001 "going away".
    closing: CancellationToken,
    /// Open sessions, so shutdown can wait for their close frames.
    pub sessions: TaskTracker,
    pub stats: Stats,
}

/// A registered client: its queue of events and the token that fires when it is cut
/// off. Unregisters when dropped.
pub struct Client<'h> {
    hub: &'h Hub,
    pub id: u64,
    pub events: mpsc::Receiver<Arc<Published>>,
    pub kicked: CancellationToken,
}

impl Drop for Client<'_> {
    fn drop(&mut self) {
        self.hub.leave(self.id);
    }
}

impl Hub {
    pub fn new(buffer: usize) -> Hub {
        Hub {
            wanted: watch::Sender::new(0),
            clients: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            buffer: buffer.max(1),
            closing: CancellationToken::new(),
            sessions: TaskTracker::new(),
            stats: Stats::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // Entries are inserted and removed whole: a poisoned map is still consistent.
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The union of the kinds subscribed to, as it changes.
    pub fn wanted(&self) -> watch::Receiver<u8> {
        self.wanted.subscribe()
    }

    pub fn wants(&self, bit: u8) -> bool {
        *self.wanted.borrow() & bit != 0
    }

    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Tells every session to close (1001) and stops accepting new ones.
    pub fn close(&self) {
        self.closing.cancel();
        self.sessions.close();
    }

    pub fn clients(&self) -> usize {
        self.lock().len()
    }

    pub fn join(&self) -> Client<'_> {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::channel(self.buffer);
        let kicked = CancellationToken::new();
        self.lock().insert(
            id,
            Entry {
                tx,
                kinds: 0,
                log_addresses: Some(Vec::new()),
                kicked: kicked.clone(),
            },
        );
        Client {
            hub: self,
            id,
            events,
            kicked,
        }
    }

    fn leave(&self, id: u64) {
        let mut clients = self.lock();
        if clients.remove(&id).is_some_and(|e| e.kinds != 0) {
            self.recompute_wanted(&clients);
        }
    }

    /// What client `id` now subscribes to: the kinds (bits of `filter::Kind::bit`) and
    /// the addresses its logs filters name (`None`: some filter names none). Returns
    /// the sequence number of the next event — every event from it on is queued for the
    /// client if its kind is in `kinds`, none before it belongs to a new subscription —
    /// and the epoch of this change (see `Event::Block`).
    pub fn set_subscriptions(
        &self,
        id: u64,
        kinds: u8,
        log_addresses: Option<Vec<String>>,
    ) -> (u64, u64) {
        let mut clients = self.lock();
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(e) = clients.get_mut(&id) {
            e.log_addresses = log_addresses;
            if e.kinds != kinds {
                e.kinds = kinds;
                self.recompute_wanted(&clients);
            }
        }
        (self.seq.load(Ordering::Acquire), epoch)
    }

    /// The logs some client needs, and the subscription epoch this answer is of.
    pub fn log_scope(&self) -> (LogScope, u64) {
        let clients = self.lock();
        let epoch = self.epoch.load(Ordering::Acquire);
        // Built under the hub's lock, once a block: given up as soon as it is past the
        // bound, not after every client's every address was copied and sorted.
        let mut union = std::collections::BTreeSet::new();
        for e in clients.values().filter(|e| e.kinds & LOGS != 0) {
            let Some(list) = &e.log_addresses else {
                return (LogScope::All, epoch);
            };
            for address in list {
                union.insert(address.as_str());
                if union.len() > MAX_SCOPE_ADDRESSES {
                    return (LogScope::All, epoch);
                }
            }
        }
        let union = union.into_iter().map(str::to_owned).collect();
        (LogScope::Addresses(union), epoch)
    }

    fn recompute_wanted(&self, clients: &HashMap<u64, Entry>) {
        let union = clients.values().fold(0, |acc, e| acc | e.kinds);
        self.wanted.send_if_modified(|w| {
            let changed = *w != union;
            *w = union;
            changed
        });
    }

    /// Queues `event` for every client that wants it; returns its sequence number.
    /// A client whose queue is full is cut off; one that has gone is forgotten.
    pub fn publish(&self, event: Event) -> u64 {
        let bits = event.bits();
        let mut clients = self.lock();
        let seq = self.seq.fetch_add(1, Ordering::AcqRel);
        let event = Arc::new(Published { seq, event });
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let before = clients.len();
        let mut queued = 0;
        clients.retain(|_, c| {
            if c.kinds & bits == 0 {
                return true;
            }
            match c.tx.try_send(event.clone()) {
                Ok(()) => {
                    queued += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    c.kicked.cancel();
                    self.stats.cut_off.fetch_add(1, Ordering::Relaxed);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.stats.queued.fetch_add(queued, Ordering::Relaxed);
        if clients.len() != before {
            self.recompute_wanted(&clients);
        }
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: u8) -> Event {
        Event::Pending {
            hash: Bytes::from(format!("\"0x{n:02x}\"")),
        }
    }

    #[test]
    fn events_reach_only_clients_of_their_kind() {
        let hub = Hub::new(4);
        let mut heads = hub.join();
        let mut txs = hub.join();
        hub.set_subscriptions(heads.id, HEADS, None);
        hub.set_subscriptions(txs.id, PENDING, None);
        assert!(hub.wants(HEADS) && hub.wants(PENDING) && !hub.wants(LOGS));
        hub.publish(pending(1));
        hub.publish(Event::Block {
            number: 1,
            header: Bytes::from_static(b"{}"),
            logs: None,
            logs_as_of: 0,
        });
        let next = |c: &mut Client<'_>| c.events.try_recv().map(|p| (p.seq, p.event.bits()));
        assert_eq!(next(&mut txs), Ok((0, PENDING)));
        assert!(next(&mut txs).is_err());
        assert_eq!(next(&mut heads), Ok((1, HEADS)));
        drop(txs);
        assert!(!hub.wants(PENDING));
    }

    #[test]
    fn logs_are_fetched_for_the_addresses_subscribed_or_all() {
        let hub = Hub::new(4);
        let a = hub.join();
        let b = hub.join();
        assert_eq!(hub.log_scope().0, LogScope::Addresses(vec![]));
        hub.set_subscriptions(a.id, LOGS, Some(vec!["0xb".into(), "0xa".into()]));
        hub.set_subscriptions(b.id, LOGS | HEADS, Some(vec!["0xa".into()]));
        assert_eq!(
            hub.log_scope().0,
            LogScope::Addresses(vec!["0xa".into(), "0xb".into()])
        );
        hub.set_subscriptions(b.id, LOGS, None);
        assert_eq!(hub.log_scope().0, LogScope::All);
        drop(b);
        assert_eq!(
            hub.log_scope().0,
            LogScope::Addresses(vec!["0xa".into(), "0xb".into()])
        );
    }

    #[test]
    fn a_client_with_a_full_queue_is_cut_off_and_others_keep_theirs() {
        let hub = Hub::new(2);
        let slow = hub.join();
        let mut fast = hub.join();
        hub.set_subscriptions(slow.id, PENDING, None);
        hub.set_subscriptions(fast.id, PENDING, None);
        for n in 0..3 {
            hub.publish(pending(n));
            while fast.events.try_recv().is_ok() {}
        }
        assert!(slow.kicked.is_cancelled());
        assert!(!fast.kicked.is_cancelled());
        assert_eq!(hub.clients(), 1);
        assert_eq!(hub.stats.cut_off.load(Ordering::Relaxed), 1);
    }
}
