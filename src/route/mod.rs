//! Which upstream answers a call: health per upstream (`health`, with its `score`),
//! heads and the consensus head (`heads`), which block a call needs (`resolve`), the
//! order to try upstreams in (`select`, pure and never waiting), and the failover loop
//! that walks that order, hedging slow reads within the chain's retry `budget`
//! (`forward`), and the same resilience for what verification asks (`ask`), with the
//! race for a proof that asks a false answer's upstream again before banning it
//! (`race`); work an outsider sizes runs off the serving threads (`offload`).

pub mod ask;
pub mod budget;
pub mod call;
pub mod chain;
pub mod forward;

pub mod logs;
pub mod offload;
pub mod proven_logs;
pub mod race;
pub mod receipt;
pub mod resolve;

pub mod select;
#[cfg(test)]
pub mod testing;
pub mod track;
pub mod verified;

pub use chain::{Chain, Readiness};
pub use forward::{Outcome, forward};
