//! `[tx] rebroadcast`: a transaction an upstream accepted is re-sent until it is seen in
//! a block or replaced, because a node's mempool forgets (it restarts, evicts, or was
//! the only one that had it) and a client that was told "sent" should not have to notice.
//!
//! - `broadcast` hands every accepted transaction to [`Pending::accepted`], which writes
//!   it to the store (`tx::store`) before the client is answered.
//! - Per chain, [`watch`] looks at each pending transaction every `rebroadcast_secs`:
//!   the sender's `latest` nonce moved past it → in a block (info) or replaced (warn),
//!   either way forgotten; older than `remember_secs` → forgotten with a warning that it
//!   was never mined; otherwise re-sent with `broadcast::send`, to `broadcast_to`
//!   distinct operators exactly like the client's own send.
//! - At start the stored transactions go back into the read-your-writes `Ledger`, so
//!   the sender's pending nonce survives the restart too.
//!
//! Asks upstreams only through `route::forward` and `broadcast::send`; the store is
//! written off the async threads. Answers no client.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use alloy_consensus::{Transaction as _, TxEnvelope, transaction::Recovered};
use alloy_primitives::{Address, B256};
use serde_json::value::RawValue;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Ledger,
    broadcast::{self, Sent},
    store::{Entry, Store, StoreError},
};
use crate::{
    route::Chain,
    route::{Outcome, forward::forward, resolve::Need},
    rpc::Call,
    upstream::Answer,
};

/// Transactions kept for one sender on one chain at most: its next nonces (geth queues
/// 64 a sender). The store is written whole on every change, before a client is
/// answered, so what anyone may add to it is bounded.
const MAX_PER_SENDER: usize = 64;
/// Bytes of transactions kept at most, over all chains (a blob transaction with its
/// blobs is ~130 KB a blob).
const MAX_BYTES: usize = 64 << 20;

/// The pending transactions of every chain, and their store.
pub struct Pending {
    store: Arc<Store>,
    /// In memory, the same as the file after the last save (plus what a failed save
    /// could not write).
    entries: Mutex<Vec<Entry>>,
    /// Held while changing `entries` and saving them, so saves reach the file in the
    /// order of the changes and none is lost between two of them.
    writer: tokio::sync::Mutex<()>,
    /// `[tx] rebroadcast_secs`.
    pub every: Duration,
    /// `[tx] remember_secs`: a transaction not mined by then is given up, loudly.
    keep: Duration,
}

