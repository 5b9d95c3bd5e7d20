//! What a client asked to hear: the `eth_subscribe` params read into a `Kind`, and
//! the `logs` filter (addresses, topics by position) matched against one log.
//! Pure: no I/O, tested with tables.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The most addresses, and alternatives per topic position, one filter may name.
pub const MAX_FILTER_ITEMS: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    NewHeads,
    Logs(LogFilter),
    NewPendingTransactions,
}

impl Kind {
    /// The hub routes events by these bits, so a client hears only its kinds.
    pub fn bit(&self) -> u8 {
        match self {
            Kind::NewHeads => HEADS,
            Kind::Logs(_) => LOGS,
            Kind::NewPendingTransactions => PENDING,
        }
    }
}

pub const HEADS: u8 = 1;
pub const LOGS: u8 = 2;
pub const PENDING: u8 = 4;

/// Why `eth_subscribe` params were refused; becomes `-32602` with this text.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadParams(pub String);

fn bad(msg: impl Into<String>) -> BadParams {
    BadParams(msg.into())
}

/// Reads `["newHeads"]`, `["logs", {address, topics}]` or `["newPendingTransactions"]`.
pub fn kind(params: Option<&RawValue>) -> Result<Kind, BadParams> {
    let usage = "expected [\"newHeads\"], [\"logs\", {\"address\": …, \"topics\": […]}] or [\"newPendingTransactions\"]";
    let items: Vec<&RawValue> = params
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .ok_or_else(|| bad(format!("eth_subscribe params must be an array: {usage}")))?;
    let name: &str = items
        .first()
        .and_then(|n| serde_json::from_str(n.get()).ok())
        .ok_or_else(|| bad(format!("the first param names the subscription: {usage}")))?;
    match (name, items.len()) {
        ("newHeads", 1) => Ok(Kind::NewHeads),
        ("newHeads", _) => Err(bad("newHeads takes no further params")),
        ("logs", 1) => Ok(Kind::Logs(LogFilter::default())),
        ("logs", 2) => LogFilter::parse(items[1]).map(Kind::Logs),
        ("logs", _) => Err(bad("logs takes one filter object")),
        ("newPendingTransactions", 1) => Ok(Kind::NewPendingTransactions),
        ("newPendingTransactions", 2) if items[1].get() == "false" => {
            Ok(Kind::NewPendingTransactions)
        }
        ("newPendingTransactions", _) => Err(bad(
            "newPendingTransactions sends transaction hashes only; full transactions are not supported",
        )),
        (other, _) => Err(bad(format!(
            "unknown subscription `{other}`: this gateway offers newHeads, logs and newPendingTransactions"
        ))),
    }
}

/// A `logs` filter. Addresses and topics are kept lowercased, as the logs are compared
/// lowercased too. An empty list means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    pub addresses: Vec<String>,
    /// Per position: the topics allowed there (empty = any).
    pub topics: Vec<Vec<String>>,
}

/// One value or a list of them (`null` = any).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<Option<String>>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFilter {
    #[serde(default)]
    address: Option<OneOrMany>,
    #[serde(default)]
    topics: Option<Vec<Option<OneOrMany>>>,
    /// Accepted for compatibility and ignored: a subscription follows new blocks.
    #[serde(default, rename = "fromBlock")]
    _from_block: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "toBlock")]
    _to_block: Option<serde::de::IgnoredAny>,
}

impl LogFilter {
    pub fn parse(raw: &RawValue) -> Result<LogFilter, BadParams> {
        if raw.get() == "null" {
            return Ok(LogFilter::default());
        }
        let f: RawFilter = serde_json::from_str(raw.get()).map_err(|e| {
            bad(format!(
                "logs filter: {e}; expected {{\"address\": \"0x…\" or [..], \"topics\": [..]}}"
            ))
        })?;
        let addresses = match f.address {
            None => Vec::new(),
            Some(OneOrMany::One(a)) => vec![hex(&a, 20, "address")?],
            Some(OneOrMany::Many(list)) => list
                .into_iter()
                .flatten()
                .map(|a| hex(&a, 20, "address"))
                .collect::<Result<_, _>>()?,
        };
        let topics_in = f.topics.unwrap_or_default();
        if topics_in.len() > 4 {
            return Err(bad(format!(
                "logs filter has {} topic positions; a log has at most 4",
                topics_in.len()
            )));
        }
        let mut topics = Vec::with_capacity(topics_in.len());
        for position in topics_in {
            topics.push(match position {
                None => Vec::new(),
                Some(OneOrMany::One(t)) => vec![hex(&t, 32, "topic")?],
                Some(OneOrMany::Many(list)) => list
                    .into_iter()
                    .flatten()
                    .map(|t| hex(&t, 32, "topic"))
                    .collect::<Result<_, _>>()?,
            });
        }
        let items = addresses.len() + topics.iter().map(Vec::len).sum::<usize>();
        if items > MAX_FILTER_ITEMS {
            return Err(bad(format!(
                "logs filter names {items} addresses and topics; the limit is {MAX_FILTER_ITEMS}"
            )));
        }
        // Sets, kept sorted: a log is matched against every subscription's filter, so
        // a search each, not a scan of up to 1,000 items each.
        let mut addresses = addresses;
        addresses.sort_unstable();
        addresses.dedup();
        for allowed in &mut topics {
            allowed.sort_unstable();
            allowed.dedup();
        }
        Ok(LogFilter { addresses, topics })
    }

