//! Which answers may be cached, under which key and for how long. Pure: decided from
//! the method, the pinned params, the block the call needs, the chain's finalized block
//! and (for lookups by hash) the answer itself. Never caches errors, `null`, pending
//! data or anything about a block the chain has not finalized beyond the current head.

use std::{cell::RefCell, sync::Arc};

use bytes::Bytes;
use serde_json::value::RawValue;

use super::Reach;
use crate::{
    route::resolve::Need,
    rpc::{
        self,
        methods::{About, Name},
    },
    upstream::heads::ChainHeadState,
};

/// How long a cached answer stays true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// About data at or below the finalized block: never changes.
    Immutable,
    /// True for the consensus head it was fetched at: keyed by that head's hash, so a new
    /// head (or a reorg at the same height) simply misses.
    Head,
}

/// What a cacheable method's answer is about (`rpc::methods`); `None`: never cached.
fn cached_about(method: &Name<'_>) -> Option<About> {
    method.row().filter(|m| m.cached).map(|m| m.about)
}

/// The key a call may be cached (and coalesced) under, or `None` when the method is
/// never cached. `params` are the pinned ones; hex strings are lower-cased and
/// whitespace dropped, so equal questions share one key. Built in one pass over the
/// raw bytes: this runs for every cacheable call, hits included.
pub fn key(chain_id: u64, method: &Name<'_>, params: Option<&RawValue>) -> Option<Arc<str>> {
    cached_about(method)?;
    let raw = params.map_or("null", |p| p.get());
    // Written into this thread's scratch, then copied once into the key that the
    // flight and the cache share: one allocation per call, not one each.
    thread_local! {
        static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
    }
    Some(SCRATCH.with_borrow_mut(|key| {
        key.clear();
        key.push_str(itoa::Buffer::new().format(chain_id));
        key.push(':');
        key.push_str(method);
        key.push(':');
        normalize_into(raw, key);
        let made = Arc::from(key.as_str());
        // A call's params can be as large as a request body: not kept for ever.
        if key.capacity() > SCRATCH_KEPT {
            *key = String::new();
        }
        made
    }))
}

/// The most of `key`'s scratch that a thread keeps between calls.
const SCRATCH_KEPT: usize = 16 << 10;

/// The key of a head-tied answer: the head's hash makes a moved head miss.
pub fn at_head(key: &str, head_hash: &str) -> String {
    format!("{key}@{head_hash}")
}

