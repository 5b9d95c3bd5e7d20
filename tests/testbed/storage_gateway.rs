//! A local IPFS trustless gateway for the storage tests and the storage benchmark,
//! serving blocks loaded from a CAR file made by the real JavaScript tools
//! (tests/fixtures/storage/), and misbehaving on request: serving flipped bytes,
//! hanging, stalling or dying mid-stream, or having nothing.
//!
//! It follows the trustless gateway spec as far as Outlast uses it:
//! `GET /ipfs/{cid}[/path]` with `?format=raw|car` or the matching `Accept` (400 when
//! neither); `raw`: one block, no path; `car`: CARv1, the path's blocks first (HAMT
//! shards on the way included), then the entity in depth-first pre-order:
//! `dag-scope=entity` (a file's blocks, limited by `entity-bytes=from:to`; a
//! directory's own block, or all shards of a HAMT), `block` or `all`. Unknown root:
//! 404; a missing child ends the CAR early after the 200, as real gateways do.
//!
//! It reads dag-pb and UnixFS with its own few lines of protobuf, independent of the
//! crates Outlast uses. Talks only on 127.0.0.1. Dropping it stops it.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use cid::Cid;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, task::JoinHandle};

/// s(tag, n) of tests/fixtures/storage/tools/make-fixtures.mjs: the first n bytes of
/// sha256("tag:0") ‖ sha256("tag:1") ‖ …
pub fn s(tag: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut i = 0;
    while out.len() < n {
        out.extend_from_slice(&Sha256::digest(format!("{tag}:{i}")));
        i += 1;
    }
    out.truncate(n);
    out
}

/// The path of a file under tests/fixtures/storage/.
pub fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/storage")
        .join(name)
}

/// The bytes a manifest entry (`{text}`, `{tag, size}` or `{base64}`) stands for.
pub fn content_of(spec: &serde_json::Value) -> Vec<u8> {
    if let Some(t) = spec["text"].as_str() {
        return t.as_bytes().to_vec();
    }
    if let Some(b) = spec["base64"].as_str() {
        use base64::Engine as _;
        return base64::engine::general_purpose::STANDARD
            .decode(b)
            .expect("fixture base64");
    }
    s(
        spec["tag"].as_str().expect("fixture tag"),
        spec["size"].as_u64().expect("fixture size") as usize,
    )
}

/// Every block of a CAR file, by CID.
#[derive(Default)]
pub struct BlockStore {
    blocks: HashMap<Cid, Bytes>,
}

impl BlockStore {
    pub async fn from_car(car: &[u8]) -> BlockStore {
        let mut reader = iroh_car::CarReader::new(std::io::Cursor::new(car))
            .await
            .expect("CAR header");
        let mut blocks = HashMap::new();
        while let Some((cid, data)) = reader.next_block().await.expect("CAR block") {
            blocks.insert(cid, Bytes::from(data));
        }
        BlockStore { blocks }
    }

    /// tests/fixtures/storage/ipfs.car.
    pub async fn fixtures() -> Arc<BlockStore> {
        let car = std::fs::read(fixture_path("ipfs.car")).expect("tests/fixtures/storage/ipfs.car");
        Arc::new(BlockStore::from_car(&car).await)
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    fn get(&self, cid: &Cid) -> Option<&Bytes> {
        self.blocks.get(cid)
    }
}

/// How the gateway behaves, changeable at any time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// Every block's first byte XORed with 1 (the lie a bad disk or a bad actor tells).
    Flip,
    /// Honest for the first n blocks of a CAR, then flipped like `Flip`.
    FlipFrom(usize),
    /// Accepts requests and never answers.
    Hang,
    /// Sends the status line and this many body bytes, then nothing, never closing.
    StallAfter(usize),
    /// Sends the status line and this many body bytes, then drops the connection.
    DieAfter(usize),
    /// 404 for everything.
    Missing,
    /// Answers honestly after this long.
    Slow(Duration),
}

struct Shared {
    store: Arc<BlockStore>,
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    car_requests: AtomicUsize,
    raw_requests: AtomicUsize,
}

