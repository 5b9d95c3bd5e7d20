//! Method allow-lists of `[[auth.keys]] methods`: `*` matches any run of characters
//! (`eth_*`, `*_getBalance`, `*`), everything else itself, case-sensitively as method
//! names are. Pure; a tiny matcher instead of a dependency.

/// One pattern, split at its `*`s.
#[derive(Debug, Clone)]
pub struct Glob {
    parts: Vec<String>,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            parts: pattern.split('*').map(str::to_owned).collect(),
        }
    }

    pub fn matches(&self, text: &str) -> bool {
        let [first, middle @ .., last] = &self.parts[..] else {
            // No `*`: one part, the whole text.
            return self.parts.first().is_some_and(|p| p == text);
        };
        let Some(mut rest) = text.strip_prefix(first.as_str()) else {
            return false;
        };
        for part in middle {
            match rest.find(part.as_str()) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last.as_str())
    }
}

/// A key's allow-list: a method passes when any pattern matches it.
#[derive(Debug, Clone)]
pub struct Methods(Vec<Glob>);

impl Methods {
    pub fn new(patterns: &[String]) -> Methods {
        Methods(patterns.iter().map(|p| Glob::new(p)).collect())
    }

    pub fn allows(&self, method: &str) -> bool {
        self.0.iter().any(|g| g.matches(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, text: &str, expected: bool) {
        assert_eq!(
            Glob::new(pattern).matches(text),
            expected,
            "{pattern} ~ {text}"
        );
    }

    #[test]
    fn stars_match_any_run_and_the_rest_matches_itself() {
        check("eth_*", "eth_call", true);
        check("eth_*", "eth_", true);
        check("eth_*", "net_version", false);
        check("eth_*", "Eth_call", false);
        check("net_version", "net_version", true);
        check("net_version", "net_versions", false);
        check("*", "anything", true);
        check("*_getBalance", "eth_getBalance", true);
        check("eth_get*By*", "eth_getBlockByNumber", true);
        check("eth_get*By*", "eth_getBalance", false);
        check("a*a", "a", false);
        check("a*a", "aa", true);
        check("", "", true);
        check("", "x", false);
    }
}
