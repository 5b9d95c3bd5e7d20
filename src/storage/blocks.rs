//! One request's supply of verified blocks. `get(cid)` answers, in this order, from:
//! the CID itself (identity hash), blocks that arrived early, the cache, the current
//! gateway's CAR stream, a new CAR stream raced across the gateways not yet failed in
//! this request (resuming at the byte the client has reached), and last, single raw
//! blocks raced across the gateways.
//!
//! Every block is hashed against its CID before it is used, kept or cached; a block
//! that does not match bans its gateway and the stream moves elsewhere. A stream that
//! stalls, breaks or ends early moves elsewhere too. Blocks nobody asked for are
//! dropped unread by the hash (and bounded, so a gateway cannot stream junk forever).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use bytes::Bytes;
use cid::Cid;

use super::{
    ByteCount, Storage, StorageError, address,
    cache::Key,
    car::{CarRequest, CarStream},
    race::{self, Failure, GatewayError},
};

/// Blocks kept that arrived before their turn (a gateway's order differing from ours).
const LOOKAHEAD_MAX: usize = 16 << 20;
/// Bytes of blocks not asked for that one stream may send before it is dropped.
const SKIP_MAX: u64 = 256 << 20;
/// What a skipped block counts besides its data (a CID and a length are ~40 bytes; each
/// is decoded): at most 256k blocks not asked for, however small.
const SECTION_COST: u64 = 1 << 10;

/// "Will this block be needed later in this request?" — beyond the one asked for.
pub type Later<'a> = &'a (dyn Fn(&Cid) -> bool + Sync);

/// Nothing else will be needed.
pub fn nothing_later(_: &Cid) -> bool {
    false
}

pub struct Blocks {
    storage: Arc<Storage>,
    /// What a new stream asks gateways for (updated as the client's bytes go out).
    request: CarRequest,
    /// What the client asked for, for errors: `/ipfs/{cid}/{path}`.
    address: String,
    stream: Option<CarStream>,
    /// Bytes of blocks not asked for on the current stream.
    skipped: u64,
    lookahead: HashMap<Cid, Bytes>,
    lookahead_bytes: usize,
    /// Gateways not to ask for another stream / single block in this request.
    no_stream: HashSet<Arc<str>>,
    no_block: HashSet<Arc<str>>,
    failures: Vec<Failure>,
    /// Who delivered this request's blocks, in order of first delivery.
    sources: Vec<Arc<str>>,
}

