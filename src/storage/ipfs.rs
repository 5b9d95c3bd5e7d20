//! `/ipfs/{cid}[/path]` as UnixFS: the path resolved through directories (HAMT shards
//! too) one verified block at a time, then the file walked in order with
//! `rust-unixfs` — a range only touches the blocks it needs — or the directory shown
//! (its `index.html`, else a listing). Bytes come only from `blocks`, so only verified
//! bytes are ever returned.

use std::sync::Arc;

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
    let mut lookup = match rust_unixfs::resolve(block, name, &mut cache) {
        Ok(MaybeResolved::Found(cid)) => return Ok(Some(cid)),
        Ok(MaybeResolved::NotFound) => return Ok(None),
        Ok(MaybeResolved::NeedToLoadMore(lookup)) => lookup,
        Err(ResolveError::UnexpectedType(t)) if !t.is_directory() => {
            return Err(no_such(address, name, "a file"));
        }
        Err(e) => return Err(malformed(address, "UnixFS directory", e)),
    };
    // A HAMT-sharded directory: follow the shards towards the name's bucket.
    loop {
        let next = *lookup.pending_links().0;
        let shard = {
            let pending = &lookup;
            let later = |c: &Cid| pending.pending_links().1.any(|p| p == c);
            blocks.get(&next, &later).await?
        };
        match lookup.continue_walk(&shard, &mut cache) {
            Ok(MaybeResolved::Found(cid)) => return Ok(Some(cid)),
            Ok(MaybeResolved::NotFound) => return Ok(None),
            Ok(MaybeResolved::NeedToLoadMore(more)) => lookup = more,
            Err(e) => return Err(malformed(address, "HAMT shard", e)),
        }
    }
}

enum Node {
    File,
    Directory { hamt: bool },
}

fn describe(cid: &Cid, block: &[u8], address: &str) -> Result<Node, StorageError> {
    if cid.codec() == address::RAW {
        return Ok(Node::File);
    }
    match rust_unixfs::dir::describe(block) {
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
        let (_, size, _, _) = IdleFileVisit::default()
            .start(&block)
            .map_err(|e| malformed(address, "UnixFS file", e))?;
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
    };
    let first = if raw {
        walk.offset = end;
        // `resolve` keeps start < end <= size.
        block.slice(start as usize..end as usize)
    } else {
        let (content, _, _, visit) = IdleFileVisit::default()
            .with_target_range(start..end)
            .start(&block)
            .map_err(|e| malformed(address, "UnixFS file", e))?;
        let content = &content[..content.len().min((end - start) as usize)];
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
    let rest = (walk.visit.is_some() || walk.offset < walk.end).then_some(walk);
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

impl Walk {
    fn advance(&mut self, sent: usize) {
        self.offset += sent as u64;
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

    /// The next verified piece of the file; `None` at the end. A DAG that holds fewer
    /// bytes than its root promised is an error, so a client never takes a short file
    /// for a whole one.
    pub async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        loop {
            let Some(visit) = self.visit.take() else {
                if self.offset < self.end {
                    return Err(malformed(
                        &format!("/ipfs/{}", self.target),
                        "UnixFS file",
                        format!(
                            "its blocks end at byte {} of {} promised",
                            self.offset, self.end
                        ),
                    ));
                }
                return Ok(None);
            };
            let next = *visit.pending_links().0;
            let block = {
                let pending = &visit;
                let later = |c: &Cid| pending.pending_links().1.any(|p| p == c);
                self.blocks.get(&next, &later).await?
            };
            let (content, visit) = visit
                .continue_walk(&block, &mut self.cache)
                .map_err(|e| malformed(&format!("/ipfs/{}", self.target), "UnixFS file", e))?;
            self.visit = visit;
            let left = (self.end - self.offset) as usize;
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
        while let Some(block) = shard.take() {
            let NodeDescription::HamtShard { links } = rust_unixfs::dir::describe(&block) else {
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
            stack.extend(deeper.into_iter().rev());
            if entries.len() >= MAX_LISTING {
                break;
            }
            if let Some(next) = stack.pop() {
                let pending = &stack;
                let later = |c: &Cid| pending.contains(c);
                shard = Some(blocks.get(&next, &later).await?);
            }
        }
        entries.sort();
    } else if let NodeDescription::Directory { links } = rust_unixfs::dir::describe(&block) {
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
}