impl Pending {
    /// Takes the store named by `[tx] store` (else `transactions.json` in `data_dir`)
    /// and loads it, when `rebroadcast` is on. Blocking file I/O, once at start.
    pub fn open(
        config: &crate::config::Tx,
        data_dir: &Path,
    ) -> Result<Option<Arc<Pending>>, StoreError> {
        if !config.rebroadcast {
            return Ok(None);
        }
        let path = config
            .store
            .as_ref()
            .map_or_else(|| data_dir.join("transactions.json"), PathBuf::from);
        let (store, entries) = Store::open(&path)?;
        tracing::info!(
            store = %store.path().display(),
            pending = entries.len(),
            "transaction store loaded; accepted transactions are re-sent until mined"
        );
        Ok(Some(Arc::new(Pending {
            store: Arc::new(store),
            entries: Mutex::new(entries),
            writer: tokio::sync::Mutex::new(()),
            every: Duration::from_secs(config.rebroadcast_secs.max(1)),
            keep: Duration::from_secs(config.remember_secs),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // Entries are pushed and removed whole: a poisoned list is still whole.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pending transactions of `chain_id`, oldest first.
    pub fn of_chain(&self, chain_id: u64) -> Vec<Entry> {
        self.lock()
            .iter()
            .filter(|e| e.chain_id == chain_id)
            .cloned()
            .collect()
    }

    /// Keeps a transaction an upstream of `chain` just accepted, on disk before this
    /// returns; a newer one of the same sender and nonce (a fee bump) takes the place
    /// of the one kept, since only one of them can be mined. One that cannot be decoded
    /// (so its sender and nonce are unknown) or saved, or that the store has no room for
    /// (`MAX_PER_SENDER`, `MAX_BYTES`), is logged as such: never dropped without a word.
    pub async fn accepted(
        &self,
        chain: &Chain,
        raw: Option<&[u8]>,
        hash: Option<B256>,
        tx: Option<&Recovered<TxEnvelope>>,
    ) {
        let (Some(raw), Some(hash), Some(tx)) = (raw, hash, tx) else {
            tracing::warn!(chain = %chain.name, hash = ?hash, "transaction accepted, but Outlast cannot decode it: it is not re-sent");
            return;
        };
        let entry = Entry {
            chain_id: chain.chain_id,
            hash,
            sender: tx.signer(),
            nonce: tx.inner().nonce(),
            raw: raw.to_vec().into(),
            first_sent: unix_now(),
        };
        let _writing = self.writer.lock().await;
        let snapshot = {
            let mut entries = self.lock();
            if entries
                .iter()
                .any(|e| e.chain_id == entry.chain_id && e.hash == entry.hash)
            {
                return; // sent again by its client: already kept, since its first send
            }
            let of_sender = |e: &Entry| e.chain_id == entry.chain_id && e.sender == entry.sender;
            let replaced = |e: &Entry| of_sender(e) && e.nonce == entry.nonce;
            let kept = entries
                .iter()
                .filter(|e| of_sender(e) && !replaced(e))
                .count();
            let bytes: usize = entries
                .iter()
                .filter(|e| !replaced(e))
                .map(|e| e.raw.len())
                .sum();
            let full = if kept >= MAX_PER_SENDER {
                Some(format!("{MAX_PER_SENDER} of its sender's are kept already"))
            } else if bytes.saturating_add(entry.raw.len()) > MAX_BYTES {
                Some(format!("the store holds {} MiB already", MAX_BYTES >> 20))
            } else {
                None
            };
            if let Some(why) = full {
                crate::metrics::limit_exceeded("tx_pending");
                tracing::warn!(chain = %chain.name, hash = %hash, sender = %entry.sender, "transaction accepted, but not kept for re-sending: {why}");
                return;
            }
            entries.retain(|e| !replaced(e));
            entries.push(entry);
            entries.clone()
        };
        if let Err(e) = self.save(snapshot).await {
            tracing::error!(chain = %chain.name, hash = %hash, "{e}; the transaction is re-sent, but would not survive a restart");
        }
    }

    /// Forgets `hashes` of `chain_id` (in a block, replaced, or given up).
    async fn forget(&self, chain_id: u64, hashes: &[B256]) {
        let _writing = self.writer.lock().await;
        let snapshot = {
            let mut entries = self.lock();
            entries.retain(|e| !(e.chain_id == chain_id && hashes.contains(&e.hash)));
            entries.clone()
        };
        if let Err(e) = self.save(snapshot).await {
            tracing::error!(
                "{e}; transactions no longer pending stay in the file and are checked again after a restart"
            );
        }
    }

    async fn save(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        let store = self.store.clone();
        let path = store.path().to_owned();
        tokio::task::spawn_blocking(move || store.save(&entries))
            .await
            .unwrap_or_else(|e| {
                Err(StoreError::Io {
                    path,
                    source: std::io::Error::other(e),
                })
            })
    }
}

/// Puts the stored transactions back into the ledger (read-your-writes: the pending
/// nonce survives a restart) and spawns one [`watch`] per chain on `tasks`. Stored
/// transactions of chains no longer configured stay in the store, untouched.
pub fn spawn(
    pending: &Arc<Pending>,
    chains: &[Arc<Chain>],
    ledger: &Ledger,
    broadcast_to: usize,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) {
    let now = unix_now();
    let mut orphans: BTreeMap<u64, usize> = BTreeMap::new();
    for entry in pending.lock().iter() {
        if !chains.iter().any(|c| c.chain_id == entry.chain_id) {
            *orphans.entry(entry.chain_id).or_default() += 1;
            continue;
        }
        let Some(tx) = broadcast::recovered(&entry.raw) else {
            continue; // it was recovered when it was kept; the store was edited by hand
        };
        let age = Duration::from_secs(now.saturating_sub(entry.first_sent));
        let since = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        ledger.record_since(entry.chain_id, &tx, since);
    }
    for (chain_id, count) in orphans {
        tracing::warn!(
            chain_id,
            count,
            "the transaction store holds pending transactions of a chain that is not configured; they are kept, not re-sent"
        );
    }
    for chain in chains {
        tasks.spawn(watch(
            chain.clone(),
            pending.clone(),
            broadcast_to,
            stop.clone(),
        ));
    }
}

/// What became of one pending transaction in one round.
enum Fate {
    /// The sender's nonce moved past it and its receipt is there.
    Mined,
    /// The sender's nonce moved past it and it has no receipt: another transaction
    /// took its nonce.
    Replaced,
    /// Not mined within `remember_secs`.
    Expired,
    /// Re-sent; this upstream took it (again).
    Resent(Arc<str>),
    /// Re-sent; every upstream asked refused it, with this reason.
    Refused(String),
    /// Re-sent; no upstream answered.
    Unsent,
    /// The nonce moved past it, but whether it was mined could not be asked now.
    Undecided,
}

impl Fate {
    fn label(&self) -> &'static str {
        match self {
            Fate::Mined => "mined",
            Fate::Replaced => "replaced",
            Fate::Expired => "expired",
            Fate::Resent(_) => "resent",
            Fate::Refused(_) => "refused",
            Fate::Unsent => "unavailable",
            Fate::Undecided => "undecided",
        }
    }

    /// No longer pending: forgotten.
    fn settled(&self) -> bool {
        matches!(self, Fate::Mined | Fate::Replaced | Fate::Expired)
    }
}

/// Every `rebroadcast_secs` until `stop`: each pending transaction of `chain` is looked
/// at, settled ones forgotten, the rest re-sent.
pub async fn watch(chain: Arc<Chain>, pending: Arc<Pending>, to: usize, stop: CancellationToken) {
    // The first round after one interval: by then the upstreams had their first checks.
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + pending.every, pending.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut settled = Vec::new();
        for entry in pending.of_chain(chain.chain_id) {
            let fate = tokio::select! {
                _ = stop.cancelled() => break,
                fate = check(&chain, &entry, to, pending.keep) => fate,
            };
            report(&chain, &entry, &fate);
            crate::metrics::tx_rebroadcast(&chain.name, fate.label());
            if fate.settled() {
                settled.push(entry.hash);
            }
        }
        if !settled.is_empty() {
            pending.forget(chain.chain_id, &settled).await;
        }
    }
}

/// One pending transaction, one round. The nonce is asked first: once the sender's
/// `latest` nonce is past it, that nonce is spent for good, and only then is the receipt
/// asked — so a transaction mined between the two questions is not taken for replaced
/// (both go to upstreams caught up with the consensus head, `Need::Fresh`). A nonce
/// that cannot be asked is no reason to stop: the transaction is re-sent.
async fn check(chain: &Chain, entry: &Entry, to: usize, keep: Duration) -> Fate {
    if let Some(count) = latest_nonce(chain, entry.sender).await
        && count > entry.nonce
    {
        return match in_block(chain, entry.hash).await {
            Some(true) => Fate::Mined,
            Some(false) => Fate::Replaced,
            None => Fate::Undecided,
        };
    }
    if unix_now().saturating_sub(entry.first_sent) > keep.as_secs() {
        return Fate::Expired;
    }
    let Some(params) = json_params(&format!(
        "[\"{}\"]",
        alloy_primitives::hex::encode_prefixed(&entry.raw)
    )) else {
        return Fate::Unsent;
    };
    match broadcast::send(chain, to, Arc::from(params), Some(entry.hash)).await {
        Sent::Accepted(upstream) => Fate::Resent(upstream),
        Sent::Rejected(_, Answer::Error { message, .. }) => Fate::Refused(message),
        Sent::Rejected(_, Answer::Result(_)) => Fate::Refused("no reason given".into()),
        Sent::Unavailable(_) => Fate::Unsent,
    }
}

fn report(chain: &Chain, entry: &Entry, fate: &Fate) {
    let (hash, nonce, sender) = (entry.hash, entry.nonce, entry.sender);
    match fate {
        Fate::Mined => {
            tracing::info!(chain = %chain.name, %hash, nonce, "pending transaction is in a block; no longer re-sent")
        }
        Fate::Replaced => tracing::warn!(
            chain = %chain.name, %hash, nonce, %sender,
            "transaction {hash:#x} (nonce {nonce}) was replaced: the sender's nonce moved past it without it; no longer re-sent"
        ),
        Fate::Expired => tracing::warn!(
            chain = %chain.name, %hash, nonce, %sender,
            "transaction {hash:#x} (nonce {nonce}) was never mined within [tx] remember_secs; no longer re-sent"
        ),
        Fate::Resent(upstream) => {
            tracing::debug!(chain = %chain.name, %hash, %upstream, "pending transaction re-sent")
        }
        Fate::Refused(reason) => {
            tracing::info!(chain = %chain.name, %hash, nonce, %reason, "pending transaction re-sent, and refused; tried again next round")
        }
        Fate::Unsent => {
            tracing::debug!(chain = %chain.name, %hash, "pending transaction not re-sent: no upstream answered")
        }
        Fate::Undecided => {
            tracing::debug!(chain = %chain.name, %hash, "pending transaction's nonce is spent; its receipt could not be asked yet")
        }
    }
}

/// The sender's nonce at `latest` (transactions of its in blocks), through the normal
/// routing; `None` when no upstream answered it.
async fn latest_nonce(chain: &Chain, sender: Address) -> Option<u64> {
    let raw = ask(
        chain,
        "eth_getTransactionCount",
        &format!("[\"{sender:#x}\",\"latest\"]"),
    )
    .await?;
    let text: String = serde_json::from_slice(&raw).ok()?;
    crate::rpc::quantity::parse(&text)
}

/// Whether transaction `hash` has a receipt in a block; `None` when no upstream said.
async fn in_block(chain: &Chain, hash: B256) -> Option<bool> {
    let raw = ask(
        chain,
        "eth_getTransactionReceipt",
        &format!("[\"{hash:#x}\"]"),
    )
    .await?;
    let receipt: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    Some(!receipt.is_null() && !receipt["blockNumber"].is_null())
}

/// One call through `route::forward`; its result when an upstream gave one.
async fn ask(chain: &Chain, method: &'static str, params: &str) -> Option<bytes::Bytes> {
    let params = json_params(params)?;
    let call = Call {
        id: None,
        method: method.into(),
        params: Some(&params),
    };
    match forward(chain, &[&call], Need::Fresh).await.pop() {
        Some(Outcome::Answered {
            answer: Answer::Result(raw),
            ..
        }) => Some(raw),
        _ => None,
    }
}

/// Params Outlast wrote itself (hex strings in an array): always JSON, but checked.
fn json_params(text: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(text.to_owned()).ok()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tx::sent_by;

    #[tokio::test]
    async fn a_sender_s_kept_transactions_are_bounded_and_a_fee_bump_takes_the_old_one_s_place() {
        let dir = std::env::temp_dir().join(format!("outlast-rebroadcast-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        let config = crate::config::Tx {
            rebroadcast: true,
            store: Some(dir.join("tx.json").display().to_string()),
            ..crate::config::Tx::default()
        };
        let pending = Pending::open(&config, &dir)
            .expect("a store")
            .expect("rebroadcast is on");
        let chain = crate::route::testing::chain("off", 1, &[]);
        let (a, b) = (Address::repeat_byte(0xa), Address::repeat_byte(0xb));
        let keep = |sender: Address, nonce: u64, hash: B256| {
            let tx = sent_by(sender, nonce);
            let pending = pending.clone();
            let chain = &chain;
            async move {
                pending
                    .accepted(chain, Some(b"raw"), Some(hash), Some(&tx))
                    .await
            }
        };
        let hash = |sender: Address, nonce: u64, n: u8| {
            let mut h = [n; 32];
            h[..20].copy_from_slice(sender.as_slice());
            h[20..28].copy_from_slice(&nonce.to_be_bytes());
            B256::from(h)
        };
        for nonce in 0..=MAX_PER_SENDER as u64 {
            keep(a, nonce, hash(a, nonce, 0)).await;
        }
        let of = |sender: Address| {
            pending
                .of_chain(1)
                .into_iter()
                .filter(|e| e.sender == sender)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            of(a).len(),
            MAX_PER_SENDER,
            "one past the bound is not kept"
        );
        // A fee bump of nonce 3: the new transaction in the old one's place.
        keep(a, 3, hash(a, 3, 1)).await;
        let kept = of(a);
        assert_eq!(kept.len(), MAX_PER_SENDER);
        let third: Vec<_> = kept.iter().filter(|e| e.nonce == 3).collect();
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].hash, hash(a, 3, 1));
        // Another sender is not held back by the first one's.
        keep(b, 0, hash(b, 0, 0)).await;
        assert_eq!(of(b).len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
