//! A local Arweave gateway for the storage tests, serving the transactions arweave-js
//! made and signed in tests/fixtures/storage/arweave.json, placed one after another in
//! a pretend weave: `GET /tx/{id}` (the header, `data` left out for format 2),
//! `/tx/{id}/offset` (`{"size","offset"}`, the absolute offset of the last byte),
//! `/chunk/{offset}` (`{"chunk","data_path","tx_path","packing"}`) and `/raw/{id}`.
//! Like the real ones, it checks no proof; it can lie on request. Dropping it stops it.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::storage_gateway::{content_of, fixture_path};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// Where the first transaction's data starts in the pretend weave.
const WEAVE_BASE: u64 = 1_000_000;

/// A transaction as the gateway keeps it.
pub struct WeaveTx {
    pub id: String,
    pub header: Value,
    pub data: Vec<u8>,
    /// Each chunk's `[start, end)` within the data, and its `data_path`.
    chunks: Vec<(u64, u64, String)>,
    /// Absolute offset of the data's first byte.
    start: u64,
}

pub struct Weave {
    pub txs: HashMap<String, WeaveTx>,
    /// Fixture name -> id.
    pub names: HashMap<String, String>,
}

impl Weave {
    /// tests/fixtures/storage/arweave.json, each transaction's data rebuilt.
    pub fn fixtures() -> Arc<Weave> {
        let text = std::fs::read(fixture_path("arweave.json")).expect("arweave.json");
        let f: Value = serde_json::from_slice(&text).expect("arweave.json is JSON");
        let mut txs = HashMap::new();
        let mut names = HashMap::new();
        let mut start = WEAVE_BASE;
        for (name, tx) in f["txs"].as_object().expect("txs") {
            let id = tx["id"].as_str().expect("id").to_owned();
            let data = content_of(&tx["data"]);
            let mut chunks = Vec::new();
            let mut from = 0;
            for c in tx["chunks"].as_array().expect("chunks") {
                let end = c["offset"].as_u64().expect("offset") + 1;
                chunks.push((from, end, c["data_path"].as_str().expect("path").to_owned()));
                from = end;
            }
            let size = data.len() as u64;
            names.insert(name.clone(), id.clone());
            txs.insert(
                id.clone(),
                WeaveTx {
                    id,
                    header: tx["header"].clone(),
                    data,
                    chunks,
                    start,
                },
            );
            start += size.max(1);
        }
        Arc::new(Weave { txs, names })
    }

    pub fn id(&self, name: &str) -> String {
        self.names
            .get(name)
            .unwrap_or_else(|| panic!("no fixture transaction {name}"))
            .clone()
    }

    pub fn data(&self, name: &str) -> Vec<u8> {
        self.txs[&self.id(name)].data.clone()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Honest,
    /// Chunks (and `/raw`) with their first byte XORed with 1.
    FlipChunks,
    /// Headers with their first tag's value changed (the signature no longer holds).
    ForgeHeader,
    /// Every header answered with another transaction's (valid, but not this id).
    WrongHeader,
    /// No `/chunk` or `/tx/{id}/offset` (404), like a gateway without chunk storage.
    NoChunks,
    /// Accepts requests and never answers.
    Hang,
    /// 404 for everything.
    Missing,
}

struct Shared {
    weave: Arc<Weave>,
    mode: Mutex<Mode>,
    requests: AtomicUsize,
    chunk_requests: AtomicUsize,
}

pub struct ArweaveGateway {
    pub url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ArweaveGateway {
    pub async fn start(weave: Arc<Weave>, mode: Mode) -> ArweaveGateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let shared = Arc::new(Shared {
            weave,
            mode: Mutex::new(mode),
            requests: AtomicUsize::new(0),
            chunk_requests: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/tx/{id}", get(tx))
            .route("/tx/{id}/offset", get(offset))
            .route("/chunk/{offset}", get(chunk))
            .route("/raw/{id}", get(raw))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ArweaveGateway { url, shared, task }
    }

    pub fn set(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    pub fn chunk_requests(&self) -> usize {
        self.shared.chunk_requests.load(Ordering::SeqCst)
    }
}

impl Drop for ArweaveGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The mode, after counting the request and acting on `Hang` / `Missing`.
async fn enter(shared: &Shared) -> Result<Mode, Response> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let mode = shared.mode.lock().expect("mode").clone();
    match mode {
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Missing => return Err((StatusCode::NOT_FOUND, "Not Found").into_response()),
        _ => {}
    }
    Ok(mode)
}

fn json_response(v: Value) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn tx(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mode = match enter(&shared).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(t) = shared.weave.txs.get(&id) else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    let mut header = t.header.clone();
    match mode {
        Mode::ForgeHeader => {
            let forged = B64.encode("text/html");
            match header["tags"].get_mut(0) {
                Some(tag) => tag["value"] = json!(forged),
                None => header["quantity"] = json!("1000000000000"),
            }
        }
        Mode::WrongHeader => {
            if let Some(other) = shared.weave.txs.values().find(|o| o.id != id) {
                header = other.header.clone();
            }
        }
        _ => {}
    }
    json_response(header)
}

async fn offset(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mode = match enter(&shared).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(t) = shared.weave.txs.get(&id) else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    if mode == Mode::NoChunks {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    let size = t.data.len() as u64;
    json_response(json!({
        "size": size.to_string(),
        "offset": (t.start + size - 1).to_string(),
    }))
}

async fn chunk(State(shared): State<Arc<Shared>>, Path(offset): Path<u64>) -> Response {
    let mode = match enter(&shared).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    shared.chunk_requests.fetch_add(1, Ordering::SeqCst);
    if mode == Mode::NoChunks {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    let found = shared.weave.txs.values().find_map(|t| {
        let rel = offset.checked_sub(t.start)?;
        t.chunks
            .iter()
            .find(|(s, e, _)| (*s..*e).contains(&rel))
            .map(|c| (t, c))
    });
    let Some((t, (s, e, path))) = found else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    let mut bytes = t.data[*s as usize..*e as usize].to_vec();
    if mode == Mode::FlipChunks
        && let Some(b) = bytes.first_mut()
    {
        *b ^= 1;
    }
    json_response(json!({
        "tx_path": "",
        "packing": "unpacked",
        "data_path": path,
        "chunk": B64.encode(&bytes),
    }))
}

async fn raw(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mode = match enter(&shared).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(t) = shared.weave.txs.get(&id) else {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    };
    let mut bytes = t.data.clone();
    if mode == Mode::FlipChunks
        && let Some(b) = bytes.first_mut()
    {
        *b ^= 1;
    }
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response()
}
