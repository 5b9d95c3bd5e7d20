//! `/ipfs/{cid}[/path]` as UnixFS: the path resolved through directories (HAMT shards
//! too) one verified block at a time, then the file walked in order with
//! `rust-unixfs` — a range only touches the blocks it needs — or the directory shown
//! (its `index.html`, else a listing). Bytes come only from `blocks`, so only verified
//! bytes are ever returned.

use std::{collections::HashSet, sync::Arc};

use bytes::Bytes;
use cid::Cid;
use rust_unixfs::{
    MaybeResolved, ResolveError,
    dir::NodeDescription,
    file::visit::{Cache as WalkCache, FileVisit, IdleFileVisit},
};

use super::{
    Storage, StorageError, address,
    blocks::{Blocks, nothing_later},
    car::{CarRequest, EntityBytes},
    range::ByteRange,
};

/// Characters escaped in a listing's relative links (a path segment, safe in HTML).
const HREF: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'\'')
    .add(b'/')
    .add(b':')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Entries listed for one directory at most.
const MAX_LISTING: usize = 10_000;
/// Blocks of a file walked in a row without a byte of content. A real DAG has at most
/// its depth of them between two leaves; more is a DAG made to keep Outlast walking
/// (one empty subtree linked over and over costs its author a few blocks).
const MAX_EMPTY_STEPS: usize = 4096;
/// HAMT shards fetched to find one name: a real lookup takes one per level, and a
/// 256-way shard tree over a 64-bit hash has at most 8.
const MAX_LOOKUP_SHARDS: usize = 256;
/// HAMT shards fetched for one listing.
const MAX_LISTING_SHARDS: usize = 10_000;

/// What the client asked for.
#[derive(Debug, Clone)]
pub struct Request {
    pub root: Cid,
    /// Path segments, percent-decoded.
    pub path: Vec<String>,
    /// The URL path ended with `/` (directories are served only so, as gateways do,
    /// so that relative links in an `index.html` work).
    pub trailing_slash: bool,
    pub range: Option<ByteRange>,
    /// The client's `If-None-Match`.
    pub if_none_match: Option<String>,
}

impl Request {
    /// `/ipfs/{root}/{path}` as the client wrote it (decoded).
    pub fn address(&self) -> String {
        let mut s = format!("/ipfs/{}", self.root);
        for seg in &self.path {
            s.push('/');
            s.push_str(seg);
        }
        s
    }
}

pub enum Answer {
    File(Box<File>),
    Listing {
        target: Cid,
        html: String,
        sources: Vec<Arc<str>>,
    },
    /// A directory asked for without the trailing `/`.
    Redirect,
    NotModified {
        target: Cid,
    },
}

/// A file (or a range of it) ready to stream: its first verified piece in hand (so
/// that failures before any byte get a proper status), the rest to come from `rest`.
pub struct File {
    pub target: Cid,
    /// Name to guess the type from: the last path segment (or `index.html`).
    pub name: Option<String>,
    pub size: u64,
    /// `[start, end)` served.
    pub span: (u64, u64),
    pub ranged: bool,
    pub first: Bytes,
    pub rest: Option<Walk>,
    pub sources: Vec<Arc<str>>,
}

/// The rest of a file's walk, run by the response body.
pub struct Walk {
    blocks: Blocks,
    visit: Option<FileVisit>,
    cache: Option<WalkCache>,
    target: Cid,
    /// The next byte to send, and the end (exclusive).
    offset: u64,
    end: u64,
    /// Blocks walked since the last byte of content (`MAX_EMPTY_STEPS`).
    empty_steps: usize,
}

