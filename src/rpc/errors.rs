//! Outlast's own JSON-RPC errors (EIP-1474 codes). Every code a client can get from
//! Outlast itself comes from the one `match` in `RpcError::code`. Messages say what to do.

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("invalid params: {0}")]
    InvalidParams(String),
    #[error(
        "method `{method}` is not available through this gateway (denied by [limits] denied_methods)"
    )]
    Denied { method: String },
    #[error("method `{method}` is not in the methods key `{key}` may call ([[auth.keys]] methods)")]
    NotForKey { method: String, key: String },
    /// A missing or unknown API key, or one not valid for the chain.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error(
        "`{method}` needs a WebSocket: open ws:// (or wss://) on this same path and call it there; over HTTP nothing could be pushed"
    )]
    NeedsWebSocket { method: String },
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    #[error("unknown chain `{requested}`; this gateway serves {}: POST /{{name}} or /{{chain id}}", list(.available))]
    UnknownChain {
        requested: String,
        available: Vec<(String, u64)>,
    },
    #[error("this gateway serves several chains ({}): POST /{{name}} or /{{chain id}}", list(.available))]
    ChainRequired { available: Vec<(String, u64)> },
    #[error(
        "could not verify {what}: {why}; Outlast does not answer with an unverified value, retry shortly"
    )]
    Unverifiable { what: String, why: String },
    #[error("no upstream of chain `{chain}` could answer ({} tried); retry shortly, or check `data` for why each failed", .tried.len())]
    Unavailable { chain: String, tried: Vec<Attempt> },
    /// A fault of Outlast's own (a task that failed); never an upstream's answer.
    #[error("internal error: {0}; retry")]
    Internal(String),
}

fn list(chains: &[(String, u64)]) -> String {
    if chains.is_empty() {
        return "no chain".into();
    }
    chains
        .iter()
        .map(|(name, id)| format!("{name} ({id})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One upstream that was tried (or skipped) for a call, and why it did not answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Attempt {
    pub upstream: String,
    pub error: String,
}

impl RpcError {
    pub fn code(&self) -> i64 {
        match self {
            RpcError::Parse(_) => -32700,
            RpcError::InvalidRequest(_)
            | RpcError::UnknownChain { .. }
            | RpcError::ChainRequired { .. } => -32600,
            RpcError::InvalidParams(_) => -32602,
            RpcError::Denied { .. }
            | RpcError::NeedsWebSocket { .. }
            | RpcError::NotForKey { .. } => -32004,
            RpcError::Unauthorized(_) => -32001,
            RpcError::LimitExceeded(_) => -32005,
            RpcError::Unavailable { .. } => -32002,
            RpcError::Unverifiable { .. } => -33091,
            RpcError::Internal(_) => -32603,
        }
    }

    /// Machine-readable detail for the `data` member.
    pub fn data(&self) -> Option<serde_json::Value> {
        match self {
            RpcError::Unavailable { tried, .. } => Some(serde_json::json!({ "tried": tried })),
            RpcError::UnknownChain { available, .. } | RpcError::ChainRequired { available } => {
                Some(serde_json::json!({
                    "chains": available
                        .iter()
                        .map(|(name, id)| serde_json::json!({ "name": name, "chain_id": id }))
                        .collect::<Vec<_>>()
                }))
            }
            _ => None,
        }
    }

    /// The JSON error object, `{"code":…,"message":…,"data":…}`.
    pub fn to_json(&self) -> Vec<u8> {
        let mut obj = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        if let Some(data) = self.data() {
            obj["data"] = data;
        }
        // Serializing a `Value` built above cannot fail.
        serde_json::to_vec(&obj).unwrap_or_default()
    }
}
