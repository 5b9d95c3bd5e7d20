//! `eth_getLogs` over more blocks than a provider accepts: the range is split into
//! pieces it takes — its limit set in config (`max_logs_range`) or learned from its
//! "range too large" errors — fetched a few at a time through the normal failover
//! path, and merged in block order. Everything else about the call is unchanged.

use std::time::Instant;

use futures_util::{StreamExt, stream};
use serde_json::value::RawValue;

use super::{
    forward::{Outcome, forward},
    resolve::Need,
};
use crate::{
    route::Chain,
    rpc::{Call, RpcError},
    upstream::{Answer, MIN_LEARNED_LOGS_RANGE},
};

/// Pieces of one range fetched at once; each goes through `forward` (and so through
/// every upstream's `max_rps`).
const PARALLEL: usize = 4;
/// Halvings allowed when pieces are still refused; beyond, the refusal is the answer.
const MAX_SPLITS: u32 = 8;

/// The numeric range of a pinned `eth_getLogs` filter, if it has one.
pub fn range(params: Option<&RawValue>) -> Option<(u64, u64)> {
    #[derive(serde::Deserialize)]
    struct Filter<'a> {
        #[serde(borrow, rename = "fromBlock")]
        from: Option<&'a str>,
        #[serde(borrow, rename = "toBlock")]
        to: Option<&'a str>,
    }
    let items: Vec<&RawValue> = serde_json::from_str(params?.get()).ok()?;
    let f: Filter<'_> = serde_json::from_str(items.first()?.get()).ok()?;
    let num = crate::rpc::quantity::parse;
    let (from, to) = (num(f.from?)?, num(f.to?)?);
    (from <= to).then_some((from, to))
}

/// Blocks in `from..=to`; `None` when the range is empty or its length does not fit a
/// u64 (`0..=u64::MAX`): a client's numbers, so never plain arithmetic.
pub fn span(from: u64, to: u64) -> Option<u64> {
    to.checked_sub(from)?.checked_add(1)
}

/// What one client's `eth_getLogs` may cost (`[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Blocks one query may span.
    pub max_range: u64,
    /// Upstream calls one query may be split into.
    pub max_pieces: u64,
    /// Bytes of the merged result.
    pub max_bytes: usize,
}

/// Refuses a range larger than a client may ask, before anything is sent.
pub fn check_range(from: u64, to: u64, limits: &LogLimits) -> Result<(), RpcError> {
    match span(from, to) {
        Some(n) if n <= limits.max_range => Ok(()),
        n => {
            crate::metrics::limit_exceeded("logs_range");
            let asked = n.map_or_else(|| "more than 2^64".to_owned(), |n| n.to_string());
            Err(RpcError::LimitExceeded(format!(
                "eth_getLogs over {asked} blocks ({from:#x} to {to:#x}); the limit is {} blocks ([limits] max_logs_range): ask a smaller range",
                limits.max_range
            )))
        }
    }
}

/// The largest range the chain's ready upstreams are known to take (config or learned).
pub fn known_limit(chain: &Chain) -> Option<u64> {
    let now = Instant::now();
    chain
        .upstreams()
        .iter()
        .filter(|u| u.health.is_ready())
        .filter_map(|u| u.logs_range.get(now))
        .min()
}

/// If `answer` is a provider saying the range was too big, the range to use instead:
/// the number it names when it names a smaller one, else half of what was asked.
pub fn refused_range(answer: &Answer, asked: u64) -> Option<u64> {
    let Answer::Error { message, .. } = answer else {
        return None;
    };
    let m = message.to_ascii_lowercase();
    let about_range = m.contains("range") || m.contains("more than") || m.contains("response size");
    let too_big = [
        "too large",
        "too wide",
        "exceed",
        "limit",
        "more than",
        "maximum",
        "max ",
    ]
    .iter()
    .any(|w| m.contains(w));
    if !(about_range && too_big) {
        return None;
    }
    let named = first_number(&m).filter(|&n| n > 0 && n < asked);
    Some(named.unwrap_or((asked / 2).max(1)))
}

/// The first number in `text`, with `,`/`_` separators and a `k` suffix ("2K", "10,000").
fn first_number(text: &str) -> Option<u64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut n: u64 = 0;
    let mut rest = text[start..].chars().peekable();
    while let Some(&c) = rest.peek() {
        match c {
            '0'..='9' => n = n.checked_mul(10)?.checked_add(u64::from(c as u8 - b'0'))?,
            ',' | '_' => {}
            _ => break,
        }
        rest.next();
    }
    if matches!(rest.peek(), Some('k')) {
        n = n.checked_mul(1000)?;
    }
    Some(n)
}

