//! One trustless-gateway request: `GET /ipfs/{cid}[/path]?format=car` (blocks of a
//! path and the entity at its end, in depth-first order) or `?format=raw` (one block).
//! Reads a CAR stream section by section with `iroh-car`, a stall timeout on every
//! read. Checks no hash itself: `blocks` verifies each block it keeps.

use std::{io, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use cid::Cid;
use futures_util::{Stream, StreamExt};
use iroh_car::CarReader;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tokio_util::io::StreamReader;

use super::{Storage, fetch, gateways::Gateway, race::GatewayError};

pub const CAR: &str = "application/vnd.ipld.car";
pub const RAW: &str = "application/vnd.ipld.raw";
/// Blocks larger than this are refused (bitswap's limit is 2 MiB; iroh-car's 4 MiB).
pub const MAX_BLOCK: usize = 4 << 20;

/// Characters escaped in a path segment of the gateway URL.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// `entity-bytes=from:to`: the blocks needed for that byte range of a file. `from` may
/// be negative (counted from the end); `to` is inclusive, `None` is `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntityBytes {
    pub from: i64,
    pub to: Option<u64>,
}

/// What to ask gateways for: the blocks of `path` from `root` and of the entity at
/// its end (`dag-scope=entity`), limited to `bytes` of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarRequest {
    pub root: Cid,
    pub path: Vec<String>,
    pub bytes: Option<EntityBytes>,
}

impl CarRequest {
    fn url_path(&self) -> String {
        let mut p = format!("/ipfs/{}", self.root);
        for seg in &self.path {
            p.push('/');
            p.extend(utf8_percent_encode(seg, SEGMENT));
        }
        p
    }
}

type Body = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A gateway's CAR answer being read.
pub struct CarStream {
    pub gateway: Arc<Gateway>,
    reader: CarReader<StreamReader<Body, Bytes>>,
    stall: Duration,
}

impl CarStream {
    /// Sends the request and reads the CAR header; a 200 that is not a CAR (a gateway
    /// that is not trustless) is refused.
    pub async fn open(
        storage: &Storage,
        gateway: Arc<Gateway>,
        req: &CarRequest,
    ) -> Result<CarStream, GatewayError> {
        let bytes;
        // `entity`: the blocks of the path, then of the file (the minimum for a
        // range), or a directory's own blocks (all its HAMT shards).
        let mut query = vec![("format", "car"), ("dag-scope", "entity")];
        if let Some(b) = req.bytes {
            bytes = match b.to {
                Some(to) => format!("{}:{to}", b.from),
                None => format!("{}:*", b.from),
            };
            query.push(("entity-bytes", &bytes));
        }
        let url = gateway.url(&req.url_path(), &query);
        let response = fetch::get(
            storage,
            &url,
            "application/vnd.ipld.car; version=1; order=dfs; dups=y",
            Some(CAR),
        )
        .await?;
        let body: Body = Box::pin(response.bytes_stream().map(|r| {
            r.map_err(|e| io::Error::other(GatewayError::from_reqwest(&e, Duration::ZERO)))
        }));
        let reader = CarReader::new(StreamReader::new(body))
            .await
            .map_err(|e| GatewayError::Malformed(format!("not a CAR stream: {e}")))?;
        if reader.header().version() != 1 {
            return Err(GatewayError::Malformed(format!(
                "CAR version {} (asked for 1)",
                reader.header().version()
            )));
        }
        Ok(CarStream {
            gateway,
            reader,
            stall: storage.settings.stall,
        })
    }

    /// The next section, its hash unchecked; `None` at the CAR's end.
    pub async fn next(&mut self) -> Result<Option<(Cid, Bytes)>, GatewayError> {
        match tokio::time::timeout(self.stall, self.reader.next_block()).await {
            Err(_) => Err(GatewayError::Stalled(self.stall)),
            Ok(Err(e)) => Err(GatewayError::Body(e.to_string())),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some((cid, data)))) => Ok(Some((cid, Bytes::from(data)))),
        }
    }
}

/// `GET /ipfs/{cid}?format=raw`: one block, its hash unchecked.
pub async fn raw_block(
    storage: &Storage,
    gateway: &Gateway,
    cid: &Cid,
) -> Result<Bytes, GatewayError> {
    let url = gateway.url(&format!("/ipfs/{cid}"), &[("format", "raw")]);
    let response = fetch::get(storage, &url, RAW, Some(RAW)).await?;
    fetch::read_limited(response, MAX_BLOCK, storage.settings.stall).await
}
