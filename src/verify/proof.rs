//! State values proven with `eth_getProof` (EIP-1186) against a trusted state root:
//! the account (nonce, balance, codeHash, storageHash) by inclusion — or by exclusion
//! when it does not exist, which cannot be forged for an account that does — and each
//! storage slot against the proven storage root. Answers are built from these values,
//! never from the provider's other fields.

use alloy_primitives::{Address, B256, Bytes, U256, keccak256};
use alloy_rpc_types_eth::EIP1186AccountProofResponse;
use alloy_trie::{EMPTY_ROOT_HASH, KECCAK_EMPTY, Nibbles, TrieAccount, proof::verify_proof};

use super::VerifyError;

/// An account whose fields were proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvenAccount {
    pub nonce: u64,
    pub balance: U256,
    pub code_hash: B256,
    pub storage_root: B256,
    /// Proven slot values, in the order of the request's keys.
    pub slots: Vec<(B256, U256)>,
}

/// Verifies `proof` for `address` (and the slots asked, in order) against `state_root`.
pub fn account(
    state_root: B256,
    address: Address,
    slots: &[B256],
    proof: &EIP1186AccountProofResponse,
) -> Result<ProvenAccount, VerifyError> {
    let key = Nibbles::unpack(keccak256(address));
    let claimed = TrieAccount {
        nonce: proof.nonce,
        balance: proof.balance,
        storage_root: proof.storage_hash,
        code_hash: proof.code_hash,
    };
    let empty = claimed == TrieAccount::default();
    // An account claimed empty must be proven absent (or present as the empty account).
    let absent = empty && verify_proof(state_root, key, None, &proof.account_proof).is_ok();
    if !absent {
        verify_proof(
            state_root,
            key,
            Some(alloy_rlp::encode(claimed)),
            &proof.account_proof,
        )
        .map_err(|e| VerifyError::Proof {
            what: "account",
            detail: e.to_string(),
        })?;
    }
    // Indexed once (the first proof of a key, as a search would find): a search per
    // slot was quadratic in what the provider sent.
    let mut by_key = std::collections::HashMap::with_capacity(proof.storage_proof.len());
    for p in &proof.storage_proof {
        by_key.entry(p.key.as_b256()).or_insert(p);
    }
    let mut proven = Vec::with_capacity(slots.len());
    for slot in slots {
        let sp = by_key.get(slot).ok_or_else(|| VerifyError::Malformed {
            what: "storage proof",
            detail: format!("no proof for slot {slot}"),
        })?;
        let root = if absent {
            EMPTY_ROOT_HASH
        } else {
            proof.storage_hash
        };
        let expected = (!sp.value.is_zero()).then(|| alloy_rlp::encode(sp.value));
        verify_proof(root, Nibbles::unpack(keccak256(slot)), expected, &sp.proof).map_err(|e| {
            VerifyError::Proof {
                what: "storage",
                detail: e.to_string(),
            }
        })?;
        proven.push((*slot, sp.value));
    }
    Ok(ProvenAccount {
        nonce: claimed.nonce,
        balance: claimed.balance,
        code_hash: if absent {
            KECCAK_EMPTY
        } else {
            claimed.code_hash
        },
        storage_root: if absent {
            EMPTY_ROOT_HASH
        } else {
            claimed.storage_root
        },
        slots: proven,
    })
}

/// Code is trusted when it hashes to the proven codeHash.
pub fn code(account: &ProvenAccount, code: &Bytes) -> Result<(), VerifyError> {
    if keccak256(code) == account.code_hash {
        Ok(())
    } else {
        Err(VerifyError::CodeHash)
    }
}
