//! Which answers may be cached, under which key and for how long. Pure: decided from
//! the method, the pinned params, the block the call needs, the chain's finalized block
//! and (for lookups by hash) the answer itself. Never caches errors, `null`, pending
//! data or anything about a block the chain has not finalized beyond the current head.

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::route::{heads::ChainHeadState, resolve::Need};

/// How long a cached answer stays true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// About data at or below the finalized block: never changes.
    Immutable,
    /// True for the consensus head it was fetched at: keyed by that head's hash, so a new
    /// head (or a reorg at the same height) simply misses.
    Head,
}

/// Methods whose answer depends only on their params and the block they name.
fn block_addressed(method: &str) -> bool {
    matches!(
        method,
        "eth_getBlockByNumber"
            | "eth_getBlockTransactionCountByNumber"
            | "eth_getUncleCountByBlockNumber"
            | "eth_getTransactionByBlockNumberAndIndex"
            | "eth_getUncleByBlockNumberAndIndex"
            | "eth_getBlockReceipts"
            | "eth_getBalance"
            | "eth_getCode"
            | "eth_getTransactionCount"
            | "eth_call"
            | "eth_estimateGas"
            | "eth_createAccessList"
            | "eth_feeHistory"
            | "eth_getStorageAt"
            | "eth_getProof"
            | "eth_getLogs"
    )
}

/// Methods addressed by a block or transaction hash: the answer says which block it is
/// in, and so whether it is final.
fn hash_addressed(method: &str) -> bool {
    matches!(
        method,
        "eth_getBlockByHash"
            | "eth_getBlockTransactionCountByHash"
            | "eth_getTransactionByBlockHashAndIndex"
            | "eth_getTransactionByHash"
            | "eth_getTransactionReceipt"
    )
}

/// Methods about the head itself, with no block parameter.
fn head_tied(method: &str) -> bool {
    matches!(
        method,
        "eth_gasPrice" | "eth_maxPriorityFeePerGas" | "eth_blobBaseFee"
    )
}

/// The key a call may be cached (and coalesced) under, or `None` when the method is
/// never cached. `params` are the pinned ones; hex strings are lower-cased and
/// whitespace dropped, so equal questions share one key. Built in one pass over the
/// raw bytes: this runs for every cacheable call, hits included.
pub fn key(chain_id: u64, method: &str, params: Option<&RawValue>) -> Option<String> {
    if !(block_addressed(method) || hash_addressed(method) || head_tied(method)) {
        return None;
    }
    let raw = params.map_or("null", |p| p.get());
    let mut key = String::with_capacity(24 + method.len() + raw.len());
    let _ = write!(key, "{chain_id}:{method}:");
    normalize_into(raw, &mut key);
    Some(key)
}

/// The key of a head-tied answer: the head's hash makes a moved head miss.
pub fn at_head(key: &str, head_hash: &str) -> String {
    format!("{key}@{head_hash}")
}

/// Copies JSON `raw` without the whitespace between tokens, `"0x…"` strings lower-cased.
/// Everything else is copied as it is (object keys keep their order: a reordered
/// question only misses). `raw` is valid JSON, so outside strings it is ASCII and
/// every string ends at an unescaped quote.
fn normalize_into(raw: &str, out: &mut String) {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                let string = &raw[start..(i + 1).min(raw.len())];
                if string.starts_with("\"0x") {
                    out.extend(string.chars().map(|c| c.to_ascii_lowercase()));
                } else {
                    out.push_str(string);
                }
            }
            b if b.is_ascii_whitespace() => {}
            b => out.push(char::from(b)),
        }
        i += 1;
    }
}

