//! Which upstream answers a call: health per upstream (`health`), heads and the
//! consensus head (`heads`), which block a call needs (`resolve`), the order to try
//! upstreams in (`select`, pure and never waiting) and the failover loop that walks
//! that order (`forward`).

pub mod forward;
pub mod heads;
pub mod health;
pub mod resolve;
pub mod select;

pub use forward::{Outcome, forward};
