//! Provider URLs carry API keys (in the path, the query or the user info), and `[redis]
//! secret` is one. `UpstreamUrl` and `Secret` are the only holders of the real values;
//! everything that prints or logs one gets the shown form, so a secret can only leave
//! through `upstream::client` (or the Redis client, or the HMAC).
//!
//! The shown form is built from the text as written in the file, never from the
//! expanded value: a `${NAME}` is shown as `${NAME}`, whatever it holds (three
//! characters, a word, a whole URL), and literal text that could be a key is `***`:
//! user info, query values, fragments, and path segments or query names that do not
//! look like a route (see `looks_public`). Only the scheme, host and port are shown as
//! written; a template that does not parse as a URL shows no more than that.

use std::fmt;

use serde::{Deserialize, Deserializer, de::Error};
use url::Url;

use super::env::{self, Piece};

#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    url: Url,
    shown: String,
}

impl UpstreamUrl {
    /// Parses `template` after `${VAR}` expansion.
    pub fn parse(template: &str) -> Result<Self, String> {
        let pieces = env::pieces(template)?;
        let text = env::expand(template)?;
        let url = Url::parse(&text).map_err(|e| format!("not a valid URL: {e}"))?;
        Ok(UpstreamUrl {
            url,
            shown: shown_url(&pieces),
        })
    }

    /// The real URL, secrets included: for the HTTP client only.
    pub fn expose(&self) -> &Url {
        &self.url
    }

    pub fn scheme(&self) -> &str {
        self.url.scheme()
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamUrl({})", self.shown)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        UpstreamUrl::parse(&raw).map_err(D::Error::custom)
    }
}

/// A secret string (`[redis] secret`), `${VAR}` expanded. Shown as the `${NAME}` it was
/// written as, or `***` when any of it is literal: never its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    shown: String,
}

impl Secret {
    pub fn parse(template: &str) -> Result<Self, String> {
        let pieces = env::pieces(template)?;
        let value = env::expand(template)?;
        let shown = if pieces.iter().all(|p| matches!(p, Piece::Var(_))) && !pieces.is_empty() {
            written(&pieces)
        } else {
            "***".to_owned()
        };
        Ok(Secret { value, shown })
    }

    /// The value itself: for keying a MAC only.
    pub fn expose(&self) -> &[u8] {
        self.value.as_bytes()
    }

    /// Bytes of the value (its strength is checked by `load`).
    pub fn len(&self) -> usize {
        self.value.len()
    }

    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.shown)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Secret::parse(&raw).map_err(D::Error::custom)
    }
}

/// The pieces as written, `${NAME}` and all.
fn written(pieces: &[Piece<'_>]) -> String {
    pieces
        .iter()
        .map(|p| match p {
            Piece::Text(t) => (*t).to_owned(),
            Piece::Var(name) => format!("${{{name}}}"),
        })
        .collect()
}

/// The shown form of a URL template: each `${NAME}` stands in the URL as a placeholder
/// (letters and digits, valid in a host, a path or a query), the URL is parsed and its
/// literal parts redacted, then each placeholder becomes `${NAME}` again.
fn shown_url(pieces: &[Piece<'_>]) -> String {
    let literal: String = pieces
        .iter()
        .filter_map(|p| match p {
            Piece::Text(t) => Some(t.to_ascii_lowercase()),
            Piece::Var(_) => None,
        })
        .collect();
    // Not in the literal text (hosts are lower-cased), so only a placeholder holds it.
    let mut tag = String::from("zqv");
    while literal.contains(&tag) {
        tag.push('q');
    }
    let marks = Marks { tag: &tag };
    let mut template = String::new();
    let mut names = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => template.push_str(t),
            Piece::Var(name) => {
                template.push_str(&marks.placeholder(names.len()));
                names.push(*name);
            }
        }
    }
    let mut text = match Url::parse(&template) {
        Ok(url) => redact(&url, &marks),
        Err(_) => redact_unparsed(&template, &marks),
    };
    // Highest first: `zqv1zqv` is no part of `zqv10zqv`, but keep it obviously so.
    for (i, name) in names.iter().enumerate().rev() {
        text = text.replace(&marks.placeholder(i), &format!("${{{name}}}"));
    }
    text
}

/// The placeholders standing for `${NAME}`s in a template.
struct Marks<'a> {
    tag: &'a str,
}