pub async fn get(storage: &Arc<Storage>, req: Request) -> Result<Answer, StorageError> {
    let address = req.address();
    let bytes = req.range.map(|r| {
        let (from, to) = r.entity_bytes();
        EntityBytes { from, to }
    });
    let mut blocks = Blocks::new(
        storage.clone(),
        CarRequest {
            root: req.root,
            path: req.path.clone(),
            bytes,
        },
        address.clone(),
    );
    let target = resolve(&mut blocks, req.root, &req.path).await?;
    if etag_matches(req.if_none_match.as_deref(), &target) {
        return Ok(Answer::NotModified { target });
    }
    // From here on, a stream that has to be resumed asks for the target itself.
    blocks.resume_with(CarRequest {
        root: target,
        path: Vec::new(),
        bytes,
    });
    let block = blocks.get(&target, &nothing_later).await?;
    let name = req.path.last().cloned();
    match describe(&target, &block, &address)? {
        Node::File => file(blocks, target, block, name, req.range, &address).await,
        Node::Directory { hamt } => {
            if !req.trailing_slash {
                return Ok(Answer::Redirect);
            }
            match step(&mut blocks, &block, "index.html", &address).await? {
                Some(index) => {
                    blocks.switch_to(CarRequest {
                        root: index,
                        path: Vec::new(),
                        bytes,
                    });
                    let block = blocks.get(&index, &nothing_later).await?;
                    match describe(&index, &block, &address)? {
                        Node::File => {
                            let name = Some("index.html".to_owned());
                            file(blocks, index, block, name, req.range, &address).await
                        }
                        Node::Directory { .. } => {
                            listing(blocks, target, block, hamt, &address).await
                        }
                    }
                }
                None => listing(blocks, target, block, hamt, &address).await,
            }
        }
    }
}

/// `If-None-Match` names this content (ETags are `"{cid}"`).
fn etag_matches(header: Option<&str>, target: &Cid) -> bool {
    let Some(header) = header else { return false };
    let tag = format!("\"{target}\"");
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == tag)
}

/// Follows `path` from `root`, one verified block per step.
async fn resolve(blocks: &mut Blocks, root: Cid, path: &[String]) -> Result<Cid, StorageError> {
    let mut cur = root;
    let mut within = format!("/ipfs/{root}");
    for seg in path {
        if cur.codec() == address::RAW {
            return Err(no_such(&within, seg, "a file"));
        }
        let block = match blocks.get(&cur, &nothing_later).await {
            Ok(b) => b,
            // No gateway could follow the path (a gateway's "not found" proves nothing):
            // fetch this directory alone and look for the name here.
            Err(StorageError::NotFound { .. }) if blocks.following_path() => {
                blocks.switch_to(CarRequest {
                    root: cur,
                    path: Vec::new(),
                    bytes: None,
                });
                blocks.get(&cur, &nothing_later).await?
            }
            Err(e) => return Err(e),
        };
        match step(blocks, &block, seg, &within).await? {
            Some(next) => cur = next,
            None => return Err(no_such(&within, seg, "the directory")),
        }
        within.push('/');
        within.push_str(seg);
    }
    Ok(cur)
}

fn no_such(within: &str, name: &str, what: &str) -> StorageError {
    StorageError::NoSuchPath {
        address: within.to_owned(),
        name: name.to_owned(),
        within: format!("{what} at {within}"),
    }
}

fn malformed(address: &str, what: &'static str, why: impl std::fmt::Display) -> StorageError {
    StorageError::Malformed {
        address: address.to_owned(),
        what,
        why: why.to_string(),
    }
}

