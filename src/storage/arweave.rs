//! `/ar/{id}`: an Arweave transaction's data, verified end to end.
//!
//! 1. The header (`/tx/{id}`, raced across gateways) is checked: `id` must be
//!    SHA-256 of the signature, and the signature must verify under the owner's key
//!    (RSA-PSS, SHA-256, salt length detected: arweave-js uses the largest, other
//!    wallets 32) over the transaction's deep hash (format 2) or its fields' bytes
//!    (format 1).
//! 2. Format 1 carries its data in the signed header. Format 2 signs `data_root`, the
//!    root of a Merkle tree over the data's chunks: each chunk (`/chunk/{offset}`) is
//!    sent only after its `data_path` leads from the chunk's hash to that root.
//!    Chunks are fetched a few ahead, each raced across gateways; a gateway whose chunk
//!    or header does not verify is banned.
//! 3. When no gateway serves chunks, small data (`/raw/{id}`) is checked whole against
//!    `data_root` before a byte is sent.
//!
//! The pure parts (deep hash, signature data, chunking, proofs) are unit-tested against
//! transactions made and signed by arweave-js.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, future::BoxFuture, stream::FuturesOrdered};
use rsa::{
    BoxedUint, PublicKey,
    pss::{Signature, VerifyingKey},
    signature::Verifier,
};
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384};
use tokio::sync::OnceCell;

use super::{
    Storage, StorageError,
    cache::Key,
    fetch,
    race::{self, Failure, GatewayError},
    range::ByteRange,
};

/// Arweave's chunk bounds: at most 256 KiB; a last chunk under 32 KiB is avoided by
/// splitting the last two evenly.
const MAX_CHUNK: u64 = 256 * 1024;
const MIN_CHUNK: u64 = 32 * 1024;
const HASH: usize = 32;
const NOTE: usize = 32;
/// A proof deeper than this is refused (2^64 chunks need 64 levels).
const MAX_PROOF: usize = 64 * (2 * HASH + NOTE) + HASH + NOTE;
/// A header larger than this is refused (format 1 headers carry their data).
const MAX_HEADER: usize = 12 << 20;
/// Data this small may be fetched whole (`/raw/{id}`) and checked before sending,
/// when no gateway serves chunks.
const MAX_WHOLE: u64 = 16 << 20;
/// Chunks fetched ahead of the one being sent.
const AHEAD: usize = 4;

const B64: base64::engine::GeneralPurpose =
    base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;

fn b64(field: &str, value: &str) -> Result<Vec<u8>, String> {
    B64.decode(value)
        .map_err(|e| format!("`{field}` is not base64url: {e}"))
}

/// The 32-byte id in `/ar/{id}`: 43 characters of base64url.
pub fn parse_id(input: &str) -> Result<String, StorageError> {
    let bad = |why: String| StorageError::BadArweaveId {
        input: input.to_owned(),
        why,
    };
    if input.len() != 43 {
        return Err(bad(format!(
            "an id is 43 base64url characters; this has {}",
            input.len()
        )));
    }
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(input) {
        Ok(bytes) if bytes.len() == 32 => Ok(input.to_owned()),
        Ok(bytes) => Err(bad(format!("it decodes to {} bytes, not 32", bytes.len()))),
        Err(e) => Err(bad(format!("not base64url: {e}"))),
    }
}

/// A transaction header as gateways serve it (`GET /tx/{id}`).
#[derive(Debug, Deserialize)]
struct RawHeader {
    #[serde(default = "format_1")]
    format: u8,
    id: String,
    #[serde(default)]
    last_tx: String,
    owner: String,
    #[serde(default)]
    tags: Vec<RawTag>,
    #[serde(default)]
    target: String,
    #[serde(default)]
    quantity: String,
    #[serde(default)]
    data: String,
    #[serde(default)]
    data_size: String,
    #[serde(default)]
    data_root: String,
    #[serde(default)]
    reward: String,
    signature: String,
}

