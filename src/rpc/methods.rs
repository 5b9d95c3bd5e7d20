//! Every method Outlast knows, in one table: what block its answer is about (which
//! `resolve` pins and `select` routes by), whether an answer may be cached (`cache`
//! keys and lifetimes follow from `about`), how it is proven (`dispatch` picks the
//! check), and its name as a metrics label. Adding a
//! method is one row here. Methods not in the table are forwarded untouched, never
//! cached, and counted as `other`.

use std::borrow::Cow;

/// What a method's answer is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum About {
    /// Nothing block-related (`eth_chainId`, `eth_sendRawTransaction`, …).
    Nothing,
    /// The block named by the parameter at this position of the params array.
    Block(usize),
    /// A range of blocks (`eth_getLogs`: `fromBlock`/`toBlock` or `blockHash`).
    Range,
    /// A block or transaction named by hash: the answer says which block it is in.
    Hash,
    /// The chain's head now, with no block parameter (`eth_gasPrice`, …).
    Head,
}

/// How a chain in `verify = "proofs"` checks an answer without trusting its provider
/// (`dispatch` picks the check; `route::verified`, `call`, `receipt`, `proven_logs` do it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Nothing to prove it with: forwarded, or agreed by a quorum if listed.
    None,
    /// Account or storage state, proven by `eth_getProof` against a trusted header.
    State,
    /// A block: its header must hash to the agreed (or requested) hash.
    Block,
    /// `eth_call`: executed locally on proven state.
    Call,
    /// A receipt: proven against the block's receipts root.
    Receipt,
    /// Logs of a short range: from the blocks' proven receipts.
    Logs,
}

/// One row of the table.
#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub about: About,
    /// An answer may be kept (for as long as `about` allows: `cache::policy`).
    pub cached: bool,
    pub proof: Proof,
}