/// The pieces of `from..=to` of at most `size` blocks each, produced as they are
/// fetched (never all at once: their number is the client's to choose).
fn pieces(from: u64, to: u64, size: u64) -> impl Iterator<Item = (u64, u64)> {
    let size = size.max(1);
    std::iter::successors(Some(from), move |&a| {
        a.checked_add(size).filter(|&next| next <= to)
    })
    .map(move |a| (a, a.saturating_add(size - 1).min(to)))
}

/// Fetches `from..=to` in pieces of at most `size` blocks and merges the logs in order.
/// The first piece that fails decides the answer (never a partial list). Pieces past
/// the first are paid from the chain's retry budget, and their number and the merged
/// size are capped by `limits`.
pub async fn split(
    chain: &Chain,
    call: &Call<'_>,
    (from, to): (u64, u64),
    size: u64,
    limits: &LogLimits,
) -> Outcome {
    let mut size = size.max(1);
    for _ in 0..MAX_SPLITS {
        let count = span(from, to).unwrap_or(u64::MAX).div_ceil(size);
        if count > limits.max_pieces {
            crate::metrics::limit_exceeded("logs_pieces");
            return refused(format!(
                "eth_getLogs over {from:#x}..{to:#x} needs {count} upstream calls of at most {size} blocks (what the providers take); the limit is {} ([limits] max_logs_pieces): ask at most {} blocks",
                limits.max_pieces,
                limits.max_pieces.saturating_mul(size)
            ));
        }
        if !chain
            .budget
            .withdraw_many(count.saturating_sub(1), Instant::now())
        {
            crate::metrics::limit_exceeded("logs_budget");
            return refused(format!(
                "eth_getLogs over {from:#x}..{to:#x} needs {count} upstream calls, more than the retry budget allows right now: retry shortly, or ask a smaller range"
            ));
        }
        let fetches = pieces(from, to, size).map(|(a, b)| piece(chain, call, a, b));
        let results = stream::iter(fetches).buffered(PARALLEL);
        match merge(results, size, limits.max_bytes).await {
            Merged::Done(outcome) => return outcome,
            Merged::Smaller(next) => size = next.max(MIN_LEARNED_LOGS_RANGE).min(size - 1).max(1),
        }
    }
    piece(chain, call, from, from.saturating_add(size - 1).min(to)).await
}

fn refused(message: String) -> Outcome {
    Outcome::Refused(RpcError::LimitExceeded(message))
}

enum Merged {
    Done(Outcome),
    /// A piece was still refused as too large: try again with this size.
    Smaller(u64),
}

/// Merges pieces as they arrive, stopping at the first that fails or is refused, and
/// when the merged list outgrows `max_bytes`.
async fn merge(
    mut results: impl futures_util::Stream<Item = Outcome> + Unpin,
    size: u64,
    max_bytes: usize,
) -> Merged {
    let mut merged = Vec::with_capacity(256);
    merged.push(b'[');
    let mut who: Option<std::sync::Arc<str>> = None;
    while let Some(outcome) = results.next().await {
        match outcome {
            Outcome::Answered {
                upstream,
                answer: Answer::Result(raw),
            } => {
                let inner = raw
                    .strip_prefix(b"[")
                    .and_then(|r| r.strip_suffix(b"]"))
                    .unwrap_or(&[]);
                let inner = inner.trim_ascii();
                if !inner.is_empty() {
                    if merged.len().saturating_add(inner.len()) > max_bytes {
                        crate::metrics::limit_exceeded("logs_bytes");
                        return Merged::Done(refused(format!(
                            "eth_getLogs result larger than {max_bytes} bytes ([limits] max_logs_bytes): ask a smaller range or a narrower filter"
                        )));
                    }
                    if merged.len() > 1 {
                        merged.push(b',');
                    }
                    merged.extend_from_slice(inner);
                }
                who.get_or_insert(upstream);
            }
            Outcome::Answered { answer, upstream } => {
                if let Some(next) = refused_range(&answer, size).filter(|&n| n < size) {
                    return Merged::Smaller(next);
                }
                return Merged::Done(Outcome::Answered { upstream, answer });
            }
            failed @ (Outcome::Unavailable(_)
            | Outcome::Unverified { .. }
            | Outcome::Refused(_)) => {
                return Merged::Done(failed);
            }
        }
    }
    merged.push(b']');
    Merged::Done(Outcome::Answered {
        upstream: who.unwrap_or_else(|| std::sync::Arc::from("split")),
        answer: Answer::Result(merged.into()),
    })
}

/// One piece: the same filter with its own `fromBlock`/`toBlock`.
async fn piece(chain: &Chain, call: &Call<'_>, from: u64, to: u64) -> Outcome {
    let Some(params) = with_range(call.params, from, to) else {
        return forward(chain, &[call], Need::Block(to))
            .await
            .pop()
            .unwrap_or(Outcome::Unavailable(Vec::new()));
    };
    let piece = Call {
        id: call.id,
        method: call.method.clone(),
        params: Some(&params),
    };
    forward(chain, &[&piece], Need::Block(to))
        .await
        .pop()
        .unwrap_or(Outcome::Unavailable(Vec::new()))
}

