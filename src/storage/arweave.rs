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

use std::{collections::HashMap, sync::Arc};

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
    Storage, StorageError, address,
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

/// What follows `/ar/` in a URL path, as sent: one transaction id. Empty, `.` and `..`
/// segments are refused as in `/ipfs/` paths (`BadPath`, a 400); a path below the id
/// (an Arweave path manifest) is not served.
pub fn parse_path(raw: &str) -> Result<String, StorageError> {
    let mut parts: Vec<&str> = raw.split('/').collect();
    // One empty segment at the end is a trailing `/`.
    if parts.len() > 1 && parts.last() == Some(&"") {
        parts.pop();
    }
    let mut names = Vec::with_capacity(parts.len());
    for (i, seg) in parts.iter().enumerate() {
        names.push(
            address::segment(i + 1, seg).map_err(|why| StorageError::BadPath {
                path: address::shown("/ar/", raw),
                why,
            })?,
        );
    }
    // `split` yields at least one part, and each became a name.
    let id = parse_id(names.first().map_or("", String::as_str))?;
    if names.len() > 1 {
        return Err(StorageError::Unsupported {
            address: address::shown("/ar/", raw),
            why: format!(
                "paths below a transaction (Arweave path manifests) are not served; ask for /ar/{id}"
            ),
        });
    }
    Ok(id)
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
    ChunkBounds::from(size, 0).collect()
}

/// The standard chunking of `size` bytes, produced lazily from the chunk holding a given
/// byte: `size` comes from a signed header, which anyone can make for any number, so
/// the chunks before the range asked for are skipped by arithmetic, never listed.
#[derive(Debug, Clone)]
pub struct ChunkBounds {
    /// The next chunk's first byte, and the bytes from there to the end: always
    /// `cursor + rest == size`, so neither sum below can overflow.
    cursor: u64,
    rest: u64,
    done: bool,
}

impl ChunkBounds {
    /// The chunks of `size` bytes from the one holding byte `start`; past the end,
    /// nothing but the empty last chunk, if there is one.
    pub fn from(size: u64, start: u64) -> ChunkBounds {
        // Every chunk but the last two is a whole 256 KiB; only those two may be split
        // evenly, so the ones before can be stepped over by multiplication.
        let whole = (start / MAX_CHUNK).min((size / MAX_CHUNK).saturating_sub(1));
        let cursor = whole * MAX_CHUNK;
        ChunkBounds {
            cursor,
            rest: size - cursor,
            done: false,
        }
        .skip_while_before(start)
    }

    /// An iterator with nothing left.
    pub fn empty() -> ChunkBounds {
        ChunkBounds {
            cursor: 0,
            rest: 0,
            done: true,
        }
    }

    fn skip_while_before(mut self, start: u64) -> ChunkBounds {
        // A few steps at most: `from` starts within a few chunks of `start`.
        while !self.done && self.rest > 0 && self.peek_end() <= start {
            self.next();
        }
        self
    }

    fn peek_end(&self) -> u64 {
        self.clone().next().map_or(self.cursor, |(_, e)| e)
    }
}

impl Iterator for ChunkBounds {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.done {
            return None;
        }
        let start = self.cursor;
        if self.rest < MAX_CHUNK {
            self.done = true;
            return Some((start, start + self.rest));
        }
        let mut len = MAX_CHUNK;
        let next = self.rest - MAX_CHUNK;
        if next > 0 && next < MIN_CHUNK {
            len = self.rest.div_ceil(2);
        }
        self.cursor += len;
        self.rest -= len;
        Some((start, self.cursor))
    }
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
            let url = g.url(&format!("/tx/{id}"), &[])?;
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
            let url = g.url(&format!("/raw/{}", tx.id), &[])?;
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
    /// Where the standard chunking puts the chunks still to fetch ahead (from `pos`;
    /// those starting at `end` or later are never asked for).
    ahead: ChunkBounds,
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
        let ahead = ChunkBounds::from(tx.data_size, start);
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

    /// The first byte of the next chunk to fetch ahead, if it holds bytes of the range.
    fn next_ahead(&mut self) -> Option<u64> {
        let (s, e) = self.ahead.next()?;
        if s >= self.end || e <= s {
            self.ahead = ChunkBounds::empty();
            return None;
        }
        Some(s)
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
                    && let Some(s) = self.next_ahead()
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
            // A proven chunk lies within the data (`validate_path` keeps it under
            // `data_size`), so this sum fits; saturating all the same.
            let stop = start.saturating_add(chunk.len() as u64);
            if (start..stop).contains(&self.pos) {
                let upto = stop.min(self.end);
                // start <= pos < upto <= start + len: both offsets are within the chunk,
                // so below its length (a usize).
                let piece = chunk.slice((self.pos - start) as usize..(upto - start) as usize);
                self.pos = upto;
                return Ok(Some(piece));
            }
            // Not chunked the standard way: fetch by position from now on.
            self.sequential = true;
            self.queue = FuturesOrdered::new();
            self.ahead = ChunkBounds::empty();
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
        let at = base.checked_add(rel).ok_or_else(|| {
            GatewayError::Malformed(format!(
                "the transaction's data starts at byte {base} of its weave, too far to hold byte {rel}"
            ))
        })?;
        let url = g.url(&format!("/chunk/{at}"), &[])?;
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
        if sha256(&[&chunk]) != proven.data_hash
            || Some(chunk.len() as u64) != proven.end.checked_sub(proven.start)
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
    let url = g.url(&format!("/tx/{}/offset", tx.id), &[])?;
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
        (Some(size), Some(end)) if size == tx.data_size => data_start(size, end).ok_or_else(|| {
            GatewayError::Malformed(format!(
                "offset answer with its last byte at {end}, before the first of {size} bytes"
            ))
        }),
        (Some(size), Some(_)) => Err(GatewayError::Malformed(format!(
            "offset answer for {size} bytes, the transaction has {}",
            tx.data_size
        ))),
        _ => Err(GatewayError::Malformed(format!(
            "offset answer without size and offset: {}",
            String::from_utf8_lossy(&json[..json.len().min(200)])
        ))),
    }
}

