//! HTTP byte ranges (`Range: bytes=…`, one range; RFC 9110 §14) resolved against a
//! content size. Pure.
//!
//! Both numbers come from the client and the size from the content (whoever made it),
//! so nothing here adds or subtracts without a check: positions past the end are
//! clamped as RFC 9110 §14.1.2 says, and numbers too long for a `u64` are taken as
//! "beyond any content" rather than refused.

use super::StorageError;

/// One requested range, before the size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive) or `bytes=a-`.
    From(u64, Option<u64>),
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The single range in a `Range` header; `None` (serve the whole content, as RFC
    /// 9110 allows) for several ranges, other units or a malformed header.
    pub fn parse(header: &str) -> Option<ByteRange> {
        let (unit, spec) = header.trim().split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return None;
        }
        let spec = spec.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return number(b).map(ByteRange::Suffix);
        }
        let from = number(a)?;
        if b.is_empty() {
            return Some(ByteRange::From(from, None));
        }
        let to = number(b)?;
        (to >= from).then_some(ByteRange::From(from, Some(to)))
    }

    /// `[start, end)` within `size` bytes, or 416. `Ok` always has
    /// `start < end <= size`.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), StorageError> {
        let unsatisfiable = StorageError::RangeNotSatisfiable { size };
        // The last byte's position; none in empty content, where nothing is satisfiable.
        let Some(last) = size.checked_sub(1) else {
            return Err(unsatisfiable);
        };
        match self {
            ByteRange::From(from, _) if from > last => Err(unsatisfiable),
            // A last-byte-pos past the end means the end (RFC 9110 §14.1.2); `last + 1`
            // is `size`, so it cannot overflow.
            ByteRange::From(from, to) => Ok((from, to.map_or(last, |t| t.min(last)) + 1)),
            ByteRange::Suffix(0) => Err(unsatisfiable),
            ByteRange::Suffix(n) => Ok((size.saturating_sub(n), size)),
        }
    }

    /// The same range as the trustless gateway spec's `entity-bytes` (from, to). Gateways
    /// read both as signed 64-bit numbers, so larger positions are sent as `i64::MAX`
    /// (still past the end of any content).
    pub fn entity_bytes(self) -> (i64, Option<u64>) {
        const MAX: u64 = i64::MAX as u64;
        match self {
            ByteRange::From(from, to) => (
                i64::try_from(from).unwrap_or(i64::MAX),
                to.map(|t| t.min(MAX)),
            ),
            ByteRange::Suffix(n) => (-i64::try_from(n).unwrap_or(i64::MAX), None),
        }
    }
}

/// A byte position: one or more ASCII digits (no sign, no spaces inside; `u64::from_str`
/// would take a `+`). Longer than a `u64` holds = `u64::MAX`: past the end of anything.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(header: &str, size: u64, expected: Option<Result<(u64, u64), ()>>) {
        let got = ByteRange::parse(header).map(|r| r.resolve(size).map_err(|_| ()));
        assert_eq!(got, expected, "{header} of {size}");
    }

    #[test]
    fn ranges_resolve_like_rfc_9110() {
        check("bytes=0-0", 10, Some(Ok((0, 1))));
        check("bytes=2-5", 10, Some(Ok((2, 6))));
        check("bytes=2-", 10, Some(Ok((2, 10))));
        check("bytes=5-100", 10, Some(Ok((5, 10))));
        check("bytes=-3", 10, Some(Ok((7, 10))));
        check("bytes=-30", 10, Some(Ok((0, 10))));
        check("bytes=10-", 10, Some(Err(())));
        check("bytes=-0", 10, Some(Err(())));
        check("bytes=0-", 0, Some(Err(())));
        check("bytes=-5", 0, Some(Err(())));
        check("bytes=0-1,4-5", 10, None);
        check("items=0-1", 10, None);
        check("bytes=5-2", 10, None);
        check("bytes=x-2", 10, None);
        check("bytes=+1-2", 10, None);
        check("bytes=1-+2", 10, None);
        check("Bytes=1-2", 10, Some(Ok((1, 3))));
    }

    #[test]
    fn huge_positions_are_clamped_or_unsatisfiable_never_wrapped() {
        // The header: once `t + 1` wrapped to 0 and a task panicked.
        check(
            "bytes=1-18446744073709551615",
            100_000,
            Some(Ok((1, 100_000))),
        );
        check(
            "bytes=0-18446744073709551615",
            u64::MAX,
            Some(Ok((0, u64::MAX))),
        );
        check("bytes=18446744073709551615-", 100_000, Some(Err(())));
        check(
            "bytes=18446744073709551614-18446744073709551615",
            u64::MAX,
            Some(Ok((u64::MAX - 1, u64::MAX))),
        );
        // Past u64: beyond any content.
        check("bytes=1-99999999999999999999999", 10, Some(Ok((1, 10))));
        check("bytes=99999999999999999999999-", 10, Some(Err(())));
        check("bytes=-99999999999999999999999", 10, Some(Ok((0, 10))));
        assert_eq!(
            ByteRange::parse("bytes=1-18446744073709551615").map(ByteRange::entity_bytes),
            Some((1, Some(i64::MAX as u64)))
        );
    }

    /// A number as a client might write it: small, near the ends of u64, or too long.
    fn position() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u64..1_000).prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..3).prop_map(|n| (u64::MAX - n).to_string()),
            "[0-9]{19,30}",
            Just(String::new()),
        ]
    }

    fn size() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..2_000,
            any::<u64>(),
            (0u64..3).prop_map(|n| u64::MAX - n)
        ]
    }

    proptest! {
        #[test]
        fn any_header_parses_without_panicking_and_resolves_within_the_content(
            header in prop_oneof![
                any::<String>(),
                "[ bBytesi]{0,7}=[ 0-9,+-]{0,12}",
                (position(), position()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
            ],
            size in size(),
        ) {
            if let Some(range) = ByteRange::parse(&header) {
                match range.resolve(size) {
                    Ok((start, end)) => {
                        prop_assert!(start < end, "{header} of {size}: {start}..{end}");
                        prop_assert!(end <= size, "{header} of {size}: {start}..{end}");
                    }
                    Err(StorageError::RangeNotSatisfiable { size: s }) => prop_assert_eq!(s, size),
                    Err(e) => prop_assert!(false, "{header}: {e}"),
                }
                let (from, to) = range.entity_bytes();
                prop_assert!(to.is_none_or(|t| t <= i64::MAX as u64));
                prop_assert!(from != i64::MIN);
            }
        }

        #[test]
        fn a_range_resolves_as_rfc_9110_says(
            from in size(),
            len in size(),
            size in size(),
        ) {
            let to = from.saturating_add(len);
            let got = ByteRange::parse(&format!("bytes={from}-{to}")).map(|r| r.resolve(size).ok());
            // Satisfiable iff the first byte is in the content; the end is clamped.
            let want = (from < size).then(|| (from, to.min(size - 1) + 1));
            prop_assert_eq!(got, Some(want));
            let suffix = ByteRange::parse(&format!("bytes=-{len}")).map(|r| r.resolve(size).ok());
            let want = (len > 0 && size > 0).then(|| (size - len.min(size), size));
            prop_assert_eq!(suffix, Some(want));
        }
    }
}