/// Sorted by name (checked by a test), so a row is easy to find. Columns: name, what
/// the answer is about, cached, how it is proven.
#[rustfmt::skip]
static METHODS: [Method; 75] = {
    use About::*;
    [
        m("debug_traceBlockByHash",                  Nothing,   false, Proof::None),
        m("debug_traceBlockByNumber",                Nothing,   false, Proof::None),
        m("debug_traceCall",                         Nothing,   false, Proof::None),
        m("debug_traceTransaction",                  Nothing,   false, Proof::None),
        m("eth_accounts",                            Nothing,   false, Proof::None),
        m("eth_blobBaseFee",                         Head,      true,  Proof::None),
        m("eth_blockNumber",                         Head,      false, Proof::None),
        m("eth_call",                                Block(1),  true,  Proof::Call),
        m("eth_callMany",                            Nothing,   false, Proof::None),
        m("eth_chainId",                             Nothing,   false, Proof::None),
        m("eth_coinbase",                            Nothing,   false, Proof::None),
        m("eth_createAccessList",                    Block(1),  true,  Proof::None),
        m("eth_estimateGas",                         Block(1),  true,  Proof::None),
        m("eth_feeHistory",                          Block(1),  true,  Proof::None),
        m("eth_gasPrice",                            Head,      true,  Proof::None),
        m("eth_getAccount",                          Nothing,   false, Proof::None),
        m("eth_getBalance",                          Block(1),  true,  Proof::State),
        m("eth_getBlockByHash",                      Hash,      true,  Proof::Block),
        m("eth_getBlockByNumber",                    Block(0),  true,  Proof::Block),
        m("eth_getBlockReceipts",                    Block(0),  true,  Proof::None),
        m("eth_getBlockTransactionCountByHash",      Hash,      true,  Proof::None),
        m("eth_getBlockTransactionCountByNumber",    Block(0),  true,  Proof::None),
        m("eth_getCode",                             Block(1),  true,  Proof::State),
        m("eth_getFilterChanges",                    Nothing,   false, Proof::None),
        m("eth_getFilterLogs",                       Nothing,   false, Proof::None),
        m("eth_getHeaderByHash",                     Nothing,   false, Proof::None),
        m("eth_getHeaderByNumber",                   Nothing,   false, Proof::None),
        m("eth_getLogs",                             Range,     true,  Proof::Logs),
        m("eth_getProof",                            Block(2),  true,  Proof::None),
        m("eth_getRawTransactionByHash",             Nothing,   false, Proof::None),
        m("eth_getStorageAt",                        Block(2),  true,  Proof::State),
        m("eth_getTransactionByBlockHashAndIndex",   Hash,      true,  Proof::None),
        m("eth_getTransactionByBlockNumberAndIndex", Block(0),  true,  Proof::None),
        m("eth_getTransactionByHash",                Hash,      true,  Proof::None),
        m("eth_getTransactionCount",                 Block(1),  true,  Proof::State),
        m("eth_getTransactionReceipt",               Hash,      true,  Proof::Receipt),
        m("eth_getUncleByBlockHashAndIndex",         Nothing,   false, Proof::None),
        m("eth_getUncleByBlockNumberAndIndex",       Block(0),  true,  Proof::None),
        m("eth_getUncleCountByBlockHash",            Nothing,   false, Proof::None),
        m("eth_getUncleCountByBlockNumber",          Block(0),  true,  Proof::None),
        m("eth_hashrate",                            Nothing,   false, Proof::None),
        m("eth_maxPriorityFeePerGas",                Head,      true,  Proof::None),
        m("eth_mining",                              Nothing,   false, Proof::None),
        m("eth_newBlockFilter",                      Nothing,   false, Proof::None),
        m("eth_newFilter",                           Nothing,   false, Proof::None),
        m("eth_newPendingTransactionFilter",         Nothing,   false, Proof::None),
        m("eth_protocolVersion",                     Nothing,   false, Proof::None),
        m("eth_sendRawTransaction",                  Nothing,   false, Proof::None),
        m("eth_sendRawTransactionSync",              Nothing,   false, Proof::None),
        m("eth_sendTransaction",                     Nothing,   false, Proof::None),
        m("eth_sign",                                Nothing,   false, Proof::None),
        m("eth_signTransaction",                     Nothing,   false, Proof::None),
        m("eth_signTypedData_v4",                    Nothing,   false, Proof::None),
        m("eth_simulateV1",                          Nothing,   false, Proof::None),
        m("eth_subscribe",                           Nothing,   false, Proof::None),
        m("eth_syncing",                             Nothing,   false, Proof::None),
        m("eth_uninstallFilter",                     Nothing,   false, Proof::None),
        m("eth_unsubscribe",                         Nothing,   false, Proof::None),
        m("net_listening",                           Nothing,   false, Proof::None),
        m("net_peerCount",                           Nothing,   false, Proof::None),
        m("net_version",                             Nothing,   false, Proof::None),
        m("trace_block",                             Nothing,   false, Proof::None),
        m("trace_call",                              Nothing,   false, Proof::None),
        m("trace_callMany",                          Nothing,   false, Proof::None),
        m("trace_filter",                            Nothing,   false, Proof::None),
        m("trace_rawTransaction",                    Nothing,   false, Proof::None),
        m("trace_replayBlockTransactions",           Nothing,   false, Proof::None),
        m("trace_replayTransaction",                 Nothing,   false, Proof::None),
        m("trace_transaction",                       Nothing,   false, Proof::None),
        m("txpool_content",                          Nothing,   false, Proof::None),
        m("txpool_inspect",                          Nothing,   false, Proof::None),
        m("txpool_status",                           Nothing,   false, Proof::None),
        m("web3_clientVersion",                      Nothing,   false, Proof::None),
        m("web3_sha3",                               Nothing,   false, Proof::None),
        m("zks_getProof",                            Nothing,   false, Proof::None),
    ]
};

const fn m(name: &'static str, about: About, cached: bool, proof: Proof) -> Method {
    Method {
        name,
        about,
        cached,
        proof,
    }
}

/// Every known method's name, in the table's order (`Name::index`).
pub fn names() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(|m| m.name)
}

/// The row of `name`, if Outlast knows the method. Exact match: method names are
/// case-sensitive on the wire.
pub fn lookup(name: &str) -> Option<&'static Method> {
    INDEX.get(name).and_then(|&i| METHODS.get(usize::from(i)))
}

