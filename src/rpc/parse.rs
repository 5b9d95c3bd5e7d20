//! Reads a client's JSON-RPC body: the envelope only. `id` and `params` stay raw JSON so
//! they are echoed and forwarded byte for byte (`1.50` stays `1.50`).

use std::borrow::Cow;

use serde::{Deserializer, de::DeserializeSeed};
use serde_json::value::RawValue;

use super::{errors::RpcError, methods::Name};

/// One well-formed call. `id: None` is a notification: it is executed, never answered.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub id: Option<&'a RawValue>,
    pub method: Name<'a>,
    /// Absent or `null` params are not forwarded.
    pub params: Option<&'a RawValue>,
}

/// One entry of the request that gets an error instead of an answer. Its id is kept
/// when it could be read (`null` when not), so the client can match the error; `None`
/// only for a notification, which is refused silently.
#[derive(Debug)]
pub struct Rejected<'a> {
    pub id: Option<&'a RawValue>,
    pub error: RpcError,
}

pub type Entry<'a> = Result<Call<'a>, Rejected<'a>>;

/// The request as the client shaped it: the reply mirrors that shape.
#[derive(Debug)]
pub enum Request<'a> {
    Single(Entry<'a>),
    Batch(Vec<Entry<'a>>),
}

#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_batch: usize,
    pub max_depth: usize,
}

/// Whole-request failures (`Err`) get one error object with id `null`; problems with a
/// single entry are `Rejected` entries inside the `Request`. One pass of serde over the
/// body (after the nesting scan): each call's members are taken as they are read, not
/// read whole as raw JSON first and parsed again (that was a third of a forwarded
/// batch's instructions, bench/instructions.sh).
pub fn parse(body: &[u8], limits: ParseLimits) -> Result<Request<'_>, RpcError> {
    parse_shaped(body, Shape::of(body, limits.max_depth), limits)
}

/// As `parse`, for a body whose `Shape` was taken already (to charge its calls).
pub fn parse_shaped(
    body: &[u8],
    shape: Shape,
    limits: ParseLimits,
) -> Result<Request<'_>, RpcError> {
    if let Some(depth) = shape.too_deep {
        return Err(RpcError::LimitExceeded(format!(
            "JSON nested {depth} levels deep; the limit is {}",
            limits.max_depth
        )));
    }
    // Checked as UTF-8 once, whole, then read as text: serde_json reading bytes checks
    // each string and each raw value it keeps again (about 9 checks per call, 1.1k
    // instructions of a call's parse). JSON is UTF-8 (RFC 8259); anything else was
    // refused before too, as soon as it sat in a string.
    let body = std::str::from_utf8(body)
        .map_err(|e| RpcError::Parse(format!("body is not valid JSON: not UTF-8: {e}")))?;
    let first = body.bytes().find(|b| !b.is_ascii_whitespace());
    let not_json = |e: serde_json::Error| RpcError::Parse(format!("body is not valid JSON: {e}"));
    match first {
        Some(b'[') => {
            let items = batch_items(body, limits.max_batch)?;
            if items.is_empty() {
                return Err(RpcError::InvalidRequest(
                    "empty batch: send at least one call".into(),
                ));
            }
            Ok(Request::Batch(items.into_iter().map(entry).collect()))
        }
        Some(b'{') => {
            let mut de = serde_json::Deserializer::from_str(body);
            let item = de.deserialize_any(ItemVisitor).map_err(not_json)?;
            de.end().map_err(not_json)?;
            Ok(Request::Single(entry(item)))
        }
        _ => match serde_json::from_str::<serde::de::IgnoredAny>(body) {
            Err(e) => Err(not_json(e)),
            Ok(_) => Err(RpcError::InvalidRequest(
                "a request must be a JSON object or an array of them".into(),
            )),
        },
    }
}

/// The items of a batch, counted while they are read: reading stops at the first item
/// past `max`, so a huge batch costs no more memory than an allowed one.
fn batch_items(body: &str, max: usize) -> Result<Vec<Item<'_>>, RpcError> {
    let over = std::cell::Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(body);
    let read = BoundedSeq { max, over: &over }
        .deserialize(&mut de)
        .and_then(|items| de.end().map(|()| items));
    match read {
        Ok(items) => Ok(items),
        Err(_) if over.get() => Err(RpcError::LimitExceeded(format!(
            "batch of more than {max} calls; the limit is {max}: split it"
        ))),
        Err(e) => Err(RpcError::Parse(format!("body is not valid JSON: {e}"))),
    }
}

