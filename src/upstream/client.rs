//! Sends calls to one upstream over the shared pooled client (`transport`) and reads its
//! reply into per-call answers. Results stay raw bytes (slices of the reply), never re-encoded.

use std::{
    borrow::Cow,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use bytes::Bytes;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use super::{Upstream, transport::SendError};
use crate::rpc::{Blame, Call, blame};

/// Why an upstream gave no usable reply. Messages never contain its URL.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("rate limited (HTTP 429){}", retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("malformed reply: {0}")]
    Malformed(String),
    #[error("transport error: {0}")]
    Transport(String),
    /// Answered too late to matter: another upstream's answer was used.
    #[error("{0}")]
    Slow(String),
    /// A well-formed reply to another call (an id this request did not send, or sent
    /// once and answered twice): the provider or its load balancer mixed answers up.
    #[error("answer to another call: {0}")]
    ForeignReply(String),
}

impl UpstreamError {
    /// Its kind as a metrics label and span field (`outlast_upstream_requests_total`'s
    /// `outcome`).
    pub fn label(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) => "connect",
            UpstreamError::Timeout(_) => "timeout",
            UpstreamError::RateLimited { .. } => "rate_limited",
            UpstreamError::Status(_) => "http_status",
            UpstreamError::Malformed(_) => "malformed",
            UpstreamError::Transport(_) => "transport",
            UpstreamError::Slow(_) => "slow",
            UpstreamError::ForeignReply(_) => "foreign_reply",
        }
    }

    /// The kind of failure, for health: hung, unreachable, failing or rate limited.
    pub fn cause(&self) -> super::health::Cause {
        use super::health::Cause;
        match self {
            UpstreamError::Connect(_) => Cause::Unreachable,
            UpstreamError::Timeout(_) | UpstreamError::Slow(_) => Cause::Unresponsive,
            UpstreamError::RateLimited { .. } => Cause::RateLimited,
            UpstreamError::Status(_)
            | UpstreamError::Malformed(_)
            | UpstreamError::Transport(_)
            | UpstreamError::ForeignReply(_) => Cause::Failing,
        }
    }
}

/// One call's answer: a raw `result`, or a raw `error` object with what blame needs.
#[derive(Debug, Clone)]
pub enum Answer {
    Result(Bytes),
    Error {
        raw: Bytes,
        code: i64,
        message: String,
    },
}

impl Answer {
    /// Bytes of the raw answer, as the upstream sent them.
    pub fn size(&self) -> usize {
        match self {
            Answer::Result(raw) | Answer::Error { raw, .. } => raw.len(),
        }
    }

    pub fn blame(&self) -> Option<Blame> {
        match self {
            Answer::Result(_) => None,
            Answer::Error { code, message, .. } => Some(blame(*code, message)),
        }
    }
}