pub struct IpfsGateway {
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl IpfsGateway {
    pub async fn start(store: Arc<BlockStore>, mode: Mode) -> IpfsGateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        IpfsGateway::serve(listener, store, mode)
    }

    pub fn serve(listener: TcpListener, store: Arc<BlockStore>, mode: Mode) -> IpfsGateway {
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            store,
            mode: Mutex::new(mode),
            requests: AtomicUsize::new(0),
            car_requests: AtomicUsize::new(0),
            raw_requests: AtomicUsize::new(0),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        IpfsGateway { url, shared, task }
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    /// Requests received, of any kind.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn car_requests(&self) -> usize {
        self.shared.car_requests.load(Ordering::SeqCst)
    }

    pub fn raw_requests(&self) -> usize {
        self.shared.raw_requests.load(Ordering::SeqCst)
    }
}

impl Drop for IpfsGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let mode = shared.mode.lock().expect("mode").clone();
    match mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Slow(d) => tokio::time::sleep(d).await,
        Mode::Missing => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
        _ => {}
    }
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = match query.get("format").map(String::as_str) {
        Some(f) => f.to_owned(),
        None if accept.contains("application/vnd.ipld.car") => "car".into(),
        None if accept.contains("application/vnd.ipld.raw") => "raw".into(),
        None => String::new(),
    };
    let Some(rest) = req.uri().path().strip_prefix("/ipfs/") else {
        return (StatusCode::NOT_FOUND, "only /ipfs/ here\n").into_response();
    };
    let mut segs = rest.split('/').filter(|s| !s.is_empty());
    let Some(Ok(root)) = segs.next().map(Cid::try_from) else {
        return (StatusCode::BAD_REQUEST, "not a CID\n").into_response();
    };
    let path: Vec<String> = segs
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let store = &shared.store;
    if store.get(&root).is_none() {
        return (StatusCode::NOT_FOUND, "no such root\n").into_response();
    }
    let flip_from = match mode {
        Mode::Flip => Some(0),
        Mode::FlipFrom(n) => Some(n),
        _ => None,
    };
    let (content_type, parts) = match format.as_str() {
        "raw" => {
            shared.raw_requests.fetch_add(1, Ordering::SeqCst);
            if !path.is_empty() {
                return (StatusCode::BAD_REQUEST, "raw takes no path\n").into_response();
            }
            let block = store.get(&root).cloned().unwrap_or_default();
            (
                "application/vnd.ipld.raw",
                vec![maybe_flip(block, flip_from == Some(0))],
            )
        }
        "car" => {
            shared.car_requests.fetch_add(1, Ordering::SeqCst);
            let scope = query.get("dag-scope").map_or("all", String::as_str);
            let range = query
                .get("entity-bytes")
                .and_then(|r| parse_entity_bytes(r));
            let mut order = Vec::new();
            let Some(target) = walk_path(store, root, &path, &mut order) else {
                return (StatusCode::NOT_FOUND, "no such path\n").into_response();
            };
            match scope {
                "block" => order.push(target),
                "entity" => entity(store, target, range, &mut order),
                _ => all(store, target, &mut order),
            }
            let mut parts = vec![car_header(root)];
            for (i, cid) in order.into_iter().enumerate() {
                // A missing block ends the CAR (the 200 is already sent).
                let Some(block) = store.get(&cid) else { break };
                let flip = flip_from.is_some_and(|n| i >= n);
                parts.push(section(&cid, &maybe_flip(block.clone(), flip)));
            }
            (
                "application/vnd.ipld.car; version=1; order=dfs; dups=y",
                parts,
            )
        }
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "ask for ?format=raw or ?format=car (this is a trustless gateway)\n",
            )
                .into_response();
        }
    };
    let body = match mode {
        Mode::StallAfter(n) => cut(parts, n, false),
        Mode::DieAfter(n) => cut(parts, n, true),
        _ => Body::from_stream(futures_util::stream::iter(
            parts.into_iter().map(Ok::<_, Infallible>),
        )),
    };
    let etag = format!("\"{root}.{format}\"");
    (
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::ETAG, etag),
            (
                header::CACHE_CONTROL,
                "public, max-age=29030400, immutable".into(),
            ),
        ],
        body,
    )
        .into_response()
}

