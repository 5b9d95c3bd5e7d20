//! A call's cache key as the tables use it: the text `policy::key` built, the head its
//! answer may be tied to, and their hashes, each taken once per call. The lookups, the
//! flight and the store of one call share them: before, one forwarded call hashed its
//! key four times and built its head-tied form (`key@head`) twice (bench/profiles).

use std::{
    hash::{BuildHasher, RandomState},
    sync::{Arc, LazyLock},
};

/// The hash of a key made of what clients sent. It is keyed with this process's own
/// random SipHash key, as std's `HashMap` is, so nobody can aim many keys at one slot;
/// tables keyed by it (`memory`, `coalesce`) pass the number through.
fn keyed_hash(text: &str, head: Option<&str>) -> u64 {
    static KEYED: LazyLock<RandomState> = LazyLock::new(RandomState::new);
    KEYED.hash_one((text, head))
}

/// Which entries a call's answer can be kept as (`policy::reach`): only those are
/// looked for. Both false: never kept, but identical calls in flight still join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub immutable: bool,
    pub head_tied: bool,
}

/// Where one call's answer is looked up, joined and kept.
#[derive(Debug)]
pub struct Key {
    text: Arc<str>,
    /// The hash of (text, no head), when an immutable answer may be found, or when
    /// nothing is tied to a head (the flight's then).
    plain: Option<u64>,
    /// The head a head-tied answer is kept under, and the hash of (text, head).
    tied: Option<(Arc<str>, u64)>,
}

/// One entry's place: a key's text, the head it is tied to (`None`: immutable) and the
/// hash of both. Two places are the same entry only when text and head are equal.
#[derive(Debug, Clone, Copy)]
pub struct Place<'k> {
    pub text: &'k Arc<str>,
    pub head: Option<&'k Arc<str>>,
    pub hash: u64,
}

impl Key {
    /// The key `text` of a call whose answer can be kept as `reach` says, asked while
    /// the consensus head is `head`.
    pub fn new(text: Arc<str>, reach: Reach, head: Option<&Arc<str>>) -> Key {
        let tied = head
            .filter(|_| reach.head_tied)
            .map(|h| (h.clone(), keyed_hash(&text, Some(h))));
        let plain = (reach.immutable || tied.is_none()).then(|| keyed_hash(&text, None));
        Key { text, plain, tied }
    }

    /// Where an immutable answer would be.
    pub fn immutable(&self) -> Place<'_> {
        Place {
            text: &self.text,
            head: None,
            hash: self.plain.unwrap_or_else(|| keyed_hash(&self.text, None)),
        }
    }

    /// Whether an immutable answer may be found (for a lookup).
    pub fn may_be_immutable(&self) -> bool {
        self.plain.is_some()
    }

    /// Where an answer tied to the head would be; `None` when none is looked for.
    pub fn tied(&self) -> Option<Place<'_>> {
        self.tied.as_ref().map(|(head, hash)| Place {
            text: &self.text,
            head: Some(head),
            hash: *hash,
        })
    }

    /// What identical calls in flight join on: the key and the head its answer is
    /// tied to, if it may be (so a call at a new head never takes an older head's).
    pub fn flight(&self) -> Place<'_> {
        self.tied().unwrap_or_else(|| self.immutable())
    }
}

impl Place<'_> {
    /// The entry's key in a shared tier (Redis): `text@head` for a head-tied one.
    pub fn shared_key(&self) -> String {
        match self.head {
            Some(head) => super::policy::at_head(self.text, head),
            None => self.text.to_string(),
        }
    }

    /// Whether `text` and `head` are this place's (a table's entry of the same hash).
    pub fn is(&self, text: &str, head: Option<&str>) -> bool {
        **self.text == *text && self.head.map(|h| &**h) == head
    }
}

#[cfg(test)]
impl Key {
    /// A key whose every hash is `hash`, to test what tables do with two keys of one hash.
    pub fn colliding(text: &str, head: Option<&str>, hash: u64) -> Key {
        Key {
            text: Arc::from(text),
            plain: head.is_none().then_some(hash),
            tied: head.map(|h| (Arc::from(h), hash)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(reach: Reach, head: Option<&str>) -> Key {
        Key::new(
            Arc::from("1:eth_getBalance:[]"),
            reach,
            head.map(Arc::from).as_ref(),
        )
    }

    const EITHER: Reach = Reach {
        immutable: true,
        head_tied: true,
    };

    #[test]
    fn a_head_tied_place_differs_from_the_immutable_one_and_from_other_heads() {
        let k = key(EITHER, Some("0xaa"));
        let tied = k.tied().expect("tied to the head");
        assert_ne!(tied.hash, k.immutable().hash);
        assert_ne!(
            tied.hash,
            key(EITHER, Some("0xbb")).tied().expect("tied").hash
        );
        assert_eq!(
            tied.hash,
            key(EITHER, Some("0xaa")).tied().expect("tied").hash
        );
        assert_eq!(tied.shared_key(), "1:eth_getBalance:[]@0xaa");
        assert_eq!(k.immutable().shared_key(), "1:eth_getBalance:[]");
        assert!(tied.is("1:eth_getBalance:[]", Some("0xaa")));
        assert!(!tied.is("1:eth_getBalance:[]", None));
    }

    #[test]
    fn only_the_places_an_answer_can_be_kept_in_are_looked_in() {
        let head_only = key(
            Reach {
                immutable: false,
                head_tied: true,
            },
            Some("0xaa"),
        );
        assert!(!head_only.may_be_immutable());
        assert_eq!(head_only.flight().head.map(|h| &**h), Some("0xaa"));

        let immutable_only = key(
            Reach {
                immutable: true,
                head_tied: false,
            },
            Some("0xaa"),
        );
        assert!(immutable_only.tied().is_none());
        // Its flight is joined whatever the head: the answer is final.
        assert_eq!(immutable_only.flight().head, None);

        // With no head known yet, nothing can be tied to one.
        let headless = key(EITHER, None);
        assert!(headless.tied().is_none() && headless.may_be_immutable());
    }
}