impl Upstream {
    /// Sends `calls` as one request (a batch when more than one) and returns one answer
    /// per call, in order; `None` where the upstream's batch reply left a call out.
    pub async fn send(&self, calls: &[&Call<'_>]) -> Result<Vec<Option<Answer>>, UpstreamError> {
        self.send_within(calls, self.timeout).await
    }

    /// As `send`, giving up after `timeout` (background checks wait less than callers).
    /// Within a client's request this is one traced attempt (`telemetry`).
    pub async fn send_within(
        &self,
        calls: &[&Call<'_>],
        timeout: Duration,
    ) -> Result<Vec<Option<Answer>>, UpstreamError> {
        let methods = calls.iter().map(|c| c.method.as_ref());
        let attempt = crate::telemetry::attempt(&self.name, methods);
        let result = self.exchange(calls, timeout, attempt.as_ref()).await;
        if let Some(attempt) = attempt {
            attempt.finish(&result, UpstreamError::label);
        }
        result
    }

    async fn exchange(
        &self,
        calls: &[&Call<'_>],
        timeout: Duration,
        attempt: Option<&crate::telemetry::Attempt>,
    ) -> Result<Vec<Option<Answer>>, UpstreamError> {
        let target = self
            .target
            .as_ref()
            .map_err(|e| UpstreamError::Transport(e.clone()))?;
        let base = next_ids(calls.len());
        let payload = Bytes::from(encode(calls, base));
        #[cfg(test)]
        if let Some(script) = &self.script {
            let (status, bytes) = tokio::time::timeout(timeout, script.reply(payload))
                .await
                .map_err(|_| UpstreamError::Timeout(timeout))??;
            return read(status, &bytes, base, calls.len());
        }
        let mut request = http::Request::new(http_body_util::Full::new(payload));
        *request.method_mut() = http::Method::POST;
        *request.headers_mut() = target.headers.clone();
        if let Some(attempt) = attempt {
            attempt.inject(request.headers_mut());
        }
        let reply = tokio::time::timeout(timeout, self.http.send(target, request, self.max_reply))
            .await
            .map_err(|_| UpstreamError::Timeout(timeout))?
            .map_err(|e| match e {
                SendError::Connect(detail) => UpstreamError::Connect(detail),
                SendError::Transport(detail) => UpstreamError::Transport(detail),
                SendError::TooLarge(max) => UpstreamError::Malformed(format!(
                    "reply larger than {max} bytes ([routing] max_reply_bytes)"
                )),
            })?;
        if reply.status == http::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = reply
                .headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            return Err(UpstreamError::RateLimited { retry_after });
        }
        let (status, bytes) = (reply.status, reply.body);
        read(status, &bytes, base, calls.len())
    }
}

/// One reply's answers, per call; its status decides whose fault an unreadable one is.
fn read(
    status: http::StatusCode,
    bytes: &Bytes,
    base: u64,
    expected: usize,
) -> Result<Vec<Option<Answer>>, UpstreamError> {
    match decode(bytes, base, expected) {
        Ok(answers) => Ok(answers),
        // A non-2xx status without a readable JSON-RPC body is the upstream's fault.
        Err(_) if !status.is_success() => Err(UpstreamError::Status(status.as_u16())),
        Err(e) => Err(e),
    }
}

/// The first of `n` request ids never sent before by this process. Ids are unique per
/// request (not just per position), so an answer to another request — a provider's or
/// its load balancer's mix-up — carries an id this request did not send. They start at
/// a per-process offset, so two Outlasts behind one provider do not share them either,
/// and stay below 2^53 (exact in JavaScript providers).
fn next_ids(n: usize) -> u64 {
    static NEXT: std::sync::LazyLock<AtomicU64> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let seed = (u64::from(std::process::id()) << 32) ^ u64::from(nanos);
        AtomicU64::new(seed % (1 << 40) + 1)
    });
    NEXT.fetch_add(n as u64, Ordering::Relaxed)
}

