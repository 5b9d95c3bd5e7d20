//! HTTP to storage gateways: one GET with its status sorted (404/410 = "not found",
//! 3xx = a redirect, never followed, other non-2xx = the gateway's failure, a 200 of the
//! wrong type refused) and bodies read within a size bound and a stall timeout.
//! Verifies nothing.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{Storage, race::GatewayError};

/// Sends `GET url` with `Accept: accept`. With `expect`, a 200 whose `Content-Type`
/// is not that type is refused (e.g. a gateway that is not trustless, answering a
/// CAR request with the file itself).
pub async fn get(
    storage: &Storage,
    url: &url::Url,
    accept: &str,
    expect: Option<&str>,
) -> Result<reqwest::Response, GatewayError> {
    let started = Instant::now();
    let response = storage
        .http
        .get(url.clone())
        .header(reqwest::header::ACCEPT, accept)
        .send()
        .await
        .map_err(|e| GatewayError::from_reqwest(&e, started.elapsed()))?;
    let status = response.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::GONE {
        return Err(GatewayError::NotFound(status.as_u16()));
    }
    if status.is_redirection() {
        // The client has redirects off (`Storage::new`); whatever `Location` says, it
        // is not where this gateway was configured to be.
        return Err(GatewayError::Redirected(status.as_u16()));
    }
    if !status.is_success() {
        return Err(GatewayError::Status(status.as_u16()));
    }
    if let Some(wanted) = expect {
        let got = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !got.starts_with(wanted) {
            return Err(GatewayError::Malformed(format!(
                "answered `{got}` instead of `{wanted}` (not a trustless gateway?)"
            )));
        }
    }
    Ok(response)
}

/// Reads a whole body of at most `max` bytes, waiting at most `stall` for each piece.
pub async fn read_limited(
    response: reqwest::Response,
    max: usize,
    stall: Duration,
) -> Result<Bytes, GatewayError> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(GatewayError::Malformed(format!(
            "an answer over {max} bytes"
        )));
    }
    let mut body = response.bytes_stream();
    let mut out = BytesMut::new();
    loop {
        match tokio::time::timeout(stall, body.next()).await {
            Err(_) => return Err(GatewayError::Stalled(stall)),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(e))) => return Err(GatewayError::from_reqwest(&e, stall)),
            Ok(Some(Ok(piece))) => {
                if out.len().saturating_add(piece.len()) > max {
                    return Err(GatewayError::Malformed(format!(
                        "an answer over {max} bytes"
                    )));
                }
                out.extend_from_slice(&piece);
            }
        }
    }
}
