//! The HTTP client every upstream call goes through: hyper's pooled keep-alive client,
//! HTTP/1.1 or HTTP/2 (ALPN) over rustls with the webpki roots, plain HTTP for local
//! nodes. Chosen over reqwest for the hot path: reqwest re-parses the URL and runs
//! redirect and retry layers on every request, which cost about a quarter of Outlast's
//! pass-through throughput (bench/run.sh). Each upstream's URL is turned into a request
//! target once (`Target`); user info becomes a Basic `Authorization` header, as
//! browsers and reqwest do, so it never travels in the request line.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Uri,
    header::{AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT},
};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use url::Url;

use crate::config::Routing;

type Pooled = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Shared by every upstream: connection pools per host, kept alive, one set per serving
/// runtime (`cores`), so a call never waits on a connection another thread drives.
/// Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    per_core: std::sync::Arc<[Pooled]>,
}

impl HttpClient {
    /// Sends `request` over a connection of the calling thread's runtime.
    pub fn request(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        let i = crate::cores::current() % self.per_core.len();
        self.per_core[i].request(request)
    }
}

pub fn http_client(routing: &Routing) -> HttpClient {
    HttpClient {
        per_core: (0..crate::cores::count())
            .map(|_| pooled(routing))
            .collect(),
    }
}

fn pooled(routing: &Routing) -> Pooled {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(Duration::from_millis(routing.connect_timeout_ms)));
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .build(tls)
}

/// Where one upstream's requests go, worked out once from its URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    /// Every request's headers: the body's type, Outlast's name, and `Authorization`
    /// from the URL's user info. Made once: each request clones the map, where building
    /// it copied every value and grew the map header by header.
    pub headers: HeaderMap,
}

impl Target {
    pub fn new(url: &Url) -> Result<Target, String> {
        let mut bare = url.clone();
        let authorization = (!url.username().is_empty()).then(|| {
            let user = percent_decoded(url.username());
            let password = url.password().map(percent_decoded).unwrap_or_default();
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            let mut value = HeaderValue::from_str(&format!("Basic {token}"))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
            value.set_sensitive(true);
            value
        });
        // Neither setter fails on an http(s) URL with a host, the only kind configured.
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        bare.set_fragment(None);
        let uri = bare
            .as_str()
            .parse::<Uri>()
            .map_err(|e| format!("not usable as a request target: {e}"))?;
        // Room for these and the two hyper adds (`content-length`; `host` for https).
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("outlast/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, value);
        }
        // Plain HTTP is always HTTP/1.1 here (no ALPN), where the pool would format
        // `host[:port]` into a new header on every request (3% of a forwarded call's
        // instructions, bench/instructions.sh); over TLS, HTTP/2 names it
        // `:authority`, so the pool is left to decide.
        if uri.scheme() == Some(&http::uri::Scheme::HTTP)
            && let Some(host) = uri.authority().map(|a| host_header(a, 80))
        {
            headers.insert(HOST, host);
        }
        Ok(Target { uri, headers })
    }
}

/// `Host` as hyper's pool writes it: the host, and the port unless it is `default`.
fn host_header(authority: &http::uri::Authority, default: u16) -> HeaderValue {
    let value = match authority.port_u16() {
        Some(port) if port != default => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn percent_decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_becomes_a_basic_header_and_leaves_the_target() {
        let url = Url::parse("https://alice:s%40cret@rpc.example/v1/KEY?x=1").expect("url");
        let t = Target::new(&url).expect("target");
        assert_eq!(t.uri.to_string(), "https://rpc.example/v1/KEY?x=1");
        let header = t.headers.get(AUTHORIZATION).expect("header");
        // base64("alice:s@cret")
        assert_eq!(header.to_str().expect("ascii"), "Basic YWxpY2U6c0BjcmV0");
        let plain =
            Target::new(&Url::parse("http://127.0.0.1:8545").expect("url")).expect("target");
        assert!(plain.headers.get(AUTHORIZATION).is_none());
        assert_eq!(plain.headers[CONTENT_TYPE], "application/json");
        assert_eq!(plain.uri.to_string(), "http://127.0.0.1:8545/");
        // Host as the pool would have written it; left to the pool over TLS.
        assert_eq!(plain.headers[HOST], "127.0.0.1:8545");
        assert!(t.headers.get(HOST).is_none());
        for (url, host) in [
            ("http://alice:pw@node.local/rpc", "node.local"),
            ("http://node.local:80/", "node.local"),
            ("http://[::1]:8545/", "[::1]:8545"),
        ] {
            let t = Target::new(&Url::parse(url).expect("url")).expect("target");
            assert_eq!(t.headers[HOST], host, "{url}");
        }
    }
}
