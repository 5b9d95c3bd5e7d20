//! Verified `eth_call` (`verify = "proofs"`): the call is executed here, in revm, on state
//! proven against the trusted header — the way Helios and Lodestar's prover do it for one
//! provider, with Outlast's many providers behind every fetch.
//!
//! 1. The header of block N: its hash agreed by a quorum of operators (`verified`).
//! 2. What the call touches: `eth_createAccessList` from any upstream, plus `from`, `to`
//!    and the block's coinbase. Only a hint: a lying list costs a re-run, never a lie.
//! 3. `eth_getProof` (and `eth_getCode`) for those accounts and slots, by block hash,
//!    from any upstream, fastest first; each proof checked against the state root, code
//!    against its `codeHash`.
//! 4. revm runs the call on exactly that state, in the block's environment. Anything it
//!    touches that was not proven is noted; it is then fetched, proven, and the call run
//!    again. The answer is the local execution's output (a revert: code 3, "execution
//!    reverted", the revert data — what nodes answer).
//!
//! Execution is CPU for as long as the call's gas lasts, so its gas is capped (`[limits]
//! max_call_gas`, as geth caps it) and it runs off the serving threads (`offload`): on
//! one it would stall every connection that thread drives (a client's endless loop
//! stalled them for good).
//!
//! A call that runs out of gas is answered "out of gas" (-32000), as geth answers it.
//! What cannot be done this way (state overrides, `BLOCKHASH`, no upstream serving
//! proofs for that block, other halts, whose wording only nodes know) goes to a quorum
//! of operators instead (`verified::agreed`): never a single provider's word.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
    time::Instant,
};

use alloy_primitives::{Address, B256, Bytes as AlloyBytes, KECCAK256_EMPTY, U256};
use alloy_rpc_types_eth::TransactionRequest;
use bytes::Bytes;
use revm::{
    Context, Database, ExecuteEvm, MainBuilder, MainContext,
    bytecode::Bytecode,
    context::{
        BlockEnv, TxEnv,
        result::{ExecutionResult, HaltReason},
    },
    context_interface::block::BlobExcessGasAndPrice,
    primitives::{TxKind, hardfork::SpecId},
    state::AccountInfo,
};
use serde_json::{Value, value::RawValue};

use super::{
    ask::{Shape, ask},
    offload,
    race::{Claim, NotProven, Unproven, race},
    resolve::Need,
    select,
    verified::{self, Checked, Level, Unverified},
};
use crate::{
    route::Chain,
    rpc::Call,
    upstream::Answer,
    verify::{self, header::CheckedHeader},
};

/// Rounds of "run, find what was not proven, prove it" before giving up on local
/// execution (a call touching state it cannot name in advance, round after round).
const MAX_ROUNDS: usize = 6;
/// Accounts proven for one call at most: past it, a quorum answers instead.
const MAX_ACCOUNTS: usize = 256;
/// Storage slots proven for one call at most, likewise: a call (or a provider's access
/// list) naming more would have Outlast fetch and check that many proofs (a reply of
/// ~10 KB a slot), on the client's say-so.
const MAX_SLOTS: usize = 1024;
/// Upstreams asked for one batch of proofs before giving up on proofs.
const PROOF_ATTEMPTS: usize = 4;

