//! A stand-in JSON-RPC provider for `bench/run.sh`: answers every POST at once with a
//! fixed body, so a benchmark measures the proxy in front of it, not the provider.
//!
//! `cargo run --release --example fixed_upstream -- PORT [CHAIN_ID]`
//! - a batch (body starting with `[`): ten results, ids 0..9, each `"0x1234"`;
//! - `eth_chainId`: `CHAIN_ID` (default 31337), so a gateway's chain-id check passes;
//! - `eth_getBlockByNumber` (alone or in a batch, as a gateway's head poll sends it):
//!   block `0x10` with a fixed hash, so the gateway knows a head;
//! - anything else: `{"jsonrpc":"2.0","id":0,"result":"0x1234"}` (id 0: what a gateway sends a single call as).
//!
//! One thread (current-thread runtime), so on two cores it leaves one to the load
//! generator and the proxy under test. Listens on 127.0.0.1 only.

use std::sync::LazyLock;

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

const SINGLE: &str = r#"{"jsonrpc":"2.0","id":0,"result":"0x1234"}"#;

static BATCH: LazyLock<String> = LazyLock::new(|| {
    let items: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"result":"0x1234"}}"#))
        .collect();
    format!("[{}]", items.join(","))
});

static CHAIN_ID: LazyLock<String> = LazyLock::new(|| {
    let id: u64 = std::env::args()
        .nth(2)
        .map_or(31337, |s| s.parse().expect("CHAIN_ID must be a number"));
    format!(r#"{{"jsonrpc":"2.0","id":0,"result":"{id:#x}"}}"#)
});

const BLOCK: &str = r#"{"number":"0x10","hash":"0x00000000000000000000000000000000000000000000000000000000000000aa"}"#;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A head poll: one block per call (ids 0..n-1 in a batch, as the gateway numbers them).
fn blocks(body: &[u8], batch: bool) -> String {
    let one = |id: usize| format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{BLOCK}}}"#);
    if !batch {
        return one(0);
    }
    let n = body.windows(8).filter(|w| w == b"\"method\"").count();
    format!("[{}]", (0..n).map(one).collect::<Vec<_>>().join(","))
}

async fn answer(method: Method, body: Bytes) -> Response {
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST JSON-RPC here\n").into_response();
    }
    let batch = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if contains(&body, b"\"eth_getBlockByNumber\"") {
        return (
            [(header::CONTENT_TYPE, "application/json")],
            blocks(&body, batch),
        )
            .into_response();
    }
    let text: &str = if batch {
        &BATCH
    } else if contains(&body, b"\"eth_chainId\"") {
        &CHAIN_ID
    } else {
        SINGLE
    };
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
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
