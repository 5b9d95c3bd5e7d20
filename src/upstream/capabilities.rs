//! What an upstream can do beyond the latest block, asked once each: old state
//! (`archive`), Merkle proofs (`eth_getProof`) and a WebSocket endpoint. Used by
//! `outlast probe`; each check is one call, and its answer is read by a pure function
//! tested below.
//!
//! Never changes health or heads, never retries, never waits beyond the HTTP client's
//! timeouts; reasons it returns never contain the provider's URL.

use serde_json::value::RawValue;

use super::{Answer, Upstream, UpstreamError, transport::innermost};
use crate::{config::UpstreamUrl, rpc::Call};

/// Whether an upstream has a capability, as far as one call could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    Yes,
    No,
    /// The check itself failed (timeout, rate limit, an error that says nothing about
    /// the capability): the reason, without URLs.
    Unknown(String),
}

/// `eth_getBalance(0x0, "0x1")`: state of block 1 is kept only by archive nodes.
const ARCHIVE_PARAMS: &str = r#"["0x0000000000000000000000000000000000000000","0x1"]"#;
/// `eth_getProof(0x0, [], "latest")`: the cheapest proof there is.
const PROOF_PARAMS: &str = r#"["0x0000000000000000000000000000000000000000",[],"latest"]"#;
/// The sample nonce of RFC 6455 section 1.3: the server only echoes a hash of it, and
/// nothing is sent over the connection, so it need not be random.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

impl Upstream {
    /// Does it keep old state? Asks for a balance at block 1.
    pub async fn supports_archive(&self) -> Capability {
        match self.ask("eth_getBalance", ARCHIVE_PARAMS).await {
            Ok(answer) => archive_from(&answer),
            Err(e) => Capability::Unknown(e.to_string()),
        }
    }

    /// Does it serve `eth_getProof`, which verified reads need?
    pub async fn supports_get_proof(&self) -> Capability {
        match self.ask("eth_getProof", PROOF_PARAMS).await {
            Ok(answer) => proof_from(&answer),
            Err(e) => Capability::Unknown(e.to_string()),
        }
    }

    /// Does `ws_url` (this upstream's `ws_url`) accept a WebSocket upgrade? Only the
    /// HTTP/1.1 handshake is made (over TLS for `wss://`); no frame is sent.
    pub async fn supports_websocket(&self, ws_url: &UpstreamUrl) -> Capability {
        let mut url = ws_url.expose().clone();
        let http_scheme = match url.scheme() {
            "ws" => "http",
            "wss" => "https",
            other => return Capability::Unknown(format!("not a ws:// or wss:// URL ({other})")),
        };
        // ws/wss and http/https are all "special" schemes, between which `url` allows
        // the switch; an error is still reported rather than unwrapped.
        if url.set_scheme(http_scheme).is_err() {
            return Capability::Unknown("cannot turn the ws_url into an http URL".into());
        }
        // The shared client may speak HTTP/2, which has no `Upgrade`: a handshake needs
        // HTTP/1.1, so this one check builds its own small client.
        let client = match reqwest::Client::builder()
            .http1_only()
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .user_agent(concat!("outlast/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => return Capability::Unknown(format!("cannot build a client: {e}")),
        };
        let reply = client
            .get(url)
            .header(http::header::CONNECTION, "Upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::SEC_WEBSOCKET_VERSION, "13")
            .header(http::header::SEC_WEBSOCKET_KEY, WS_KEY)
            .send()
            .await;
        match reply {
            Ok(reply) => {
                let upgrade = reply
                    .headers()
                    .get(http::header::UPGRADE)
                    .and_then(|v| v.to_str().ok());
                handshake_from(reply.status().as_u16(), upgrade)
            }
            // Nothing listens there: from here, no WebSocket.
            Err(e) if e.is_connect() => Capability::No,
            Err(e) if e.is_timeout() => {
                Capability::Unknown(format!("no answer within {} ms", self.timeout.as_millis()))
            }
            Err(e) => Capability::Unknown(innermost(&e.without_url())),
        }
    }

    /// One call; the upstream's reply for it, or why there is none.
    async fn ask(
        &self,
        method: &'static str,
        params: &'static str,
    ) -> Result<Answer, UpstreamError> {
        let params = RawValue::from_string(params.to_owned())
            .map_err(|e| UpstreamError::Malformed(format!("{method} params: {e}")))?;
        let call = Call {
            id: None,
            method: method.into(),
            params: Some(&params),
        };
        self.send(&[&call])
            .await?
            .pop()
            .flatten()
            .ok_or_else(|| UpstreamError::Malformed(format!("{method}: no answer")))
    }
}

/// Any balance means the state of block 1 is there; an error about missing or pruned
/// state means it is not; any other error tells nothing.
fn archive_from(answer: &Answer) -> Capability {
    match answer {
        Answer::Result(_) => Capability::Yes,
        Answer::Error { message, .. } => {
            let m = message.to_ascii_lowercase();
            let pruned = ["missing trie node", "state", "pruned", "archive"]
                .iter()
                .any(|s| m.contains(s));
            if pruned {
                Capability::No
            } else {
                Capability::Unknown(message.clone())
            }
        }
    }
}

/// An object with `accountProof` is a proof; "method not found" and its cousins mean
/// no; other errors (rate limits, internal errors) tell nothing.
fn proof_from(answer: &Answer) -> Capability {
    match answer {
        Answer::Result(raw) => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Proof<'a> {
                #[serde(borrow)]
                account_proof: Option<&'a RawValue>,
            }
            match serde_json::from_slice::<Proof<'_>>(raw) {
                Ok(Proof {
                    account_proof: Some(_),
                }) => Capability::Yes,
                _ => Capability::No,
            }
        }
        Answer::Error { code, message, .. } => {
            let m = message.to_ascii_lowercase();
            let absent = [
                "not found",
                "not supported",
                "unsupported",
                "does not exist",
                "not available",
                "not allowed",
                "disabled",
            ]
            .iter()
            .any(|s| m.contains(s));
            if *code == -32601 || absent {
                Capability::No
            } else {
                Capability::Unknown(message.clone())
            }
        }
    }
}

