//! The storage routes, `GET|HEAD /ipfs/{cid}[/path]` and `GET|HEAD /ar/{id}`: read
//! the URL as sent (`.`, `..` and empty segments are a 400 before any gateway is asked),
//! `Range` (clamped to the content, or 416) and `If-None-Match`; answer with verified
//! bytes, `ETag` (the address), `Cache-Control: immutable`, a `Content-Type` from the
//! name, the signed tag or the first bytes, and `Content-Range` for ranges. Every
//! `StorageError` becomes a status here, in one `match`, with a JSON body that says
//! what was tried.
//!
//! The body is streamed: the first verified piece is in hand before the status line
//! goes out; the rest is fetched by a task a few pieces ahead of the client. Should the
//! content fail after that, the response is cut off (never completed with unverified
//! bytes), so a client sees an error, not a wrong file.

use std::{future::Future, io, sync::Arc};

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Storage, StorageError, address, arweave, ipfs, range::ByteRange};

/// Pieces the body task fetches ahead of the client.
const AHEAD: usize = 4;
/// Bytes read to guess a type when a range starts later in the content.
const SNIFF: u64 = 512;
const IMMUTABLE: &str = "public, max-age=29030400, immutable";

pub async fn ipfs(State(storage): State<Arc<Storage>>, uri: Uri, headers: HeaderMap) -> Response {
    // The path as sent (`..` and `%2e%2e` included): axum and hyper normalize nothing.
    let rest = uri.path().strip_prefix("/ipfs/").unwrap_or_default();
    let path = match address::parse_path(rest) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let req = ipfs::Request {
        root: path.root,
        path: path.segments,
        trailing_slash: path.trailing_slash,
        range: range(&headers),
        if_none_match: text(&headers, header::IF_NONE_MATCH).map(str::to_owned),
    };
    let answer = match ipfs::get(&storage, req).await {
        Ok(a) => a,
        Err(e) => return error(e),
    };
    let mut response = match answer {
        ipfs::Answer::NotModified { target } => not_modified(&format!("\"{target}\"")),
        ipfs::Answer::Redirect => {
            let mut location = format!("{}/", uri.path());
            if let Some(q) = uri.query() {
                location.push('?');
                location.push_str(q);
            }
            let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        ipfs::Answer::Listing {
            target,
            html,
            sources,
        } => {
            let mut r = (StatusCode::OK, html).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
            set(h, header::ETAG, &format!("W/\"{target}\""));
            upstreams(h, &sources);
            r
        }
        ipfs::Answer::File(f) => {
            let guessed = guess_from_name(f.name.as_deref());
            let head = if guessed.is_some() || f.span.0 == 0 {
                f.first.clone()
            } else {
                ipfs::prefix(&storage, f.target, SNIFF)
                    .await
                    .unwrap_or_default()
            };
            let content_type = guessed.unwrap_or_else(|| sniff(&head));
            let etag = format!("\"{}\"", f.target);
            content(
                Piece {
                    size: f.size,
                    span: f.span,
                    ranged: f.ranged,
                    content_type,
                    etag,
                    sources: f.sources,
                },
                body(f.first, f.rest, uri.path().to_owned()),
            )
        }
    };
    if let Ok(v) = HeaderValue::from_str(uri.path()) {
        response.headers_mut().insert("x-ipfs-path", v);
    }
    response
}

pub async fn arweave(
    State(storage): State<Arc<Storage>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let rest = uri.path().strip_prefix("/ar/").unwrap_or_default();
    let id = match arweave::parse_path(rest) {
        Ok(id) => id,
        Err(e) => return error(e),
    };
    let range = range(&headers);
    let inm = text(&headers, header::IF_NONE_MATCH);
    let etag = format!("\"{id}\"");
    let c = match arweave::get(&storage, id.clone(), range, inm).await {
        Ok(arweave::Answer::NotModified) => return not_modified(&etag),
        Ok(arweave::Answer::Content(c)) => c,
        Err(e) => return error(e),
    };
    let signed = c
        .content_type
        .clone()
        .filter(|t| t.contains('/') && HeaderValue::from_str(t).is_ok());
    let content_type = match signed {
        Some(t) => t,
        None if c.span.0 == 0 => sniff(&c.first),
        None => sniff(&arweave_prefix(&storage, &id).await),
    };
    let address = format!("/ar/{id}");
    content(
        Piece {
            size: c.size,
            span: c.span,
            ranged: c.ranged,
            content_type,
            etag,
            sources: c.sources,
        },
        body(c.first, c.rest, address),
    )
}

async fn arweave_prefix(storage: &Arc<Storage>, id: &str) -> Bytes {
    let range = Some(ByteRange::From(0, Some(SNIFF - 1)));
    match arweave::get(storage, id.to_owned(), range, None).await {
        Ok(arweave::Answer::Content(c)) => c.first,
        _ => Bytes::new(),
    }
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn range(headers: &HeaderMap) -> Option<ByteRange> {
    text(headers, header::RANGE).and_then(ByteRange::parse)
}

fn set(h: &mut HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn upstreams(h: &mut HeaderMap, sources: &[Arc<str>]) {
    if !sources.is_empty() {
        let names: Vec<&str> = sources.iter().map(|s| &**s).collect();
        set(
            h,
            header::HeaderName::from_static("x-outlast-upstream"),
            &names.join(","),
        );
    }
    h.insert("x-outlast-verified", HeaderValue::from_static("proof"));
}

fn not_modified(etag: &str) -> Response {
    let mut r = StatusCode::NOT_MODIFIED.into_response();
    set(r.headers_mut(), header::ETAG, etag);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    r
}

/// The headers of a file or data answer.
struct Piece {
    size: u64,
    span: (u64, u64),
    ranged: bool,
    content_type: String,
    etag: String,
    sources: Vec<Arc<str>>,
}

fn content(p: Piece, body: Body) -> Response {
    let status = if p.ranged {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    set(h, header::CONTENT_TYPE, &p.content_type);
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(p.span.1.saturating_sub(p.span.0)),
    );
    if p.ranged {
        set(
            h,
            header::CONTENT_RANGE,
            &format!(
                "bytes {}-{}/{}",
                p.span.0,
                p.span.1.saturating_sub(1),
                p.size
            ),
        );
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    set(h, header::ETAG, &p.etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    upstreams(h, &p.sources);
    r
}

/// The rest of a verified stream: IPFS blocks or Arweave chunks.
trait Pieces: Send + 'static {
    fn next(&mut self) -> impl Future<Output = Result<Option<Bytes>, StorageError>> + Send;
}

impl Pieces for ipfs::Walk {
    fn next(&mut self) -> impl Future<Output = Result<Option<Bytes>, StorageError>> + Send {
        ipfs::Walk::next(self)
    }
}

impl Pieces for arweave::Chunks {
    fn next(&mut self) -> impl Future<Output = Result<Option<Bytes>, StorageError>> + Send {
        arweave::Chunks::next(self)
    }
}

/// `first`, then whatever `rest` verifies, fetched by a task a few pieces ahead; an
/// error ends the body early (the client's connection sees the cut).
fn body<P: Pieces>(first: Bytes, rest: Option<P>, address: String) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(AHEAD);
    if let Some(mut rest) = rest {
        tokio::spawn(async move {
            loop {
                let piece = tokio::select! {
                    // The client went away: stop fetching.
                    _ = tx.closed() => return,
                    piece = rest.next() => piece,
                };
                match piece {
                    Ok(Some(piece)) => {
                        if tx.send(Ok(piece)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(%address, "verified stream cut short: {e}");
                        let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                        return;
                    }
                }
            }
        });
    }
    let rest = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|piece| (piece, rx))
    });
    let first = futures_util::stream::iter((!first.is_empty()).then_some(Ok(first)));
    Body::from_stream(first.chain(rest))
}

/// A type from the file name's extension, when it has a known one.
fn guess_from_name(name: Option<&str>) -> Option<String> {
    let name = name?;
    name.rsplit_once('.')?;
    let mime = mime_guess::from_path(name).first()?;
    Some(if mime.type_() == mime_guess::mime::TEXT {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    })
}

/// A type from the first bytes: magic numbers, then SVG/HTML, JSON and text.
fn sniff(head: &[u8]) -> String {
    if head.is_empty() {
        return "application/octet-stream".into();
    }
    let svg = |t: &str| {
        let t = t.trim_start_matches('\u{feff}').trim_start();
        let lower = t.get(..t.len().min(256)).unwrap_or(t).to_ascii_lowercase();
        lower.starts_with("<svg") || (lower.starts_with("<?xml") && lower.contains("<svg"))
    };
    if std::str::from_utf8(&head[..head.len().min(256)]).is_ok_and(svg) {
        return "image/svg+xml".into();
    }
    let utf8 = match std::str::from_utf8(head) {
        Ok(s) => Some(s),
        // A character cut by the end of the sample is still text.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&head[..e.valid_up_to()]).ok(),
        Err(_) => None,
    };
    if let Some(kind) = infer::get(head) {
        let mime = kind.mime_type();
        return if mime.starts_with("text/") && utf8.is_some() {
            format!("{mime}; charset=utf-8")
        } else {
            mime.into()
        };
    }
    let Some(text) = utf8 else {
        return "application/octet-stream".into();
    };
    let t = text.trim_start_matches('\u{feff}').trim_start();
    let lower = t.get(..t.len().min(256)).unwrap_or(t).to_ascii_lowercase();
    if lower.starts_with("<!doctype html") || lower.starts_with("<html") {
        "text/html; charset=utf-8".into()
    } else if lower.starts_with('{') || lower.starts_with('[') {
        "application/json".into()
    } else {
        "text/plain; charset=utf-8".into()
    }
}

fn error(e: StorageError) -> Response {
    use StorageError::*;
    let status = match &e {
        BadCid { .. } | BadArweaveId { .. } | BadPath { .. } => StatusCode::BAD_REQUEST,
        NoSuchPath { .. } | NotFound { .. } => StatusCode::NOT_FOUND,
        Unavailable {
            timed_out: true, ..
        } => StatusCode::GATEWAY_TIMEOUT,
        Unavailable { .. } | Malformed { .. } => StatusCode::BAD_GATEWAY,
        Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
        NoGateways { .. } => StatusCode::SERVICE_UNAVAILABLE,
        RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
    };
    let body = serde_json::json!({ "error": e.to_string(), "tried": e.tried() });
    let mut r = (status, body.to_string()).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let RangeNotSatisfiable { size } = e {
        set(h, header::CONTENT_RANGE, &format!("bytes */{size}"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_come_from_names_then_bytes() {
        let check = |name: Option<&str>, head: &[u8], want: &str| {
            let got = guess_from_name(name).unwrap_or_else(|| sniff(head));
            assert_eq!(got, want, "{name:?} {head:?}");
        };
        check(Some("a.txt"), b"", "text/plain; charset=utf-8");
        check(Some("style.css"), b"", "text/css; charset=utf-8");
        check(Some("meta.json"), b"", "application/json");
        check(Some("pixel"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", "image/png");
        check(None, b"  {\"name\":1}", "application/json");
        check(None, b"<?xml version=\"1.0\"?><svg xmlns=", "image/svg+xml");
        check(None, b"<!DOCTYPE html><p>", "text/html; charset=utf-8");
        check(None, b"hello \xc3", "text/plain; charset=utf-8");
        check(None, b"\xff\xfe\x00binary", "application/octet-stream");
        check(None, b"", "application/octet-stream");
    }
}
