//! `${VAR}` expansion, done while deserializing each string so that a missing variable is
//! reported at the line of the string that names it.

use serde::{Deserialize, Deserializer, de::Error};

/// One variable that was substituted; `secret` uses it to put `${NAME}` back when showing
/// a URL, since whatever came from the environment is most likely a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    pub name: String,
    pub value: String,
}

/// Replaces every `${NAME}` in `text` with the variable's value.
pub fn expand(text: &str) -> Result<(String, Vec<Substitution>), String> {
    expand_with(text, |name| std::env::var(name).ok())
}

fn expand_with(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<(String, Vec<Substitution>), String> {
    let mut out = String::with_capacity(text.len());
    let mut subs = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in {text:?}"))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}` is not a variable name (letters, digits and _ only)"
            ));
        }
        let value =
            lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        subs.push(Substitution {
            name: name.to_owned(),
            value,
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, subs))
}

/// serde helper for a plain string key.
pub fn expanded<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = String::deserialize(d)?;
    expand(&raw).map(|(s, _)| s).map_err(D::Error::custom)
}

/// serde helper for an optional string key.
pub fn expanded_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    expanded(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<&str, &str>) {
        let lookup = |name: &str| (name == "KEY").then(|| "s3cret".to_owned());
        let got = expand_with(text, lookup).map(|(s, _)| s);
        assert_eq!(
            got.as_deref().map_err(String::as_str),
            expected,
            "expanding {text:?}"
        );
    }

    #[test]
    fn expands_known_variables_and_names_missing_ones() {
        check("plain", Ok("plain"));
        check("https://x/v3/${KEY}", Ok("https://x/v3/s3cret"));
        check("${KEY}${KEY}", Ok("s3crets3cret"));
        check("a ${NOPE} b", Err("environment variable `NOPE` is not set"));
        check("${KEY", Err("`${` without a closing `}` in \"${KEY\""));
        check(
            "${A-B}",
            Err("`${A-B}` is not a variable name (letters, digits and _ only)"),
        );
    }
}
