//! What browsers may do (`[cors]`), as pure decisions the server's guard applies:
//! which page origins may call (CORS), and which `Host` names are served (against DNS
//! rebinding: a page on `evil.example` whose name is made to resolve to 127.0.0.1 still
//! sends `Host: evil.example`). IP addresses are always accepted as hosts: no page can
//! be served from an origin that is an IP address it does not control.

use std::net::{IpAddr, SocketAddr};

use crate::config;

#[derive(Debug, Clone)]
enum List {
    Any,
    Some(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Browser {
    origins: List,
    hosts: List,
    pub max_age_secs: u64,
}

impl Browser {
    pub fn new(cors: &config::Cors, listen: SocketAddr) -> Browser {
        let list = |items: &[String]| {
            if items.iter().any(|i| i == "*") {
                List::Any
            } else {
                List::Some(items.iter().map(|i| i.to_ascii_lowercase()).collect())
            }
        };
        let hosts = if !cors.allowed_hosts.is_empty() {
            list(&cors.allowed_hosts)
        } else if listen.ip().is_loopback() {
            List::Some(vec!["localhost".into()])
        } else {
            List::Any
        };
        Browser {
            origins: list(&cors.allowed_origins),
            hosts,
            max_age_secs: cors.max_age_secs,
        }
    }

    /// Whether a request for `host` (a `Host` header or URI authority, port and all)
    /// is served. No host at all (HTTP/1.0 tools) is: browsers always send one.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else { return true };
        // No list (no `allowed_hosts`, listening beyond loopback): every host is
        // served, and the host is not even read (parsing it as an address was a
        // percent of a cache hit).
        let List::Some(names) = &self.hosts else {
            return true;
        };
        let name = host_name(host);
        if name.parse::<IpAddr>().is_ok() {
            return true;
        }
        // The list is lowercase (`new`); `name` is compared without case.
        names
            .iter()
            .any(|allowed| match allowed.strip_prefix("*.") {
                Some(parent) => name
                    .len()
                    .checked_sub(parent.len())
                    .and_then(|at| name.get(..at).zip(name.get(at..)))
                    .is_some_and(|(sub, tail)| {
                        tail.eq_ignore_ascii_case(parent) && sub.ends_with('.') && sub.len() > 1
                    }),
                None => allowed.eq_ignore_ascii_case(name),
            })
    }

    /// Whether a page of `origin` may call: listed, or Outlast's own origin (`host`).
    pub fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.to_ascii_lowercase();
        if let Some(host) = host {
            let host = host.to_ascii_lowercase();
            let own = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            if own == Some(host.as_str()) {
                return true;
            }
        }
        match &self.origins {
            List::Any => true,
            List::Some(list) => list.contains(&origin),
        }
    }

    /// Every origin is allowed (`*`): answers may say `Access-Control-Allow-Origin: *`.
    pub fn any_origin(&self) -> bool {
        matches!(self.origins, List::Any)
    }
}

/// `Host` without its port, brackets of an IPv6 address removed; a slice of it, as
/// every request asks (its case is left: callers compare without it).
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn browser(origins: &[&str], hosts: &[&str], listen: &str) -> Browser {
        let cors = config::Cors {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            max_age_secs: 600,
        };
        Browser::new(&cors, listen.parse().expect("addr"))
    }

    #[test]
    fn hosts_are_checked_against_dns_rebinding() {
        let local = browser(&[], &[], "127.0.0.1:8545");
        for (host, ok) in [
            ("localhost:8545", true),
            ("LOCALHOST", true),
            ("127.0.0.1:8545", true),
            ("[::1]:8545", true),
            ("10.1.2.3", true),
            ("evil.example:8545", false),
            ("localhost.evil.example", false),
        ] {
            assert_eq!(local.host_allowed(Some(host)), ok, "{host}");
        }
        assert!(local.host_allowed(None));
        let public = browser(&[], &[], "0.0.0.0:8545");
        assert!(public.host_allowed(Some("rpc.example.com")));
        let listed = browser(
            &[],
            &["rpc.example.com", "*.internal.example"],
            "0.0.0.0:8545",
        );
        assert!(listed.host_allowed(Some("rpc.example.com:443")));
        assert!(listed.host_allowed(Some("a.internal.example")));
        assert!(listed.host_allowed(Some("A.Internal.EXAMPLE")));
        assert!(!listed.host_allowed(Some("é.internal.example.x")));
        assert!(!listed.host_allowed(Some("internal.example")));
        assert!(!listed.host_allowed(Some("xinternal.example")));
        assert!(!listed.host_allowed(Some("localhost")));
        assert!(browser(&[], &["*"], "127.0.0.1:1").host_allowed(Some("anything")));
    }

    #[test]
    fn origins_are_listed_or_the_same_as_the_host() {
        let b = browser(&["https://app.example.com"], &[], "127.0.0.1:8545");
        assert!(b.origin_allowed("https://app.example.com", Some("127.0.0.1:8545")));
        assert!(b.origin_allowed("HTTPS://APP.example.com", None));
        assert!(!b.origin_allowed("https://app.example.com:8443", None));
        assert!(!b.origin_allowed("https://evil.example", Some("127.0.0.1:8545")));
        assert!(!b.origin_allowed("null", Some("127.0.0.1:8545")));
        assert!(b.origin_allowed("http://127.0.0.1:8545", Some("127.0.0.1:8545")));
        let any = browser(&["*"], &[], "127.0.0.1:8545");
        assert!(any.origin_allowed("null", None) && any.any_origin());
    }
}
