//! `${VAR}` expansion, done while deserializing each string so that a missing variable is
//! reported at the line of the string that names it. Only values are expanded here;
//! what is shown of a secret is built from the text as written (`pieces`).

use serde::{Deserialize, Deserializer, de::Error};

/// A part of a string as written in the file: literal text, or a `${NAME}` reference.
/// `secret` builds the shown form of a URL from these, so a value that came from the
/// environment is never printed, however short or unlike a key it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits `text` into literal text and `${NAME}` references, in order.
pub fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        if start > 0 {
            out.push(Piece::Text(&rest[..start]));
        }
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
        out.push(Piece::Var(name));
        rest = &after[end + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

/// Replaces every `${NAME}` in `text` with the variable's value.
pub fn expand(text: &str) -> Result<String, String> {
    expand_with(text, |name| std::env::var(name).ok())
}

fn expand_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(name) => out.push_str(
                &lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?,
            ),
        }
    }
    Ok(out)
}

/// serde helper for a plain string key.
pub fn expanded<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let raw = String::deserialize(d)?;
    expand(&raw).map_err(D::Error::custom)
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
        let got = expand_with(text, lookup);
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
