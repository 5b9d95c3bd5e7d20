//! API keys: found by comparing SHA-256 digests in constant time against every key
//! (no early exit, no length leak), so response timing says nothing about a key's
//! bytes. Only digests are kept; a key is never logged, shown or put in a metric — its
//! `name` is.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{gcra::Rate, glob::Methods};
use crate::config;

/// One configured key, as the request path uses it.
#[derive(Debug)]
pub struct Key {
    pub name: Arc<str>,
    digest: [u8; 32],
    pub rate: Rate,
    /// `None`: every method the gateway allows.
    pub methods: Option<Methods>,
    /// `None`: every chain.
    pub chains: Option<Vec<String>>,
}

impl Key {
    pub fn new(cfg: &config::ApiKey) -> Key {
        Key {
            name: Arc::from(cfg.name.as_str()),
            digest: digest(cfg.key.expose()),
            rate: Rate::new(cfg.rps, cfg.burst),
            methods: cfg.methods.as_deref().map(Methods::new),
            chains: cfg.chains.clone(),
        }
    }

    pub fn may_use(&self, chain: &str) -> bool {
        self.chains
            .as_ref()
            .is_none_or(|cs| cs.iter().any(|c| c == chain))
    }
}

pub fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Whether `presented` is `expected` (a digest), in constant time.
pub fn matches(expected: &[u8; 32], presented: &[u8]) -> bool {
    expected.ct_eq(&digest(presented)).into()
}

/// The key `presented` is, looking at every key whatever the outcome.
pub fn find<'k>(keys: &'k [Arc<Key>], presented: &[u8]) -> Option<&'k Arc<Key>> {
    let d = digest(presented);
    let mut found = None;
    for key in keys {
        if bool::from(key.digest.ct_eq(&d)) {
            found = Some(key);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, value: &str) -> Arc<Key> {
        Arc::new(Key {
            name: Arc::from(name),
            digest: digest(value.as_bytes()),
            rate: Rate::new(1, None),
            methods: None,
            chains: Some(vec!["ethereum".into()]),
        })
    }

    #[test]
    fn a_key_is_found_by_its_value_only() {
        let keys = [key("a", "0123456789abcdef"), key("b", "fedcba9876543210")];
        let name = |p: &str| find(&keys, p.as_bytes()).map(|k| k.name.to_string());
        assert_eq!(name("fedcba9876543210").as_deref(), Some("b"));
        assert_eq!(name("0123456789abcdef").as_deref(), Some("a"));
        assert_eq!(name("0123456789abcde"), None);
        assert_eq!(name(""), None);
        assert!(keys[0].may_use("ethereum"));
        assert!(!keys[0].may_use("base"));
        assert!(matches(&digest(b"t0ken"), b"t0ken"));
        assert!(!matches(&digest(b"t0ken"), b"t0ke"));
    }
}