/// A JSON array of at most `max` items; `over` says the limit stopped it.
struct BoundedSeq<'c> {
    max: usize,
    over: &'c std::cell::Cell<bool>,
}

impl<'de> serde::de::DeserializeSeed<'de> for BoundedSeq<'_> {
    type Value = Vec<Item<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BoundedSeq<'_> {
    type Value = Vec<Item<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "an array of at most {} calls", self.max)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(self.max.min(64));
        while let Some(item) = seq.next_element_seed(ItemSeed)? {
            if items.len() == self.max {
                self.over.set(true);
                return Err(serde::de::Error::custom("too many calls"));
            }
            items.push(item);
        }
        Ok(items)
    }
}

/// One entry as read: a call's envelope members (`id` and `params` raw, the two that
/// must be strings as text), so each rule in `entry` can name exactly what is wrong;
/// or why it is no call at all.
enum Item<'a> {
    Call(Envelope<'a>),
    NotObject,
    /// An object the members of which could not be taken (a member given twice).
    Malformed(String),
}

#[derive(Default)]
struct Envelope<'a> {
    jsonrpc: Option<Text<'a>>,
    /// Present, even as `null`, is `Some`; absent is `None` (a notification).
    id: Option<&'a RawValue>,
    method: Option<Text<'a>>,
    params: Option<&'a RawValue>,
}

/// A member that must be a string (`jsonrpc`, `method`), read as text where it is one:
/// borrowed unless it has escapes (serde's own `Cow` always copies). Anything else is
/// skipped. Read in place, where raw JSON parsed once more cost a call a few hundred
/// instructions (bench/instructions.sh).
enum Text<'a> {
    Str(Cow<'a, str>),
    Other,
}

impl<'de> serde::Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text<'de>, D::Error> {
        d.deserialize_any(TextVisitor)
    }
}

struct TextVisitor;

impl<'de> serde::de::Visitor<'de> for TextVisitor {
    type Value = Text<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Text<'de>, E> {
        Ok(Text::Str(Cow::Owned(s.to_owned())))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Text<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Text::Other)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Text<'de>, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Text::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }

    fn visit_unit<E>(self) -> Result<Text<'de>, E> {
        Ok(Text::Other)
    }
}

/// An object member's name, read without a copy (serde's `Cow<str>` always copies).
#[derive(Clone, Copy)]
enum Member {
    Jsonrpc,
    Id,
    Method,
    Params,
    Other,
}

impl Member {
    fn name(self) -> &'static str {
        match self {
            Member::Jsonrpc => "jsonrpc",
            Member::Id => "id",
            Member::Method => "method",
            Member::Params => "params",
            Member::Other => "",
        }
    }
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Member, D::Error> {
        d.deserialize_identifier(MemberVisitor)
    }
}

struct MemberVisitor;

impl serde::de::Visitor<'_> for MemberVisitor {
    type Value = Member;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E>(self, name: &str) -> Result<Member, E> {
        Ok(match name {
            "jsonrpc" => Member::Jsonrpc,
            "id" => Member::Id,
            "method" => Member::Method,
            "params" => Member::Params,
            _ => Member::Other,
        })
    }
}

struct ItemSeed;

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = Item<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(ItemVisitor)
    }
}

/// Reads any JSON value; an object's four envelope members are kept raw, every other
/// member and every other kind of value is skipped.
struct ItemVisitor;