/// `METHODS` by name, for the one lookup of each call (`Name`): a binary search's
/// string compares were a few percent of a forwarded batch's CPU (bench/profiles). The table is fixed, so a client's name can
/// only ever be compared with these, however it hashes.
static INDEX: std::sync::LazyLock<
    std::collections::HashMap<&'static str, u16, rustc_hash::FxBuildHasher>,
> = std::sync::LazyLock::new(|| {
    METHODS
        .iter()
        .zip(0u16..)
        .map(|(m, i)| (m.name, i))
        .collect()
});

/// A call's method name with its row of the table, looked up once, when the call is
/// read or made: the cache key, its reach and lifetime, the block the call is about,
/// its check and its metrics labels each need the row (a lookup each was half a
/// thousand instructions per call). Reads as the name itself (`Deref<Target = str>`).
#[derive(Debug, Clone)]
pub struct Name<'a> {
    text: Cow<'a, str>,
    /// Its row's place in `METHODS` (a `u16`: a name stays as small as a `Cow` and a
    /// pointer, and every call carries one).
    index: Option<u16>,
}

impl<'a> Name<'a> {
    pub fn new(text: Cow<'a, str>) -> Name<'a> {
        let index = INDEX.get(&*text).copied();
        Name { text, index }
    }

    /// Its row, if Outlast knows the method.
    pub fn row(&self) -> Option<&'static Method> {
        self.index().and_then(|i| METHODS.get(i))
    }

    /// Its row's place in the table (`names` lists the table in that order), for
    /// what is worked out once per known method (`classify::MethodPolicy`).
    pub fn index(&self) -> Option<usize> {
        self.index.map(usize::from)
    }

    /// What its answer is about (`About::Nothing` for an unknown method).
    pub fn about(&self) -> About {
        self.row().map_or(About::Nothing, |m| m.about)
    }

    /// How its answer is proven (`Proof::None` for an unknown method).
    pub fn proof(&self) -> Proof {
        self.row().map_or(Proof::None, |m| m.proof)
    }

    /// Its metrics label, as `label` gives it.
    pub fn label(&self) -> &'static str {
        self.row().map_or("other", |m| m.name)
    }

    /// The name as read: borrowed from the request unless it had escapes.
    pub fn text(&self) -> &Cow<'a, str> {
        &self.text
    }
}

impl std::ops::Deref for Name<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl AsRef<str> for Name<'_> {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl PartialEq<&str> for Name<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.text == **other
    }
}

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl<'a> From<&'a str> for Name<'a> {
    fn from(text: &'a str) -> Name<'a> {
        Name::new(Cow::Borrowed(text))
    }
}

impl From<String> for Name<'static> {
    fn from(text: String) -> Name<'static> {
        Name::new(Cow::Owned(text))
    }
}

/// `name` itself when it is a known method, else `other`: a client cannot grow the
/// metrics' series by inventing names.
pub fn label(name: &str) -> &'static str {
    lookup(name).map_or("other", |m| m.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_and_has_no_duplicates() {
        for pair in METHODS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} then {}",
                pair[0].name,
                pair[1].name
            );
        }
    }

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(label("eth_getBalance"), "eth_getBalance");
        assert_eq!(label("eth_getBalance\n"), "other");
        assert_eq!(label("ETH_GETBALANCE"), "other");
        assert_eq!(label("made_up_by_a_client_123"), "other");
    }

    #[test]
    fn block_parameters_sit_where_the_spec_puts_them() {
        let about_of = |name: &'static str| Name::from(name).about();
        assert_eq!(about_of("eth_getBlockByNumber"), About::Block(0));
        assert_eq!(about_of("eth_call"), About::Block(1));
        assert_eq!(about_of("eth_getStorageAt"), About::Block(2));
        assert_eq!(about_of("eth_getLogs"), About::Range);
        assert_eq!(about_of("eth_getTransactionReceipt"), About::Hash);
        assert_eq!(about_of("eth_chainId"), About::Nothing);
        assert_eq!(about_of("unknown"), About::Nothing);
    }
}