fn with_range(params: Option<&RawValue>, from: u64, to: u64) -> Option<Box<RawValue>> {
    let items: Vec<&RawValue> = serde_json::from_str(params?.get()).ok()?;
    let mut filter: std::collections::BTreeMap<&str, &RawValue> =
        serde_json::from_str(items.first()?.get()).ok()?;
    let (a, b) = (quantity(from)?, quantity(to)?);
    filter.insert("fromBlock", &a);
    filter.insert("toBlock", &b);
    let filter = serde_json::value::to_raw_value(&filter).ok()?;
    let rest: Vec<&RawValue> = std::iter::once(&*filter)
        .chain(items.iter().skip(1).copied())
        .collect();
    serde_json::value::to_raw_value(&rest).ok()
}

fn quantity(n: u64) -> Option<Box<RawValue>> {
    Some(crate::rpc::quantity::raw(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(message: &str) -> Answer {
        Answer::Error {
            raw: bytes::Bytes::new(),
            code: -32005,
            message: message.to_owned(),
        }
    }

    #[test]
    fn provider_range_errors_are_recognised_with_their_limits() {
        let cases = [
            (
                "query returned more than 10000 results",
                50_000,
                Some(10_000),
            ),
            (
                "eth_getLogs is limited to a 10,000 range",
                20_000,
                Some(10_000),
            ),
            ("exceed maximum block range: 5", 100, Some(5)),
            (
                "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range",
                5000,
                Some(2000),
            ),
            ("block range is too wide", 100, Some(50)),
            ("execution reverted", 100, None),
            ("header not found", 100, None),
        ];
        for (message, asked, expected) in cases {
            assert_eq!(refused_range(&error(message), asked), expected, "{message}");
        }
    }

    proptest::proptest! {
        /// For any range and piece size: the pieces are contiguous, each at most `size`
        /// blocks, cover exactly `from..=to`, and are as many as `span / size` rounded up
        /// — also at the ends of the u64 range, where the old arithmetic wrapped.
        #[test]
        fn pieces_cover_the_range_exactly(
            from in proptest::prop_oneof![0u64..1000, (u64::MAX - 1000)..=u64::MAX],
            len in 0u64..2000,
            size in 1u64..300,
        ) {
            let to = from.saturating_add(len);
            let mut next = from;
            let mut count = 0u64;
            for (a, b) in pieces(from, to, size).take(5000) {
                proptest::prop_assert_eq!(a, next);
                proptest::prop_assert!(a <= b && b - a < size && b <= to);
                count += 1;
                if b == to {
                    proptest::prop_assert_eq!(Some(count), span(from, to).map(|n| n.div_ceil(size)));
                    return Ok(());
                }
                next = b + 1;
            }
            proptest::prop_assert!(false, "pieces ended before {to}");
        }

        /// A client's range is refused past the limit, and never overflows on the way.
        #[test]
        fn client_ranges_are_checked_without_overflow(
            from in proptest::num::u64::ANY,
            to in proptest::num::u64::ANY,
            max in 1u64..1_000_000,
        ) {
            let limits = LogLimits { max_range: max, max_pieces: 10, max_bytes: 1 };
            let ok = check_range(from, to, &limits).is_ok();
            let expected = to >= from && (to - from) < max;
            proptest::prop_assert_eq!(ok, expected);
        }

        /// Whatever a filter holds, reading its range never panics, and a range read is
        /// ordered.
        #[test]
        fn any_filter_reads_safely(from in "[0-9a-fx]{0,20}", to in "[0-9a-fx]{0,20}", extra in ".{0,20}") {
            let text = serde_json::json!([{"fromBlock": from, "toBlock": to, "x": extra}]).to_string();
            let p = RawValue::from_string(text).expect("json");
            if let Some((a, b)) = range(Some(&p)) {
                proptest::prop_assert!(a <= b);
                proptest::prop_assert!(with_range(Some(&p), a, b).is_some());
            }
        }
    }

    #[test]
    fn pieces_carry_their_own_range_and_keep_the_rest() {
        let p = RawValue::from_string(
            r#"[{"address":"0xab","fromBlock":"0x0","toBlock":"0x64","topics":[null]}]"#.into(),
        )
        .expect("json");
        let piece = with_range(Some(&p), 10, 19).expect("rewritten");
        assert_eq!(
            piece.get(),
            r#"[{"address":"0xab","fromBlock":"0xa","toBlock":"0x13","topics":[null]}]"#
        );
        assert_eq!(range(Some(&p)), Some((0, 100)));
    }
}