/// `name` in the directory `block`: its CID, `None` when absent. A block that is a
/// file gives `NoSuchPath`.
async fn step(
    blocks: &mut Blocks,
    block: &[u8],
    name: &str,
    address: &str,
) -> Result<Option<Cid>, StorageError> {
    let mut cache = None;
    // Errors boxed: rust-unixfs's are some 200 bytes.
    let mut lookup = match unixfs(address, "UnixFS directory", || {
        rust_unixfs::resolve(block, name, &mut cache).map_err(Box::new)
    })? {
        Ok(MaybeResolved::Found(cid)) => return Ok(Some(cid)),
        Ok(MaybeResolved::NotFound) => return Ok(None),
        Ok(MaybeResolved::NeedToLoadMore(lookup)) => lookup,
        Err(e) => match *e {
            ResolveError::UnexpectedType(t) if !t.is_directory() => {
                return Err(no_such(address, name, "a file"));
            }
            e => return Err(malformed(address, "UnixFS directory", e)),
        },
    };
    // A HAMT-sharded directory: follow the shards towards the name's bucket.
    for _ in 0..MAX_LOOKUP_SHARDS {
        let next = unixfs(address, "HAMT shard", || *lookup.pending_links().0)?;
        let shard = {
            let pending = &lookup;
            let later = |c: &Cid| pending.pending_links().1.any(|p| p == c);
            blocks.get(&next, &later).await?
        };
        let walked = unixfs(address, "HAMT shard", || {
            lookup.continue_walk(&shard, &mut cache).map_err(Box::new)
        })?;
        match walked {
            Ok(MaybeResolved::Found(cid)) => return Ok(Some(cid)),
            Ok(MaybeResolved::NotFound) => return Ok(None),
            Ok(MaybeResolved::NeedToLoadMore(more)) => lookup = more,
            Err(e) => return Err(malformed(address, "HAMT shard", e)),
        }
    }
    Err(malformed(
        address,
        "HAMT directory",
        format!("`{name}` not reached within {MAX_LOOKUP_SHARDS} shards"),
    ))
}

enum Node {
    File,
    Directory { hamt: bool },
}

fn describe(cid: &Cid, block: &[u8], address: &str) -> Result<Node, StorageError> {
    if cid.codec() == address::RAW {
        return Ok(Node::File);
    }
    match unixfs(address, "UnixFS", || rust_unixfs::dir::describe(block))? {
        NodeDescription::File { .. } => Ok(Node::File),
        NodeDescription::Directory { .. } => Ok(Node::Directory { hamt: false }),
        NodeDescription::HamtShard { .. } => Ok(Node::Directory { hamt: true }),
        NodeDescription::Symlink => Err(StorageError::Unsupported {
            address: address.to_owned(),
            why: "it is a UnixFS symlink, which a gateway cannot follow".into(),
        }),
        NodeDescription::Other => Err(malformed(
            address,
            "UnixFS",
            "the block is neither a file nor a directory",
        )),
    }
}

async fn file(
    blocks: Blocks,
    target: Cid,
    block: Bytes,
    name: Option<String>,
    range: Option<ByteRange>,
    address: &str,
) -> Result<Answer, StorageError> {
    let raw = target.codec() == address::RAW;
    let size = if raw {
        block.len() as u64
    } else {
        let (_, size, _, _) = file_step(address, || IdleFileVisit::default().start(&block))?;
        size
    };
    let (start, end) = match range {
        Some(r) => r.resolve(size)?,
        None => (0, size),
    };
    let mut walk = Walk {
        blocks,
        visit: None,
        cache: None,
        target,
        offset: start,
        end,
        empty_steps: 0,
    };
    let first = if raw {
        walk.offset = end;
        // `resolve` keeps start < end <= size.
        block.slice(start as usize..end as usize)
    } else {
        let (content, _, _, visit) = file_step(address, || {
            IdleFileVisit::default()
                .with_target_range(start..end)
                .start(&block)
        })?;
        // `resolve` keeps start < end.
        let wanted = usize::try_from(end - start).unwrap_or(usize::MAX);
        let content = &content[..content.len().min(wanted)];
        let piece = block.slice_ref(content);
        walk.visit = visit;
        walk.advance(piece.len());
        if piece.is_empty() {
            // Make sure the first bytes are in hand before the status line goes out.
            walk.next().await?.unwrap_or_default()
        } else {
            piece
        }
    };
    let sources = walk.blocks.sources().to_vec();
    let rest = (walk.offset < walk.end).then_some(walk);
    Ok(Answer::File(Box::new(File {
        target,
        name,
        size,
        span: (start, end),
        ranged: range.is_some(),
        first,
        rest,
        sources,
    })))
}

