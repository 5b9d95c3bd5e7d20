//! Transactions: `eth_sendRawTransaction` broadcast to upstreams of distinct operators
//! (`broadcast`), and the ledger of what Outlast itself broadcast (`ledger`), which lets
//! a client read its own writes — its pending nonce and its transaction by hash — from
//! an upstream that has not seen the transaction yet.
//! May call upstreams (broadcast); the ledger is memory only and does no I/O.

pub mod broadcast;
pub mod ledger;

pub use broadcast::broadcast;
pub use ledger::Ledger;
