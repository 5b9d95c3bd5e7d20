//! One trustless-gateway request: `GET /ipfs/{cid}[/path]?format=car` (blocks of a
//! path and the entity at its end, in depth-first order) or `?format=raw` (one block).
//! Reads a CAR stream section by section with `iroh-car`, a stall timeout on every
//! read. Checks no hash itself: `blocks` verifies each block it keeps.

use std::{io, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use cid::Cid;
use futures_util::{Stream, StreamExt};
use iroh_car::CarReader;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio_util::io::StreamReader;

use super::{Storage, fetch, gateways::Gateway, race::GatewayError};

pub const CAR: &str = "application/vnd.ipld.car";
pub const RAW: &str = "application/vnd.ipld.raw";
/// Blocks larger than this are refused (bitswap's limit is 2 MiB; iroh-car's 4 MiB).
pub const MAX_BLOCK: usize = 4 << 20;

/// Characters escaped in a path segment of the gateway URL: all but RFC 3986's
/// unreserved ones, so that no name can add a segment (`/`, and `\`, which URL parsers
/// take for `/`), a query or a fragment, or be changed by the URL library on the way.
/// (`.` and `..` names never get here: `address::parse_path` refuses them.)
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

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
    pub fn url_path(&self) -> String {
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
        let url = gateway.url(&req.url_path(), &query)?;
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
        CarStream::read(gateway, body, storage.settings.stall).await
    }

    /// Reads the CAR header at the start of `body`, `gateway`'s answer.
    async fn read(
        gateway: Arc<Gateway>,
        body: Body,
        stall: Duration,
    ) -> Result<CarStream, GatewayError> {
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
            stall,
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
    let url = gateway.url(&format!("/ipfs/{cid}"), &[("format", "raw")])?;
    let response = fetch::get(storage, &url, RAW, Some(RAW)).await?;
    fetch::read_limited(response, MAX_BLOCK, storage.settings.stall).await
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use multihash_codetable::{Code, MultihashDigest};
    use proptest::prelude::*;

    use super::*;
    use crate::{
        config,
        storage::{address, gateways::Pool},
    };

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    /// A CARv1 of `blocks`, rooted at the first.
    fn car(blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
        let roots = blocks.first().map(|b| vec![b.0]).unwrap_or_default();
        let header = iroh_car::CarHeader::new_v1(roots)
            .encode()
            .expect("a CAR header encodes");
        let mut out = Vec::new();
        varint(header.len() as u64, &mut out);
        out.extend_from_slice(&header);
        for (cid, data) in blocks {
            let c = cid.to_bytes();
            varint((c.len() + data.len()) as u64, &mut out);
            out.extend_from_slice(&c);
            out.extend_from_slice(data);
        }
        out
    }

    fn gateway() -> Arc<Gateway> {
        let g = config::StorageGateway {
            name: "g".into(),
            url: config::UpstreamUrl::parse("http://127.0.0.1:1").expect("test URL"),
            operator: "op".into(),
            cloud: None,
            region: None,
        };
        let pool = Pool::new("ipfs", &[g], &config::Storage::default());
        pool.gateways[0].clone()
    }

    /// What `Blocks` would keep of `bytes` (served in pieces of `piece` bytes): the
    /// blocks that verify against their CIDs, until the stream ends or breaks.
    fn accepted(bytes: Vec<u8>, piece: usize) -> Vec<(Cid, Bytes)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let pieces: Vec<io::Result<Bytes>> = bytes
                .chunks(piece.max(1))
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            let body: Body = Box::pin(futures_util::stream::iter(pieces));
            let Ok(mut stream) = CarStream::read(gateway(), body, Duration::from_secs(5)).await
            else {
                return Vec::new();
            };
            let mut out = Vec::new();
            while let Ok(Some((cid, data))) = stream.next().await {
                if address::verify(&cid, &data).is_ok() {
                    out.push((cid, data));
                }
            }
            out
        })
    }

    fn blocks() -> impl Strategy<Value = Vec<(Cid, Vec<u8>)>> {
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..300), any::<bool>()),
            1..6,
        )
        .prop_map(|datas| {
            datas
                .into_iter()
                .map(|(data, v0)| {
                    let hash = Code::Sha2_256.digest(&data);
                    let cid = if v0 {
                        Cid::new_v0(hash).expect("sha2-256 makes a CIDv0")
                    } else {
                        Cid::new_v1(address::RAW, hash)
                    };
                    (cid, data)
                })
                .collect()
        })
    }

    /// A change to a CAR: bytes flipped, cut off, or inserted.
    #[derive(Debug, Clone)]
    enum Change {
        Flip(prop::sample::Index, u8),
        Cut(prop::sample::Index),
        Insert(prop::sample::Index, Vec<u8>),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(i, x)| Change::Flip(i, x)),
            any::<prop::sample::Index>().prop_map(Change::Cut),
            (
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<u8>(), 1..16)
            )
                .prop_map(|(i, b)| Change::Insert(i, b)),
        ]
    }

    proptest! {
        #[test]
        fn an_honest_car_gives_every_block_in_order(blocks in blocks(), piece in 1usize..64) {
            let got = accepted(car(&blocks), piece);
            let want: Vec<(Cid, Bytes)> = blocks
                .into_iter()
                .map(|(c, d)| (c, Bytes::from(d)))
                .collect();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn a_changed_car_never_yields_a_block_that_is_not_the_original(
            blocks in blocks(),
            changes in prop::collection::vec(change(), 1..4),
            piece in 1usize..64,
        ) {
            let mut bytes = car(&blocks);
            for c in changes {
                match c {
                    Change::Flip(_, _) if bytes.is_empty() => {}
                    Change::Flip(i, x) => {
                        let i = i.index(bytes.len());
                        bytes[i] ^= x;
                    }
                    Change::Cut(_) if bytes.is_empty() => {}
                    Change::Cut(i) => bytes.truncate(i.index(bytes.len())),
                    Change::Insert(i, b) => {
                        let i = i.index(bytes.len() + 1);
                        bytes.splice(i..i, b);
                    }
                }
            }
            // By multihash: a flipped codec byte makes another CID with the same hash,
            // whose data (the original's) still verifies — and is never asked for under
            // the original CID.
            let originals: HashMap<Vec<u8>, Vec<u8>> = blocks
                .into_iter()
                .map(|(c, d)| (c.hash().to_bytes(), d))
                .collect();
            for (cid, data) in accepted(bytes, piece) {
                // A block that verifies is one of the CAR's own, byte for byte.
                prop_assert_eq!(
                    originals.get(&cid.hash().to_bytes()).map(Vec::as_slice),
                    Some(&data[..]),
                    "{}",
                    cid
                );
            }
        }
    }
}
