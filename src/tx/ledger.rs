//! What Outlast broadcast, per chain: each transaction by hash, and each sender's
//! nonces. Read after an upstream answered, to lift `eth_getTransactionCount(a,
//! "pending")` to the next nonce after ours and to answer `eth_getTransactionByHash`
//! for a transaction an upstream does not know yet. Entries go after
//! `[tx] remember_secs` (an upstream's pending count covers only its own pool).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use alloy_consensus::{TxEnvelope, transaction::Recovered};
use alloy_primitives::{Address, B256};
use bytes::Bytes;

use crate::{route::Outcome, rpc::Call, upstream::Answer};

pub struct Ledger {
    inner: Mutex<Inner>,
    keep: Duration,
}

#[derive(Default)]
struct Inner {
    /// The transaction as `eth_getTransactionByHash` shows a pending one.
    by_hash: HashMap<(u64, B256), (Bytes, Instant)>,
    nonces: HashMap<(u64, Address), BTreeMap<u64, (B256, Instant)>>,
    /// When expired entries were last removed: once a `PRUNE_EVERY`, a pass over
    /// every entry; reads skip expired entries themselves.
    pruned: Option<Instant>,
}

/// How often expired entries are removed. Each removal reads every entry under the
/// ledger's lock, which every pending-nonce and by-hash read takes: once a read, an
/// hour of busy broadcasting made each such read a pass over all of it.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

