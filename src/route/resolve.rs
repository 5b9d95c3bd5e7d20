//! Step 4 of a request: which block a call is about, and pinning block tags to the
//! consensus. `latest` (and `safe`/`finalized`) in a call's block parameter become the
//! agreed block number, so every upstream answers about the same block and answers
//! never go backwards. Pure: reads the chain's head state, changes nothing.

use serde_json::value::RawValue;

use crate::{
    rpc::{
        methods::{About, Name},
        parse::array_items,
    },
    upstream::heads::ChainHeadState,
};

/// What an upstream must have to answer a call correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing block-related (`eth_chainId`, `eth_sendRawTransaction`, …).
    Any,
    /// Recent chain state without a block number (a tx by hash, a block by hash,
    /// `pending`): prefer upstreams caught up with the consensus head.
    Fresh,
    /// Block N: only upstreams whose head is at least N.
    Block(u64),
}

impl Need {
    /// What a batch sent to one upstream needs: the most demanding of its calls.
    pub fn combine(self, other: Need) -> Need {
        match (self, other) {
            (Need::Block(a), Need::Block(b)) => Need::Block(a.max(b)),
            (Need::Block(n), _) | (_, Need::Block(n)) => Need::Block(n),
            (Need::Fresh, _) | (_, Need::Fresh) => Need::Fresh,
            (Need::Any, Need::Any) => Need::Any,
        }
    }
}

/// The call's params with tags pinned (`None`: forward the original bytes), and its need.
#[derive(Debug)]
pub struct Resolved {
    pub params: Option<Box<RawValue>>,
    pub need: Need,
}

pub fn resolve(method: &Name<'_>, params: Option<&RawValue>, heads: &ChainHeadState) -> Resolved {
    let unpinned = |need| Resolved { params: None, need };
    let index = match method.about() {
        About::Range => return resolve_logs(params, heads),
        About::Block(index) => index,
        // About recent state without a block number: prefer caught-up upstreams.
        About::Hash | About::Head => return unpinned(Need::Fresh),
        About::Nothing => return unpinned(Need::Any),
    };
    let pinned; // a tag's number, which `items` may come to point at
    let Some(mut items) = params.and_then(|p| array_items(p.get())) else {
        return unpinned(Need::Fresh);
    };
    let Some(block) = items.get(index) else {
        // An omitted block parameter means `latest` to the node; leave it to the node.
        return unpinned(Need::Fresh);
    };
    match block_ref(block, heads) {
        BlockRef::Number(n) => unpinned(Need::Block(n)),
        BlockRef::Pinned(n) => {
            pinned = quantity(n);
            items[index] = pinned.get();
            Resolved {
                params: Some(join(&items)),
                need: Need::Block(n),
            }
        }
        BlockRef::Other => unpinned(Need::Fresh),
    }
}

enum BlockRef {
    /// A number the client gave (or `earliest`).
    Number(u64),
    /// A tag resolved to the consensus: the params must be rewritten.
    Pinned(u64),
    /// `pending`, a block hash, or a tag with no consensus yet.
    Other,
}

/// What a block parameter's JSON `text` names.
fn block_ref(text: &str, heads: &ChainHeadState) -> BlockRef {
    if text.starts_with('{') {
        // EIP-1898: {"blockNumber": N} or {"blockHash": H}.
        #[derive(serde::Deserialize)]
        struct ByNumber<'a> {
            #[serde(borrow, rename = "blockNumber")]
            block_number: Option<&'a str>,
        }
        return match serde_json::from_str::<ByNumber<'_>>(text) {
            Ok(ByNumber {
                block_number: Some(n),
            }) => parse_quantity(n).map_or(BlockRef::Other, BlockRef::Number),
            _ => BlockRef::Other,
        };
    }
    // A tag or a number is a JSON string; one with an escape in it is left to the node,
    // as serde_json (which cannot borrow it) left it before.
    let Some(tag) = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains('\\'))
    else {
        return BlockRef::Other;
    };
    let pinned = |n: Option<u64>| n.map_or(BlockRef::Other, BlockRef::Pinned);
    match tag {
        "latest" => pinned(heads.consensus.as_ref().map(|c| c.number)),
        "safe" => pinned(heads.safe),
        "finalized" => pinned(heads.finalized),
        "earliest" => BlockRef::Number(0),
        "pending" => BlockRef::Other,
        n => parse_quantity(n).map_or(BlockRef::Other, BlockRef::Number),
    }
}