impl Marks<'_> {
    fn placeholder(&self, i: usize) -> String {
        format!("{}{i}{}", self.tag, self.tag)
    }

    /// `text` with every placeholder taken out: the literal text it holds.
    fn literal(&self, text: &str) -> String {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find(self.tag) {
            out.push_str(&rest[..start]);
            let after = &rest[start + self.tag.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            match after[digits..].strip_prefix(self.tag) {
                Some(tail) if digits > 0 => rest = tail,
                _ => {
                    out.push_str(self.tag);
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Only `${NAME}`s: shown as written.
    fn only_variables(&self, text: &str) -> bool {
        self.literal(text).is_empty()
    }

    /// Variables, and literal text that looks like a route, not a key.
    fn public(&self, text: &str) -> bool {
        looks_public(&self.literal(text))
    }
}

/// User info, query values and the fragment become `***` unless they are only
/// `${NAME}`s; path segments and query names unless they look like a route.
fn redact(url: &Url, marks: &Marks<'_>) -> String {
    if url.cannot_be_a_base() {
        // `scheme:opaque`: nothing in it is known to be public.
        return if marks.only_variables(url.path())
            && url.query().is_none()
            && url.fragment().is_none()
        {
            url.to_string()
        } else {
            format!("{}:***", url.scheme())
        };
    }
    let mut shown = url.clone();
    if !url.username().is_empty() && !marks.only_variables(url.username()) {
        let _ = shown.set_username("***");
    }
    if let Some(password) = url.password()
        && !marks.only_variables(password)
    {
        let _ = shown.set_password(Some("***"));
    }
    if let Some(segments) = url.path_segments()
        && !segments.clone().all(|s| marks.public(s))
    {
        let segments: Vec<&str> = segments
            .map(|s| if marks.public(s) { s } else { "***" })
            .collect();
        shown.set_path(&format!("/{}", segments.join("/")));
    }
    if let Some(query) = url.query() {
        shown.set_query(Some(&redact_query(query, marks)));
    }
    if let Some(fragment) = url.fragment()
        && !marks.only_variables(fragment)
    {
        shown.set_fragment(Some("***"));
    }
    shown.to_string()
}

/// A template that is a URL only once expanded (`${URL}`, a port from `${PORT}`): its
/// scheme, and host and port when they are plainly that; the rest is `***` unless it is
/// only `${NAME}`s.
fn redact_unparsed(template: &str, marks: &Marks<'_>) -> String {
    if marks.only_variables(template) {
        return template.to_owned();
    }
    let Some((scheme, rest)) = template.split_once("://") else {
        return "***".to_owned();
    };
    let scheme_ok = scheme
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return "***".to_owned();
    }
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let host_ok = marks
        .literal(host)
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_'));
    let mut out = format!("{scheme}://");
    if let Some(u) = userinfo {
        let parts: Vec<&str> = u
            .split(':')
            .map(|p| if marks.only_variables(p) { p } else { "***" })
            .collect();
        out.push_str(&parts.join(":"));
        out.push('@');
    }
    out.push_str(if host_ok { host } else { "***" });
    let (before_fragment, fragment) = match tail.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (tail, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (before_fragment, None),
    };
    if path.contains('\\') {
        // A separator to some parsers and not to others: show none of it.
        out.push_str("/***");
    } else {
        let segments: Vec<&str> = path
            .split('/')
            .map(|s| if marks.public(s) { s } else { "***" })
            .collect();
        out.push_str(&segments.join("/"));
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(&redact_query(q, marks));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(if marks.only_variables(f) { f } else { "***" });
    }
    out
}

/// `name=value&…`: names shown when they look like a route, values only when they are
/// empty or only `${NAME}`s.
fn redact_query(query: &str, marks: &Marks<'_>) -> String {
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| {
            let (name, value) = match pair.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (pair, None),
            };
            let name = if marks.public(name) { name } else { "***" };
            match value {
                None => name.to_owned(),
                Some(v) if v.is_empty() || marks.only_variables(v) => format!("{name}={v}"),
                Some(_) => format!("{name}=***"),
            }
        })
        .collect();
    pairs.join("&")
}

/// Whether literal text in a path segment or a query name reads as a route (`eth`,
/// `v3`, `mainnet`, `base-sepolia`) rather than a key. Provider keys are long (Infura:
/// 32 hex, Alchemy: 32 base62, UUIDs: 36) or mix letters and digits; anything longer
/// than a route name, mixing them over 8 characters, or holding anything but letters,
/// digits, `-`, `_`, `.` and `~` (a percent-encoded key included) is hidden. Hiding a
/// route name costs only a less helpful log line.
fn looks_public(text: &str) -> bool {
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'));
    let letters = text.bytes().any(|b| b.is_ascii_alphabetic());
    let digits = text.bytes().any(|b| b.is_ascii_digit());
    plain && text.len() < 16 && !(text.len() >= 8 && letters && digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shown form of `template`, variables named but not looked up.
    fn shown(template: &str) -> String {
        shown_url(&env::pieces(template).expect("template"))
    }

    fn check(template: &str, expected: &str) {
        assert_eq!(shown(template), expected, "showing {template}");
    }

    #[test]
    fn secrets_never_show() {
        check(
            "https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            "https://mainnet.infura.io/v3/***",
        );
        check(
            "https://user:pw@node.example/rpc?apikey=abc&x=1",
            "https://***:***@node.example/rpc?apikey=***&x=***",
        );
        check(
            "https://rpc.example/eth/${KEY}",
            "https://rpc.example/eth/${KEY}",
        );
        check(
            "https://mainnet.infura.io/v3/${INFURA}?key=${K}",
            "https://mainnet.infura.io/v3/${INFURA}?key=${K}",
        );
        check(
            "https://ethereum-rpc.publicnode.com/",
            "https://ethereum-rpc.publicnode.com/",
        );
        check("https://1rpc.io/eth", "https://1rpc.io/eth");
        // Digit-free, percent-encoded, and mixed with a variable.
        check(
            "https://eth-mainnet.g.alchemy.com/v2/abcdefghijklmnopqrstuvwxyzABCDEF",
            "https://eth-mainnet.g.alchemy.com/v2/***",
        );
        check(
            "https://x.example/v3/%39%61%61%33%64%39%35%62",
            "https://x.example/v3/***",
        );
        check("https://x.example/v3/key%2Dabc", "https://x.example/v3/***");
        check(
            "https://x.example/ab12cd34/${K}",
            "https://x.example/***/${K}",
        );
        check("https://x.example/v3-${K}", "https://x.example/v3-${K}");
        check("https://x.example/${K}abc12345", "https://x.example/***");
        check(
            "https://${USER}:${PASS}@x.example/?${Q}=1&dkey=${K}&flag",
            "https://${USER}:${PASS}@x.example/?${Q}=***&dkey=${K}&flag",
        );
        check(
            "https://x.example/rpc?0123456789abcdef0123",
            "https://x.example/rpc?***",
        );
        check("https://x.example/rpc#sekrit", "https://x.example/rpc#***");
        check(
            "redis://:hunter2@127.0.0.1:6379/0",
            "redis://:***@127.0.0.1:6379/0",
        );
        check("redis://127.0.0.1:6379/", "redis://127.0.0.1:6379/");
        check(
            "redis://127.0.0.1:6379/0123456789abcdef0123/x",
            "redis://127.0.0.1:6379/***/x",
        );
        check("redis:hunter2", "redis:***");
    }

    #[test]
    fn a_variable_is_shown_by_name_whatever_it_holds_and_wherever_it_is() {
        check("${URL}", "${URL}");
        check("https://${HOST}/v3/${KEY}", "https://${HOST}/v3/${KEY}");
        check("https://${A}${B}.example/", "https://${A}${B}.example/");
        // Not a URL until expanded: no more than scheme, host and port.
        check(
            "https://x.example:${PORT}/v3/${KEY}",
            "https://x.example:${PORT}/v3/${KEY}",
        );
        check(
            "https://x.example:${PORT}/v3/abc?k=v&n=${N}#f",
            "https://x.example:${PORT}/v3/abc?k=***&n=${N}#***",
        );
        check(
            "https://x.example:${PORT}/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            "https://x.example:${PORT}/v3/***",
        );
        check(
            "https://x.example:${PORT}\\secret",
            "https://x.example:${PORT}/***",
        );
        check(
            "https://u:p@x.example:${PORT}/",
            "https://***:***@x.example:${PORT}/",
        );
        check("${SCHEME}${REST}", "${SCHEME}${REST}");
        check("ws${X}s", "***");
        // Literal text that happens to look like a placeholder is no variable.
        check("https://zqv0zqv.example/a", "https://zqv0zqv.example/a");
    }

    #[test]
    fn a_secret_shows_only_the_names_it_was_written_with() {
        let s = Secret::parse("0123456789abcdef-literal").expect("literal");
        assert_eq!(s.to_string(), "***");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.len(), 24);
        assert_eq!(s.expose(), b"0123456789abcdef-literal");
        let s = Secret::parse("${OUTLAST_TEST_UNSET_SECRET}");
        assert_eq!(
            s.map(|_| ()),
            Err("environment variable `OUTLAST_TEST_UNSET_SECRET` is not set".into())
        );
        let pieces = env::pieces("${A}${B}").expect("pieces");
        assert_eq!(written(&pieces), "${A}${B}");
    }

    mod properties {
        use super::*;
        use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
        use proptest::prelude::*;

        /// Keys as providers issue them, and worse: hex, base62, letters only, UUIDs,
        /// and any text at all.
        fn long_secret() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9a-f]{32}",
                "[A-Za-z0-9]{16,48}",
                "[A-Za-z]{16,48}",
                "[a-z]{16,32}",
                "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                "\\PC{16,32}",
            ]
        }

        /// Shorter keys, where a short one is still a key: mixed letters and digits,
        /// or anything with a character no route has.
        fn short_secret() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z]{4}[0-9]{4}[A-Za-z0-9]{0,7}",
                "[0-9]{4}[a-z]{4}[A-Za-z0-9]{0,7}",
                "[A-Za-z0-9]{3,10}[^A-Za-z0-9._~-][A-Za-z0-9]{3,10}",
            ]
        }

        /// How the secret is written into the URL: escaped only where it must be, or
        /// every byte percent-encoded.
        fn write(secret: &str, all: bool) -> String {
            if all {
                secret.bytes().map(|b| format!("%{b:02X}")).collect()
            } else {
                utf8_percent_encode(secret, NON_ALPHANUMERIC)
                    .to_string()
                    .replace("%2D", "-")
                    .replace("%5F", "_")
            }
        }

        /// The fixed parts of the URLs below hold no secret of 8 characters or more.
        const FIXED: &str = "https://node.test:8545/v3/eth/rpc?network=mainnet&key=x#top";

        fn assert_hidden(template: &str, secret: &str) -> Result<(), TestCaseError> {
            prop_assume!(!FIXED.contains(secret));
            let url = UpstreamUrl::parse(template)
                .map_err(|e| TestCaseError::fail(format!("{template}: {e}")))?;
            let shown = url.to_string();
            let decoded = percent_decode_str(&shown).decode_utf8_lossy();
            prop_assert!(!shown.contains(secret), "{template} shown as {shown}");
            prop_assert!(!decoded.contains(secret), "{template} shown as {shown}");
            let lower = shown.to_ascii_lowercase();
            prop_assert!(
                !lower.contains(&write(secret, true).to_ascii_lowercase()),
                "{template} shown as {shown}"
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn a_long_key_never_shows_wherever_it_is(
                secret in long_secret(),
                all in any::<bool>(),
                place in 0..6usize,
            ) {
                let s = write(&secret, all);
                let template = match place {
                    0 => format!("https://{s}@node.test/v3"),
                    1 => format!("https://user:{s}@node.test/v3"),
                    2 => format!("https://node.test/v3/{s}"),
                    3 => format!("https://node.test:8545/{s}/eth/rpc?network=mainnet"),
                    4 => format!("https://node.test/rpc?network=mainnet&key={s}"),
                    _ => format!("https://node.test/rpc?{s}=1#{s}"),
                };
                assert_hidden(&template, &secret)?;
            }

            #[test]
            fn a_short_key_never_shows_in_a_path_a_query_or_user_info(
                secret in short_secret(),
                all in any::<bool>(),
                place in 0..5usize,
            ) {
                let s = write(&secret, all);
                let template = match place {
                    0 => format!("https://{s}:{s}@node.test/"),
                    1 => format!("https://node.test/v3/{s}"),
                    2 => format!("https://node.test/{s}/eth"),
                    3 => format!("https://node.test/rpc?key={s}"),
                    _ => format!("https://node.test/rpc?{s}"),
                };
                assert_hidden(&template, &secret)?;
            }

            /// Whatever the text, showing it does not panic, and what came from the
            /// environment is shown by name only.
            #[test]
            fn any_template_is_shown_without_its_variables_values(
                before in "\\PC{0,24}",
                after in "\\PC{0,24}",
                name in "[A-Z][A-Z0-9_]{0,8}",
            ) {
                let template = format!("{before}${{{name}}}{after}");
                if let Ok(pieces) = env::pieces(&template) {
                    let shown = shown_url(&pieces);
                    // Placeholders never leak out under another name.
                    prop_assert!(!shown.contains("zqv0zqv") || template.contains("zqv0zqv"));
                }
            }
        }
    }
}
