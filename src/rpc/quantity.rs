//! JSON-RPC quantities (`"0x1a"`): the one parser and writer every layer uses, so a
//! malformed number from a client or a provider is refused the same way everywhere.

use serde_json::value::RawValue;

/// The value of a quantity string (without its quotes): `0x` then 1 to 16 hex digits.
/// Anything else (no prefix, a sign, no digits, too large) is `None`.
pub fn parse(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// `n` as a quantity string, without quotes.
pub fn format(n: u64) -> String {
    format!("0x{n:x}")
}

/// `n` as a JSON quantity (with quotes), to put into params.
pub fn raw(n: u64) -> Box<RawValue> {
    RawValue::from_string(format!("\"0x{n:x}\"")).unwrap_or_else(|_| {
        unreachable!("a quoted hex number is JSON") // only hex digits between the quotes
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_quantities_are_read() {
        assert_eq!(parse("0x0"), Some(0));
        assert_eq!(parse("0x1a"), Some(26));
        assert_eq!(parse("0xFFFFFFFFFFFFFFFF"), Some(u64::MAX));
        for bad in [
            "",
            "0x",
            "1a",
            "0x+1",
            "0x-1",
            "0x1g",
            "0x10000000000000000",
            " 0x1",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn written_as_read() {
        for n in [0, 1, 26, u64::MAX] {
            assert_eq!(parse(&format(n)), Some(n));
            assert_eq!(raw(n).get(), format!("\"{}\"", format(n)));
        }
    }
}