impl<'de> serde::de::Visitor<'de> for ItemVisitor {
    type Value = Item<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON-RPC call")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Item<'de>, A::Error> {
        let mut env = Envelope::default();
        let mut twice = None;
        // Whether a member was there already.
        fn put<T>(slot: &mut Option<T>, value: T) -> bool {
            slot.replace(value).is_some()
        }
        while let Some(member) = map.next_key::<Member>()? {
            let again = match member {
                Member::Jsonrpc => put(&mut env.jsonrpc, map.next_value()?),
                Member::Id => put(&mut env.id, map.next_value()?),
                Member::Method => put(&mut env.method, map.next_value()?),
                Member::Params => put(&mut env.params, map.next_value()?),
                Member::Other => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    false
                }
            };
            if again && twice.is_none() {
                twice = Some(member.name());
            }
        }
        Ok(match twice {
            Some(name) => Item::Malformed(format!("duplicate field `{name}`")),
            None => Item::Call(env),
        })
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Item<'de>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Item::NotObject)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Item<'de>, E> {
        Ok(Item::NotObject)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Item<'de>, E> {
        Ok(Item::NotObject)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Item<'de>, E> {
        Ok(Item::NotObject)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Item<'de>, E> {
        Ok(Item::NotObject)
    }

    fn visit_str<E>(self, _: &str) -> Result<Item<'de>, E> {
        Ok(Item::NotObject)
    }

    fn visit_unit<E>(self) -> Result<Item<'de>, E> {
        Ok(Item::NotObject)
    }
}

fn entry(item: Item<'_>) -> Entry<'_> {
    let reject = |id, msg: &str| {
        Err(Rejected {
            id,
            error: RpcError::InvalidRequest(msg.to_owned()),
        })
    };
    let env = match item {
        Item::Call(env) => env,
        Item::NotObject => return reject(Some(null()), "each call must be a JSON object"),
        Item::Malformed(e) => {
            return Err(Rejected {
                id: Some(null()),
                error: RpcError::InvalidRequest(format!("malformed call: {e}")),
            });
        }
    };
    let id = match env.id {
        Some(id) if !matches!(id.get().as_bytes()[0], b'"' | b'-' | b'0'..=b'9' | b'n') => {
            return reject(Some(null()), "`id` must be a string, a number or null");
        }
        id => id,
    };
    // A reply to an invalid call carries its id, or null when it has none (JSON-RPC 2.0 §5).
    let reply_id = id.or(Some(null()));
    match env.jsonrpc {
        Some(Text::Str(v)) if v == "2.0" => {}
        Some(_) => return reject(reply_id, "`jsonrpc` must be \"2.0\""),
        None => return reject(reply_id, "`jsonrpc` is missing; it must be \"2.0\""),
    }
    let method = match env.method {
        None => return reject(reply_id, "`method` is missing"),
        Some(Text::Str(m)) if !m.is_empty() => m,
        Some(Text::Str(_)) => return reject(reply_id, "`method` is empty"),
        Some(Text::Other) => return reject(reply_id, "`method` must be a string"),
    };
    let params = match env.params {
        Some(p) if p.get() == "null" => None,
        Some(p) if !matches!(p.get().as_bytes()[0], b'[' | b'{') => {
            return Err(Rejected {
                id: reply_id,
                error: RpcError::InvalidParams("`params` must be an array or an object".into()),
            });
        }
        p => p,
    };
    Ok(Call {
        id,
        method: Name::new(method),
        params,
    })
}

/// The raw `null` used as the id of replies to calls whose id could not be read.
pub fn null() -> &'static RawValue {
    // A fixed, valid JSON literal: this cannot fail.
    static NULL: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| {
        RawValue::from_string("null".to_owned()).expect("`null` is valid JSON")
    });
    &NULL
}

/// What one scan of a body's structural bytes tells before it is parsed: how deep it
/// nests (refused past the limit before the parser recurses: hostile nesting costs one
/// pass) and how many calls it holds (charged to the caller's rate limit before the
/// parser's work is spent on it). One scan for both: two were a twentieth of a
/// forwarded batch's instructions (bench/instructions.sh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// How deep arrays and objects nest (string contents skipped) when that is past the
    /// limit the shape was taken with; `None` within it.
    pub too_deep: Option<usize>,
    /// 1 for a single call (or an empty batch); for a batch, the elements of the
    /// top-level array (whatever they are: the parser refuses what is not a call).
    pub calls: u64,
}

