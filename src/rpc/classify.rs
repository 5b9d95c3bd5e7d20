//! Decisions about a method or an upstream's answer that need no I/O: is the method
//! allowed here, and does an upstream's JSON-RPC error belong to the caller (pass it
//! on) or to the upstream (ask another one)?

use super::methods::{self, Name};

/// Which methods this gateway refuses, from `[limits] denied_methods`. Matched without
/// regard to case: some nodes resolve `Debug_traceTransaction` or `eth_sendtransaction`
/// as the method it spells, so a case-sensitive list would let them through.
#[derive(Debug, Clone)]
pub struct MethodPolicy {
    /// Lower-cased, like every method compared with them.
    exact: Vec<String>,
    prefixes: Vec<String>,
    /// The verdict on each known method (by `Name::index`), worked out once: matching
    /// every call against the list cost a few hundred instructions a call.
    known: Vec<bool>,
}

impl MethodPolicy {
    pub fn new(denied: &[String]) -> Self {
        let (prefixes, exact): (Vec<_>, Vec<_>) = denied.iter().partition(|m| m.ends_with('*'));
        let mut policy = MethodPolicy {
            exact: exact.into_iter().map(|m| m.to_lowercase()).collect(),
            prefixes: prefixes
                .into_iter()
                .map(|p| p.trim_end_matches('*').to_lowercase())
                .collect(),
            known: Vec::new(),
        };
        policy.known = methods::names().map(|m| policy.is_denied(m)).collect();
        policy
    }

    /// Whether a call's method is refused: a known method's verdict is looked up.
    pub fn denies(&self, method: &Name<'_>) -> bool {
        match method.index().and_then(|i| self.known.get(i)) {
            Some(&denied) => denied,
            None => self.is_denied(method),
        }
    }

    pub fn is_denied(&self, method: &str) -> bool {
        if method.is_ascii() {
            return self.matches(method);
        }
        // Unicode lower-casing may turn a lookalike into ASCII (the Kelvin sign `K` is
        // `k`); a node that folds case that way must not be handed a denied method.
        self.matches(method) || self.matches(&method.to_lowercase())
    }

    fn matches(&self, method: &str) -> bool {
        self.exact.iter().any(|m| m.eq_ignore_ascii_case(method))
            || self.prefixes.iter().any(|p| {
                method
                    .as_bytes()
                    .get(..p.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
            })
    }
}

/// Whose fault a JSON-RPC error reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The call itself is wrong (revert, bad params, nonce too low): every honest
    /// upstream would say the same, so the error is the answer.
    Caller,
    /// This upstream cannot serve it now (rate limit, missing state, internal error):
    /// another upstream may.
    Upstream,
}

/// Messages of `-32000` (the catch-all code) that mean the node, not the call, failed.
const UPSTREAM_MESSAGES: [&str; 14] = [
    "rate limit",
    "too many requests",
    "limit exceeded",
    "capacity",
    "timeout",
    "timed out",
    "header not found",
    "missing trie node",
    "unavailable",
    "overloaded",
    "try again",
    "internal error",
    "not supported",
    "upgrade your plan",
];

/// Messages, under any code, that mean this node lacks the block or state asked for
/// (it lags or prunes): another node may well have it. Anvil says -32602
/// "BlockOutOfRangeError: block height is 15 but requested was 19".
const MISSING_DATA_MESSAGES: [&str; 6] = [
    "header not found",
    "missing trie node",
    "block height is",
    "out of range",
    "unknown block",
    "block not found",
];

