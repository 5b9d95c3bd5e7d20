//! Content addresses: a CID and the path below it parsed from a URL (with the problem
//! named when they are not valid), and a block checked against the CID it was asked
//! for. Pure; no I/O.
//!
//! A path only ever goes down from its CID: `.`, `..` and empty segments are refused
//! here, in every spelling (`%2e%2e` too), so that nothing a client writes can make a
//! gateway URL climb out of the gateway's configured path prefix.

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
/// The shortest digest a block is checked against. Multihash allows truncated digests,
/// down to none: against a few bytes, or none, any data "verifies", so a gateway could
/// serve anything for such a CID. 20 bytes is SHA-1's length and RIPEMD-160's.
const MIN_DIGEST: usize = 20;
/// Characters of a refused path echoed back in its error.
const SHOWN: usize = 200;

/// `/ipfs/{cid}[/path]` as the client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentPath {
    pub root: Cid,
    /// Names to follow from the root, percent-decoded: none is empty, `.` or `..`, or
    /// holds a `/`.
    pub segments: Vec<String>,
    /// The path ended with `/` (directories are served only so).
    pub trailing_slash: bool,
}

/// Parses what follows `/ipfs/` in a URL path, still percent-encoded as sent. Refuses
/// (`BadPath`, a 400) `.`, `..` and empty segments, decoded or not, and names holding an
/// encoded `/`: none can name a UnixFS entry, and a gateway (or the URL library) would
/// read them as steps up or across the gateway's own path.
pub fn parse_path(raw: &str) -> Result<ContentPath, StorageError> {
    let bad = |why: String| StorageError::BadPath {
        path: shown("/ipfs/", raw),
        why,
    };
    let mut parts = raw.split('/');
    let first = parts.next().unwrap_or_default();
    let root = parse(&decode(first).map_err(|why| StorageError::BadCid {
        input: first.to_owned(),
        why,
    })?)?;
    let mut rest: Vec<&str> = parts.collect();
    // One empty segment at the end is the trailing `/`, not a name.
    let trailing_slash = rest.last() == Some(&"");
    if trailing_slash {
        rest.pop();
    }
    let mut segments = Vec::with_capacity(rest.len());
    for (i, seg) in rest.into_iter().enumerate() {
        segments.push(segment(i + 1, seg).map_err(bad)?);
    }
    Ok(ContentPath {
        root,
        segments,
        trailing_slash,
    })
}

/// Path segment `n` (counted from 1) as sent: the name it stands for, percent-decoded,
/// or why it is refused (empty, `.` or `..` in any spelling, an encoded `/`, not UTF-8).
pub fn segment(n: usize, raw: &str) -> Result<String, String> {
    if raw.is_empty() {
        return Err(format!(
            "segment {n} is empty (`//`); empty segments are refused"
        ));
    }
    let name = decode(raw).map_err(|why| format!("segment {n}: {why}"))?;
    if name == "." || name == ".." {
        return Err(format!(
            "segment {n} is `{name}`; `.` and `..` segments are refused (a content path only names what is below its address)"
        ));
    }
    if name.contains('/') {
        return Err(format!(
            "segment {n} decodes to a name holding `/`, which no UnixFS entry has"
        ));
    }
    Ok(name)
}

/// A path segment, percent-decoded; it must be UTF-8 (UnixFS names are).
fn decode(segment: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "not UTF-8 once percent-decoded".to_owned())
}

