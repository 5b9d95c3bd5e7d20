//! A stand-in JSON-RPC provider for `bench/run.sh`: answers every POST at once with a
//! fixed body, so a benchmark measures the proxy in front of it, not the provider.
//!
//! `cargo run --release --example fixed_upstream -- PORT [CHAIN_ID]`
//! - a batch (body starting with `[`): one result `"0x1234"` per call;
//! - `eth_chainId`: `CHAIN_ID` (default 31337), so a gateway's chain-id check passes;
//! - `eth_getBlockByNumber` (alone or in a batch, as a gateway's head poll sends it):
//!   block `0x10` with a fixed hash, so the gateway knows a head;
//! - anything else: `{"jsonrpc":"2.0","id":ID,"result":"0x1234"}`.
//!
//! Every reply carries the ids of the request, in order (a gateway refuses an answer
//! whose id it did not send); the rest of each reply is fixed.
//!
//! One thread (current-thread runtime), so on two cores it leaves one to the load
//! generator and the proxy under test. Listens on 127.0.0.1 only.

use std::sync::LazyLock;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

const RESULT: &str = r#""0x1234""#;

static CHAIN_ID: LazyLock<String> = LazyLock::new(|| {
    let id: u64 = std::env::args()
        .nth(2)
        .map_or(31337, |s| s.parse().expect("CHAIN_ID must be a number"));
    format!(r#""{id:#x}""#)
});

const BLOCK: &str = r#"{"number":"0x10","hash":"0x00000000000000000000000000000000000000000000000000000000000000aa"}"#;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The raw id of each call in `body`, in order (`null` for a call without one): the
/// bytes after each `"id":`, up to the next `,` or `}`.
fn ids(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(at) = rest.windows(5).position(|w| w == b"\"id\":") {
        let tail = &rest[at + 5..];
        let end = tail
            .iter()
            .position(|&b| b == b',' || b == b'}')
            .unwrap_or(tail.len());
        out.push(tail[..end].trim_ascii());
        rest = &tail[end..];
    }
    out
}

/// One reply per id of `body` with `result`: a batch when `batch`.
fn reply(body: &[u8], batch: bool, result: &str) -> String {
    let one = |id: &[u8]| {
        let id = std::str::from_utf8(id).unwrap_or("null");
        format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
    };
    let ids = ids(body);
    if !batch {
        return one(ids.first().copied().unwrap_or(b"null"));
    }
    format!(
        "[{}]",
        ids.into_iter().map(one).collect::<Vec<_>>().join(",")
    )
}

async fn answer(method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST JSON-RPC here\n").into_response();
    }
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    let result: &str = if contains(&body, b"\"eth_getBlockByNumber\"") {
        BLOCK
    } else if !batch && contains(&body, b"\"eth_chainId\"") {
        &CHAIN_ID
    } else {
        RESULT
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        reply(&body, batch, result),
    )
        .into_response()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let port: u16 = match std::env::args().nth(1).map(|s| s.parse()) {
        Some(Ok(port)) => port,
        _ => {
            eprintln!("usage: fixed_upstream PORT [CHAIN_ID]");
            std::process::exit(2);
        }
    };
    LazyLock::force(&CHAIN_ID);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
    println!("fixed_upstream listening on http://127.0.0.1:{port}");
    let app = Router::new().fallback(answer);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("serve");
}