    /// Does a log with this (lowercased) address and these (lowercased) topics match?
    pub fn matches(&self, address: &str, topics: &[String]) -> bool {
        let within =
            |set: &[String], item: &str| set.binary_search_by(|x| x.as_str().cmp(item)).is_ok();
        if !self.addresses.is_empty() && !within(&self.addresses, address) {
            return false;
        }
        self.topics.iter().enumerate().all(|(i, allowed)| {
            allowed.is_empty() || topics.get(i).is_some_and(|t| within(allowed, t))
        })
    }
}

/// `0x` + `bytes` bytes of hex, lowercased.
fn hex(s: &str, bytes: usize, what: &str) -> Result<String, BadParams> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
    match digits {
        Some(d) if d.len() == bytes * 2 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(format!("0x{}", d.to_ascii_lowercase()))
        }
        _ => Err(bad(format!(
            "logs filter: {what} `{s}` is not 0x and {bytes} bytes of hex"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0x5fbdb2315678afecb367f032d93f642f64180aa3";
    const T1: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";
    const T2: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";

    fn parse(params: &str) -> Result<Kind, BadParams> {
        let raw = RawValue::from_string(params.to_owned()).expect("test JSON");
        kind(Some(&raw))
    }

    fn filter(params: &str) -> LogFilter {
        match parse(params) {
            Ok(Kind::Logs(f)) => f,
            other => panic!("{params}: {other:?}"),
        }
    }

    #[test]
    fn subscription_kinds_are_read_from_params() {
        assert_eq!(parse(r#"["newHeads"]"#), Ok(Kind::NewHeads));
        assert_eq!(
            parse(r#"["newPendingTransactions"]"#),
            Ok(Kind::NewPendingTransactions)
        );
        assert_eq!(parse(r#"["logs"]"#), Ok(Kind::Logs(LogFilter::default())));
        for wrong in [
            r#"["syncing"]"#,
            r#"[]"#,
            r#"{"a":1}"#,
            r#"["newHeads", {}]"#,
            r#"["newPendingTransactions", true]"#,
            r#"["logs", {"address": "0x12"}]"#,
            r#"["logs", {"topics": [null, null, null, null, null]}]"#,
            r#"["logs", {"adress": "0x5fbdb2315678afecb367f032d93f642f64180aa3"}]"#,
        ] {
            assert!(parse(wrong).is_err(), "{wrong} should be refused");
        }
    }

    #[test]
    fn a_filter_of_many_items_in_any_order_matches_each_of_them() {
        let addresses: Vec<String> = (0..500u32).rev().map(|i| format!("0x{i:040x}")).collect();
        let topics: Vec<String> = (0..300u32).map(|i| format!("0x{i:064x}")).collect();
        let mut repeated = topics.clone();
        repeated.extend(topics.iter().take(10).cloned());
        let f = filter(&format!(
            r#"["logs", {{"address": {}, "topics": [null, {}]}}]"#,
            serde_json::json!(addresses),
            serde_json::json!(repeated)
        ));
        for (a, t) in addresses.iter().zip(topics.iter().cycle()) {
            assert!(f.matches(a, &[T1.to_owned(), t.clone()]), "{a} {t}");
        }
        assert!(!f.matches(A, &[T1.to_owned(), topics[0].clone()]));
        assert!(!f.matches(&addresses[0], &[T1.to_owned(), T2.to_owned()]));
    }

    #[test]
    fn log_filters_match_address_and_topics_by_position() {
        let upper = A.to_ascii_uppercase().replacen("0X", "0x", 1);
        let f = filter(&format!(
            r#"["logs", {{"address": "{upper}", "topics": [null, ["{T1}", "{T2}"]], "fromBlock": "latest"}}]"#
        ));
        let t = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let check = |address: &str, topics: &[&str], expected: bool| {
            assert_eq!(
                f.matches(address, &t(topics)),
                expected,
                "{address} {topics:?}"
            );
        };
        check(A, &[T1, T2], true);
        check(A, &[T2, T1], true);
        check(A, &[T1], false); // position 1 must be T1 or T2; it is missing
        check(
            "0x0000000000000000000000000000000000000000",
            &[T1, T1],
            false,
        );
        let any = filter(r#"["logs", {}]"#);
        assert!(any.matches(A, &[]));
        let many = filter(&format!(
            r#"["logs", {{"address": ["{A}"], "topics": ["{T1}"]}}]"#
        ));
        assert!(many.matches(A, &t(&[T1, T2])));
        assert!(!many.matches(A, &t(&[T2])));
    }
}