/// Runs `rust-unixfs` (and the `quick-protobuf` under it) over a block whose bytes its
/// author chose. Both add and subtract lengths and sizes read from the block without
/// checks (e.g. `BytesReader::read_unknown`, `RangeLinks` in rust-unixfs's `pb.rs`):
/// where overflow checks are on (debug builds) hostile bytes panic there; release builds
/// wrap, and their bounds-checked reads and the walk's own byte count still hold. Such a
/// panic is the block's fault, so it becomes `Malformed`, never a dropped connection.
fn unixfs<T>(
    address: &str,
    what: &'static str,
    step: impl FnOnce() -> T,
) -> Result<T, StorageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step))
        .map_err(|_| malformed(address, what, "lengths or sizes that do not add up"))
}

/// A step of a file's walk: `unixfs`, its own errors made `Malformed` too.
fn file_step<T, E: std::fmt::Display>(
    address: &str,
    step: impl FnOnce() -> Result<T, E>,
) -> Result<T, StorageError> {
    unixfs(address, "UnixFS file", step)?.map_err(|e| malformed(address, "UnixFS file", e))
}

impl Walk {
    fn advance(&mut self, sent: usize) {
        self.offset = self.offset.saturating_add(sent as u64);
        self.empty_steps = 0;
        let to = self.end.checked_sub(1);
        self.blocks.resume_with(CarRequest {
            root: self.target,
            path: Vec::new(),
            bytes: Some(EntityBytes {
                from: i64::try_from(self.offset).unwrap_or(i64::MAX),
                to,
            }),
        });
    }

    /// The next verified piece of the file; `None` at the end of the range asked for.
    /// A DAG that holds fewer bytes than its root promised is an error, so a client
    /// never takes a short file for a whole one; what it holds beyond is not walked.
    pub async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        let address = || format!("/ipfs/{}", self.target);
        loop {
            if self.offset >= self.end {
                self.visit = None;
                return Ok(None);
            }
            let Some(visit) = self.visit.take() else {
                return Err(malformed(
                    &address(),
                    "UnixFS file",
                    format!(
                        "its blocks end at byte {} of {} promised",
                        self.offset, self.end
                    ),
                ));
            };
            self.empty_steps += 1;
            if self.empty_steps > MAX_EMPTY_STEPS {
                return Err(malformed(
                    &address(),
                    "UnixFS file",
                    format!("{MAX_EMPTY_STEPS} blocks in a row without a byte of content"),
                ));
            }
            // Blocks from the cache come without a wait: a long walk still gives the
            // scheduler its turn, and so notices a client that left.
            tokio::task::coop::consume_budget().await;
            // rust-unixfs may hand back a visit with no link left (when the sizes a
            // block claims put its links outside the range), on which this panics.
            let next = unixfs(&address(), "UnixFS file", || *visit.pending_links().0)?;
            let block = {
                let pending = &visit;
                let later = |c: &Cid| pending.pending_links().1.any(|p| p == c);
                self.blocks.get(&next, &later).await?
            };
            let cache = &mut self.cache;
            let (content, visit) = file_step(&address(), || visit.continue_walk(&block, cache))?;
            self.visit = visit;
            // `offset < end` was checked above.
            let left = usize::try_from(self.end - self.offset).unwrap_or(usize::MAX);
            let content = &content[..content.len().min(left)];
            if !content.is_empty() {
                let piece = block.slice_ref(content);
                self.advance(piece.len());
                return Ok(Some(piece));
            }
        }
    }
}

/// The first bytes of a file, to guess its type when the client asked for a range
/// that starts later.
pub async fn prefix(storage: &Arc<Storage>, target: Cid, n: u64) -> Result<Bytes, StorageError> {
    let address = format!("/ipfs/{target}");
    let mut blocks = Blocks::new(
        storage.clone(),
        CarRequest {
            root: target,
            path: Vec::new(),
            bytes: Some(EntityBytes {
                from: 0,
                to: Some(n.saturating_sub(1)),
            }),
        },
        address.clone(),
    );
    let block = blocks.get(&target, &nothing_later).await?;
    match file(
        blocks,
        target,
        block,
        None,
        Some(ByteRange::From(0, Some(n.saturating_sub(1)))),
        &address,
    )
    .await
    {
        Ok(Answer::File(f)) => Ok(f.first),
        Ok(_) => Ok(Bytes::new()),
        Err(StorageError::RangeNotSatisfiable { .. }) => Ok(Bytes::new()),
        Err(e) => Err(e),
    }
}

