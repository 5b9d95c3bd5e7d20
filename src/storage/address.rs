//! Content addresses: a CID parsed from a URL (with the problem named when it is not
//! one), and a block checked against the CID it was asked for. Pure; no I/O.

use bytes::Bytes;
use cid::{Cid, multibase};
use multihash_codetable::{Code, MultihashDigest};

use super::StorageError;

/// The codecs UnixFS is made of.
pub const RAW: u64 = 0x55;
pub const DAG_PB: u64 = 0x70;
/// A multihash whose digest *is* the content (tiny blocks inlined in the CID).
const IDENTITY: u64 = 0x00;
/// Inlined content larger than this is refused (the spec's limit for identity CIDs).
const MAX_IDENTITY: usize = 128;

/// Parses the first segment of `/ipfs/{cid}`: CIDv0 (`Qm…`) or CIDv1 in any multibase,
/// whose codec is raw or dag-pb and whose hash Outlast can check.
pub fn parse(input: &str) -> Result<Cid, StorageError> {
    let bad = |why: String| StorageError::BadCid {
        input: input.to_owned(),
        why,
    };
    if input.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let cid = if input.starts_with("Qm") {
        if input.len() != 46 {
            return Err(bad(format!(
                "a CIDv0 is 46 base58 characters starting with `Qm`; this has {}",
                input.len()
            )));
        }
        Cid::try_from(input).map_err(|e| bad(format!("not valid base58btc: {e}")))?
    } else {
        let (_, bytes) = multibase::decode(input).map_err(|e| {
            bad(format!(
                "not a multibase string ({e}); a CIDv1 usually starts with `bafy` or `bafk`"
            ))
        })?;
        let cid = Cid::read_bytes(bytes.as_slice()).map_err(|e| bad(format!("{e}")))?;
        if cid.to_bytes().len() != bytes.len() {
            return Err(bad(format!(
                "{} bytes follow the CID",
                bytes.len() - cid.to_bytes().len()
            )));
        }
        cid
    };
    check_supported(&cid).map_err(|why| StorageError::Unsupported {
        address: input.to_owned(),
        why,
    })?;
    Ok(cid)
}

/// Why Outlast cannot serve `cid` (codec or hash), if it cannot.
pub fn check_supported(cid: &Cid) -> Result<(), String> {
    match cid.codec() {
        RAW | DAG_PB => {}
        other => {
            return Err(format!(
                "codec {} is not supported: Outlast serves UnixFS files and directories (dag-pb) and raw blocks",
                codec_name(other)
            ));
        }
    }
    let code = cid.hash().code();
    if code == IDENTITY {
        if cid.hash().digest().len() > MAX_IDENTITY {
            return Err(format!(
                "an identity CID may inline at most {MAX_IDENTITY} bytes"
            ));
        }
    } else if Code::try_from(code).is_err() {
        return Err(format!(
            "hash function 0x{code:x} is not supported, so its blocks could not be checked"
        ));
    }
    Ok(())
}

fn codec_name(code: u64) -> String {
    match code {
        0x71 => "dag-cbor (0x71)".into(),
        0x0129 => "dag-json (0x129)".into(),
        0x0200 => "json (0x200)".into(),
        0x51 => "cbor (0x51)".into(),
        0x78 => "git-raw (0x78)".into(),
        other => format!("0x{other:x}"),
    }
}

/// The content of an identity CID, which needs no gateway.
pub fn inlined(cid: &Cid) -> Option<Bytes> {
    (cid.hash().code() == IDENTITY).then(|| Bytes::copy_from_slice(cid.hash().digest()))
}

/// A block whose hash is not its CID's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block {cid} does not match its address")]
pub struct Mismatch {
    pub cid: String,
}

/// Checks `data` against `cid`: the same hash function over `data` must give the CID's
/// digest. The only way a block is accepted from a gateway.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), Mismatch> {
    let hash = cid.hash();
    let ok = if hash.code() == IDENTITY {
        hash.digest() == data
    } else {
        match Code::try_from(hash.code()) {
            Ok(code) => {
                let got = code.digest(data);
                // Truncated digests (a shorter size than the function's) compare the prefix.
                got.digest().get(..hash.size() as usize) == Some(hash.digest())
            }
            Err(_) => false,
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Mismatch {
            cid: cid.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<&str, &str>) {
        match (parse(input), expected) {
            (Ok(cid), Ok(want)) => assert_eq!(cid.to_string(), want, "{input}"),
            (Err(e), Err(want)) => {
                let got = e.to_string();
                assert!(got.contains(want), "{input}: {got:?} lacks {want:?}");
            }
            (got, want) => panic!("{input}: got {got:?}, wanted {want:?}"),
        }
    }

    #[test]
    fn cids_parse_or_name_the_problem() {
        let v1 = "bafkreig7cqc2rv6nkjdbkrrvr4ckohvsvzlghntk7cvlqr6tajke4tgqve";
        check(v1, Ok(v1));
        let v0 = "QmTmM153B6tcB9DErUpxE2EiocWnbf5cyyJdDEfsjtpYKS";
        check(v0, Ok(v0));
        // Uppercase base32 (multibase `B`) is the same CID.
        check(&v1.to_uppercase(), Ok(v1));
        check("", Err("empty"));
        check("notacid", Err("not a multibase string"));
        check("QmTmM153B6tcB9DErUpxE2Eioc", Err("46 base58 characters"));
        check(&v1[..30], Err("is not a CID"));
        check("bafkqaaa", Ok("bafkqaaa"));
        // dag-cbor: parsed, but not something Outlast can serve.
        check(
            "bafyreigtbfsabdvubh7ttftaubfrtb2c6hedsdskbwqexbwh4vqujhnav4",
            Err("dag-cbor"),
        );
    }

    #[test]
    fn blocks_must_hash_to_their_cid() {
        let cid = parse("bafkreig7cqc2rv6nkjdbkrrvr4ckohvsvzlghntk7cvlqr6tajke4tgqve").unwrap();
        assert_eq!(verify(&cid, b"hello outlast\n"), Ok(()));
        assert!(verify(&cid, b"hello outlasT\n").is_err());
        let empty = parse("bafkqaaa").unwrap();
        assert_eq!(inlined(&empty).as_deref(), Some(&b""[..]));
        assert_eq!(verify(&empty, b""), Ok(()));
    }
}
