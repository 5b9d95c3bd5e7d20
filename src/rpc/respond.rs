//! Writes the reply body. Every answer leaves through here, which is what puts the
//! client's own id back: upstreams only ever see Outlast's ids.

use serde_json::value::RawValue;

use super::errors::RpcError;

/// The reply being assembled, mirroring the request's shape (one object or an array).
pub struct ReplyBody {
    buf: Vec<u8>,
    batch: bool,
    count: usize,
}

impl ReplyBody {
    pub fn new(batch: bool, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 64);
        if batch {
            buf.push(b'[');
        }
        ReplyBody {
            buf,
            batch,
            count: 0,
        }
    }

    /// `result` is raw JSON, copied as is.
    pub fn result(&mut self, id: &RawValue, result: &[u8]) {
        self.member(id, b"result", result);
    }

    /// `error` is a raw JSON error object (an upstream's, passed through untouched).
    pub fn raw_error(&mut self, id: &RawValue, error: &[u8]) {
        self.member(id, b"error", error);
    }

    pub fn error(&mut self, id: &RawValue, error: &RpcError) {
        self.member(id, b"error", &error.to_json());
    }

    fn member(&mut self, id: &RawValue, key: &[u8], value: &[u8]) {
        if self.count > 0 {
            self.buf.push(b',');
        }
        self.count += 1;
        self.buf.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        self.buf.extend_from_slice(id.get().as_bytes());
        self.buf.extend_from_slice(b",\"");
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(b"\":");
        self.buf.extend_from_slice(value);
        self.buf.push(b'}');
    }

    /// `None` when nothing is to be answered (only notifications): the HTTP layer then
    /// sends an empty body, as JSON-RPC 2.0 asks.
    pub fn finish(mut self) -> Option<Vec<u8>> {
        if self.count == 0 {
            return None;
        }
        if self.batch {
            self.buf.push(b']');
        }
        Some(self.buf)
    }
}

/// One error object for a request that could not be read at all (id `null`).
pub fn whole_request_error(error: &RpcError) -> Vec<u8> {
    let mut body = ReplyBody::new(false, 128);
    body.error(super::parse::null(), error);
    body.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).expect("test JSON")
    }

    #[test]
    fn batch_replies_keep_ids_and_order() {
        let mut body = ReplyBody::new(true, 0);
        body.result(&raw(r#""a""#), b"\"0x1\"");
        body.raw_error(&raw("1.50"), br#"{"code":3,"message":"reverted"}"#);
        let out = String::from_utf8(body.finish().expect("has replies")).expect("utf8");
        assert_eq!(
            out,
            r#"[{"jsonrpc":"2.0","id":"a","result":"0x1"},{"jsonrpc":"2.0","id":1.50,"error":{"code":3,"message":"reverted"}}]"#
        );
    }

    #[test]
    fn only_notifications_means_no_body() {
        assert!(ReplyBody::new(true, 0).finish().is_none());
    }
}