impl Shape {
    /// The shape of `body`, its nesting judged against `max_depth`. A single call with
    /// no more `[` and `{` bytes, anywhere, than the limit cannot nest past it and is
    /// not scanned: the scan is ~1.2k instructions of a call (a `memchr` per string), a
    /// twentieth of a cache hit. A batch is always scanned: its calls are counted.
    pub fn of(body: &[u8], max_depth: usize) -> Shape {
        let batch = body.trim_ascii_start().first() == Some(&b'[');
        if !batch && memchr::memchr2_iter(b'[', b'{', body).count() <= max_depth {
            return Shape {
                too_deep: None,
                calls: 1,
            };
        }
        let (mut depth, mut deepest, mut commas) = (0usize, 0usize, 0u64);
        for b in outside_strings(body) {
            match b {
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b',' if depth == 1 => commas = commas.saturating_add(1),
                _ => {}
            }
        }
        Shape {
            too_deep: (deepest > max_depth).then_some(deepest),
            calls: if batch { commas.saturating_add(1) } else { 1 },
        }
    }
}

/// The structural bytes of a JSON text, `[ ] { } ,` outside strings and one `"` for
/// each string: what the scans before the parser (nesting depth here, a batch's size
/// for the rate limit in `auth`) look at. Everything between is skipped by a table
/// lookup per byte, a string with `memchr` to its next quote or backslash; most of a
/// request's bytes are in strings (addresses, hashes, hex data). Yielding every byte
/// outside strings made the two scans 1.5k instructions per call of a batch.
pub fn outside_strings(body: &[u8]) -> OutsideStrings<'_> {
    OutsideStrings { body, at: 0 }
}

/// The bytes `OutsideStrings` stops at.
static STRUCTURAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    let bytes = *b"[]{},\"";
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
};

pub struct OutsideStrings<'a> {
    body: &'a [u8],
    at: usize,
}

impl Iterator for OutsideStrings<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let rest = self.body.get(self.at..)?;
        let Some(skipped) = rest.iter().position(|&b| STRUCTURAL[usize::from(b)]) else {
            self.at = self.body.len();
            return None;
        };
        let b = rest[skipped];
        self.at += skipped + 1;
        if b == b'"' {
            self.at = string_end(self.body, self.at);
        }
        Some(b)
    }
}

/// The items of a JSON array's text, each its own bytes without the whitespace around
/// it; `None` when `text` is not an array. For a value already read as JSON (a
/// `RawValue`'s text): only brackets, braces, commas and strings are looked at, so a
/// call's params are split by one structural scan. Split by serde_json, a second parse
/// of params the envelope's parse had already checked, it was ~1.2k instructions of a
/// forwarded call (`route::resolve`).
pub fn array_items(text: &str) -> Option<smallvec::SmallVec<[&str; 4]>> {
    let inner = text.trim_ascii().strip_prefix('[')?.strip_suffix(']')?;
    let mut items = smallvec::SmallVec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    let mut scan = outside_strings(inner.as_bytes());
    while let Some(b) = scan.next() {
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                // `at` is just past the comma (one byte, so a char boundary).
                items.push(inner.get(start..scan.at - 1)?.trim_ascii());
                start = scan.at;
            }
            _ => {}
        }
    }
    let last = inner.get(start..)?.trim_ascii();
    if !(last.is_empty() && items.is_empty()) {
        items.push(last);
    }
    Some(items)
}

