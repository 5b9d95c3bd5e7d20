//! The JSON-RPC envelope: reading client bodies (`parse`), the table of known methods
//! (`methods`), quantities (`quantity`), deciding about methods and upstream errors (`classify`), Outlast's own errors (`errors`) and writing replies
//! (`respond`). Pure: no I/O, no routing.

pub mod classify;
pub mod errors;
pub mod methods;
pub mod parse;
pub mod quantity;
pub mod respond;

pub use classify::{Blame, MethodPolicy, blame};
pub use errors::{Attempt, RpcError};
pub use parse::{Call, ParseLimits, Request};
pub use respond::ReplyBody;
