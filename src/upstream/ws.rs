//! An upstream's WebSocket endpoint (`ws_url`): one `eth_subscribe`, then its
//! notifications. Used to hear new heads and pending transactions the moment the
//! provider has them; every call still goes over HTTP (`client`).
//!
//! The only place a `ws_url` is dialed; errors never contain it. Never retries: the
//! caller decides when to dial again.

use std::{borrow::Cow, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, protocol::WebSocketConfig},
};

use super::{Upstream, UpstreamError};
use crate::config::UpstreamUrl;

/// Largest notification accepted (a pending full block would be far less).
const MAX_MESSAGE: usize = 16 << 20;

/// An open subscription on one upstream.
pub struct WsFeed {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    subscription: String,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    params: Option<NoteParams<'a>>,
}

#[derive(Deserialize)]
struct NoteParams<'a> {
    #[serde(borrow)]
    subscription: Cow<'a, str>,
    #[serde(borrow)]
    result: &'a RawValue,
}

impl Upstream {
    /// Dials `ws_url` and subscribes with `params` (e.g. `["newHeads"]`), within the
    /// upstream's request timeout.
    pub async fn ws_subscribe(
        &self,
        ws_url: &UpstreamUrl,
        params: &str,
    ) -> Result<WsFeed, UpstreamError> {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let dial = tokio_tungstenite::connect_async_with_config(
            ws_url.expose().as_str(),
            Some(config),
            true,
        );
        let (mut stream, _) = tokio::time::timeout(self.timeout, dial)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))?
            .map_err(|e| ws_error(e, ws_url))?;
        let request =
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":{params}}}"#);
        let subscribed = async {
            stream
                .send(Message::text(request))
                .await
                .map_err(|e| ws_error(e, ws_url))?;
            loop {
                let text = next_text(&mut stream, ws_url).await?;
                let reply: Incoming<'_> = serde_json::from_str(&text)
                    .map_err(|e| UpstreamError::Malformed(format!("eth_subscribe reply: {e}")))?;
                if reply.id.map(RawValue::get) != Some("1") {
                    continue; // a notification of nothing we asked for yet
                }
                return match (reply.result, reply.error) {
                    (Some(id), None) => serde_json::from_str::<String>(id.get()).map_err(|_| {
                        UpstreamError::Malformed(format!("subscription id {}", id.get()))
                    }),
                    (_, Some(error)) => Err(UpstreamError::Malformed(format!(
                        "eth_subscribe refused: {}",
                        error.get()
                    ))),
                    (None, None) => Err(UpstreamError::Malformed(
                        "eth_subscribe reply with neither result nor error".into(),
                    )),
                };
            }
        };
        let subscription = tokio::time::timeout(self.timeout, subscribed)
            .await
            .map_err(|_| UpstreamError::Timeout(self.timeout))??;
        Ok(WsFeed {
            stream,
            subscription,
        })
    }
}

impl WsFeed {
    /// The next notification's `result`, raw. An error when the connection ends, the
    /// upstream says nothing for `idle`, or sends something unreadable.
    pub async fn next(
        &mut self,
        idle: Duration,
        ws_url: &UpstreamUrl,
    ) -> Result<Bytes, UpstreamError> {
        loop {
            let text = tokio::time::timeout(idle, next_text(&mut self.stream, ws_url))
                .await
                .map_err(|_| UpstreamError::Timeout(idle))??;
            let note: Incoming<'_> = serde_json::from_str(&text)
                .map_err(|e| UpstreamError::Malformed(format!("notification: {e}")))?;
            if let Some(p) = note.params
                && p.subscription == self.subscription
            {
                return Ok(Bytes::copy_from_slice(p.result.get().as_bytes()));
            }
        }
    }
}

/// The next text (or binary) message; pings are answered by tungstenite as it reads.
async fn next_text(
    stream: &mut WebSocketStream<MaybeTlsStream<TcpStream>>,
    ws_url: &UpstreamUrl,
) -> Result<String, UpstreamError> {
    loop {
        match stream.next().await {
            None => return Err(UpstreamError::Transport("WebSocket closed".into())),
            Some(Err(e)) => return Err(ws_error(e, ws_url)),
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Binary(b))) => {
                return String::from_utf8(b.to_vec())
                    .map_err(|_| UpstreamError::Malformed("binary message, not UTF-8".into()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(UpstreamError::Transport(match frame {
                    Some(f) => format!("WebSocket closed by the upstream: {} {}", f.code, f.reason),
                    None => "WebSocket closed by the upstream".into(),
                }));
            }
            Some(Ok(_)) => {}
        }
    }
}

/// A tungstenite error in words, without the URL.
fn ws_error(e: tungstenite::Error, ws_url: &UpstreamUrl) -> UpstreamError {
    match e {
        tungstenite::Error::Http(response) => UpstreamError::Status(response.status().as_u16()),
        tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            UpstreamError::Connect(io.to_string())
        }
        other => UpstreamError::Transport(
            other
                .to_string()
                .replace(ws_url.expose().as_str(), "<upstream>"),
        ),
    }
}
