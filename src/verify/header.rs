//! A block header is trusted only if its hash, recomputed from its fields (alloy's
//! consensus header knows every fork's fields), is the hash it claims — and that hash is
//! one independent operators agree on (decided by the caller).

use alloy_primitives::B256;

use super::VerifyError;

/// What verification needs from a header whose hash was recomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckedHeader {
    pub number: u64,
    pub hash: B256,
    pub parent_hash: B256,
    /// Which addresses and topics its logs may hold: blocks that cannot match a filter
    /// are skipped when logs are proven.
    pub logs_bloom: alloy_primitives::Bloom,
    pub state_root: B256,
    pub transactions_root: B256,
    pub receipts_root: B256,
    /// Since Shanghai.
    pub withdrawals_root: Option<B256>,
    /// The block environment a call is executed in (`route::call`), from fields the
    /// hash covers.
    pub beneficiary: alloy_primitives::Address,
    pub timestamp: u64,
    pub gas_limit: u64,
    pub base_fee: Option<u64>,
    pub difficulty: alloy_primitives::U256,
    pub mix_hash: B256,
    pub excess_blob_gas: Option<u64>,
    /// Since Prague: which rules the block was built under.
    pub has_requests_hash: bool,
    pub has_parent_beacon_root: bool,
}

/// Parses an RPC block or header object and checks its hash against its fields.
pub fn check(json: &[u8]) -> Result<CheckedHeader, VerifyError> {
    let header: alloy_rpc_types_eth::Header =
        serde_json::from_slice(json).map_err(|e| VerifyError::Malformed {
            what: "block header",
            detail: e.to_string(),
        })?;
    let computed = header.inner.hash_slow();
    if computed != header.hash {
        return Err(VerifyError::HeaderHash {
            claimed: header.hash.to_string(),
            computed: computed.to_string(),
        });
    }
    Ok(CheckedHeader {
        number: header.inner.number,
        hash: header.hash,
        parent_hash: header.inner.parent_hash,
        logs_bloom: header.inner.logs_bloom,
        state_root: header.inner.state_root,
        transactions_root: header.inner.transactions_root,
        receipts_root: header.inner.receipts_root,
        withdrawals_root: header.inner.withdrawals_root,
        beneficiary: header.inner.beneficiary,
        timestamp: header.inner.timestamp,
        gas_limit: header.inner.gas_limit,
        base_fee: header.inner.base_fee_per_gas,
        difficulty: header.inner.difficulty,
        mix_hash: header.inner.mix_hash,
        excess_blob_gas: header.inner.excess_blob_gas,
        has_requests_hash: header.inner.requests_hash.is_some(),
        has_parent_beacon_root: header.inner.parent_beacon_block_root.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block 1 of the test bed's Anvil chain (chain id 31337, genesis timestamp 1700000000),
    /// as Anvil 1.7.1 serves it.
    const ANVIL_BLOCK_1: &str = r#"{"hash":"0x616c633332ce2b9b7bbfbde2a2f4c34db3d40f2840b16e4989b878bb91f25337","parentHash":"0xc56b8342e33b57477139f45874ae699b6fe1ca1a65d089b78c34dabc3206e07b","sha3Uncles":"0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347","miner":"0x0000000000000000000000000000000000000000","stateRoot":"0xcf6e4087ecf224b4f407a15c3c5121facb736066158592f504879d3e3db2a0ad","transactionsRoot":"0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421","receiptsRoot":"0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421","logsBloom":"0x00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000","difficulty":"0x0","number":"0x1","gasLimit":"0x1c9c380","gasUsed":"0x0","timestamp":"0x6553f10c","extraData":"0x","mixHash":"0x55ce77dc0460a118625d9fbee965f35f970b3fd90de56c18e3e57c006b3dec94","nonce":"0x0000000000000000","baseFeePerGas":"0x3b9aca00","withdrawalsRoot":"0x56e81f171bcc55a6ff8345e692c0f86e5b48e01b996cadc001622fb5e363b421","blobGasUsed":"0x0","excessBlobGas":"0x0","parentBeaconBlockRoot":"0x0000000000000000000000000000000000000000000000000000000000000000","requestsHash":"0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","totalDifficulty":"0x0","size":"0x267","uncles":[],"transactions":[],"withdrawals":[]}"#;

    #[test]
    fn a_real_header_checks_and_a_forged_one_does_not() {
        let h = check(ANVIL_BLOCK_1.as_bytes()).expect("honest header");
        assert_eq!(h.number, 1);
        let forged = ANVIL_BLOCK_1.replace(
            "0xcf6e4087ecf224b4f407a15c3c5121facb736066158592f504879d3e3db2a0ad",
            "0xcf6e4087ecf224b4f407a15c3c5121facb736066158592f504879d3e3db2a0ae",
        );
        assert!(matches!(
            check(forged.as_bytes()),
            Err(VerifyError::HeaderHash { .. })
        ));
        assert!(matches!(check(b"null"), Err(VerifyError::Malformed { .. })));
    }
}
