//! Which upstream answers a call: health per upstream (`health`), the order to try them
//! in (`select`, pure and never waiting) and the failover loop that walks that order
//! (`forward`).

pub mod forward;
pub mod health;
pub mod select;

pub use forward::{Outcome, forward};
