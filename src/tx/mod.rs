//! Transactions: `eth_sendRawTransaction` broadcast to upstreams of distinct operators
//! (`broadcast`), and the ledger of what Outlast itself broadcast (`ledger`), which lets
//! a client read its own writes — its pending nonce and its transaction by hash — from
//! an upstream that has not seen the transaction yet. With `[tx] rebroadcast`, what an
//! upstream accepted is kept in a file (`store`) and re-sent until it is in a block or
//! replaced (`rebroadcast`), across restarts.
//! May call upstreams (broadcast, rebroadcast); the ledger is memory only and does no
//! I/O; only `store` touches the disk.

pub mod broadcast;
pub mod ledger;
pub mod rebroadcast;
pub mod store;

pub use broadcast::broadcast;
pub use ledger::Ledger;
pub use rebroadcast::Pending;

/// A legacy transaction from `sender` with `nonce`, taken as recovered: the unit tests
/// of the ledger and the store need a sender and a nonce, not a key.
#[cfg(test)]
pub(crate) fn sent_by(
    sender: alloy_primitives::Address,
    nonce: u64,
) -> alloy_consensus::transaction::Recovered<alloy_consensus::TxEnvelope> {
    let tx = alloy_consensus::TxLegacy {
        nonce,
        gas_limit: 21_000,
        ..alloy_consensus::TxLegacy::default()
    };
    let signed =
        alloy_consensus::Signed::new_unhashed(tx, alloy_primitives::Signature::test_signature());
    alloy_consensus::transaction::Recovered::new_unchecked(
        alloy_consensus::TxEnvelope::Legacy(signed),
        sender,
    )
}