impl Blocks {
    pub fn new(storage: Arc<Storage>, request: CarRequest, address: String) -> Blocks {
        Blocks {
            storage,
            request,
            address,
            stream: None,
            skipped: 0,
            lookahead: HashMap::new(),
            lookahead_bytes: 0,
            no_stream: HashSet::new(),
            no_block: HashSet::new(),
            failures: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Gateways that delivered blocks so far (`cache` for the cache).
    pub fn sources(&self) -> &[Arc<str>] {
        &self.sources
    }

    /// The request goes through a path (gateways resolve it).
    pub fn following_path(&self) -> bool {
        !self.request.path.is_empty()
    }

    /// What a *new* stream should ask for from now on; the current one is kept.
    pub fn resume_with(&mut self, request: CarRequest) {
        self.request = request;
    }

    /// Asks for something else: the current stream is dropped (it carries the old
    /// request's blocks), and every gateway may be asked again.
    pub fn switch_to(&mut self, request: CarRequest) {
        if request != self.request {
            self.request = request;
            self.stream = None;
            self.skipped = 0;
            self.lookahead.clear();
            self.lookahead_bytes = 0;
            self.no_stream.clear();
        }
    }

    fn note(&mut self, source: &Arc<str>) {
        if !self.sources.contains(source) {
            self.sources.push(source.clone());
        }
    }

    /// The verified block `cid`. `later` says which other blocks the caller will need,
    /// so that those arriving early are kept.
    pub async fn get(&mut self, cid: &Cid, later: Later<'_>) -> Result<Bytes, StorageError> {
        if let Some(b) = address::inlined(cid) {
            return Ok(b);
        }
        if let Some(b) = self.early(cid, later) {
            return Ok(b);
        }
        if let Some(b) = self.storage.cache.get(&Key::block(cid)) {
            self.note(&Arc::from("cache"));
            return Ok(b);
        }
        loop {
            if self.stream.is_none() {
                if !self.open().await {
                    break;
                }
                // The new stream's first block may be the one asked for.
                if let Some(b) = self.early(cid, later) {
                    return Ok(b);
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            let gateway = stream.gateway.clone();
            let (c, data) = match stream.next().await {
                Ok(Some(block)) => block,
                Ok(None) => {
                    self.fail_stream(GatewayError::Missing(format!("block {cid}")));
                    continue;
                }
                Err(e) => {
                    self.fail_stream(e);
                    continue;
                }
            };
            let wanted = c == *cid;
            if !wanted && !later(&c) {
                // A section costs its CID and length too: counted, so a stream of empty
                // blocks nobody asked for ends as a long one does.
                self.skipped = self
                    .skipped
                    .saturating_add(data.len() as u64)
                    .saturating_add(SECTION_COST);
                if self.skipped > SKIP_MAX {
                    self.fail_stream(GatewayError::Malformed(format!(
                        "sent {} of blocks that were not asked for",
                        ByteCount(self.skipped)
                    )));
                }
                continue;
            }
            if let Err(e) = address::verify(&c, &data) {
                self.fail_stream(GatewayError::Lie(e.to_string()));
                continue;
            }
            self.storage.cache.insert(Key::block(&c), data.clone());
            self.note(&gateway.name);
            if wanted {
                if later(cid) {
                    self.keep(c, data.clone());
                }
                return Ok(data);
            }
            self.keep(c, data);
        }
        self.single(cid).await
    }

    /// `cid`, if it arrived before its turn.
    fn early(&mut self, cid: &Cid, later: Later<'_>) -> Option<Bytes> {
        let b = self.lookahead.remove(cid)?;
        self.lookahead_bytes = self.lookahead_bytes.saturating_sub(b.len());
        if later(cid) {
            self.keep(*cid, b.clone());
        }
        Some(b)
    }

    fn keep(&mut self, cid: Cid, data: Bytes) {
        let total = self.lookahead_bytes.saturating_add(data.len());
        if total <= LOOKAHEAD_MAX && !self.lookahead.contains_key(&cid) {
            self.lookahead_bytes = total;
            self.lookahead.insert(cid, data);
        }
    }

    /// The current stream failed: its gateway's health hears of it and no new stream
    /// is asked of it in this request.
    fn fail_stream(&mut self, error: GatewayError) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        let g = &stream.gateway;
        tracing::info!(gateway = %g.name, address = %self.address, "IPFS stream left for another gateway: {error}");
        race::record(&self.storage.ipfs, g, &self.address, &error);
        if matches!(error, GatewayError::Lie(_)) {
            self.no_block.insert(g.name.clone());
        }
        self.no_stream.insert(g.name.clone());
        self.failures.push(Failure::new(g, error));
        self.skipped = 0;
    }

    /// Opens a stream for the current request at the first gateway (of those not yet
    /// failed here) to send a verified block. False when none could.
    async fn open(&mut self) -> bool {
        let storage = self.storage.clone();
        let pool = &storage.ipfs;
        let candidates = pool.order(std::time::Instant::now(), |g| {
            self.no_stream.contains(&g.name)
        });
        if candidates.is_empty() {
            return false;
        }
        let (shared, request) = (&*storage, &self.request);
        let result = race::race(
            pool,
            &storage.settings,
            candidates,
            &self.address,
            |g| async move {
                let mut stream = CarStream::open(shared, g, request).await?;
                // The first block decides the race, so it must be checked here.
                match stream.next().await? {
                    None => Err(GatewayError::Missing(format!(
                        "any block of {}",
                        request.root
                    ))),
                    Some((cid, data)) => {
                        address::verify(&cid, &data)
                            .map_err(|e| GatewayError::Lie(e.to_string()))?;
                        Ok((stream, (cid, data)))
                    }
                }
            },
        )
        .await;
        match result {
            Ok((_, (stream, first))) => {
                let gateway = stream.gateway.clone();
                self.stream = Some(stream);
                self.skipped = 0;
                // Checked in the race; kept like any block that arrives early.
                self.storage
                    .cache
                    .insert(Key::block(&first.0), first.1.clone());
                self.note(&gateway.name);
                self.keep(first.0, first.1);
                true
            }
            Err(failures) => {
                for f in failures {
                    // A gateway that does not have the content, or lied, or cannot be
                    // reached will not do better block by block; one that answered
                    // with something other than a CAR (or an HTTP error) may.
                    if !matches!(
                        f.error,
                        GatewayError::Malformed(_) | GatewayError::Status(_)
                    ) {
                        self.no_block.insert(f.gateway.clone());
                    }
                    self.no_stream.insert(f.gateway.clone());
                    self.failures.push(f);
                }
                false
            }
        }
    }

    /// The last resort: `cid` alone, raced as a raw block across the gateways that
    /// may still have it.
    async fn single(&mut self, cid: &Cid) -> Result<Bytes, StorageError> {
        let storage = self.storage.clone();
        let pool = &storage.ipfs;
        let candidates = pool.order(std::time::Instant::now(), |g| {
            self.no_block.contains(&g.name)
        });
        let shared = &*storage;
        let result = race::race(
            pool,
            &storage.settings,
            candidates,
            &self.address,
            |g| async move {
                let data = super::car::raw_block(shared, &g, cid).await?;
                address::verify(cid, &data).map_err(|e| GatewayError::Lie(e.to_string()))?;
                Ok(data)
            },
        )
        .await;
        match result {
            Ok((g, data)) => {
                self.storage.cache.insert(Key::block(cid), data.clone());
                self.note(&g.name);
                Ok(data)
            }
            Err(failures) => {
                for f in failures {
                    self.no_block.insert(f.gateway.clone());
                    self.failures.push(f);
                }
                Err(race::exhausted(
                    "ipfs",
                    &self.address,
                    std::mem::take(&mut self.failures),
                ))
            }
        }
    }
}