fn format_1() -> u8 {
    1
}

#[derive(Debug, Deserialize)]
struct RawTag {
    name: String,
    value: String,
}

/// A header whose id and signature verified.
#[derive(Debug, Clone)]
pub struct Tx {
    pub id: String,
    pub format: u8,
    pub data_size: u64,
    pub data_root: [u8; 32],
    /// Format 1: the data itself (signed with the header).
    pub data: Bytes,
    /// The signed `Content-Type` tag, if any.
    pub content_type: Option<String>,
}

/// Why a header was refused: not readable, or readable but not what `id` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Malformed(String),
    Lie(String),
}

/// Checks `json` as the header of transaction `id`.
pub fn verify_header(id: &str, json: &[u8]) -> Result<Tx, HeaderError> {
    use HeaderError::{Lie, Malformed};
    let raw: RawHeader = serde_json::from_slice(json)
        .map_err(|e| Malformed(format!("not a transaction header: {e}")))?;
    let field = |name: &str, value: &str| b64(name, value).map_err(Malformed);
    let signature = field("signature", &raw.signature)?;
    let owner = field("owner", &raw.owner)?;
    let id_bytes = field("id", id)?;
    if Sha256::digest(&signature).as_slice() != id_bytes.as_slice() || raw.id != id {
        return Err(Lie(format!(
            "the header of another transaction (its signature hashes to {})",
            B64.encode(Sha256::digest(&signature))
        )));
    }
    let target = field("target", &raw.target)?;
    let last_tx = field("last_tx", &raw.last_tx)?;
    let mut tags = Vec::with_capacity(raw.tags.len());
    for t in &raw.tags {
        tags.push((field("tags.name", &t.name)?, field("tags.value", &t.value)?));
    }
    let content_type = tags
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"content-type"))
        .and_then(|(_, v)| String::from_utf8(v.clone()).ok());
    let (message, tx) = match raw.format {
        1 => {
            let data = field("data", &raw.data)?;
            let mut m = Vec::new();
            for part in [&owner, &target, &data] {
                m.extend_from_slice(part);
            }
            m.extend_from_slice(raw.quantity.as_bytes());
            m.extend_from_slice(raw.reward.as_bytes());
            m.extend_from_slice(&last_tx);
            for (n, v) in &tags {
                m.extend_from_slice(n);
                m.extend_from_slice(v);
            }
            let tx = Tx {
                id: id.to_owned(),
                format: 1,
                data_size: data.len() as u64,
                data_root: [0; 32],
                data: Bytes::from(data),
                content_type,
            };
            (m, tx)
        }
        2 => {
            let data_size: u64 = raw
                .data_size
                .parse()
                .map_err(|_| Malformed(format!("data_size `{}` is not a number", raw.data_size)))?;
            let root = field("data_root", &raw.data_root)?;
            let data_root: [u8; 32] = match (data_size, root.as_slice().try_into()) {
                (_, Ok(r)) => r,
                (0, Err(_)) => [0; 32],
                (_, Err(_)) => return Err(Malformed("data_root is not 32 bytes".into())),
            };
            let tag_list: Vec<Deep<'_>> = tags
                .iter()
                .map(|(n, v)| Deep::List(vec![Deep::Blob(n), Deep::Blob(v)]))
                .collect();
            let item = Deep::List(vec![
                Deep::Blob(b"2"),
                Deep::Blob(&owner),
                Deep::Blob(&target),
                Deep::Blob(raw.quantity.as_bytes()),
                Deep::Blob(raw.reward.as_bytes()),
                Deep::Blob(&last_tx),
                Deep::List(tag_list),
                Deep::Blob(raw.data_size.as_bytes()),
                Deep::Blob(&root),
            ]);
            let tx = Tx {
                id: id.to_owned(),
                format: 2,
                data_size,
                data_root,
                data: Bytes::new(),
                content_type,
            };
            (deep_hash(&item).to_vec(), tx)
        }
        other => return Err(Malformed(format!("transaction format {other} is unknown"))),
    };
    let n = BoxedUint::from_be_slice_vartime(&owner);
    let key = PublicKey::new(n, BoxedUint::from(65537u64))
        .map_err(|e| Malformed(format!("the owner is not an RSA public key: {e}")))?;
    let signature = Signature::try_from(signature.as_slice())
        .map_err(|e| Malformed(format!("the signature is not an RSA signature: {e}")))?;
    VerifyingKey::<Sha256>::new_with_auto_salt_len(key)
        .verify(&message, &signature)
        .map_err(|_| Lie("a header whose signature does not verify (altered fields)".into()))?;
    Ok(tx)
}