/// Where the string whose first byte (after its opening quote) is at `at` ends: just
/// past its closing quote; an unterminated string runs to the end of `body`. Also how
/// `cache::policy` finds a key's strings. (Walking short strings by hand before
/// `memchr` was tried: 800 instructions more per call.)
pub fn string_end(body: &[u8], mut at: usize) -> usize {
    loop {
        let rest = body.get(at..).unwrap_or_default();
        match memchr::memchr2(b'"', b'\\', rest) {
            None => return body.len(),
            Some(i) if rest[i] == b'"' => return at + i + 1,
            Some(i) => at += i + 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ParseLimits = ParseLimits {
        max_batch: 3,
        max_depth: 8,
    };

    /// The error code and message of a whole-request or single-entry failure.
    fn error_of(body: &str) -> (i64, String) {
        match parse(body.as_bytes(), LIMITS) {
            Err(e) => (e.code(), e.to_string()),
            Ok(Request::Single(Err(r))) => (r.error.code(), r.error.to_string()),
            Ok(other) => panic!("{body} parsed: {other:?}"),
        }
    }

    #[test]
    fn a_body_that_is_not_utf8_is_a_parse_error() {
        // In a string, where the parser used to find it, and outside one.
        for body in [
            &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_\xff\"}"[..],
            &b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_chainId\"}\xc3"[..],
        ] {
            match parse(body, LIMITS) {
                Err(e) => {
                    assert_eq!(e.code(), -32700);
                    assert!(e.to_string().contains("not UTF-8"), "{e}");
                }
                Ok(other) => panic!("{body:?} parsed: {other:?}"),
            }
        }
    }

    #[test]
    fn bad_requests_get_precise_errors() {
        let cases: &[(&str, i64, &str)] = &[
            ("{", -32700, "body is not valid JSON"),
            ("", -32700, "body is not valid JSON"),
            ("42", -32600, "must be a JSON object or an array"),
            ("[]", -32600, "empty batch"),
            (
                "[1,2,3,4]",
                -32005,
                "batch of more than 3 calls; the limit is 3",
            ),
            ("[1,2,3,4,", -32005, "batch of more than 3 calls"),
            ("[1,2,", -32700, "body is not valid JSON"),
            ("[[[[[[[[[1]]]]]]]]]", -32005, "nested 9 levels deep"),
            (r#"{"id":1,"method":"x"}"#, -32600, "`jsonrpc` is missing"),
            (
                r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
                -32600,
                "`jsonrpc` must be \"2.0\"",
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, -32600, "`method` is missing"),
            (
                r#"{"jsonrpc":2.0,"id":1,"method":"x"}"#,
                -32600,
                "`jsonrpc` must be \"2.0\"",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":{"a":[1,{"b":2}]}}"#,
                -32600,
                "`method` must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":""}"#,
                -32600,
                "`method` is empty",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
                -32600,
                "`method` must be a string",
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":"a"}"#,
                -32602,
                "`params` must be an array or an object",
            ),
            (
                r#"{"jsonrpc":"2.0","id":[1],"method":"x"}"#,
                -32600,
                "`id` must be a string, a number or null",
            ),
        ];
        for (body, code, text) in cases {
            let (got_code, got_text) = error_of(body);
            assert_eq!(got_code, *code, "{body}: {got_text}");
            assert!(got_text.contains(text), "{body}: {got_text}");
        }
    }

    #[test]
    fn ids_and_params_stay_raw() {
        let body = br#"{"jsonrpc":"2.0","id":1.50,"method":"eth_x","params":[ "0xA" , 1.0e3 ]}"#;
        let Ok(Request::Single(Ok(call))) = parse(body, LIMITS) else {
            panic!("should parse")
        };
        assert_eq!(call.id.map(RawValue::get), Some("1.50"));
        assert_eq!(call.params.map(RawValue::get), Some(r#"[ "0xA" , 1.0e3 ]"#));
        assert_eq!(call.method, "eth_x");
        assert!(
            matches!(call.method.text(), Cow::Borrowed(_)),
            "a plain name is not copied"
        );
        let escaped = br#"{"jsonrpc":"2.0","id":1,"method":"eth\u005fx"}"#;
        let Ok(Request::Single(Ok(call))) = parse(escaped, LIMITS) else {
            panic!("should parse")
        };
        assert_eq!(call.method, "eth_x");
    }

    #[test]
    fn absent_id_is_a_notification_and_null_id_is_not() {
        let body = br#"[{"jsonrpc":"2.0","method":"a"},{"jsonrpc":"2.0","id":null,"method":"b"}]"#;
        let Ok(Request::Batch(entries)) = parse(body, LIMITS) else {
            panic!("should parse")
        };
        let ids: Vec<_> = entries
            .iter()
            .map(|e| e.as_ref().expect("valid").id.map(RawValue::get))
            .collect();
        assert_eq!(ids, [None, Some("null")]);
    }

    #[test]
    fn each_batch_entry_is_judged_on_its_own() {
        let body = br#"[[1,[2]],"x",{"jsonrpc":"2.0","id":1,"id":2,"method":"a"},
            {"jsonrpc":"2.0","id":3,"method":"b","extra":{"id":9,"method":"c"}},null,7]"#;
        let limits = ParseLimits {
            max_batch: 10,
            max_depth: 8,
        };
        let Ok(Request::Batch(entries)) = parse(body, limits) else {
            panic!("should parse")
        };
        let got: Vec<String> = entries
            .iter()
            .map(|e| match e {
                Ok(call) => format!("{} {}", call.method, call.id.map_or("-", RawValue::get)),
                Err(r) => r.error.to_string(),
            })
            .collect();
        let not_object = "each call must be a JSON object";
        assert!(
            got[0].contains(not_object) && got[1].contains(not_object),
            "{got:?}"
        );
        assert!(
            got[2].contains("malformed call: duplicate field `id`"),
            "{got:?}"
        );
        // Members other than the envelope's are skipped, whatever they hold.
        assert_eq!(got[3], "b 3");
        assert!(
            got[4].contains(not_object) && got[5].contains(not_object),
            "{got:?}"
        );
    }

    proptest::proptest! {
        /// Any bytes: no panic, and a batch is never longer than the limit.
        #[test]
        fn any_body_parses_or_is_refused_within_the_limits(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
        ) {
            if let Ok(Request::Batch(entries)) = parse(&body, LIMITS) {
                proptest::prop_assert!(!entries.is_empty() && entries.len() <= LIMITS.max_batch);
            }
        }

        /// A batch of n well-formed calls: accepted whole up to the limit, refused with
        /// -32005 past it — however far past.
        #[test]
        fn batches_are_counted_exactly(n in 1usize..40, id in proptest::num::i64::ANY) {
            let call = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_chainId"}}"#);
            let body = format!("[{}]", vec![call; n].join(","));
            match parse(body.as_bytes(), LIMITS) {
                Ok(Request::Batch(entries)) => {
                    proptest::prop_assert!(n <= LIMITS.max_batch);
                    proptest::prop_assert_eq!(entries.len(), n);
                    for e in &entries {
                        let id_text = id.to_string();
                        proptest::prop_assert_eq!(e.as_ref().ok().and_then(|c| c.id).map(RawValue::get), Some(id_text.as_str()));
                    }
                }
                Err(e) => {
                    proptest::prop_assert!(n > LIMITS.max_batch);
                    proptest::prop_assert_eq!(e.code(), -32005);
                }
                Ok(other) => proptest::prop_assert!(false, "{other:?}"),
            }
        }

        /// Nesting past the limit is refused whatever surrounds it.
        #[test]
        fn deep_nesting_is_refused(depth in 9usize..200, open in proptest::bool::ANY) {
            let (o, c) = if open { ("[", "]") } else { (r#"{"a":"#, "}") };
            let body = format!("{}1{}", o.repeat(depth), c.repeat(depth));
            let refused = matches!(parse(body.as_bytes(), LIMITS), Err(e) if e.code() == -32005);
            proptest::prop_assert!(refused);
        }

        /// Any array of JSON values is split into exactly its items, as serde_json
        /// writes them (pretty or not).
        #[test]
        fn array_items_agree_with_serde(
            strings in proptest::collection::vec("[\\[\\]{},\"\\\\a-z0-9 ]{0,12}", 0..6),
            pretty in proptest::bool::ANY,
        ) {
            let values: Vec<serde_json::Value> = strings
                .iter()
                .enumerate()
                .map(|(i, s)| match i % 3 {
                    0 => serde_json::json!(s),
                    1 => serde_json::json!({ "k": s, "n": [i, s] }),
                    _ => serde_json::json!([[s], i]),
                })
                .collect();
            let write = |v: &serde_json::Value| if pretty {
                serde_json::to_string_pretty(v)
            } else {
                serde_json::to_string(v)
            }.expect("JSON");
            let text = write(&serde_json::Value::Array(values.clone()));
            let items = array_items(&text).expect("an array");
            let expected: Vec<String> = values.iter().map(write).collect();
            let expected: Vec<String> = expected
                .iter()
                .map(|e| if pretty { e.replace('\n', "\n  ") } else { e.clone() })
                .collect();
            proptest::prop_assert_eq!(items.to_vec(), expected.iter().map(String::as_str).collect::<Vec<_>>());
        }

        /// Strings of any length and content (quotes, backslashes, brackets, commas)
        /// hide what is in them, on both sides of the short-string walk's end.
        #[test]
        fn strings_of_any_length_hide_their_brackets(
            a in "[\\[\\]{},\"\\\\a-z]{0,60}",
            b in "[\\[\\]{},\"\\\\0-9]{0,60}",
        ) {
            let (a, b) = (serde_json::to_string(&a).expect("a string"), serde_json::to_string(&b).expect("a string"));
            let body = format!(r#"[{{"k":{a}}},[{b},{a}],{b}]"#);
            let shape = Shape::of(body.as_bytes(), 1);
            proptest::prop_assert_eq!((shape.too_deep, shape.calls), (Some(2), 3), "{}", body);
        }
    }

    #[test]
    fn array_items_are_cut_at_top_level_commas_only() {
        fn items(text: &str) -> Option<Vec<&str>> {
            array_items(text).map(|i| i.to_vec())
        }
        assert_eq!(
            items(r#"["0xab", "latest"]"#),
            Some(vec![r#""0xab""#, r#""latest""#])
        );
        assert_eq!(
            items(r#" [ {"to":"0x1","d":[1,2]} , "a,]\"}" ,[[3],4], null ] "#),
            Some(vec![
                r#"{"to":"0x1","d":[1,2]}"#,
                r#""a,]\"}""#,
                "[[3],4]",
                "null"
            ])
        );
        assert_eq!(items("[]"), Some(vec![]));
        assert_eq!(items("[ ]"), Some(vec![]));
        assert_eq!(items("[1]"), Some(vec!["1"]));
        assert_eq!(items(r#"{"a":[1,2]}"#), None);
        assert_eq!(items(r#""[1,2]""#), None);
    }

    #[test]
    fn depth_scan_ignores_brackets_in_strings() {
        // Judged against no nesting at all: every scanned body is too deep, by its depth.
        let depth = |body: &[u8]| Shape::of(body, 0).too_deep.unwrap_or(0);
        assert_eq!(depth(br#"{"a":"[[[[\"{{{"}"#), 1);
        assert_eq!(depth(br#"[{"a":[1]}]"#), 3);
        assert_eq!(depth(br#"["\\",[["x\\\"]"]]]"#), 3);
        assert_eq!(depth(br#"[["unterminated [[[["#), 2);
    }

    #[test]
    fn a_single_call_is_judged_exactly_at_the_limit_scanned_or_not() {
        let too_deep = |body: &str, max: usize| Shape::of(body.as_bytes(), max).too_deep;
        // Four openings, nested four deep: within a limit of four without a scan,
        // past a limit of three by the scan.
        assert_eq!(too_deep(r#"{"params":[[[1]]]}"#, 4), None);
        assert_eq!(too_deep(r#"{"params":[[[1]]]}"#, 3), Some(4));
        // Brackets in strings count as openings, so this body is scanned, and the scan
        // finds it one deep: within any limit.
        assert_eq!(too_deep(r#"{"a":"[[[[{{{{"}"#, 1), None);
        assert_eq!(too_deep(r#"{"a":"[[[[{{{{"}"#, 0), Some(1));
        // The parse refuses what the shape says is too deep, whichever way it was taken.
        let limits = ParseLimits {
            max_batch: 3,
            max_depth: 3,
        };
        let refused =
            |body: &str| matches!(parse(body.as_bytes(), limits), Err(e) if e.code() == -32005);
        assert!(refused(
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[[[1]]]}"#
        ));
        assert!(!refused(
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":[[1]]}"#
        ));
        assert!(!refused(
            r#"{"jsonrpc":"2.0","id":1,"method":"m","params":["[[[[[["]}"#
        ));
    }

    #[test]
    fn calls_are_counted_without_parsing() {
        let check =
            |body: &str, n: u64| assert_eq!(Shape::of(body.as_bytes(), 32).calls, n, "{body}");
        check(r#"{"method":"eth_call","params":[1,2,3]}"#, 1);
        check(r#"  [{"a":[1,2]},{"b":"x,y]"},{"c":"\"],"}]"#, 3);
        check("[]", 1);
        check(" [ \n ] ", 1);
        check("[1]", 1);
        check(r#"[{"a":{"b":[1,2,3]}},"x,y",[4,5]]"#, 3);
        check("[1,2,3,4]", 4);
    }
}
