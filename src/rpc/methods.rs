//! Every method Outlast knows, in one table: what block its answer is about (which
//! `resolve` pins and `select` routes by), whether an answer may be cached (`cache`
//! keys and lifetimes follow from `about`), and its name as a metrics label. Adding a
//! method is one row here. Methods not in the table are forwarded untouched, never
//! cached, and counted as `other`.

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

/// One row of the table.
#[derive(Debug)]
pub struct Method {
    pub name: &'static str,
    pub about: About,
    /// An answer may be kept (for as long as `about` allows: `cache::policy`).
    pub cached: bool,
}

/// Sorted by name (checked by a test), for a binary search.
static METHODS: [Method; 75] = [
    Method {
        name: "debug_traceBlockByHash",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "debug_traceBlockByNumber",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "debug_traceCall",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "debug_traceTransaction",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_accounts",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_blobBaseFee",
        about: About::Head,
        cached: true,
    },
    Method {
        name: "eth_blockNumber",
        about: About::Head,
        cached: false,
    },
    Method {
        name: "eth_call",
        about: About::Block(1),
        cached: true,
    },
    Method {
        name: "eth_callMany",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_chainId",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_coinbase",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_createAccessList",
        about: About::Block(1),
        cached: true,
    },
    Method {
        name: "eth_estimateGas",
        about: About::Block(1),
        cached: true,
    },
    Method {
        name: "eth_feeHistory",
        about: About::Block(1),
        cached: true,
    },
    Method {
        name: "eth_gasPrice",
        about: About::Head,
        cached: true,
    },
    Method {
        name: "eth_getAccount",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getBalance",
        about: About::Block(1),
        cached: true,
    },
    Method {
        name: "eth_getBlockByHash",
        about: About::Hash,
        cached: true,
    },
    Method {
        name: "eth_getBlockByNumber",
        about: About::Block(0),
        cached: true,
    },
    Method {
        name: "eth_getBlockReceipts",
        about: About::Block(0),
        cached: true,
    },
    Method {
        name: "eth_getBlockTransactionCountByHash",
        about: About::Hash,
        cached: true,
    },
    Method {
        name: "eth_getBlockTransactionCountByNumber",
        about: About::Block(0),
        cached: true,
    },
    Method {
        name: "eth_getCode",
        about: About::Block(1),
        cached: true,
    },
    Method {
        name: "eth_getFilterChanges",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getFilterLogs",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getHeaderByHash",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getHeaderByNumber",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getLogs",
        about: About::Range,
        cached: true,
    },
    Method {
        name: "eth_getProof",
        about: About::Block(2),
        cached: true,
    },
    Method {
        name: "eth_getRawTransactionByHash",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getStorageAt",
        about: About::Block(2),
        cached: true,
    },
    Method {
        name: "eth_getTransactionByBlockHashAndIndex",
        about: About::Hash,
        cached: true,
    },
    Method {
        name: "eth_getTransactionByBlockNumberAndIndex",
        about: About::Block(0),
        cached: true,
    },
    Method {
        name: "eth_getTransactionByHash",
        about: About::Hash,
        cached: true,
    },
    Method {
        name: "eth_getTransactionCount",
        about: About::Block(1),
        cached: true,
    },
    Method {
        name: "eth_getTransactionReceipt",
        about: About::Hash,
        cached: true,
    },
    Method {
        name: "eth_getUncleByBlockHashAndIndex",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getUncleByBlockNumberAndIndex",
        about: About::Block(0),
        cached: true,
    },
    Method {
        name: "eth_getUncleCountByBlockHash",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_getUncleCountByBlockNumber",
        about: About::Block(0),
        cached: true,
    },
    Method {
        name: "eth_hashrate",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_maxPriorityFeePerGas",
        about: About::Head,
        cached: true,
    },
    Method {
        name: "eth_mining",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_newBlockFilter",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_newFilter",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_newPendingTransactionFilter",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_protocolVersion",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_sendRawTransaction",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_sendRawTransactionSync",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_sendTransaction",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_sign",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_signTransaction",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_signTypedData_v4",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_simulateV1",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_subscribe",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_syncing",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_uninstallFilter",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "eth_unsubscribe",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "net_listening",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "net_peerCount",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "net_version",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_block",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_call",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_callMany",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_filter",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_rawTransaction",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_replayBlockTransactions",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_replayTransaction",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "trace_transaction",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "txpool_content",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "txpool_inspect",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "txpool_status",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "web3_clientVersion",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "web3_sha3",
        about: About::Nothing,
        cached: false,
    },
    Method {
        name: "zks_getProof",
        about: About::Nothing,
        cached: false,
    },
];

/// The row of `name`, if Outlast knows the method. Exact match: method names are
/// case-sensitive on the wire.
pub fn lookup(name: &str) -> Option<&'static Method> {
    METHODS
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .map(|i| &METHODS[i])
}

/// What `name`'s answer is about (`About::Nothing` for an unknown method).
pub fn about(name: &str) -> About {
    lookup(name).map_or(About::Nothing, |m| m.about)
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
        assert_eq!(about("eth_getBlockByNumber"), About::Block(0));
        assert_eq!(about("eth_call"), About::Block(1));
        assert_eq!(about("eth_getStorageAt"), About::Block(2));
        assert_eq!(about("eth_getLogs"), About::Range);
        assert_eq!(about("eth_getTransactionReceipt"), About::Hash);
        assert_eq!(about("eth_chainId"), About::Nothing);
        assert_eq!(about("unknown"), About::Nothing);
    }
}