/// An item of Arweave's deep hash: bytes, or a list of items.
pub enum Deep<'a> {
    Blob(&'a [u8]),
    List(Vec<Deep<'a>>),
}

/// Arweave's deep hash (SHA-384): a blob is H(H("blob" ‖ len) ‖ H(bytes)); a list
/// folds acc = H(acc ‖ deep(item)) from acc = H("list" ‖ count).
pub fn deep_hash(item: &Deep<'_>) -> [u8; 48] {
    match item {
        Deep::Blob(b) => {
            let tag = Sha384::digest(format!("blob{}", b.len()));
            let mut h = Sha384::new();
            h.update(tag);
            h.update(Sha384::digest(b));
            h.finalize().into()
        }
        Deep::List(items) => {
            let mut acc: [u8; 48] = Sha384::digest(format!("list{}", items.len())).into();
            for x in items {
                let mut h = Sha384::new();
                h.update(acc);
                h.update(deep_hash(x));
                acc = h.finalize().into();
            }
            acc
        }
    }
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn note(n: u64) -> [u8; NOTE] {
    let mut out = [0; NOTE];
    out[NOTE - 8..].copy_from_slice(&n.to_be_bytes());
    out
}

fn read_note(b: &[u8]) -> Option<u64> {
    let (high, low) = b.split_at(NOTE - 8);
    if high.iter().any(|&x| x != 0) {
        return None;
    }
    Some(u64::from_be_bytes(low.try_into().ok()?))
}

/// Chunk `[start, end)` of data of `size` bytes, as arweave-js and the node chunk it;
/// the last is empty when `size` is a multiple of 256 KiB (it still has a leaf).
pub fn chunk_bounds(size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity((size / MAX_CHUNK) as usize + 1);
    let (mut cursor, mut rest) = (0, size);
    while rest >= MAX_CHUNK {
        let mut len = MAX_CHUNK;
        let next = rest - MAX_CHUNK;
        if next > 0 && next < MIN_CHUNK {
            len = rest.div_ceil(2);
        }
        out.push((cursor, cursor + len));
        cursor += len;
        rest -= len;
    }
    out.push((cursor, cursor + rest));
    out
}

/// `data_root` of `data`: leaves H(H(H(chunk)) ‖ H(note(end))), branches
/// H(H(left) ‖ H(right) ‖ H(note(left end))), paired left to right, an odd one out
/// promoted as is.
pub fn data_root(data: &[u8]) -> [u8; 32] {
    let mut layer: Vec<([u8; 32], u64)> = chunk_bounds(data.len() as u64)
        .into_iter()
        .map(|(s, e)| {
            let hash = sha256(&[&data[s as usize..e as usize]]);
            (sha256(&[&sha256(&[&hash]), &sha256(&[&note(e)])]), e)
        })
        .collect();
    while layer.len() > 1 {
        layer = layer
            .chunks(2)
            .map(|pair| match pair {
                [(l, lend), (r, rend)] => (
                    sha256(&[&sha256(&[l]), &sha256(&[r]), &sha256(&[&note(*lend)])]),
                    *rend,
                ),
                [single] => *single,
                _ => unreachable!("chunks(2) yields one or two"),
            })
            .collect();
    }
    layer.first().map_or([0; 32], |(id, _)| *id)
}

/// What a valid `data_path` proves: the chunk holding byte `dest` spans
/// `[start, end)` and hashes to `data_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub start: u64,
    pub end: u64,
    pub data_hash: [u8; 32],
}

/// Walks `path` from `root` towards byte `dest` of data of `size` bytes. `None`
/// unless every hash along the way matches and the leaf's bounds hold `dest`.
pub fn validate_path(root: &[u8; 32], dest: u64, size: u64, path: &[u8]) -> Option<Proven> {
    if dest >= size || path.len() > MAX_PROOF {
        return None;
    }
    let (mut id, mut left, mut right) = (*root, 0u64, size);
    let mut p = path;
    loop {
        if p.len() == HASH + NOTE {
            let (data_hash, end) = p.split_at(HASH);
            if sha256(&[&sha256(&[data_hash]), &sha256(&[end])]) != id {
                return None;
            }
            let end = read_note(end)?;
            if end != right || left >= right || !(left..right).contains(&dest) {
                return None;
            }
            return Some(Proven {
                start: left,
                end: right,
                data_hash: data_hash.try_into().ok()?,
            });
        }
        if p.len() < 2 * HASH + NOTE {
            return None;
        }
        let (l, rest) = p.split_at(HASH);
        let (r, rest) = rest.split_at(HASH);
        let (offset, rest) = rest.split_at(NOTE);
        if sha256(&[&sha256(&[l]), &sha256(&[r]), &sha256(&[offset])]) != id {
            return None;
        }
        let offset = read_note(offset)?;
        if dest < offset {
            id = l.try_into().ok()?;
            right = right.min(offset);
        } else {
            id = r.try_into().ok()?;
            left = left.max(offset);
        }
        p = rest;
    }
}

/// Verified data of one transaction, ready to stream.
pub enum Answer {
    NotModified,
    Content(Box<Content>),
}

pub struct Content {
    pub content_type: Option<String>,
    pub size: u64,
    pub span: (u64, u64),
    pub ranged: bool,
    pub first: Bytes,
    pub rest: Option<Chunks>,
    pub sources: Vec<Arc<str>>,
}

pub async fn get(
    storage: &Arc<Storage>,
    id: String,
    range: Option<ByteRange>,
    if_none_match: Option<&str>,
) -> Result<Answer, StorageError> {
    let tag = format!("\"{id}\"");
    if if_none_match.is_some_and(|h| {
        h.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == tag)
    }) {
        return Ok(Answer::NotModified);
    }
    let address = format!("/ar/{id}");
    let (tx, source) = header(storage, &id, &address).await?;
    let size = tx.data_size;
    let (start, end) = match range {
        Some(r) => r.resolve(size)?,
        None => (0, size),
    };
    let content = |first: Bytes, rest, sources| {
        Box::new(Content {
            content_type: tx.content_type.clone(),
            size,
            span: (start, end),
            ranged: range.is_some(),
            first,
            rest,
            sources,
        })
    };
    if tx.format == 1 || size == 0 {
        // `resolve` keeps start < end <= size, and size is the data's length here.
        let first = tx.data.slice(start as usize..end as usize);
        return Ok(Answer::Content(content(first, None, vec![source])));
    }
    let mut chunks = Chunks::new(storage.clone(), &tx, address.clone(), start, end);
    chunks.sources.push(source.clone());
    match chunks.next().await {
        Ok(first) => {
            let sources = chunks.sources.clone();
            let rest = (chunks.pos < chunks.end).then_some(chunks);
            Ok(Answer::Content(content(
                first.unwrap_or_default(),
                rest,
                sources,
            )))
        }
        Err(e) if size <= MAX_WHOLE && !matches!(e, StorageError::NoGateways { .. }) => {
            let mut failures = chunks.failures;
            match whole(storage, &tx, &address).await {
                Ok((data, gateway)) => {
                    let first = data.slice(start as usize..end as usize);
                    Ok(Answer::Content(content(first, None, vec![source, gateway])))
                }
                Err(more) => {
                    failures.extend(more);
                    Err(race::exhausted("arweave", &address, failures))
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// The verified header of `id`, from the cache or raced across the gateways.
async fn header(
    storage: &Arc<Storage>,
    id: &str,
    address: &str,
) -> Result<(Tx, Arc<str>), StorageError> {
    let key = Key::ArweaveHeader(id.to_owned());
    if let Some(json) = storage.cache.get(&key)
        && let Ok(tx) = verify_header(id, &json)
    {
        return Ok((tx, Arc::from("cache")));
    }
    let pool = &storage.arweave;
    let candidates = pool.order(std::time::Instant::now(), |_| false);
    let shared = &**storage;
    let result = race::race(
        pool,
        &storage.settings,
        candidates,
        address,
        |g| async move {
            let url = g.url(&format!("/tx/{id}"), &[]);
            let response = fetch::get(shared, &url, "application/json", None).await?;
            if response.status() == reqwest::StatusCode::ACCEPTED {
                // Known but not yet mined: nothing to serve.
                return Err(GatewayError::NotFound(202));
            }
            let json = fetch::read_limited(response, MAX_HEADER, shared.settings.stall).await?;
            let tx = verify_header(id, &json).map_err(|e| match e {
                HeaderError::Lie(what) => GatewayError::Lie(what),
                HeaderError::Malformed(what) => GatewayError::Malformed(what),
            })?;
            Ok((tx, json))
        },
    )
    .await;
    match result {
        Ok((g, (tx, json))) => {
            storage.cache.insert(key, json);
            Ok((tx, g.name.clone()))
        }
        Err(failures) => Err(race::exhausted("arweave", address, failures)),
    }
}

/// The whole data from `/raw/{id}`, checked against `data_root` before use.
async fn whole(
    storage: &Arc<Storage>,
    tx: &Tx,
    address: &str,
) -> Result<(Bytes, Arc<str>), Vec<Failure>> {
    let pool = &storage.arweave;
    let candidates = pool.order(std::time::Instant::now(), |_| false);
    let shared = &**storage;
    let result = race::race(
        pool,
        &storage.settings,
        candidates,
        address,
        |g| async move {
            let url = g.url(&format!("/raw/{}", tx.id), &[]);
            let response = fetch::get(shared, &url, "*/*", None).await?;
            let size = usize::try_from(tx.data_size).unwrap_or(usize::MAX);
            let data = fetch::read_limited(response, size, shared.settings.stall).await?;
            if data.len() != size || data_root(&data) != tx.data_root {
                return Err(GatewayError::Lie(
                    "data that does not match the transaction's data_root".into(),
                ));
            }
            Ok(data)
        },
    )
    .await;
    let (g, data) = result?;
    for (s, e) in chunk_bounds(tx.data_size) {
        if e > s {
            let chunk = data.slice(s as usize..e as usize);
            storage
                .cache
                .insert(Key::ArweaveChunk(tx.data_root, s), chunk);
        }
    }
    Ok((data, g.name.clone()))
}

/// Where each gateway keeps this transaction's data in the weave (its first byte),
/// asked once per gateway and request.
type Offsets = HashMap<Arc<str>, OnceCell<u64>>;

/// What every chunk fetch of one transaction needs.
struct TxRef {
    id: String,
    address: String,
    data_root: [u8; 32],
    data_size: u64,
    offsets: Offsets,
}

type ChunkResult = Result<(u64, Bytes, Arc<str>), Vec<Failure>>;

/// The verified chunks of `[pos, end)`, in order, a few fetched ahead.
pub struct Chunks {
    storage: Arc<Storage>,
    tx: Arc<TxRef>,
    pos: u64,
    end: u64,
    /// Where the standard chunking puts the chunks still to fetch ahead.
    ahead: VecDeque<u64>,
    queue: FuturesOrdered<BoxFuture<'static, ChunkResult>>,
    /// Chunks turned out not where the standard chunking puts them: one at a time.
    sequential: bool,
    failures: Vec<Failure>,
    pub sources: Vec<Arc<str>>,
}

impl Chunks {
    fn new(storage: Arc<Storage>, tx: &Tx, address: String, start: u64, end: u64) -> Chunks {
        let offsets = storage
            .arweave
            .gateways
            .iter()
            .map(|g| (g.name.clone(), OnceCell::new()))
            .collect();
        let ahead = chunk_bounds(tx.data_size)
            .into_iter()
            .filter(|(s, e)| e > s && *e > start && *s < end)
            .map(|(s, _)| s)
            .collect();
        Chunks {
            storage,
            tx: Arc::new(TxRef {
                id: tx.id.clone(),
                address,
                data_root: tx.data_root,
                data_size: tx.data_size,
                offsets,
            }),
            pos: start,
            end,
            ahead,
            queue: FuturesOrdered::new(),
            sequential: false,
            failures: Vec::new(),
            sources: Vec::new(),
        }
    }

    fn fetch(&self, rel: u64) -> BoxFuture<'static, ChunkResult> {
        Box::pin(fetch_chunk(self.storage.clone(), self.tx.clone(), rel))
    }

    /// The next verified piece; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        while self.pos < self.end {
            let result = if self.sequential {
                fetch_chunk(self.storage.clone(), self.tx.clone(), self.pos).await
            } else {
                while self.queue.len() < AHEAD
                    && let Some(s) = self.ahead.pop_front()
                {
                    let f = self.fetch(s);
                    self.queue.push_back(f);
                }
                match self.queue.next().await {
                    Some(r) => r,
                    None => {
                        self.sequential = true;
                        continue;
                    }
                }
            };
            let (start, chunk, source) = match result {
                Ok(ok) => ok,
                Err(failures) => {
                    self.failures.extend(failures.iter().cloned());
                    return Err(race::exhausted("arweave", &self.tx.address, failures));
                }
            };
            if !self.sources.contains(&source) {
                self.sources.push(source);
            }
            let stop = start + chunk.len() as u64;
            if (start..stop).contains(&self.pos) {
                let from = (self.pos - start) as usize;
                let to = (stop.min(self.end) - start) as usize;
                self.pos = stop.min(self.end);
                return Ok(Some(chunk.slice(from..to)));
            }
            // Not chunked the standard way: fetch by position from now on.
            self.sequential = true;
            self.queue = FuturesOrdered::new();
            self.ahead.clear();
        }
        Ok(None)
    }
}

/// The verified chunk holding byte `rel`: from the cache, or raced across gateways
/// (each asked where the transaction starts in its weave first). Returns the chunk's
/// first byte, its bytes and who served it.
async fn fetch_chunk(storage: Arc<Storage>, tx: Arc<TxRef>, rel: u64) -> ChunkResult {
    if let Some(chunk) = storage.cache.get(&Key::ArweaveChunk(tx.data_root, rel)) {
        return Ok((rel, chunk, Arc::from("cache")));
    }
    let pool = &storage.arweave;
    let candidates = pool.order(std::time::Instant::now(), |_| false);
    let (shared, txr) = (&*storage, &*tx);
    let settings = storage.settings.one_at_a_time();
    let result = race::race(pool, &settings, candidates, &tx.address, |g| async move {
        let base = match txr.offsets.get(&g.name) {
            Some(cell) => {
                *cell
                    .get_or_try_init(|| weave_start(shared, &g, txr))
                    .await?
            }
            None => weave_start(shared, &g, txr).await?,
        };
        let url = g.url(&format!("/chunk/{}", base + rel), &[]);
        let response = fetch::get(shared, &url, "application/json", None).await?;
        let json = fetch::read_limited(
            response,
            2 * MAX_CHUNK as usize + 64 * 1024,
            shared.settings.stall,
        )
        .await?;
        #[derive(Deserialize)]
        struct RawChunk {
            chunk: String,
            data_path: String,
            #[serde(default)]
            packing: Option<String>,
        }
        let raw: RawChunk = serde_json::from_slice(&json)
            .map_err(|e| GatewayError::Malformed(format!("not a chunk: {e}")))?;
        if raw.packing.as_deref().is_some_and(|p| p != "unpacked") {
            return Err(GatewayError::Malformed(format!(
                "chunk packed as `{}`",
                raw.packing.unwrap_or_default()
            )));
        }
        let chunk = b64("chunk", &raw.chunk).map_err(GatewayError::Malformed)?;
        let path = b64("data_path", &raw.data_path).map_err(GatewayError::Malformed)?;
        let proven = validate_path(&txr.data_root, rel, txr.data_size, &path).ok_or_else(|| {
            GatewayError::Lie(format!(
                "a chunk at byte {rel} whose proof does not lead to the signed data_root"
            ))
        })?;
        if sha256(&[&chunk]) != proven.data_hash || chunk.len() as u64 != proven.end - proven.start
        {
            return Err(GatewayError::Lie(format!(
                "a chunk at byte {rel} that does not match its proof"
            )));
        }
        Ok((proven.start, Bytes::from(chunk)))
    })
    .await;
    let (g, (start, chunk)) = result?;
    storage
        .cache
        .insert(Key::ArweaveChunk(tx.data_root, start), chunk.clone());
    Ok((start, chunk, g.name.clone()))
}

/// `GET /tx/{id}/offset` at `g`: where the data's first byte sits in its weave.
async fn weave_start(
    storage: &Storage,
    g: &super::gateways::Gateway,
    tx: &TxRef,
) -> Result<u64, GatewayError> {
    let url = g.url(&format!("/tx/{}/offset", tx.id), &[]);
    let response = fetch::get(storage, &url, "application/json", None).await?;
    let json = fetch::read_limited(response, 4096, storage.settings.stall).await?;
    let v: serde_json::Value = serde_json::from_slice(&json)
        .map_err(|e| GatewayError::Malformed(format!("not an offset answer: {e}")))?;
    let num = |k: &str| match &v[k] {
        serde_json::Value::String(s) => s.parse::<u64>().ok(),
        serde_json::Value::Number(n) => n.as_u64(),
        _ => None,
    };
    match (num("size"), num("offset")) {
        (Some(size), Some(end)) if size == tx.data_size && end + 1 >= size => Ok(end + 1 - size),
        (Some(size), Some(_)) if size != tx.data_size => Err(GatewayError::Malformed(format!(
            "offset answer for {size} bytes, the transaction has {}",
            tx.data_size
        ))),
        _ => Err(GatewayError::Malformed(format!(
            "offset answer without size and offset: {}",
            String::from_utf8_lossy(&json)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> serde_json::Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/storage/arweave.json"
        );
        serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("JSON")
    }

    /// s(tag, n) of tests/fixtures/storage/tools/make-fixtures.mjs.
    fn s(tag: &str, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 32);
        let mut i = 0;
        while out.len() < n {
            out.extend_from_slice(&Sha256::digest(format!("{tag}:{i}")));
            i += 1;
        }
        out.truncate(n);
        out
    }

    fn data(tx: &serde_json::Value) -> Vec<u8> {
        let d = &tx["data"];
        match d["text"].as_str() {
            Some(t) => t.as_bytes().to_vec(),
            None => s(
                d["tag"].as_str().expect("tag"),
                d["size"].as_u64().expect("size") as usize,
            ),
        }
    }

    #[test]
    fn arweave_js_transactions_verify() {
        let f = fixture();
        for (name, tx) in f["txs"].as_object().expect("txs") {
            let id = tx["id"].as_str().expect("id");
            let json = serde_json::to_vec(&tx["header"]).expect("header");
            let got = verify_header(id, &json).unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let data = data(tx);
            assert_eq!(got.data_size, data.len() as u64, "{name}");
            if got.format == 2 {
                assert_eq!(got.data_root, data_root(&data), "{name}: data_root rebuilt");
            } else {
                assert_eq!(got.data, data, "{name}: format 1 data");
            }
        }
    }

    #[test]
    fn altered_headers_are_lies() {
        let f = fixture();
        let tx = &f["txs"]["600k"];
        let id = tx["id"].as_str().expect("id");
        let mut h = tx["header"].clone();
        h["tags"][0]["value"] = serde_json::json!(B64.encode("text/html"));
        let json = serde_json::to_vec(&h).expect("JSON");
        assert!(matches!(verify_header(id, &json), Err(HeaderError::Lie(_))));
        let other = f["txs"]["540k"]["id"].as_str().expect("id");
        let json = serde_json::to_vec(&tx["header"]).expect("JSON");
        assert!(matches!(
            verify_header(other, &json),
            Err(HeaderError::Lie(_))
        ));
        assert!(matches!(
            verify_header(id, b"<html>"),
            Err(HeaderError::Malformed(_))
        ));
    }

    #[test]
    fn chunking_follows_arweave_js() {
        let bounds = |n| {
            chunk_bounds(n)
                .into_iter()
                .map(|(s, e)| e - s)
                .collect::<Vec<_>>()
        };
        assert_eq!(bounds(614400), [262144, 262144, 90112]);
        assert_eq!(bounds(552960), [262144, 145408, 145408]);
        // A multiple of 256 KiB ends with an empty leaf.
        assert_eq!(bounds(524288), [262144, 262144, 0]);
        assert_eq!(bounds(99), [99]);
    }

    #[test]
    fn every_fixture_chunk_proof_validates_and_tampering_does_not() {
        let f = fixture();
        for (name, tx) in f["txs"].as_object().expect("txs") {
            let h = &tx["header"];
            if h["format"] != 2 {
                continue;
            }
            let data = data(tx);
            let root: [u8; 32] = b64("r", h["data_root"].as_str().expect("root"))
                .expect("b64")
                .try_into()
                .expect("32");
            let size = data.len() as u64;
            let mut start = 0;
            for c in tx["chunks"].as_array().expect("chunks") {
                let path = b64("p", c["data_path"].as_str().expect("path")).expect("b64");
                let end = c["offset"].as_u64().expect("offset") + 1;
                for dest in [start, end - 1] {
                    let p = validate_path(&root, dest, size, &path)
                        .unwrap_or_else(|| panic!("{name}: proof for byte {dest}"));
                    assert_eq!((p.start, p.end), (start, end), "{name}");
                    assert_eq!(p.data_hash, sha256(&[&data[start as usize..end as usize]]));
                }
                let mut bad = path.clone();
                bad[0] ^= 1;
                assert_eq!(validate_path(&root, start, size, &bad), None, "{name}");
                // The proof of one chunk proves nothing about the next one's bytes.
                assert_eq!(validate_path(&root, end, size, &path), None, "{name}");
                start = end;
            }
        }
    }

    #[test]
    fn ids_are_43_base64url_characters() {
        assert!(parse_id("ZBZGgUChxp9JGDEwkC04ovxyFVnwCx9uLykmR6sBFeM").is_ok());
        let e = parse_id("abc").unwrap_err().to_string();
        assert!(e.contains("43 base64url characters"), "{e}");
        let e = parse_id("ZBZGgUChxp9JGDEwkC04ovxyFVnwCx9uLykmR6sBF+M")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64url"), "{e}");
    }
}