/// Whether (and how long) this answer may be kept. `result` is the raw JSON result.
pub fn lifetime(
    method: &str,
    need: Need,
    heads: &ChainHeadState,
    result: &Bytes,
) -> Option<Lifetime> {
    if &result[..] == b"null" {
        return None;
    }
    let finalized = heads.finalized;
    let final_or_head = |n: u64| {
        if finalized.is_some_and(|f| n <= f) {
            Lifetime::Immutable
        } else {
            Lifetime::Head
        }
    };
    if head_tied(method) {
        return Some(Lifetime::Head);
    }
    if block_addressed(method) {
        return match need {
            Need::Block(n) => Some(final_or_head(n)),
            _ => None,
        };
    }
    if hash_addressed(method) {
        // Pending transactions have `blockNumber: null`: never cached.
        return block_of(result).map(final_or_head);
    }
    None
}

/// The block a by-hash answer is in: `blockNumber` (transactions, receipts) or
/// `number` (blocks); a bare count answer carries none and is tied to the head.
fn block_of(result: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Located<'a> {
        #[serde(borrow, default, rename = "blockNumber")]
        block_number: Option<&'a str>,
        #[serde(borrow, default)]
        number: Option<&'a str>,
    }
    let located: Located<'_> = serde_json::from_slice(result).ok()?;
    let n = located.block_number.or(located.number)?;
    u64::from_str_radix(n.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> ChainHeadState {
        ChainHeadState {
            consensus: None,
            safe: Some(68),
            finalized: Some(36),
        }
    }

    fn check(method: &str, need: Need, result: &str, expected: Option<Lifetime>) {
        let got = lifetime(
            method,
            need,
            &heads(),
            &Bytes::copy_from_slice(result.as_bytes()),
        );
        assert_eq!(got, expected, "{method} {need:?} {result}");
    }

    #[test]
    fn only_final_or_head_tied_results_are_kept() {
        use Lifetime::{Head, Immutable};
        check(
            "eth_getBlockByNumber",
            Need::Block(36),
            r#"{"number":"0x24"}"#,
            Some(Immutable),
        );
        check("eth_getBalance", Need::Block(37), r#""0x1""#, Some(Head));
        check("eth_getBalance", Need::Fresh, r#""0x1""#, None);
        check("eth_getBlockByNumber", Need::Block(5), "null", None);
        check(
            "eth_getTransactionReceipt",
            Need::Fresh,
            r#"{"blockNumber":"0x10"}"#,
            Some(Immutable),
        );
        check(
            "eth_getTransactionByHash",
            Need::Fresh,
            r#"{"blockNumber":"0x30"}"#,
            Some(Head),
        );
        check(
            "eth_getTransactionByHash",
            Need::Fresh,
            r#"{"blockNumber":null}"#,
            None,
        );
        check("eth_getTransactionByHash", Need::Fresh, "null", None);
        check("eth_gasPrice", Need::Fresh, r#""0x1""#, Some(Head));
        // Not cached: an upstream's chain id is its own to answer (and is checked).
        check("eth_chainId", Need::Any, r#""0x1""#, None);
        check("eth_sendRawTransaction", Need::Any, r#""0x1""#, None);
        check("eth_getTransactionCount", Need::Fresh, r#""0x1""#, None);
    }

    #[test]
    fn equal_questions_share_a_key() {
        let a = RawValue::from_string(r#"[ "0xABcd", "0x10" ]"#.into()).expect("json");
        let b = RawValue::from_string(r#"["0xabcd","0x10"]"#.into()).expect("json");
        assert_eq!(
            key(1, "eth_getBalance", Some(&a)),
            key(1, "eth_getBalance", Some(&b))
        );
        assert_ne!(
            key(1, "eth_getBalance", Some(&a)),
            key(2, "eth_getBalance", Some(&b))
        );
        assert_eq!(key(1, "eth_sendRawTransaction", Some(&a)), None);
        // Inside other strings nothing changes, escapes included.
        let c = RawValue::from_string(r#"[{"data": "A b\"C"}, "0xFF"]"#.into()).expect("json");
        assert_eq!(
            key(1, "eth_call", Some(&c)).as_deref(),
            Some(r#"1:eth_call:[{"data":"A b\"C"},"0xff"]"#)
        );
    }
}