/// An HTML listing of a directory's verified links (all shards of a HAMT).
async fn listing(
    mut blocks: Blocks,
    target: Cid,
    block: Bytes,
    hamt: bool,
    address: &str,
) -> Result<Answer, StorageError> {
    let mut entries: Vec<(String, Cid, u64)> = Vec::new();
    if hamt {
        // Shards depth-first, in link order: the order a gateway streams them.
        let mut shard = Some(block);
        let mut stack: Vec<Cid> = Vec::new();
        // A shard linked twice is listed once: a DAG of shards each linking the next
        // many times would otherwise be walked exponentially often.
        let mut seen: HashSet<Cid> = HashSet::new();
        let mut done: HashSet<Cid> = HashSet::new();
        let mut fetched = 0;
        while let Some(block) = shard.take() {
            let NodeDescription::HamtShard { links } =
                unixfs(address, "HAMT shard", || rust_unixfs::dir::describe(&block))?
            else {
                return Err(malformed(address, "HAMT shard", "a shard that is not one"));
            };
            // Link names are a two-hex-digit bucket, then the entry's name; a bare
            // bucket is a deeper shard.
            let mut deeper = Vec::new();
            for link in links {
                match link.name.get(2..) {
                    Some("") | None => deeper.push(link.target),
                    Some(name) => entries.push((name.to_owned(), link.target, link.tsize)),
                }
            }
            stack.extend(deeper.into_iter().rev().filter(|c| seen.insert(*c)));
            if entries.len() >= MAX_LISTING || fetched >= MAX_LISTING_SHARDS {
                break;
            }
            fetched += 1;
            if let Some(next) = stack.pop() {
                // Still to come: pushed and not yet taken. Two set lookups for each
                // block a gateway streams, where a search of the stack was as long as
                // a crafted shard's links.
                done.insert(next);
                let (seen, done) = (&seen, &done);
                let later = |c: &Cid| seen.contains(c) && !done.contains(c);
                shard = Some(blocks.get(&next, &later).await?);
            }
        }
        entries.sort();
    } else if let NodeDescription::Directory { links } =
        unixfs(address, "UnixFS directory", || {
            rust_unixfs::dir::describe(&block)
        })?
    {
        entries = links
            .into_iter()
            .map(|l| (l.name, l.target, l.tsize))
            .collect();
    }
    entries.truncate(MAX_LISTING);
    let mut html = format!(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>{0}</title>\n<h1>Index of {0}</h1>\n<ul>\n",
        escape(address)
    );
    for (name, cid, size) in &entries {
        let href: String = percent_encoding::utf8_percent_encode(name, HREF).collect();
        html.push_str(&format!(
            "<li><a href=\"{href}\">{}</a> <small>{} bytes · {cid}</small></li>\n",
            escape(name),
            size
        ));
    }
    html.push_str("</ul>\n<p><small>Every block checked against its CID by Outlast.</small></p>\n");
    Ok(Answer::Listing {
        target,
        html,
        sources: blocks.sources().to_vec(),
    })
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_match_with_or_without_weakness() {
        let cid = address::parse("bafkqaaa").unwrap();
        assert!(etag_matches(Some("\"bafkqaaa\""), &cid));
        assert!(etag_matches(Some("W/\"x\", W/\"bafkqaaa\""), &cid));
        assert!(etag_matches(Some("*"), &cid));
        assert!(!etag_matches(Some("\"bafy\""), &cid));
        assert!(!etag_matches(None, &cid));
    }

    #[test]
    fn listings_escape_names() {
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }

    mod properties {
        use std::collections::HashMap;

        use multihash_codetable::{Code, MultihashDigest};
        use proptest::prelude::*;

        use super::*;
        use crate::{config, storage::cache::Key};

        /// A UnixFS file as a DAG, with the sizes each node claims: the true ones, or
        /// a lie (`Some`).
        #[derive(Debug, Clone)]
        enum Tree {
            /// Content, as a raw block or a dag-pb UnixFS leaf.
            Leaf(Vec<u8>, bool),
            /// Children (each linked `repeat` times, with the blocksize it claims for
            /// them), and the filesize it claims.
            Node(Vec<(Tree, usize, Option<u64>)>, Option<u64>),
        }

        fn lie() -> impl Strategy<Value = Option<u64>> {
            prop_oneof![
                6 => Just(None),
                1 => (0u64..100).prop_map(Some),
                1 => any::<u64>().prop_map(Some),
                1 => (0u64..3).prop_map(|n| Some(u64::MAX - n)),
            ]
        }

        fn tree(lies: bool) -> impl Strategy<Value = Tree> {
            let leaf = (prop::collection::vec(any::<u8>(), 1..40), any::<bool>())
                .prop_map(|(d, raw)| Tree::Leaf(d, raw));
            let lie = move || {
                if lies {
                    lie().boxed()
                } else {
                    Just(None).boxed()
                }
            };
            leaf.prop_recursive(4, 40, 4, move |inner| {
                (
                    prop::collection::vec((inner, 1usize..3, lie()), 1..4),
                    lie(),
                )
                    .prop_map(|(children, size)| Tree::Node(children, size))
            })
        }

        fn varint(mut n: u64, out: &mut Vec<u8>) {
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }

        fn field(n: u64, bytes: &[u8], out: &mut Vec<u8>) {
            varint(n << 3 | 2, out);
            varint(bytes.len() as u64, out);
            out.extend_from_slice(bytes);
        }

        /// A dag-pb block: links, then UnixFS `File` data.
        fn dag_pb(links: &[Cid], data: &[u8], filesize: u64, blocksizes: &[u64]) -> Vec<u8> {
            let mut unixfs = vec![0x08, 0x02];
            if !data.is_empty() {
                field(2, data, &mut unixfs);
            }
            unixfs.push(0x18);
            varint(filesize, &mut unixfs);
            for b in blocksizes {
                unixfs.push(0x20);
                varint(*b, &mut unixfs);
            }
            let mut out = Vec::new();
            for l in links {
                let mut link = Vec::new();
                field(1, &l.to_bytes(), &mut link);
                field(2, b"", &mut link);
                field(2, &link, &mut out);
            }
            field(1, &unixfs, &mut out);
            out
        }

        fn put(store: &mut HashMap<Cid, Bytes>, codec: u64, block: Vec<u8>) -> Cid {
            let cid = Cid::new_v1(codec, Code::Sha2_256.digest(&block));
            store.insert(cid, Bytes::from(block));
            cid
        }

        /// Encodes `tree` into `store`: its CID and its true content.
        fn build(tree: &Tree, store: &mut HashMap<Cid, Bytes>) -> (Cid, Vec<u8>) {
            match tree {
                Tree::Leaf(data, true) => (put(store, address::RAW, data.clone()), data.clone()),
                Tree::Leaf(data, false) => {
                    let block = dag_pb(&[], data, data.len() as u64, &[]);
                    (put(store, address::DAG_PB, block), data.clone())
                }
                Tree::Node(children, size) => {
                    let (mut links, mut sizes, mut content) = (Vec::new(), Vec::new(), Vec::new());
                    for (child, repeat, claimed) in children {
                        let (cid, bytes) = build(child, store);
                        for _ in 0..*repeat {
                            links.push(cid);
                            sizes.push(claimed.unwrap_or(bytes.len() as u64));
                            content.extend_from_slice(&bytes);
                        }
                    }
                    let filesize = size.unwrap_or(content.len() as u64);
                    let block = dag_pb(&links, &[], filesize, &sizes);
                    (put(store, address::DAG_PB, block), content)
                }
            }
        }

        fn range() -> impl Strategy<Value = Option<ByteRange>> {
            let at = || prop_oneof![0u64..600, any::<u64>()];
            prop_oneof![
                Just(None),
                (at(), prop::option::of(at()))
                    .prop_map(|(a, b)| Some(ByteRange::From(a, b.map(|b| b.max(a))))),
                at().prop_map(|n| Some(ByteRange::Suffix(n))),
            ]
        }

        /// Storage with no gateway at all: every block comes from the cache, filled
        /// by each case (content-addressed, so cases cannot disturb each other).
        fn storage() -> Arc<Storage> {
            static STORAGE: std::sync::OnceLock<Arc<Storage>> = std::sync::OnceLock::new();
            STORAGE
                .get_or_init(|| {
                    Arc::new(Storage::new(&config::Storage::default()).expect("storage"))
                })
                .clone()
        }

        /// A file's body, the span it claimed and its size.
        type Served = (Vec<u8>, (u64, u64), u64);

        /// Serves `root` with `range` the way `http` does: the answer, then every piece
        /// of the rest. `Ok(bytes, span, size)` for a file sent whole; `Err` otherwise.
        fn serve(root: Cid, range: Option<ByteRange>) -> Result<Served, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let req = Request {
                    root,
                    path: Vec::new(),
                    trailing_slash: false,
                    range,
                    if_none_match: None,
                };
                let file = match get(&storage(), req).await {
                    Ok(Answer::File(f)) => f,
                    Ok(_) => return Err("not a file".to_owned()),
                    Err(e) => return Err(e.to_string()),
                };
                let mut body = file.first.to_vec();
                if let Some(mut rest) = file.rest {
                    while let Some(piece) = rest.next().await.map_err(|e| e.to_string())? {
                        body.extend_from_slice(&piece);
                    }
                }
                Ok((body, file.span, file.size))
            })
        }

        proptest! {
            #[test]
            fn an_honest_dag_gives_exactly_its_bytes(tree in tree(false), range in range()) {
                let mut store = HashMap::new();
                let (root, content) = build(&tree, &mut store);
                for (cid, block) in store {
                    storage().cache.insert(Key::block(&cid), block);
                }
                let size = content.len() as u64;
                match (serve(root, range), range.map(|r| r.resolve(size))) {
                    (Ok((body, span, got_size)), None | Some(Ok(_))) => {
                        prop_assert_eq!(got_size, size);
                        let want = &content[span.0 as usize..span.1 as usize];
                        prop_assert!(body == want, "{range:?}: {} bytes, wanted {:?}", body.len(), span);
                        if let Some(Ok(resolved)) = range.map(|r| r.resolve(size)) {
                            prop_assert_eq!(span, resolved);
                        } else {
                            prop_assert_eq!(span, (0, size));
                        }
                    }
                    (Err(e), Some(Err(_))) => prop_assert!(e.contains("range not satisfiable"), "{e}"),
                    (got, want) => prop_assert!(false, "{range:?}: got {got:?}, range {want:?}"),
                }
            }

            #[test]
            fn a_lying_or_mangled_dag_gives_its_span_exactly_or_an_error(
                tree in tree(true),
                range in range(),
                flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
            ) {
                let mut store = HashMap::new();
                let (mut root, _) = build(&tree, &mut store);
                if !flips.is_empty() && root.codec() == address::DAG_PB {
                    let mut block = store.get(&root).map(|b| b.to_vec()).unwrap_or_default();
                    for (at, x) in &flips {
                        let i = at.index(block.len());
                        block[i] ^= x;
                    }
                    root = put(&mut store, address::DAG_PB, block);
                }
                for (cid, block) in store {
                    storage().cache.insert(Key::block(&cid), block);
                }
                // Never a panic, never more or fewer bytes than the headers promise.
                if let Ok((body, (start, end), size)) = serve(root, range) {
                    prop_assert!(start <= end && end <= size, "{start}..{end} of {size}");
                    prop_assert_eq!(body.len() as u64, end - start);
                }
            }
        }
    }
}