/// Call `i` gets id `base + i`, so a batch reply in any order maps back.
fn encode(calls: &[&Call<'_>], base: u64) -> Vec<u8> {
    // The size it will be, give or take an id's digits: grown, a batch's body was
    // copied a few times over.
    let size: usize = calls
        .iter()
        .map(|c| 64 + c.method.len() + c.params.map_or(0, |p| p.get().len()))
        .sum();
    let mut out = Vec::with_capacity(size + 2);
    let batch = calls.len() != 1;
    if batch {
        out.push(b'[');
    }
    for (i, call) in calls.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        out.extend_from_slice(itoa::Buffer::new().format(base + i as u64).as_bytes());
        out.extend_from_slice(br#","method":"#);
        if call.method.row().is_some() {
            // A name from the method table: letters, digits and `_`, nothing to escape
            // (a test below holds the table to it).
            out.push(b'"');
            out.extend_from_slice(call.method.as_bytes());
            out.push(b'"');
        } else {
            // Writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, call.method.as_ref());
        }
        if let Some(params) = call.params {
            out.extend_from_slice(br#","params":"#);
            out.extend_from_slice(params.get().as_bytes());
        }
        out.push(b'}');
    }
    if batch {
        out.push(b']');
    }
    out
}

#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(default)]
    id: Option<ReplyId>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ErrorObject<'a> {
    code: i64,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
}

/// A reply's id, read as the number Outlast sends (`encode`) in the same pass as the
/// rest; anything else kept only as text for the error that names it (the id was kept
/// raw and parsed after: ~400 instructions a reply).
enum ReplyId {
    Number(u64),
    Other(String),
}

impl ReplyId {
    fn number(&self) -> Option<u64> {
        match self {
            ReplyId::Number(n) => Some(*n),
            ReplyId::Other(_) => None,
        }
    }
}

impl std::fmt::Display for ReplyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyId::Number(n) => write!(f, "{n}"),
            ReplyId::Other(text) => f.write_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for ReplyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ReplyId;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON-RPC id")
            }

            fn visit_u64<E>(self, n: u64) -> Result<ReplyId, E> {
                Ok(ReplyId::Number(n))
            }

            fn visit_i64<E>(self, n: i64) -> Result<ReplyId, E> {
                Ok(ReplyId::Other(n.to_string()))
            }

            fn visit_f64<E>(self, n: f64) -> Result<ReplyId, E> {
                Ok(ReplyId::Other(n.to_string()))
            }

            fn visit_str<E>(self, s: &str) -> Result<ReplyId, E> {
                Ok(ReplyId::Other(format!("{s:?}")))
            }

            fn visit_bool<E>(self, b: bool) -> Result<ReplyId, E> {
                Ok(ReplyId::Other(b.to_string()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ReplyId, A::Error> {
                while a.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(ReplyId::Other("(an array)".into()))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ReplyId, A::Error> {
                while a
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(ReplyId::Other("(an object)".into()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn decode(bytes: &Bytes, base: u64, expected: usize) -> Result<Vec<Option<Answer>>, UpstreamError> {
    let malformed = |what: &str| UpstreamError::Malformed(what.to_owned());
    // UTF-8 checked once, whole, then read as text (as `rpc::parse` does): reading bytes,
    // serde_json checks each string and raw value it keeps again.
    let text = std::str::from_utf8(bytes).map_err(|e| malformed(&format!("not UTF-8: {e}")))?;
    let first = text.bytes().find(|b| !b.is_ascii_whitespace());
    if expected == 1 && first == Some(b'{') {
        let reply: Reply<'_> = serde_json::from_str(text).map_err(|e| malformed(&e.to_string()))?;
        // The answer to another request (a provider's or its load balancer's mix-up) is
        // never this call's: the call moves on to another upstream.
        if slot_of(&reply, base, 1).is_none() {
            return Err(UpstreamError::ForeignReply(format!(
                "reply id {} is not the id sent ({base})",
                reply
                    .id
                    .as_ref()
                    .map_or_else(|| "(none)".to_owned(), ReplyId::to_string)
            )));
        }
        return Ok(vec![Some(answer(bytes, &reply)?)]);
    }
    if first != Some(b'[') {
        // A single error object for a whole batch (e.g. "batch too large") says nothing
        // about the calls themselves: another upstream may take the batch.
        let hint = serde_json::from_str::<Reply<'_>>(text)
            .ok()
            .and_then(|r| r.error)
            .map_or_else(
                || "not JSON-RPC".to_owned(),
                |e| format!("batch refused: {}", e.get()),
            );
        return Err(malformed(&hint));
    }
    let replies: Vec<Reply<'_>> =
        serde_json::from_str(text).map_err(|e| malformed(&e.to_string()))?;
    let mut answers: Vec<Option<Answer>> = vec![None; expected];
    for reply in &replies {
        let slot = slot_of(reply, base, expected).ok_or_else(|| {
            UpstreamError::ForeignReply("batch reply with an id Outlast did not send".into())
        })?;
        if answers[slot].is_some() {
            return Err(UpstreamError::ForeignReply(format!(
                "batch reply with id {} twice",
                base + slot as u64
            )));
        }
        answers[slot] = Some(answer(bytes, reply)?);
    }
    Ok(answers)
}

/// The call a reply answers: its id is `base` plus the call's position, as `encode`
/// sent it.
fn slot_of(reply: &Reply<'_>, base: u64, expected: usize) -> Option<usize> {
    reply
        .id
        .as_ref()
        .and_then(ReplyId::number)
        .and_then(|id| id.checked_sub(base))
        .and_then(|i| usize::try_from(i).ok())
        .filter(|&i| i < expected)
}

fn answer(bytes: &Bytes, reply: &Reply<'_>) -> Result<Answer, UpstreamError> {
    match (reply.result, reply.error) {
        (Some(result), None) => Ok(Answer::Result(bytes.slice_ref(result.get().as_bytes()))),
        (_, Some(error)) => {
            let obj: ErrorObject<'_> = serde_json::from_str(error.get())
                .map_err(|e| UpstreamError::Malformed(format!("error object: {e}")))?;
            Ok(Answer::Error {
                raw: bytes.slice_ref(error.get().as_bytes()),
                code: obj.code,
                message: obj.message.into_owned(),
            })
        }
        (None, None) => Err(UpstreamError::Malformed("neither result nor error".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(method: &str, params: Option<&'static RawValue>) -> Call<'static> {
        Call {
            id: None,
            method: method.to_owned().into(),
            params,
        }
    }

    #[test]
    fn single_call_is_sent_unbatched_with_params_untouched() {
        let params: &'static RawValue =
            Box::leak(RawValue::from_string(r#"[ "0xA" ,1.0e3]"#.into()).expect("json"));
        let c = call("eth_x", Some(params));
        assert_eq!(
            String::from_utf8(encode(&[&c], 0)).expect("utf8"),
            r#"{"jsonrpc":"2.0","id":0,"method":"eth_x","params":[ "0xA" ,1.0e3]}"#
        );
    }

    #[test]
    fn every_method_name_is_sent_as_json_reads_it_back() {
        // Known names are written without escaping: the table must never need it.
        let names = crate::rpc::methods::names()
            .map(str::to_owned)
            .chain(["eth_\"odd\\name\n".to_owned()]);
        for name in names {
            let c = call(&name, None);
            let sent: serde_json::Value =
                serde_json::from_slice(&encode(&[&c, &c], u64::MAX - 1)).expect("valid JSON");
            assert_eq!(sent[0]["method"], name.as_str(), "{sent}");
            assert_eq!(sent[1]["id"], u64::MAX, "{sent}");
        }
    }

    #[test]
    fn batch_reply_in_any_order_maps_back_by_id() {
        let bytes = Bytes::from_static(br#"[{"jsonrpc":"2.0","id":1,"result":null},{"jsonrpc":"2.0","id":0,"error":{"code":3,"message":"reverted"}}]"#);
        let answers = decode(&bytes, 0, 3).expect("decodes");
        assert!(matches!(&answers[0], Some(Answer::Error { code: 3, .. })));
        assert!(matches!(&answers[1], Some(Answer::Result(r)) if &r[..] == b"null"));
        assert!(answers[2].is_none());
    }

    #[test]
    fn a_reply_to_another_call_is_never_taken() {
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"result":"0x1"}"#[..],
            br#"{"jsonrpc":"2.0","id":null,"result":"0x1"}"#,
            br#"{"jsonrpc":"2.0","result":"0x1"}"#,
            br#"{"jsonrpc":"2.0","id":"0x0","result":"0x1"}"#,
        ] {
            assert!(
                matches!(
                    decode(&Bytes::copy_from_slice(body), 0, 1),
                    Err(UpstreamError::ForeignReply(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let twice = Bytes::from_static(
            br#"[{"jsonrpc":"2.0","id":0,"result":"0x1"},{"jsonrpc":"2.0","id":0,"result":"0x2"}]"#,
        );
        assert!(matches!(
            decode(&twice, 0, 2),
            Err(UpstreamError::ForeignReply(_))
        ));
        let ok = Bytes::from_static(br#"{"jsonrpc":"2.0","id":0,"result":"0x1"}"#);
        assert!(
            matches!(&decode(&ok, 0, 1).expect("ok")[0], Some(Answer::Result(r)) if &r[..] == b"\"0x1\"")
        );
    }

    #[test]
    fn ids_are_unique_per_request_so_another_requests_answer_is_refused() {
        let (first, second) = (next_ids(1), next_ids(3));
        assert!(second > first, "ids never repeat: {first}, {second}");
        assert!(second + 3 < 1 << 53, "ids stay exact in JavaScript");
        // The answer to the request before this one: well formed, but not this call's.
        let earlier = Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","id":{first},"result":"0x1"}}"#
        ));
        assert!(matches!(
            decode(&earlier, second, 1),
            Err(UpstreamError::ForeignReply(m)) if m.contains("is not the id sent")
        ));
        let batch = format!(
            r#"[{{"jsonrpc":"2.0","id":{},"result":"0x2"}},{{"jsonrpc":"2.0","id":{},"result":"0x0"}}]"#,
            second + 2,
            second
        );
        let answers = decode(&Bytes::from(batch), second, 3).expect("decodes");
        assert!(matches!(&answers[0], Some(Answer::Result(r)) if &r[..] == b"\"0x0\""));
        assert!(answers[1].is_none());
        assert!(matches!(&answers[2], Some(Answer::Result(r)) if &r[..] == b"\"0x2\""));
        let stranger = format!(r#"[{{"jsonrpc":"2.0","id":{first},"result":"0x1"}}]"#);
        assert!(decode(&Bytes::from(stranger), second, 3).is_err());
    }

    proptest::proptest! {
        /// Whatever an upstream sends, decoding never panics, and an answer is only
        /// ever taken for an id that was sent, once.
        #[test]
        fn decoding_any_reply_never_panics_or_takes_a_stranger(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            ids in proptest::collection::vec(0usize..6, 0..6),
            expected in 1usize..4,
        ) {
            let _ = decode(&Bytes::from(body), 0, expected);
            let replies: Vec<String> = ids
                .iter()
                .map(|i| format!(r#"{{"jsonrpc":"2.0","id":{i},"result":"0x{i}"}}"#))
                .collect();
            let batch = Bytes::from(format!("[{}]", replies.join(",")));
            let unique: std::collections::HashSet<_> = ids.iter().collect();
            let valid = ids.iter().all(|&i| i < expected) && unique.len() == ids.len();
            match decode(&batch, 0, expected) {
                Ok(answers) => {
                    proptest::prop_assert!(valid);
                    for (slot, a) in answers.iter().enumerate() {
                        let want = format!("\"0x{slot}\"");
                        match a {
                            Some(Answer::Result(r)) => proptest::prop_assert_eq!(&r[..], want.as_bytes()),
                            None => proptest::prop_assert!(!ids.contains(&slot)),
                            Some(other) => proptest::prop_assert!(false, "{other:?}"),
                        }
                    }
                }
                Err(_) => proptest::prop_assert!(!valid),
            }
        }
    }

    #[test]
    fn only_the_number_sent_is_taken_for_an_id() {
        // 7 was sent; anything that is not the number 7 answers another call.
        for (id, named) in [
            ("\"7\"", "\"7\""),
            ("7.0", "7"),
            ("-7", "-7"),
            ("8", "8"),
            ("[7]", "(an array)"),
            ("{\"id\":7}", "(an object)"),
            ("true", "true"),
            ("null", "(none)"),
        ] {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":"0x1"}}"#);
            match decode(&Bytes::from(body), 7, 1) {
                Err(UpstreamError::ForeignReply(why)) => assert!(
                    why.contains(&format!("reply id {named} is not the id sent (7)")),
                    "{id}: {why}"
                ),
                other => panic!("{id}: {other:?}"),
            }
        }
        let body = Bytes::from_static(br#"{"jsonrpc":"2.0","id":7,"result":"0x1"}"#);
        assert!(matches!(
            &decode(&body, 7, 1).expect("ok")[0],
            Some(Answer::Result(_))
        ));
    }

    #[test]
    fn garbage_and_half_replies_are_malformed() {
        for body in [
            &b"<html>bad gateway</html>"[..],
            br#"{"jsonrpc":"2.0","id":0}"#,
            br#"{"error":{"code":-32600,"message":"too big"}}"#,
            b"{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":\"0x\xff\"}",
        ] {
            let expected = if body.starts_with(b"{\"error") { 2 } else { 1 };
            assert!(
                matches!(
                    decode(&Bytes::copy_from_slice(body), 0, expected),
                    Err(UpstreamError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