pub fn blame(code: i64, message: &str) -> Blame {
    let lower = message.to_ascii_lowercase();
    if MISSING_DATA_MESSAGES.iter().any(|m| lower.contains(m)) {
        return Blame::Upstream;
    }
    match code {
        // limit exceeded, internal error, method not found/supported here, unavailable.
        -32005 | -32603 | -32601 | -32004 | -32002 => Blame::Upstream,
        -32000 | -32099..=-32006 => {
            let message = message.to_ascii_lowercase();
            if UPSTREAM_MESSAGES.iter().any(|m| message.contains(m)) {
                Blame::Upstream
            } else {
                Blame::Caller
            }
        }
        _ => Blame::Caller,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_method_s_verdict_worked_out_once_is_the_list_s() {
        let lists = [
            crate::config::Limits::default().denied_methods,
            vec!["eth_getBalance".into(), "TRACE_*".into()],
            Vec::new(),
        ];
        for list in lists {
            let policy = MethodPolicy::new(&list);
            let unknown = [
                "made_up",
                "Eth_getBalance",
                "trace_x",
                "debug_y",
                "admin_peers",
            ];
            for m in methods::names().chain(unknown) {
                assert_eq!(
                    policy.denies(&Name::from(m)),
                    policy.is_denied(m),
                    "{m} under {list:?}"
                );
            }
        }
        let policy = MethodPolicy::new(&["eth_getBalance".into(), "TRACE_*".into()]);
        assert!(policy.denies(&Name::from("eth_getBalance")));
        assert!(policy.denies(&Name::from("trace_block")));
        assert!(!policy.denies(&Name::from("eth_call")));
    }

    #[test]
    fn node_control_methods_are_denied_by_default() {
        let policy = MethodPolicy::new(&crate::config::Limits::default().denied_methods);
        for m in [
            "admin_peers",
            "debug_traceTransaction",
            "personal_sign",
            "anvil_setBalance",
            "eth_sendTransaction",
        ] {
            assert!(policy.is_denied(m), "{m}");
        }
        for m in [
            "eth_call",
            "eth_getBalance",
            "eth_sendRawTransaction",
            "debug",
        ] {
            assert!(!policy.is_denied(m), "{m}");
        }
    }

    #[test]
    fn denied_methods_are_matched_without_regard_to_case() {
        let policy = MethodPolicy::new(&crate::config::Limits::default().denied_methods);
        for m in [
            "Debug_traceTransaction",
            "DEBUG_TRACETRANSACTION",
            "eth_sendtransaction",
            "ETH_SENDTRANSACTION",
            "Admin_peers",
            "eth_SIGN",
        ] {
            assert!(policy.is_denied(m), "{m}");
        }
        // The Kelvin sign lower-cases (in Unicode) to `k`.
        let kelvin = MethodPolicy::new(&["eth_checkpoint".to_owned()]);
        assert!(kelvin.is_denied("eth_chec\u{212a}point"));
        // A config written in another case denies the same methods.
        let upper = MethodPolicy::new(&["ETH_SIGN".to_owned(), "Debug_*".to_owned()]);
        assert!(upper.is_denied("eth_sign"));
        assert!(upper.is_denied("debug_traceCall"));
        for m in ["eth_signx", "eth_sig", "eth_call", "debuG", "é"] {
            assert!(!upper.is_denied(m), "{m}");
        }
    }

    #[test]
    fn errors_are_blamed_on_whoever_caused_them() {
        let cases = [
            (3, "execution reverted", Blame::Caller),
            (-32000, "execution reverted: no", Blame::Caller),
            (-32000, "nonce too low", Blame::Caller),
            (-32602, "invalid argument 0", Blame::Caller),
            (-32003, "transaction already imported", Blame::Caller),
            (-32005, "limit exceeded", Blame::Upstream),
            (-32000, "header not found", Blame::Upstream),
            (-32016, "Rate limit reached", Blame::Upstream),
            (-32603, "internal", Blame::Upstream),
            (
                -32602,
                "BlockOutOfRangeError: block height is 15 but requested was 19",
                Blame::Upstream,
            ),
            (-32000, "unknown block", Blame::Upstream),
            (-32601, "the method does not exist", Blame::Upstream),
        ];
        for (code, msg, want) in cases {
            assert_eq!(blame(code, msg), want, "{code} {msg}");
        }
    }
}