/// `{prefix}{raw}`, cut to `SHOWN` characters, for an error.
pub fn shown(prefix: &str, raw: &str) -> String {
    let mut s = format!("{prefix}{raw}");
    if let Some((cut, _)) = s.char_indices().nth(SHOWN) {
        s.truncate(cut);
        s.push('…');
    }
    s
}

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
    } else if cid.hash().digest().len() < MIN_DIGEST {
        return Err(format!(
            "its digest is truncated to {} bytes: too short to check a block against (at least {MIN_DIGEST})",
            cid.hash().digest().len()
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
            // Truncated digests (a shorter size than the function's) compare the prefix,
            // when there is enough of it to mean anything.
            Ok(code) if hash.digest().len() >= MIN_DIGEST => {
                let got = code.digest(data);
                got.digest().get(..hash.digest().len()) == Some(hash.digest())
            }
            Ok(_) => false,
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
    fn paths_only_go_down_from_their_cid() {
        let v1 = "bafkreig7cqc2rv6nkjdbkrrvr4ckohvsvzlghntk7cvlqr6tajke4tgqve";
        let ok = |raw: &str, segments: &[&str], trailing: bool| {
            let p = parse_path(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(p.root.to_string(), v1, "{raw}");
            assert_eq!(p.segments, segments, "{raw}");
            assert_eq!(p.trailing_slash, trailing, "{raw}");
        };
        ok(v1, &[], false);
        ok(&format!("{v1}/"), &[], true);
        ok(&format!("{v1}/a%20b/c.txt"), &["a b", "c.txt"], false);
        ok(&format!("{v1}/.../%252e%252e/"), &["...", "%2e%2e"], true);
        let refused = |raw: &str, says: &str| match parse_path(raw) {
            Err(e @ StorageError::BadPath { .. }) => {
                let e = e.to_string();
                assert!(e.contains(says), "{raw}: {e}");
            }
            other => panic!("{raw}: {other:?}"),
        };
        for dots in ["..", "%2e%2e", "%2E.", ".%2e", "."] {
            refused(
                &format!("{v1}/{dots}/../../../admin/x"),
                "segments are refused",
            );
            refused(&format!("{v1}/a/{dots}"), "segment 2 is `");
        }
        refused(&format!("{v1}//a"), "segment 1 is empty (`//`)");
        refused(&format!("{v1}/a//"), "segment 2 is empty");
        refused(&format!("{v1}/a%2Fb"), "holding `/`");
        refused(&format!("{v1}/a%2f..%2fb"), "holding `/`");
        refused(&format!("{v1}/%ff"), "not UTF-8");
        assert!(matches!(parse_path(""), Err(StorageError::BadCid { .. })));
        assert!(matches!(
            parse_path("../x"),
            Err(StorageError::BadCid { .. })
        ));
        let long = format!("{v1}/{}", "../".repeat(1000));
        let e = parse_path(&long).unwrap_err().to_string();
        assert!(e.len() < 600, "the echo is cut short: {} bytes", e.len());
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

    mod properties {
        use cid::Cid;
        use multihash_codetable::{Code, MultihashDigest};
        use proptest::prelude::*;

        use super::super::*;

        fn cid_of(data: &[u8], dag_pb: bool) -> Cid {
            let hash = Code::Sha2_256.digest(data);
            if dag_pb {
                Cid::new_v0(hash).expect("sha2-256 makes a CIDv0")
            } else {
                Cid::new_v1(RAW, hash)
            }
        }

        /// A name a UnixFS directory may hold: anything but `.`, `..`, empty or `/`.
        fn name() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z0-9._~ %?#\\\\-]{1,12}",
                any::<String>(),
                Just("...".to_owned()),
            ]
            .prop_filter("a UnixFS name", |n| {
                !n.is_empty() && n != "." && n != ".." && !n.contains('/')
            })
        }

        /// How a client might spell a name in a URL: escaped as little or as much as it
        /// likes (a `%` always is, or it would read as an escape).
        fn spell(name: &str, all: bool) -> String {
            use percent_encoding::{AsciiSet, CONTROLS, NON_ALPHANUMERIC, utf8_percent_encode};
            const LITTLE: &AsciiSet = &CONTROLS.add(b'%').add(b'/').add(b'?').add(b'#');
            let set = if all { NON_ALPHANUMERIC } else { LITTLE };
            utf8_percent_encode(name, set).to_string()
        }

        /// `.` or `..` as a client might hide it.
        fn dots() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                ".", "..", "%2e", "%2E", "%2e%2e", ".%2E", "%2E.", "%2e%2E",
            ])
            .prop_map(str::to_owned)
        }

        proptest! {
            #[test]
            fn any_input_parses_or_is_refused_without_panicking(raw in any::<String>()) {
                let _ = parse(&raw);
                if let Ok(p) = parse_path(&raw) {
                    for s in &p.segments {
                        prop_assert!(!s.is_empty() && s != "." && s != ".." && !s.contains('/'), "{raw:?}: {s:?}");
                    }
                }
            }

            #[test]
            fn cids_round_trip(data in prop::collection::vec(any::<u8>(), 0..64), dag_pb in any::<bool>()) {
                let cid = cid_of(&data, dag_pb);
                prop_assert_eq!(parse(&cid.to_string()).ok(), Some(cid));
                prop_assert_eq!(verify(&cid, &data), Ok(()));
            }

            #[test]
            fn names_come_back_exactly_however_they_are_escaped(
                names in prop::collection::vec(name(), 0..5),
                all in any::<bool>(),
                trailing in any::<bool>(),
            ) {
                let cid = cid_of(b"root", true);
                let mut raw = cid.to_string();
                for n in &names {
                    raw.push('/');
                    raw.push_str(&spell(n, all));
                }
                if trailing {
                    raw.push('/');
                }
                let p = parse_path(&raw).map_err(|e| TestCaseError::fail(format!("{raw}: {e}")))?;
                prop_assert_eq!(p.root, cid);
                prop_assert_eq!(p.segments, names);
                prop_assert_eq!(p.trailing_slash, trailing);
            }

            #[test]
            fn a_dot_or_empty_segment_anywhere_is_refused(
                before in prop::collection::vec(name(), 0..3),
                after in prop::collection::vec(name(), 0..3),
                bad in prop_oneof![dots(), Just(String::new())],
                trailing in any::<bool>(),
            ) {
                let mut raw = cid_of(b"root", false).to_string();
                for n in &before {
                    raw.push('/');
                    raw.push_str(&spell(n, false));
                }
                raw.push('/');
                raw.push_str(&bad);
                for n in &after {
                    raw.push('/');
                    raw.push_str(&spell(n, false));
                }
                // An empty segment at the very end is a trailing slash: make it a `//`.
                if trailing || (bad.is_empty() && after.is_empty()) {
                    raw.push('/');
                }
                let refused = matches!(parse_path(&raw), Err(StorageError::BadPath { .. }));
                prop_assert!(refused, "{raw}");
            }

            #[test]
            fn a_changed_block_never_matches_its_cid(
                data in prop::collection::vec(any::<u8>(), 1..512),
                at in any::<prop::sample::Index>(),
                flip in 1u8..=255,
                dag_pb in any::<bool>(),
            ) {
                let cid = cid_of(&data, dag_pb);
                let mut changed = data.clone();
                changed[at.index(data.len())] ^= flip;
                prop_assert!(verify(&cid, &changed).is_err());
                prop_assert!(verify(&cid, &data[..data.len() - 1]).is_err());
                let mut longer = data.clone();
                longer.push(0);
                prop_assert!(verify(&cid, &longer).is_err());
            }
        }
    }

    #[test]
    fn a_truncated_digest_too_short_to_mean_anything_is_refused() {
        let data = b"any data at all";
        let full = Code::Sha2_256.digest(data);
        let cut = |n: usize| {
            let hash = cid::multihash::Multihash::<64>::wrap(full.code(), &full.digest()[..n])
                .expect("a digest");
            Cid::new_v1(RAW, hash)
        };
        for n in [0, 4, MIN_DIGEST - 1] {
            let short = cut(n);
            assert!(
                verify(&short, b"something else entirely").is_err(),
                "{n} bytes"
            );
            assert!(verify(&short, data).is_err(), "{n} bytes prove nothing");
            assert!(
                matches!(
                    parse(&short.to_string()),
                    Err(StorageError::Unsupported { .. })
                ),
                "{n} bytes"
            );
        }
        // Long enough: checked over what there is.
        let enough = cut(MIN_DIGEST);
        assert!(verify(&enough, data).is_ok());
        assert!(verify(&enough, b"something else entirely").is_err());
        assert!(parse(&enough.to_string()).is_ok());
    }
}