/// Copies JSON `raw` without the whitespace between tokens, `"0x…"` strings lower-cased.
/// Everything else is copied as it is (object keys keep their order: a reordered
/// question only misses). `raw` is valid JSON, so outside strings it is ASCII and
/// every string ends at an unescaped quote. Copied in runs that end only where the
/// text changes (whitespace dropped, a hex string with capitals lowered): params as
/// clients usually send them are one run, one copy. Cut at every token, it was ~780
/// instructions of each forwarded call (bench/instructions.sh).
fn normalize_into(raw: &str, out: &mut String) {
    let bytes = raw.as_bytes();
    out.reserve(raw.len());
    // The start of the run not yet copied, and where the scan is.
    let (mut run, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let start = i;
                i = rpc::parse::string_end(bytes, i + 1);
                let string = raw.get(start..i).unwrap_or_default();
                if string.starts_with("\"0x") && has_capitals(string) {
                    out.push_str(raw.get(run..start).unwrap_or_default());
                    let from = out.len();
                    out.push_str(string);
                    out[from..].make_ascii_lowercase();
                    run = i;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                out.push_str(raw.get(run..i).unwrap_or_default());
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                run = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(raw.get(run..).unwrap_or_default());
}

/// Whether `s` has an ASCII capital: read whole, without stopping early, so it is a
/// few vector instructions for an address.
fn has_capitals(s: &str) -> bool {
    s.bytes().fold(false, |any, b| any | b.is_ascii_uppercase())
}

/// Which entries this call's answer can be kept as, so only those are looked for: a
/// lookup in a large table that can only miss costs a few percent of a forwarded
/// call's CPU (bench/profiles). It agrees with `lifetime` for every answer, with the
/// same heads: about a block at or below the finalized one, only immutable; above
/// it, or about the head, only head-tied. An entry kept while the chain's finalized
/// block was elsewhere (or by another instance, in Redis) is then not found: a miss.
pub fn reach(method: &Name<'_>, need: Need, heads: &ChainHeadState) -> Reach {
    let (immutable, head_tied) = match (cached_about(method), need) {
        (Some(About::Head), _) => (false, true),
        (Some(About::Block(_) | About::Range), Need::Block(n)) => {
            let fin = heads.finalized.is_some_and(|f| n <= f);
            (fin, !fin)
        }
        (Some(About::Hash), _) => (true, true),
        _ => (false, false),
    };
    Reach {
        immutable,
        head_tied,
    }
}

/// Whether (and how long) this answer may be kept. `result` is the raw JSON result.
pub fn lifetime(
    method: &Name<'_>,
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
    match cached_about(method)? {
        About::Head => Some(Lifetime::Head),
        About::Block(_) | About::Range => match need {
            Need::Block(n) => Some(final_or_head(n)),
            _ => None,
        },
        // Pending transactions have `blockNumber: null`: never cached.
        About::Hash => block_of(result).map(final_or_head),
        About::Nothing => None,
    }
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
    crate::rpc::quantity::parse(n)
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
            &Name::from(method),
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
    fn only_the_entries_an_answer_can_be_kept_as_are_looked_for() {
        const NEITHER: (bool, bool) = (false, false);
        for (method, need, expected) in [
            ("eth_getBalance", Need::Block(36), (true, false)),
            ("eth_getBlockByNumber", Need::Block(1), (true, false)),
            ("eth_getBalance", Need::Block(37), (false, true)),
            ("eth_getBalance", Need::Fresh, NEITHER),
            ("eth_gasPrice", Need::Fresh, (false, true)),
            ("eth_getTransactionReceipt", Need::Fresh, (true, true)),
            ("eth_chainId", Need::Any, NEITHER),
        ] {
            let reach = reach(&Name::from(method), need, &heads());
            assert_eq!(
                (reach.immutable, reach.head_tied),
                expected,
                "{method} {need:?}"
            );
            // Whatever the answer, `lifetime` keeps it only where `reach` looks.
            for answer in [
                r#""0x1""#,
                r#"{"blockNumber":"0x10"}"#,
                r#"{"number":"0x40"}"#,
                "null",
            ] {
                let kept = lifetime(
                    &Name::from(method),
                    need,
                    &heads(),
                    &Bytes::copy_from_slice(answer.as_bytes()),
                );
                assert!(
                    match kept {
                        Some(Lifetime::Immutable) => reach.immutable,
                        Some(Lifetime::Head) => reach.head_tied,
                        None => true,
                    },
                    "{method} {need:?} {answer}: kept as {kept:?}, looked for in {reach:?}"
                );
            }
        }
    }

    #[test]
    fn equal_questions_share_a_key() {
        let a = RawValue::from_string(r#"[ "0xABcd", "0x10" ]"#.into()).expect("json");
        let b = RawValue::from_string(r#"["0xabcd","0x10"]"#.into()).expect("json");
        assert_eq!(
            key(1, &Name::from("eth_getBalance"), Some(&a)),
            key(1, &Name::from("eth_getBalance"), Some(&b))
        );
        assert_ne!(
            key(1, &Name::from("eth_getBalance"), Some(&a)),
            key(2, &Name::from("eth_getBalance"), Some(&b))
        );
        assert_eq!(
            key(1, &Name::from("eth_sendRawTransaction"), Some(&a)),
            None
        );
        // Inside other strings nothing changes, escapes included.
        let c = RawValue::from_string(r#"[{"data": "A b\"C"}, "0xFF"]"#.into()).expect("json");
        assert_eq!(
            key(1, &Name::from("eth_call"), Some(&c)).as_deref(),
            Some(r#"1:eth_call:[{"data":"A b\"C"},"0xff"]"#)
        );
    }

    mod properties {
        use super::*;
        use proptest::{collection, prelude::*};
        use serde_json::Value;

        /// JSON as clients send it: hex of either case, other strings with quotes,
        /// escapes and non-ASCII, numbers, nesting.
        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>()
                    .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
                    .prop_map(Value::from),
                "0x[0-9a-fA-F]{0,40}".prop_map(Value::String),
                "0[xX][0-9a-zA-Z \"\\\\]{0,8}".prop_map(Value::String),
                "\\PC{0,12}".prop_map(Value::String),
                "[ \"\\\\\t\n/a-zA-Z]{0,8}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 32, 4, |inner| {
                prop_oneof![
                    collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    collection::btree_map("[a-zA-Z \"]{0,6}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// What the key is meant to hold: every string that starts `0x` lower-cased.
        fn lowered(v: &Value) -> Value {
            match v {
                Value::String(s) if s.starts_with("0x") => Value::String(s.to_ascii_lowercase()),
                Value::Array(a) => Value::Array(a.iter().map(lowered).collect()),
                Value::Object(o) => {
                    Value::Object(o.iter().map(|(k, v)| (k.clone(), lowered(v))).collect())
                }
                other => other.clone(),
            }
        }

        fn raw(text: String) -> Box<RawValue> {
            RawValue::from_string(text).expect("serde_json writes valid JSON")
        }

        const METHODS: [&str; 4] = [
            "eth_getBalance",
            "eth_call",
            "eth_getBlockByHash",
            "eth_gasPrice",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// The key is the chain, the method and the params written compactly with
            /// hex lower-cased, however the client spaced or cased them: equal
            /// questions share it, and different ones (another block, address,
            /// argument, chain or method) never do.
            #[test]
            fn the_key_is_the_normalized_question(
                v in json(),
                chain in any::<u64>(),
                m in 0..METHODS.len(),
            ) {
                let method = METHODS[m];
                let expected = format!(
                    "{chain}:{method}:{}",
                    serde_json::to_string(&lowered(&v)).expect("serializes")
                );
                let pretty = raw(serde_json::to_string_pretty(&v).expect("serializes"));
                let compact = raw(serde_json::to_string(&lowered(&v)).expect("serializes"));
                let expected = Some(Arc::from(expected));
                prop_assert_eq!(key(chain, &Name::from(method), Some(&pretty)), expected.clone());
                prop_assert_eq!(key(chain, &Name::from(method), Some(&compact)), expected);
            }

            #[test]
            fn different_questions_get_different_keys(
                a in json(),
                b in json(),
                (n, k) in (any::<u64>(), any::<u64>()).prop_filter("two blocks", |(n, k)| n != k),
                address in "0x[0-9a-f]{40}",
                chains in (any::<u64>(), any::<u64>()).prop_filter("two chains", |(x, y)| x != y),
                head in "0x[0-9a-f]{64}",
            ) {
                let key_of = |v: &Value| {
                    key(1, &Name::from("eth_call"), Some(&raw(serde_json::to_string(v).expect("serializes"))))
                };
                let (la, lb) = (lowered(&a), lowered(&b));
                if serde_json::to_string(&la).ok() != serde_json::to_string(&lb).ok() {
                    prop_assert_ne!(key_of(&a), key_of(&b));
                } else {
                    prop_assert_eq!(key_of(&a), key_of(&b));
                }
                let at = |block: u64| {
                    let params = raw(format!("[\"{address}\",\"{block:#x}\"]"));
                    key(1, &Name::from("eth_getBalance"), Some(&params))
                };
                prop_assert_ne!(at(n), at(k));
                let p = raw(format!("[\"{address}\",\"latest\"]"));
                prop_assert_ne!(
                    key(chains.0, &Name::from("eth_getBalance"), Some(&p)),
                    key(chains.1, &Name::from("eth_getBalance"), Some(&p))
                );
                prop_assert_ne!(
                    key(1, &Name::from("eth_getBalance"), Some(&p)),
                    key(1, &Name::from("eth_getCode"), Some(&p))
                );
                let base = at(n).expect("cacheable");
                prop_assert_ne!(at_head(&base, &head), at_head(&at(k).expect("cacheable"), &head));
                prop_assert_ne!(Arc::from(at_head(&base, &head)), base.clone());
            }

            /// Not even text that is not JSON (which parsing rules out) makes it panic.
            #[test]
            fn normalizing_any_text_does_not_panic(text in "\\PC{0,64}", bytes in "[\"\\\\ 0xX]{0,16}") {
                let mut out = String::new();
                normalize_into(&text, &mut out);
                normalize_into(&bytes, &mut out);
            }
        }
    }
}