fn maybe_flip(block: Bytes, flip: bool) -> Bytes {
    if !flip || block.is_empty() {
        return block;
    }
    let mut v = block.to_vec();
    v[0] ^= 1;
    Bytes::from(v)
}

/// `parts` up to `n` bytes, then nothing forever (`die` = false) or a broken
/// connection (`die` = true); a shorter answer is sent whole.
fn cut(parts: Vec<Bytes>, n: usize, die: bool) -> Body {
    if parts.iter().map(Bytes::len).sum::<usize>() <= n {
        return Body::from_stream(futures_util::stream::iter(
            parts.into_iter().map(Ok::<_, Infallible>),
        ));
    }
    let mut left = n;
    let mut kept = Vec::new();
    for p in parts {
        if left == 0 {
            break;
        }
        let take = p.len().min(left);
        kept.push(p.slice(..take));
        left -= take;
    }
    let head = futures_util::stream::iter(kept.into_iter().map(Ok::<_, io::Error>));
    let tail = futures_util::stream::once(async move {
        if die {
            // Give the bytes before the cut time to leave, then break the connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
            Err(io::Error::other("gateway died mid-stream"))
        } else {
            std::future::pending::<Result<Bytes, io::Error>>().await
        }
    });
    Body::from_stream(head.chain(tail))
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn car_header(root: Cid) -> Bytes {
    let header = iroh_car::CarHeader::new_v1(vec![root])
        .encode()
        .expect("CAR header encodes");
    let mut out = Vec::new();
    varint(header.len() as u64, &mut out);
    out.extend_from_slice(&header);
    Bytes::from(out)
}

fn section(cid: &Cid, data: &[u8]) -> Bytes {
    let c = cid.to_bytes();
    let mut out = Vec::with_capacity(c.len() + data.len() + 10);
    varint((c.len() + data.len()) as u64, &mut out);
    out.extend_from_slice(&c);
    out.extend_from_slice(data);
    Bytes::from(out)
}

fn parse_entity_bytes(r: &str) -> Option<(i64, Option<i64>)> {
    let (a, b) = r.split_once(':')?;
    let from = a.parse().ok()?;
    let to = if b == "*" {
        None
    } else {
        Some(b.parse().ok()?)
    };
    Some((from, to))
}

// --- dag-pb and UnixFS, read with a few lines of protobuf --------------------------

const DAG_PB: u64 = 0x70;

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// Protobuf fields of `b`: (field number, varint value or bytes).
fn fields(b: &[u8]) -> Vec<(u64, Result<u64, &[u8]>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let Some(key) = read_varint(b, &mut i) else {
            break;
        };
        let value = match key & 7 {
            0 => match read_varint(b, &mut i) {
                Some(v) => Ok(v),
                None => break,
            },
            2 => {
                let Some(len) = read_varint(b, &mut i) else {
                    break;
                };
                let Some(bytes) = b.get(i..i + len as usize) else {
                    break;
                };
                i += len as usize;
                Err(bytes)
            }
            1 => {
                i += 8;
                continue;
            }
            5 => {
                i += 4;
                continue;
            }
            _ => break,
        };
        out.push((key >> 3, value));
    }
    out
}

struct Node {
    links: Vec<(Cid, String)>,
    /// UnixFS: type (0 raw, 1 directory, 2 file, 5 HAMT shard), file size, blocksizes.
    kind: u64,
    filesize: Option<u64>,
    data_len: u64,
    blocksizes: Vec<u64>,
}

