//! Provider URLs carry API keys (in the path, the query or the user info). `UpstreamUrl`
//! is the only holder of the real URL; everything that prints or logs one gets the
//! redacted form, so a secret can only leave through `upstream::client`.

use std::fmt;

use serde::{Deserialize, Deserializer, de::Error};
use url::Url;

use super::env;

#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    url: Url,
    shown: String,
}

impl UpstreamUrl {
    /// Parses `template` after `${VAR}` expansion.
    pub fn parse(template: &str) -> Result<Self, String> {
        let (text, subs) = env::expand(template)?;
        let url = Url::parse(&text).map_err(|e| format!("not a valid URL: {e}"))?;
        let shown = redact(&url, &subs);
        Ok(UpstreamUrl { url, shown })
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

/// User info, query values and key-like path segments become `***`; whatever came from
/// the environment is shown as the `${NAME}` it came from.
fn redact(url: &Url, subs: &[env::Substitution]) -> String {
    let mut shown = url.clone();
    if !shown.username().is_empty() {
        let _ = shown.set_username("***");
    }
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    // A value that came from the environment is kept here and shown as `${NAME}` below.
    let from_env = |text: &str| subs.iter().any(|s| s.value == text);
    if shown.query().is_some() {
        let pairs: Vec<String> = url
            .query_pairs()
            .map(|(k, v)| {
                if from_env(&v) {
                    format!("{k}={v}")
                } else {
                    format!("{k}=***")
                }
            })
            .collect();
        shown.set_query(Some(&pairs.join("&")));
    }
    let segments: Option<Vec<String>> = url.path_segments().map(|segs| {
        segs.map(|s| {
            if looks_like_key(s) && !from_env(s) {
                "***".to_owned()
            } else {
                s.to_owned()
            }
        })
        .collect()
    });
    if let Some(segments) = segments {
        shown.set_path(&segments.join("/"));
    }
    let mut text = shown.to_string();
    for sub in subs.iter().filter(|s| s.value.len() >= 4) {
        text = text.replace(&sub.value, &format!("${{{}}}", sub.name));
    }
    text
}

/// Provider keys are long runs of letters and digits (Infura: 32 hex, Alchemy: 32
/// base62); route names like `eth`, `v3` or `mainnet` are short or have no digits.
fn looks_like_key(segment: &str) -> bool {
    let alnum = segment
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let digits = segment.chars().any(|c| c.is_ascii_digit());
    let letters = segment.chars().any(|c| c.is_ascii_alphabetic());
    alnum && segment.len() >= 16 && digits && letters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, subs: &[(&str, &str)], expected: &str) {
        let subs: Vec<env::Substitution> = subs
            .iter()
            .map(|(n, v)| env::Substitution {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect();
        let url = Url::parse(input).expect("test URL parses");
        assert_eq!(redact(&url, &subs), expected, "redacting {input}");
    }

    #[test]
    fn secrets_never_show() {
        check(
            "https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161",
            &[],
            "https://mainnet.infura.io/v3/***",
        );
        check(
            "https://user:pw@node.example/rpc?apikey=abc&x=1",
            &[],
            "https://***:***@node.example/rpc?apikey=***&x=***",
        );
        check(
            "https://rpc.example/eth/mykey",
            &[("KEY", "mykey")],
            "https://rpc.example/eth/${KEY}",
        );
        check(
            "https://mainnet.infura.io/v3/9aa3d95b3bc440fa88ea12eaa4456161?key=abcdef",
            &[
                ("INFURA", "9aa3d95b3bc440fa88ea12eaa4456161"),
                ("K", "abcdef"),
            ],
            "https://mainnet.infura.io/v3/${INFURA}?key=${K}",
        );
        check(
            "https://ethereum-rpc.publicnode.com/",
            &[],
            "https://ethereum-rpc.publicnode.com/",
        );
        check("https://1rpc.io/eth", &[], "https://1rpc.io/eth");
    }
}
