//! A block's receipts against its trusted header: the receipts root rebuilt from what a
//! provider served, and each receipt's fields outside that root — transaction hash,
//! sender, recipient, gas used, effective gas price, contract address, log positions —
//! derived from the proven transactions instead of taken from the provider. The answer
//! is built from these values only (a provider's other fields never pass).

use alloy_consensus::{ReceiptEnvelope, Transaction, TxEnvelope, proofs};
use alloy_primitives::Address;
use alloy_rpc_types_eth::{Log, TransactionReceipt};

use super::{VerifyError, header::CheckedHeader};

fn lie(what: String) -> VerifyError {
    VerifyError::Body { what }
}

/// The receipts of block `header`, served as `json` (`eth_getBlockReceipts`), checked
/// against its receipts root and rebuilt around `txs` (the block's proven transactions
/// with their senders, in order).
pub fn check(
    json: &[u8],
    header: &CheckedHeader,
    txs: &[(TxEnvelope, Address)],
) -> Result<Vec<TransactionReceipt>, VerifyError> {
    let served: Vec<TransactionReceipt> =
        serde_json::from_slice(json).map_err(|e| VerifyError::Malformed {
            what: "block receipts",
            detail: e.to_string(),
        })?;
    if served.len() != txs.len() {
        return Err(lie(format!(
            "{} receipts for {} transactions",
            served.len(),
            txs.len()
        )));
    }
    let consensus: Vec<ReceiptEnvelope> = served
        .iter()
        .map(|r| r.inner.clone().map_logs(|l| l.inner))
        .collect();
    let root = proofs::calculate_receipt_root(&consensus);
    if root != header.receipts_root {
        return Err(lie(format!(
            "the receipts hash to root {root}, the header says {}",
            header.receipts_root
        )));
    }
    let mut out = Vec::with_capacity(served.len());
    let mut gas_before = 0u64;
    let mut log_index = 0u64;
    for (i, ((receipt, envelope), (tx, sender))) in
        consensus.into_iter().zip(&served).zip(txs).enumerate()
    {
        let index = i as u64;
        let cumulative = receipt.cumulative_gas_used();
        let gas_used = cumulative
            .checked_sub(gas_before)
            .ok_or_else(|| lie(format!("receipt {i}'s cumulative gas goes down")))?;
        gas_before = cumulative;
        let tx_hash = *tx.tx_hash();
        let inner = receipt.map_logs(|l| {
            let log = Log {
                inner: l,
                block_hash: Some(header.hash),
                block_number: Some(header.number),
                block_timestamp: Some(header.timestamp),
                transaction_hash: Some(tx_hash),
                transaction_index: Some(index),
                log_index: Some(log_index),
                removed: false,
            };
            log_index += 1;
            log
        });
        let to = tx.to();
        out.push(TransactionReceipt {
            inner,
            transaction_hash: tx_hash,
            transaction_index: Some(index),
            block_hash: Some(header.hash),
            block_number: Some(header.number),
            gas_used,
            effective_gas_price: tx.effective_gas_price(header.base_fee),
            // Blob gas is outside the root; what a blob transaction carries is the
            // provider's word only in these two numbers, which nothing here spends.
            blob_gas_used: envelope.blob_gas_used.filter(|_| tx.is_eip4844()),
            blob_gas_price: envelope.blob_gas_price.filter(|_| tx.is_eip4844()),
            from: *sender,
            to,
            contract_address: to.is_none().then(|| sender.create(tx.nonce())),
        });
    }
    Ok(out)
}