fn node(block: &[u8]) -> Node {
    let mut n = Node {
        links: Vec::new(),
        kind: 0,
        filesize: None,
        data_len: 0,
        blocksizes: Vec::new(),
    };
    for (field, value) in fields(block) {
        match (field, value) {
            (2, Err(link)) => {
                let mut hash = None;
                let mut name = String::new();
                for (f, v) in fields(link) {
                    match (f, v) {
                        (1, Err(h)) => hash = Cid::try_from(h).ok(),
                        (2, Err(nm)) => name = String::from_utf8_lossy(nm).into_owned(),
                        _ => {}
                    }
                }
                if let Some(h) = hash {
                    n.links.push((h, name));
                }
            }
            (1, Err(data)) => {
                for (f, v) in fields(data) {
                    match (f, v) {
                        (1, Ok(t)) => n.kind = t,
                        (2, Err(d)) => n.data_len = d.len() as u64,
                        (3, Ok(size)) => n.filesize = Some(size),
                        (4, Ok(size)) => n.blocksizes.push(size),
                        (4, Err(packed)) => {
                            let mut i = 0;
                            while let Some(v) = read_varint(packed, &mut i) {
                                n.blocksizes.push(v);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    n
}

/// Follows `path` from `root`, pushing the blocks a client needs to check the way
/// (directories, and the HAMT shards on the way to each name).
fn walk_path(store: &BlockStore, root: Cid, path: &[String], out: &mut Vec<Cid>) -> Option<Cid> {
    let mut cur = root;
    for seg in path {
        out.push(cur);
        let block = store.get(&cur)?;
        if cur.codec() != DAG_PB {
            return None;
        }
        let n = node(block);
        cur = if n.kind == 5 {
            find_in_hamt(store, &n, seg, out)?
        } else {
            n.links.iter().find(|(_, name)| name == seg)?.0
        };
    }
    Some(cur)
}

/// Searches a HAMT for `name` (every shard, not by hash: a different way from
/// Outlast's), pushing the shards on the way to it.
fn find_in_hamt(store: &BlockStore, shard: &Node, name: &str, out: &mut Vec<Cid>) -> Option<Cid> {
    for (cid, link) in &shard.links {
        if link.len() > 2 && &link[2..] == name {
            return Some(*cid);
        }
        if link.len() == 2 {
            let sub = node(store.get(cid)?);
            let mark = out.len();
            out.push(*cid);
            if let Some(found) = find_in_hamt(store, &sub, name, out) {
                return Some(found);
            }
            out.truncate(mark);
        }
    }
    None
}

fn entity(store: &BlockStore, target: Cid, range: Option<(i64, Option<i64>)>, out: &mut Vec<Cid>) {
    let Some(block) = store.get(&target) else {
        out.push(target);
        return;
    };
    if target.codec() != DAG_PB {
        out.push(target);
        return;
    }
    let n = node(block);
    match n.kind {
        1 => out.push(target),
        5 => shards(store, target, out),
        _ => {
            let size = n.filesize.unwrap_or(n.data_len) as i64;
            let (from, to) = match range {
                None => (0, size - 1),
                Some((f, t)) => {
                    let f = if f < 0 { (size + f).max(0) } else { f };
                    let t = match t {
                        None => size - 1,
                        Some(t) if t < 0 => size + t,
                        Some(t) => t.min(size - 1),
                    };
                    (f, t)
                }
            };
            file_blocks(store, target, 0, from, to, out);
        }
    }
}

fn shards(store: &BlockStore, shard: Cid, out: &mut Vec<Cid>) {
    out.push(shard);
    let Some(block) = store.get(&shard) else {
        return;
    };
    for (cid, name) in node(block).links {
        if name.len() == 2 {
            shards(store, cid, out);
        }
    }
}

/// The blocks of a file whose bytes meet `[from, to]`, in pre-order.
fn file_blocks(store: &BlockStore, cid: Cid, start: i64, from: i64, to: i64, out: &mut Vec<Cid>) {
    out.push(cid);
    if cid.codec() != DAG_PB {
        return;
    }
    let Some(block) = store.get(&cid) else { return };
    let n = node(block);
    let mut off = start + n.data_len as i64;
    for (i, (child, _)) in n.links.iter().enumerate() {
        let size = n.blocksizes.get(i).copied().unwrap_or(0) as i64;
        if off + size > from && off <= to {
            file_blocks(store, *child, off, from, to, out);
        }
        off += size;
    }
}

fn all(store: &BlockStore, cid: Cid, out: &mut Vec<Cid>) {
    out.push(cid);
    if cid.codec() != DAG_PB {
        return;
    }
    if let Some(block) = store.get(&cid) {
        for (child, _) in node(block).links {
            all(store, child, out);
        }
    }
}
