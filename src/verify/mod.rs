//! Checks of answers against what can be trusted, as pure functions: a header's hash
//! recomputed from its fields (`header`), a full block's transactions against it
//! (`body`), account and storage values proven against a
//! state root with Merkle proofs (`proof`), and agreement among independent operators
//! (`quorum`). Does no I/O: `route::verified` fetches, this decides.

pub mod body;
pub mod header;
pub mod proof;
pub mod quorum;
pub mod receipts;

/// How an answer was checked, weakest first (a batch is as strong as its weakest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Quorum,
    Proof,
}

impl Level {
    pub fn header_value(self) -> &'static str {
        match self {
            Level::None => "none",
            Level::Quorum => "quorum",
            Level::Proof => "proof",
        }
    }
}

/// Why an answer could not be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
    #[error("header hash {claimed} does not match its fields (recomputed {computed})")]
    HeaderHash { claimed: String, computed: String },
    #[error("{what} proof does not verify against the trusted root: {detail}")]
    Proof { what: &'static str, detail: String },
    #[error("code does not hash to the account's proven codeHash")]
    CodeHash,
    #[error("block body does not match its trusted header: {what}")]
    Body { what: String },
}