/// Answers an `eth_call` at block `number` by executing it on proven state, with at
/// most `max_gas`.
pub async fn executed(
    chain: &Chain,
    call: &Call<'_>,
    number: u64,
    max_gas: u64,
) -> Result<Checked, Unverified> {
    let Some(request) = parse(call.params) else {
        // State overrides or a shape revm is not fed here: agreement instead.
        return verified::agreed(chain, call, Need::Block(number)).await;
    };
    let what = "the result of eth_call";
    let (header, confirmed) = verified::trusted_header(chain, number)
        .await
        .map_err(|u| u.about(what, &format!("no trusted header for block {number}: ")))?;
    if header.state_root == alloy_trie::EMPTY_ROOT_HASH {
        // An empty state root proves only absence; dev chains' genesis headers carry it
        // over real state (Anvil's block 0). Nothing to prove against: ask a quorum.
        return verified::agreed(chain, call, Need::Block(number)).await;
    }
    let tx = tx_env(&request, &header, chain.chain_id, max_gas);
    // Counted when the client asked for more; a block limit above it is no one's doing.
    if request.gas.is_some_and(|gas| gas > max_gas) {
        crate::metrics::limit_exceeded("call_gas");
    }
    let mut wanted = Wanted::default();
    if let Some(from) = request.from {
        wanted.account(from);
    }
    if let Some(TxKind::Call(to)) = request.to {
        wanted.account(to);
    }
    wanted.account(header.beneficiary);
    wanted.extend(access_list(chain, call, number).await);

    let mut state = Proven::default();
    for _ in 0..MAX_ROUNDS {
        let todo = wanted.not_in(&state);
        if !todo.is_empty() {
            let slots = state.slots() + todo.iter().map(|(_, s)| s.len()).sum::<usize>();
            if state.accounts.len() + todo.len() > MAX_ACCOUNTS || slots > MAX_SLOTS {
                break;
            }
            match prove(chain, &header, &todo).await {
                Ok(proven) => state.merge(proven),
                // Nobody could prove it (no eth_getProof there, state too old): agreement.
                Err(Unprovable::NoProof) => break,
                Err(Unprovable::Lies(why)) => {
                    return Err(Unverified::Disputed {
                        what: what.into(),
                        why: format!("no upstream gave valid proofs: {why}"),
                    });
                }
            }
        }
        let tx = tx.clone();
        let ran = offload::run(move || {
            let ran = run(&state, &header, tx);
            (state, ran)
        })
        .await;
        // A panic in revm: a quorum answers.
        let Some((back, ran)) = ran else { break };
        state = back;
        match ran {
            Run::Done(answer) => {
                return Ok(Checked {
                    upstream: executed_label(),
                    answer,
                    level: if confirmed { Level::Proof } else { Level::None },
                });
            }
            Run::Missing(more) => wanted.extend(more),
            Run::Unsupported => break,
        }
    }
    verified::agreed(chain, call, Need::Block(number)).await
}

/// The `x-outlast-upstream` of answers Outlast computed itself.
fn executed_label() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> =
        std::sync::LazyLock::new(|| Arc::from("executed"));
    LABEL.clone()
}

/// `[tx, block]` only: state and block overrides change what "the state" is.
fn parse(params: Option<&RawValue>) -> Option<TransactionRequest> {
    let items: Vec<&RawValue> = serde_json::from_str(params?.get()).ok()?;
    if items.len() > 2 {
        return None;
    }
    serde_json::from_str(items.first()?.get()).ok()
}

/// The call as a transaction, with `eth_call`'s defaults: no gas price (and then no base
/// fee, as nodes do), the block's gas limit, the zero address as sender; and at most
/// `max_gas` (a call that runs out of it is answered "out of gas", as geth caps gas).
fn tx_env(r: &TransactionRequest, header: &CheckedHeader, chain_id: u64, max_gas: u64) -> TxEnv {
    let priced = r.gas_price.is_some() || r.max_fee_per_gas.is_some();
    TxEnv {
        tx_type: if r.max_fee_per_gas.is_some() { 2 } else { 0 },
        caller: r.from.unwrap_or_default(),
        gas_limit: r.gas.unwrap_or(header.gas_limit).min(max_gas),
        gas_price: r.max_fee_per_gas.or(r.gas_price).unwrap_or(0),
        gas_priority_fee: r.max_priority_fee_per_gas.filter(|_| priced),
        kind: r.to.unwrap_or(TxKind::Create),
        value: r.value.unwrap_or_default(),
        data: r.input.input().cloned().unwrap_or_default(),
        nonce: 0,
        chain_id: Some(chain_id),
        ..TxEnv::default()
    }
}

/// The rules block N was built under, read off its header: the newest fork whose header
/// fields it carries.
fn spec(header: &CheckedHeader) -> SpecId {
    if header.has_requests_hash {
        SpecId::PRAGUE
    } else if header.has_parent_beacon_root {
        SpecId::CANCUN
    } else if header.withdrawals_root.is_some() {
        SpecId::SHANGHAI
    } else if header.base_fee.is_some() {
        SpecId::LONDON
    } else {
        SpecId::BERLIN
    }
}