/// `eth_getLogs`: pins `fromBlock`/`toBlock` tags (absent means `latest`) and needs the
/// upper end.
fn resolve_logs(params: Option<&RawValue>, heads: &ChainHeadState) -> Resolved {
    use std::collections::BTreeMap;
    let unpinned = Resolved {
        params: None,
        need: Need::Fresh,
    };
    let Some(items) = params.and_then(|p| serde_json::from_str::<Vec<&RawValue>>(p.get()).ok())
    else {
        return unpinned;
    };
    let Some(Ok(mut filter)) = items
        .first()
        .map(|f| serde_json::from_str::<BTreeMap<&str, &RawValue>>(f.get()))
    else {
        return unpinned;
    };
    if filter.contains_key("blockHash") {
        return unpinned;
    }
    let mut pins = Vec::new();
    let mut upper = None;
    for key in ["fromBlock", "toBlock"] {
        let text = filter.get(key).map_or(r#""latest""#, |raw| raw.get());
        match block_ref(text, heads) {
            BlockRef::Pinned(n) => {
                pins.push((key, quantity(n)));
                upper = upper.max(Some(n));
            }
            BlockRef::Number(n) => upper = upper.max(Some(n)),
            BlockRef::Other => return unpinned,
        }
    }
    for (key, value) in &pins {
        filter.insert(key, value);
    }
    let Ok(filter) = serde_json::value::to_raw_value(&filter) else {
        return unpinned;
    };
    let mut rest: Vec<&str> = vec![filter.get()];
    rest.extend(items.iter().skip(1).map(|i| i.get()));
    Resolved {
        params: if pins.is_empty() {
            None
        } else {
            Some(join(&rest))
        },
        need: upper.map_or(Need::Fresh, Need::Block),
    }
}

use crate::rpc::quantity::{parse as parse_quantity, raw as quantity};

/// Re-joins array items; each item's own bytes are kept.
fn join(items: &[&str]) -> Box<RawValue> {
    let mut s = String::with_capacity(items.iter().map(|i| i.len() + 1).sum::<usize>() + 2);
    s.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    // Joining valid JSON values with commas inside brackets is a valid array.
    RawValue::from_string(s).unwrap_or_else(|_| unreachable!("joined JSON array is JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::heads::Consensus;

    fn heads() -> ChainHeadState {
        ChainHeadState {
            consensus: Some(Consensus {
                number: 100,
                hash: "0xh".into(),
                confirmed: true,
            }),
            safe: Some(68),
            finalized: Some(36),
        }
    }

    fn check(method: &str, params: &str, expected_params: Option<&str>, need: Need) {
        let raw = RawValue::from_string(params.to_owned()).expect("test JSON");
        let r = resolve(&Name::from(method), Some(&raw), &heads());
        assert_eq!(
            r.params.as_ref().map(|p| p.get()),
            expected_params,
            "{method} {params}"
        );
        assert_eq!(r.need, need, "{method} {params}");
    }

    #[test]
    fn tags_are_pinned_to_the_consensus_and_numbers_kept() {
        check(
            "eth_getBalance",
            r#"["0xab", "latest"]"#,
            Some(r#"["0xab","0x64"]"#),
            Need::Block(100),
        );
        check(
            "eth_getBalance",
            r#"["0xab", "0x10"]"#,
            None,
            Need::Block(16),
        );
        check(
            "eth_getStorageAt",
            r#"["0xab","0x0","finalized"]"#,
            Some(r#"["0xab","0x0","0x24"]"#),
            Need::Block(36),
        );
        check(
            "eth_getBlockByNumber",
            r#"["safe", false]"#,
            Some(r#"["0x44",false]"#),
            Need::Block(68),
        );
        check(
            "eth_call",
            r#"[{"to":"0x1"}, "pending"]"#,
            None,
            Need::Fresh,
        );
        check(
            "eth_call",
            r#"[{"to":"0x1"}, {"blockHash":"0xabc"}]"#,
            None,
            Need::Fresh,
        );
        check(
            "eth_call",
            r#"[{"to":"0x1"}, {"blockNumber":"0x5"}]"#,
            None,
            Need::Block(5),
        );
        check("eth_getBalance", r#"["0xab"]"#, None, Need::Fresh);
        check("eth_getTransactionReceipt", r#"["0x1"]"#, None, Need::Fresh);
        check("eth_chainId", "[]", None, Need::Any);
    }

    #[test]
    fn log_ranges_pin_their_tags_and_need_their_upper_end() {
        check(
            "eth_getLogs",
            r#"[{"address":"0x1","fromBlock":"0x5"}]"#,
            Some(r#"[{"address":"0x1","fromBlock":"0x5","toBlock":"0x64"}]"#),
            Need::Block(100),
        );
        check(
            "eth_getLogs",
            r#"[{"fromBlock":"0x5","toBlock":"0x9"}]"#,
            None,
            Need::Block(9),
        );
        check("eth_getLogs", r#"[{"blockHash":"0x5"}]"#, None, Need::Fresh);
    }

    #[test]
    fn without_a_consensus_tags_are_left_alone() {
        let raw = RawValue::from_string(r#"["0xab","latest"]"#.into()).expect("json");
        let r = resolve(
            &Name::from("eth_getBalance"),
            Some(&raw),
            &ChainHeadState::default(),
        );
        assert!(r.params.is_none());
        assert_eq!(r.need, Need::Fresh);
    }
}