/// `101 Switching Protocols` with `Upgrade: websocket` is a WebSocket endpoint; a
/// refusal (400, 404, 426…) is not; overload or rate limits tell nothing.
fn handshake_from(status: u16, upgrade: Option<&str>) -> Capability {
    match status {
        101 if upgrade.is_some_and(|u| u.eq_ignore_ascii_case("websocket")) => Capability::Yes,
        101 => Capability::No,
        429 | 500..=599 => Capability::Unknown(format!("HTTP status {status}")),
        _ => Capability::No,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn result(json: &'static str) -> Answer {
        Answer::Result(Bytes::from_static(json.as_bytes()))
    }

    fn error(code: i64, message: &str) -> Answer {
        Answer::Error {
            raw: Bytes::new(),
            code,
            message: message.to_owned(),
        }
    }

    fn unknown(reason: &str) -> Capability {
        Capability::Unknown(reason.to_owned())
    }

    #[test]
    fn archive_is_read_from_the_balance_at_block_one() {
        for (answer, expected) in [
            (result(r#""0x0""#), Capability::Yes),
            (
                error(-32000, "missing trie node 1a2b… (path ) <nil>"),
                Capability::No,
            ),
            (
                error(-32000, "historical state 0xabc… is not available"),
                Capability::No,
            ),
            (error(-32000, "block #1 was pruned"), Capability::No),
            (
                error(-32005, "rate limit exceeded"),
                unknown("rate limit exceeded"),
            ),
        ] {
            assert_eq!(archive_from(&answer), expected, "{answer:?}");
        }
    }

    #[test]
    fn proof_needs_an_object_with_account_proof() {
        for (answer, expected) in [
            (
                result(r#"{"address":"0x0","accountProof":["0xf8"],"balance":"0x0"}"#),
                Capability::Yes,
            ),
            (result(r#"{"address":"0x0"}"#), Capability::No),
            (result("null"), Capability::No),
            (
                error(-32601, "the method eth_getProof does not exist"),
                Capability::No,
            ),
            (
                error(-32000, "method not supported on this plan"),
                Capability::No,
            ),
            (error(-32603, "internal error"), unknown("internal error")),
        ] {
            assert_eq!(proof_from(&answer), expected, "{answer:?}");
        }
    }

    #[test]
    fn websocket_needs_101_with_upgrade_websocket() {
        for (status, upgrade, expected) in [
            (101, Some("websocket"), Capability::Yes),
            (101, Some("WebSocket"), Capability::Yes),
            (101, Some("h2c"), Capability::No),
            (200, None, Capability::No),
            (426, None, Capability::No),
            (503, None, unknown("HTTP status 503")),
            (429, None, unknown("HTTP status 429")),
        ] {
            assert_eq!(handshake_from(status, upgrade), expected, "{status}");
        }
    }
}
