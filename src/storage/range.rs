//! HTTP byte ranges (`Range: bytes=…`, one range; RFC 9110 §14) resolved against a
//! content size. Pure.

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
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return b.parse().ok().map(ByteRange::Suffix);
        }
        let from = a.parse().ok()?;
        if b.is_empty() {
            return Some(ByteRange::From(from, None));
        }
        let to = b.parse().ok()?;
        (to >= from).then_some(ByteRange::From(from, Some(to)))
    }

    /// `[start, end)` within `size` bytes, or 416.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), StorageError> {
        let unsatisfiable = StorageError::RangeNotSatisfiable { size };
        match self {
            ByteRange::From(from, _) if from >= size => Err(unsatisfiable),
            ByteRange::From(from, to) => Ok((from, to.map_or(size, |t| (t + 1).min(size)))),
            ByteRange::Suffix(n) if n == 0 || size == 0 => Err(unsatisfiable),
            ByteRange::Suffix(n) => Ok((size.saturating_sub(n), size)),
        }
    }

    /// The same range as the trustless gateway spec's `entity-bytes` (from, to).
    pub fn entity_bytes(self) -> (i64, Option<u64>) {
        match self {
            ByteRange::From(from, to) => (i64::try_from(from).unwrap_or(i64::MAX), to),
            ByteRange::Suffix(n) => (-i64::try_from(n).unwrap_or(i64::MAX), None),
        }
    }
}

#[cfg(test)]
mod tests {
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
        check("bytes=0-1,4-5", 10, None);
        check("items=0-1", 10, None);
        check("bytes=5-2", 10, None);
        check("bytes=x-2", 10, None);
    }
}