/// Accounts and slots to prove.
#[derive(Default)]
struct Wanted {
    accounts: BTreeMap<Address, BTreeSet<U256>>,
}

impl Wanted {
    fn account(&mut self, a: Address) {
        self.accounts.entry(a).or_default();
    }

    fn extend(&mut self, more: impl IntoIterator<Item = (Address, Option<U256>)>) {
        for (a, slot) in more {
            let slots = self.accounts.entry(a).or_default();
            if let Some(s) = slot {
                slots.insert(s);
            }
        }
    }

    /// What is wanted and not yet proven: whole accounts, or slots of proven ones.
    fn not_in(&self, state: &Proven) -> Vec<(Address, Vec<U256>)> {
        self.accounts
            .iter()
            .filter_map(|(a, slots)| {
                let known = state.accounts.get(a);
                let missing: Vec<U256> = slots
                    .iter()
                    .filter(|s| known.is_none_or(|k| !k.knows(**s)))
                    .copied()
                    .collect();
                (known.is_none() || !missing.is_empty()).then_some((*a, missing))
            })
            .collect()
    }
}

/// The access list an upstream predicts; empty when none can say (a hint only).
async fn access_list(chain: &Chain, call: &Call<'_>, number: u64) -> Vec<(Address, Option<U256>)> {
    let Some(tx) = call
        .params
        .and_then(|p| serde_json::from_str::<Vec<&RawValue>>(p.get()).ok())
        .and_then(|items| items.first().copied())
    else {
        return Vec::new();
    };
    let params = format!("[{},\"{number:#x}\"]", tx.get());
    let Ok(params) = RawValue::from_string(params) else {
        return Vec::new();
    };
    let list_call = Call {
        id: None,
        method: "eth_createAccessList".into(),
        params: Some(&params),
    };
    let calls = [&list_call];
    let plan = select::plan(chain, Need::Block(number), Instant::now());
    let shape = Shape {
        width: 1,
        max: 2,
        wait_for_late: true,
    };
    #[derive(serde::Deserialize)]
    struct Listed {
        #[serde(rename = "accessList", default)]
        access_list: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        address: Address,
        #[serde(rename = "storageKeys", default)]
        storage_keys: Vec<B256>,
    }
    let listed = ask(chain, plan.order, shape, &calls, |_, reply| {
        let Ok(mut answers) = reply else { return None };
        match answers.pop().flatten() {
            Some(Answer::Result(raw)) => serde_json::from_slice::<Listed>(&raw).ok(),
            _ => None,
        }
    })
    .await;
    listed
        .map(|l| {
            l.access_list
                .into_iter()
                .flat_map(|e| {
                    let a = e.address;
                    std::iter::once((a, None)).chain(
                        e.storage_keys
                            .into_iter()
                            .map(move |k| (a, Some(U256::from_be_bytes(k.0)))),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// State proven against one header.
#[derive(Default)]
struct Proven {
    accounts: HashMap<Address, ProvenAccount>,
}

struct ProvenAccount {
    /// `None`: proven absent (an exclusion proof).
    info: Option<AccountInfo>,
    storage: HashMap<U256, U256>,
    /// No storage at all (empty storage root): every slot is zero, no proof needed.
    empty_storage: bool,
}

impl ProvenAccount {
    fn knows(&self, slot: U256) -> bool {
        self.info.is_none() || self.empty_storage || self.storage.contains_key(&slot)
    }
}

impl Proven {
    /// Storage slots proven so far.
    fn slots(&self) -> usize {
        self.accounts.values().map(|a| a.storage.len()).sum()
    }

    fn merge(&mut self, more: Vec<(Address, ProvenAccount)>) {
        for (a, acct) in more {
            match self.accounts.get_mut(&a) {
                Some(known) => known.storage.extend(acct.storage),
                None => {
                    self.accounts.insert(a, acct);
                }
            }
        }
    }
}

enum Unprovable {
    /// No upstream could give proofs (errors, unsupported, pruned).
    NoProof,
    /// Every proof that came back was false.
    Lies(String),
}

/// Proves `todo` at `header` from the first upstream whose every proof checks; a false
/// proof gets its upstream banned once another's verifies.
async fn prove(
    chain: &Chain,
    header: &CheckedHeader,
    todo: &[(Address, Vec<U256>)],
) -> Result<Vec<(Address, ProvenAccount)>, Unprovable> {
    let at = serde_json::json!({ "blockHash": header.hash });
    let params: Vec<Option<Box<RawValue>>> = todo
        .iter()
        .flat_map(|(a, slots)| {
            let keys: Vec<B256> = slots.iter().map(|s| B256::from(*s)).collect();
            [
                raw(&serde_json::json!([a, keys, at])),
                raw(&serde_json::json!([a, at])),
            ]
        })
        .collect();
    let calls: Vec<Call<'_>> = params
        .iter()
        .enumerate()
        .map(|(i, p)| Call {
            id: None,
            method: if i % 2 == 0 {
                "eth_getProof"
            } else {
                "eth_getCode"
            }
            .into(),
            params: p.as_deref(),
        })
        .collect();
    let refs: Vec<&Call<'_>> = calls.iter().collect();
    let claim = Claim {
        check: "proof",
        about: "proof",
    };
    let (header, todo) = (*header, todo.to_vec());
    match race(
        chain,
        header.number,
        &refs,
        PROOF_ATTEMPTS,
        claim,
        move |answers| check(&header, &todo, answers),
    )
    .await
    {
        Ok((_, accounts)) => Ok(accounts),
        Err(Unproven::Missing) => Err(Unprovable::NoProof),
        Err(Unproven::False { problems }) => Err(Unprovable::Lies(problems.join("; "))),
    }
}

/// Checks one upstream's batch: a proof and the code for each account, in order.
fn check(
    header: &CheckedHeader,
    todo: &[(Address, Vec<U256>)],
    answers: &[Option<Answer>],
) -> Result<Vec<(Address, ProvenAccount)>, NotProven> {
    let mut out = Vec::with_capacity(todo.len());
    for (i, (address, slots)) in todo.iter().enumerate() {
        let result = |j: usize| match answers.get(j) {
            Some(Some(Answer::Result(raw))) => Ok(raw.clone()),
            Some(Some(Answer::Error { message, .. })) => Err(NotProven::Missing(message.clone())),
            _ => Err(NotProven::Missing("no answer".into())),
        };
        let raw_proof = result(2 * i)?;
        let proof: alloy_rpc_types_eth::EIP1186AccountProofResponse =
            serde_json::from_slice(&raw_proof)
                .map_err(|e| NotProven::False(format!("unreadable proof: {e}")))?;
        let keys: Vec<B256> = slots.iter().map(|s| B256::from(*s)).collect();
        let account = verify::proof::account(header.state_root, *address, &keys, &proof)
            .map_err(|e| NotProven::False(e.to_string()))?;
        let storage: HashMap<U256, U256> = account
            .slots
            .iter()
            .map(|(k, v)| (U256::from_be_bytes(k.0), *v))
            .collect();
        // Proven absent, or empty (EIP-161: the same to the EVM).
        let exists = !(account.nonce == 0
            && account.balance.is_zero()
            && account.code_hash == KECCAK256_EMPTY);
        let code = if account.code_hash == KECCAK256_EMPTY || account.code_hash == B256::ZERO {
            None
        } else {
            let code: AlloyBytes = serde_json::from_slice(&result(2 * i + 1)?)
                .map_err(|e| NotProven::False(format!("unreadable code: {e}")))?;
            verify::proof::code(&account, &code).map_err(|e| NotProven::False(e.to_string()))?;
            Some(Bytecode::new_raw(code))
        };
        let info = exists.then(|| AccountInfo {
            balance: account.balance,
            nonce: account.nonce,
            code_hash: if account.code_hash == B256::ZERO {
                KECCAK256_EMPTY
            } else {
                account.code_hash
            },
            code,
            ..AccountInfo::default()
        });
        out.push((
            *address,
            ProvenAccount {
                info,
                storage,
                empty_storage: account.storage_root == alloy_trie::EMPTY_ROOT_HASH,
            },
        ));
    }
    Ok(out)
}

enum Run {
    /// The answer, as a node gives it.
    Done(Answer),
    /// The call touched state that was not proven: prove these and run again.
    Missing(Vec<(Address, Option<U256>)>),
    /// Something revm cannot be fed here (BLOCKHASH), or a halt other than out of gas,
    /// whose wording differs between nodes: a quorum answers instead.
    Unsupported,
}

/// Runs the call on `state`; never touches anything but `state`.
fn run(state: &Proven, header: &CheckedHeader, tx: TxEnv) -> Run {
    let db = ProvenDb {
        state,
        missing: Vec::new(),
    };
    let spec = spec(header);
    let block = BlockEnv {
        number: U256::from(header.number),
        beneficiary: header.beneficiary,
        timestamp: U256::from(header.timestamp),
        gas_limit: header.gas_limit,
        basefee: header.base_fee.unwrap_or(0),
        difficulty: header.difficulty,
        prevrandao: (spec >= SpecId::MERGE).then_some(header.mix_hash),
        blob_excess_gas_and_price: header
            .excess_blob_gas
            .map(|excess| BlobExcessGasAndPrice::new_with_spec(excess, spec)),
        ..BlockEnv::default()
    };
    let no_fee = tx.gas_price == 0;
    let mut evm = Context::mainnet()
        .with_db(db)
        .with_block(block)
        .modify_cfg_chained(|cfg| {
            cfg.spec = spec;
            cfg.chain_id = tx.chain_id.unwrap_or(1);
            cfg.disable_nonce_check = true;
            cfg.disable_eip3607 = true;
            cfg.disable_block_gas_limit = true;
            cfg.disable_base_fee = no_fee;
            cfg.tx_gas_limit_cap = Some(u64::MAX);
        })
        .build_mainnet();
    let result = evm.transact(tx);
    let missing = std::mem::take(&mut evm.ctx.journaled_state.database.missing);
    if !missing.is_empty() {
        return Run::Missing(missing);
    }
    match result {
        Ok(done) => match done.result {
            ExecutionResult::Success { output, .. } => Run::Done(Answer::Result(Bytes::from(
                format!("\"{}\"", output.data()),
            ))),
            ExecutionResult::Revert { output, .. } => Run::Done(reverted(&output)),
            // Whatever ran out (the call's own gas, or `max_gas`, as geth's gas cap),
            // every node answers this call so: retrying it elsewhere cannot help.
            ExecutionResult::Halt {
                reason: HaltReason::OutOfGas(_),
                ..
            } => Run::Done(out_of_gas()),
            ExecutionResult::Halt { .. } => Run::Unsupported,
        },
        Err(_) => Run::Unsupported,
    }
}

/// A revert as nodes answer it: code 3, "execution reverted" (with the reason when it is
/// an `Error(string)`), the revert data.
fn reverted(output: &AlloyBytes) -> Answer {
    let message = match reason(output) {
        Some(r) => format!("execution reverted: {r}"),
        None => "execution reverted".to_owned(),
    };
    let error = serde_json::json!({ "code": 3, "message": message, "data": output.to_string() });
    Answer::Error {
        raw: Bytes::from(error.to_string()),
        code: 3,
        message,
    }
}

/// Out of gas as geth answers it (its `vm.ErrOutOfGas`, under the catch-all code).
fn out_of_gas() -> Answer {
    let message = "out of gas";
    let error = serde_json::json!({ "code": -32000, "message": message });
    Answer::Error {
        raw: Bytes::from(error.to_string()),
        code: -32000,
        message: message.to_owned(),
    }
}

/// The string of an `Error(string)` revert (selector 0x08c379a0).
fn reason(output: &[u8]) -> Option<String> {
    let body = output.strip_prefix(&[0x08, 0xc3, 0x79, 0xa0][..])?;
    let offset = usize::try_from(U256::from_be_slice(body.get(..32)?)).ok()?;
    let len_at = body.get(offset..offset.checked_add(32)?)?;
    let len = usize::try_from(U256::from_be_slice(len_at)).ok()?;
    let start = offset.checked_add(32)?;
    let text = body.get(start..start.checked_add(len)?)?;
    String::from_utf8(text.to_vec()).ok()
}

/// revm's view of the proven state: what was not proven reads as absent or zero, and is
/// noted so the call can be run again once it is.
struct ProvenDb<'s> {
    state: &'s Proven,
    missing: Vec<(Address, Option<U256>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("the call reads a block hash (BLOCKHASH), which is not proven here")]
struct BlockHashUnproven;

impl revm::database_interface::DBErrorMarker for BlockHashUnproven {}

impl Database for ProvenDb<'_> {
    type Error = BlockHashUnproven;

    fn basic(&mut self, address: Address) -> Result<Option<AccountInfo>, Self::Error> {
        match self.state.accounts.get(&address) {
            Some(a) => Ok(a.info.clone()),
            None => {
                self.missing.push((address, None));
                Ok(None)
            }
        }
    }

    fn code_by_hash(&mut self, code_hash: B256) -> Result<Bytecode, Self::Error> {
        // Code comes with each account (`AccountInfo::code`); by hash only what was proven.
        Ok(self
            .state
            .accounts
            .values()
            .filter_map(|a| a.info.as_ref())
            .find(|i| i.code_hash == code_hash)
            .and_then(|i| i.code.clone())
            .unwrap_or_default())
    }

    fn storage(&mut self, address: Address, index: U256) -> Result<U256, Self::Error> {
        match self.state.accounts.get(&address) {
            Some(a) if a.knows(index) => Ok(a.storage.get(&index).copied().unwrap_or_default()),
            _ => {
                self.missing.push((address, Some(index)));
                Ok(U256::ZERO)
            }
        }
    }

    fn block_hash(&mut self, _number: u64) -> Result<B256, Self::Error> {
        Err(BlockHashUnproven)
    }
}

fn raw(value: &Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_string_reverts_read_like_nodes_say_them() {
        // Error("nope")
        let data = alloy_primitives::hex::decode(
            "08c379a0\
             0000000000000000000000000000000000000000000000000000000000000020\
             0000000000000000000000000000000000000000000000000000000000000004\
             6e6f706500000000000000000000000000000000000000000000000000000000",
        )
        .expect("hex");
        assert_eq!(reason(&data).as_deref(), Some("nope"));
        let Answer::Error { code, message, .. } = reverted(&AlloyBytes::from(data)) else {
            panic!("an error")
        };
        assert_eq!((code, message.as_str()), (3, "execution reverted: nope"));
        assert_eq!(
            reason(&[0x08, 0xc3, 0x79, 0xa0, 1, 2]),
            None,
            "truncated: no reason"
        );
        assert_eq!(reason(&[]), None);
    }

    #[test]
    fn a_call_runs_with_at_most_the_gas_limit() {
        let header = CheckedHeader {
            number: 1,
            hash: B256::ZERO,
            parent_hash: B256::ZERO,
            logs_bloom: alloy_primitives::Bloom::ZERO,
            state_root: B256::ZERO,
            transactions_root: B256::ZERO,
            receipts_root: B256::ZERO,
            withdrawals_root: None,
            beneficiary: Address::ZERO,
            timestamp: 0,
            gas_limit: 60_000_000,
            base_fee: None,
            difficulty: U256::ZERO,
            mix_hash: B256::ZERO,
            excess_blob_gas: None,
            has_requests_hash: false,
            has_parent_beacon_root: false,
        };
        let max = crate::config::Limits::default().max_call_gas;
        assert_eq!(max, 50_000_000, "geth's --rpc.gascap");
        let gas = |asked: Option<u64>| {
            let r = TransactionRequest {
                gas: asked,
                ..TransactionRequest::default()
            };
            tx_env(&r, &header, 1, max).gas_limit
        };
        assert_eq!(gas(Some(u64::MAX)), max, "an endless call is cut");
        assert_eq!(gas(None), max, "the block's 60M is more than the limit");
        assert_eq!(gas(Some(21_000)), 21_000, "less is run as asked");
    }
}