impl Ledger {
    pub fn new(keep: Duration) -> Ledger {
        Ledger {
            inner: Mutex::new(Inner::default()),
            keep,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Whole entries are inserted and removed: a poisoned ledger is still whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers a transaction an upstream accepted.
    pub fn record(&self, chain_id: u64, tx: &Recovered<TxEnvelope>) {
        self.record_since(chain_id, tx, Instant::now());
    }

    /// Remembers a transaction first accepted at `at`: one loaded from the rebroadcast
    /// store at start, so its pending nonce survives a restart and it still expires
    /// `remember_secs` after it was first sent, not after the restart.
    pub fn record_since(&self, chain_id: u64, tx: &Recovered<TxEnvelope>, at: Instant) {
        use alloy_consensus::Transaction as _;
        let hash = *tx.inner().tx_hash();
        let shown = alloy_rpc_types_eth::Transaction {
            inner: tx.clone(),
            block_hash: None,
            block_number: None,
            transaction_index: None,
            effective_gas_price: None,
            block_timestamp: None,
        };
        let Ok(json) = serde_json::to_vec(&shown) else {
            return;
        };
        let mut inner = self.lock();
        inner.prune(self.keep, Instant::now());
        inner.by_hash.insert((chain_id, hash), (json.into(), at));
        inner
            .nonces
            .entry((chain_id, tx.signer()))
            .or_default()
            .insert(tx.inner().nonce(), (hash, at));
    }

    /// The pending nonce to report for `address` when an upstream says `upstream`:
    /// one past the highest nonce Outlast broadcast for it, if that is more.
    pub fn pending_nonce(&self, chain_id: u64, address: Address, upstream: u64) -> u64 {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.prune(self.keep, now);
        let Some(sent) = inner.nonces.get(&(chain_id, address)) else {
            return upstream;
        };
        // Not pruned by upstream answers: a node's pending count includes its own pool,
        // so one node's answer says nothing of another's. Entries expire after
        // `remember_secs`.
        sent.iter()
            .rev()
            .find(|(_, (_, at))| !expired(*at, self.keep, now))
            .map_or(upstream, |(n, _)| upstream.max(n.saturating_add(1)))
    }

    /// The pending transaction `hash`, as a JSON object, if Outlast broadcast it.
    pub fn transaction(&self, chain_id: u64, hash: B256) -> Option<Bytes> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.prune(self.keep, now);
        inner
            .by_hash
            .get(&(chain_id, hash))
            .filter(|(_, at)| !expired(*at, self.keep, now))
            .map(|(b, _)| b.clone())
    }
}

impl Ledger {
    /// After an upstream answered `call` (or none could): lifts a pending nonce to the
    /// next after what Outlast broadcast, and answers a transaction by hash the
    /// upstream does not know yet. Other calls and outcomes are left alone.
    pub fn read_your_writes(&self, chain_id: u64, call: &Call<'_>, outcome: &mut Outcome) {
        // Every answered call passes here: the others' params are never parsed.
        if !matches!(
            call.method.as_ref(),
            "eth_getTransactionCount" | "eth_getTransactionByHash"
        ) {
            return;
        }
        let params: Vec<String> = match call.params.and_then(|p| serde_json::from_str(p.get()).ok())
        {
            Some(p) => p,
            None => return,
        };
        match (call.method.as_ref(), params.as_slice()) {
            ("eth_getTransactionCount", [address, tag]) if tag == "pending" => {
                let (
                    Ok(address),
                    Outcome::Answered {
                        answer: Answer::Result(raw),
                        ..
                    },
                ) = (address.parse::<Address>(), outcome)
                else {
                    return;
                };
                let Some(told) = serde_json::from_slice::<String>(raw)
                    .ok()
                    .and_then(|q| crate::rpc::quantity::parse(&q))
                else {
                    return;
                };
                let next = self.pending_nonce(chain_id, address, told);
                if next != told {
                    *raw = format!("\"{next:#x}\"").into();
                }
            }
            ("eth_getTransactionByHash", [hash]) => {
                let unknown = match outcome {
                    Outcome::Answered {
                        answer: Answer::Result(raw),
                        ..
                    } => &raw[..] == b"null",
                    Outcome::Unavailable(_) => true,
                    _ => false,
                };
                let Ok(hash) = hash.parse::<B256>() else {
                    return;
                };
                if unknown && let Some(tx) = self.transaction(chain_id, hash) {
                    let upstream = match outcome {
                        Outcome::Answered { upstream, .. } => upstream.clone(),
                        _ => Arc::from("outlast"),
                    };
                    *outcome = Outcome::Answered {
                        upstream,
                        answer: Answer::Result(tx),
                    };
                }
            }
            _ => {}
        }
    }
}

/// Whether an entry recorded `at` is past `keep` at `now`.
fn expired(at: Instant, keep: Duration, now: Instant) -> bool {
    now.saturating_duration_since(at) > keep
}

impl Inner {
    /// Removes expired entries, at most once a `PRUNE_EVERY`.
    fn prune(&mut self, keep: Duration, now: Instant) {
        if self
            .pruned
            .is_some_and(|at| now.saturating_duration_since(at) < PRUNE_EVERY)
        {
            return;
        }
        self.pruned = Some(now);
        self.by_hash.retain(|_, (_, at)| !expired(*at, keep, now));
        self.nonces.retain(|_, sent| {
            sent.retain(|_, (_, at)| !expired(*at, keep, now));
            !sent.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENDER: Address = Address::repeat_byte(1);

    fn sent(nonce: u64) -> Recovered<TxEnvelope> {
        crate::tx::sent_by(SENDER, nonce)
    }

    #[test]
    fn an_expired_entry_is_not_read_even_before_it_is_pruned() {
        let keep = Duration::from_secs(3600);
        let ledger = Ledger::new(keep);
        let (old, new) = (sent(9), sent(4));
        // Recorded (and pruned) now; the old one was first sent past `keep` ago.
        ledger.record(1, &new);
        let long_ago = Instant::now()
            .checked_sub(keep * 2)
            .expect("the clock goes back");
        ledger.record_since(1, &old, long_ago);
        assert_eq!(ledger.pending_nonce(1, SENDER, 0), 5, "nonce 9 expired");
        assert!(ledger.transaction(1, *old.inner().tx_hash()).is_none());
        assert!(ledger.transaction(1, *new.inner().tx_hash()).is_some());
        assert_eq!(
            ledger.pending_nonce(1, SENDER, 7),
            7,
            "the upstream's is more"
        );
    }
}