/// Where data of `size` bytes whose last byte sits at weave offset `end` starts (the
/// answer of `/tx/{id}/offset`); `None` when no such place exists (`end + 1 < size`, or
/// `end` at the very end of `u64`).
pub fn data_start(size: u64, end: u64) -> Option<u64> {
    end.checked_add(1)?.checked_sub(size)
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

    #[test]
    fn huge_signed_sizes_and_offsets_are_arithmetic_not_allocations() {
        // A header anyone can sign may claim any size: the chunks of a range are found
        // without listing the ones before it.
        let mut far = ChunkBounds::from(u64::MAX, u64::MAX - 5);
        let (s, e) = far.next().expect("the chunk holding the byte");
        assert!(s <= u64::MAX - 5 && u64::MAX - 5 < e);
        let mut mid = ChunkBounds::from(1 << 60, 1 << 59);
        assert_eq!(mid.next(), Some((1 << 59, (1 << 59) + MAX_CHUNK)));
        assert_eq!(data_start(100, 99), Some(0));
        assert_eq!(data_start(100, 1099), Some(1000));
        assert_eq!(data_start(100, 98), None);
        assert_eq!(data_start(1, u64::MAX), None);
        assert_eq!(data_start(0, u64::MAX), None);
    }

    #[test]
    fn ar_paths_are_one_id() {
        let id = "ZBZGgUChxp9JGDEwkC04ovxyFVnwCx9uLykmR6sBFeM";
        assert_eq!(parse_path(id).ok().as_deref(), Some(id));
        assert_eq!(parse_path(&format!("{id}/")).ok().as_deref(), Some(id));
        for (raw, says) in [
            (
                format!("{id}/../../admin"),
                "`.` and `..` segments are refused",
            ),
            (
                format!("{id}/%2e%2e/admin"),
                "`.` and `..` segments are refused",
            ),
            (format!("{id}/./x"), "`.` and `..` segments are refused"),
            ("../admin".to_owned(), "`.` and `..` segments are refused"),
            (format!("{id}//x"), "segment 2 is empty"),
            (String::new(), "segment 1 is empty"),
            (format!("{id}/index.html"), "path manifests"),
            ("abc".to_owned(), "43 base64url characters"),
        ] {
            let e = parse_path(&raw).unwrap_err().to_string();
            assert!(e.contains(says), "{raw}: {e}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// The chunking as first written: every chunk listed from the start.
        fn model(size: u64) -> Vec<(u64, u64)> {
            let mut out = Vec::new();
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

        fn size() -> impl Strategy<Value = u64> {
            prop_oneof![
                0u64..3 * MAX_CHUNK,
                (0u64..40, 0u64..2 * MIN_CHUNK).prop_map(|(n, r)| n * MAX_CHUNK + r),
                (1u64..40, 0u64..2 * MIN_CHUNK)
                    .prop_map(|(n, r)| n * MAX_CHUNK - r.min(n * MAX_CHUNK)),
            ]
        }

        type Proof = ([u8; 32], u64, u64, Vec<u8>);

        /// Every chunk proof of the fixtures (root, size, chunk's last byte, path), made
        /// once: the fixtures' data takes a while to rebuild.
        fn fixture_proofs() -> &'static [Proof] {
            static PROOFS: std::sync::OnceLock<Vec<Proof>> = std::sync::OnceLock::new();
            PROOFS.get_or_init(make_proofs)
        }

        fn make_proofs() -> Vec<Proof> {
            let f = fixture();
            let mut out = Vec::new();
            for tx in f["txs"].as_object().expect("txs").values() {
                let h = &tx["header"];
                if h["format"] != 2 {
                    continue;
                }
                let root: [u8; 32] = b64("r", h["data_root"].as_str().expect("root"))
                    .expect("b64")
                    .try_into()
                    .expect("32");
                let size = data(tx).len() as u64;
                for c in tx["chunks"].as_array().expect("chunks") {
                    let path = b64("p", c["data_path"].as_str().expect("path")).expect("b64");
                    out.push((root, size, c["offset"].as_u64().expect("offset"), path));
                }
            }
            out
        }

        proptest! {
            #[test]
            fn chunks_from_any_byte_are_the_standard_ones_from_there(size in size(), at in any::<prop::sample::Index>()) {
                let all = model(size);
                let start = at.index(size as usize + 1) as u64;
                let want: Vec<(u64, u64)> = all.iter().copied().filter(|&(s, e)| e > start || (s == e && s == start)).collect();
                let got: Vec<(u64, u64)> = ChunkBounds::from(size, start).collect();
                prop_assert_eq!(&got, &want, "size {} from {}", size, start);
                prop_assert_eq!(chunk_bounds(size), all);
            }

            #[test]
            fn chunks_of_any_size_tile_the_data_from_the_byte_asked(size in any::<u64>(), at in any::<u64>()) {
                let start = if size == 0 { 0 } else { at % size };
                let mut prev: Option<u64> = None;
                for (i, (s, e)) in ChunkBounds::from(size, start).take(4).enumerate() {
                    prop_assert!(s <= e && e <= size && e - s <= MAX_CHUNK, "{s}..{e} of {size}");
                    if i == 0 {
                        prop_assert!(s <= start && (start < e || s == e), "{s}..{e} holds {start}");
                    }
                    if let Some(p) = prev {
                        prop_assert_eq!(s, p);
                    }
                    prev = Some(e);
                }
            }

            #[test]
            fn no_proof_proves_a_byte_outside_its_bounds(
                root in any::<[u8; 32]>(),
                dest in any::<u64>(),
                size in any::<u64>(),
                path in prop::collection::vec(any::<u8>(), 0..400),
            ) {
                if let Some(p) = validate_path(&root, dest, size, &path) {
                    prop_assert!(p.start <= dest && dest < p.end && p.end <= size);
                }
            }

            #[test]
            fn a_changed_proof_proves_nothing(
                pick in any::<prop::sample::Index>(),
                at in any::<prop::sample::Index>(),
                flip in 1u8..=255,
            ) {
                let proofs = fixture_proofs();
                let (root, size, offset, path) = &proofs[pick.index(proofs.len())];
                prop_assert!(validate_path(root, *offset, *size, path).is_some());
                let mut bad = path.clone();
                let i = at.index(bad.len());
                bad[i] ^= flip;
                prop_assert_eq!(validate_path(root, *offset, *size, &bad), None);
            }

            #[test]
            fn any_offset_answer_gives_a_start_that_adds_up(size in any::<u64>(), end in any::<u64>()) {
                match data_start(size, end) {
                    Some(start) => prop_assert_eq!(u128::from(start) + u128::from(size), u128::from(end) + 1),
                    None => prop_assert!(u128::from(end) + 1 < u128::from(size) || end == u64::MAX),
                }
            }

            #[test]
            fn any_ar_path_parses_to_a_43_character_id_or_is_refused(raw in any::<String>()) {
                if let Ok(id) = parse_path(&raw) {
                    prop_assert_eq!(id.len(), 43);
                    prop_assert!(parse_id(&id).is_ok());
                }
            }
        }

        proptest! {
            // Each case that gets as far as the signature costs an RSA-4096 check.
            #![proptest_config(ProptestConfig::with_cases(64))]

            #[test]
            fn a_changed_header_is_refused_or_says_the_same(
                pick in any::<prop::sample::Index>(),
                flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..3),
            ) {
                static FIXTURE: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
                let f = FIXTURE.get_or_init(fixture);
                let txs: Vec<&serde_json::Value> = f["txs"].as_object().expect("txs").values().collect();
                let tx = txs[pick.index(txs.len())];
                let id = tx["id"].as_str().expect("id");
                let json = serde_json::to_vec(&tx["header"]).expect("JSON");
                let good = verify_header(id, &json).expect("the fixture verifies");
                let mut bad = json.clone();
                for (at, x) in &flips {
                    let i = at.index(bad.len());
                    bad[i] ^= x;
                }
                if let Ok(got) = verify_header(id, &bad) {
                    // Only a change outside what is signed (an unknown key, say) passes.
                    prop_assert_eq!(
                        (got.data_size, got.data_root, got.data, got.content_type, got.format),
                        (good.data_size, good.data_root, good.data, good.content_type, good.format)
                    );
                }
            }
        }
    }
}
