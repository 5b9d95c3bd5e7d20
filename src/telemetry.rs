//! Request tracing: one span per JSON-RPC request (`rpc`: chain, transport, client,
//! methods, outcome) and one per upstream attempt (`upstream`: the upstream's name, the
//! attempt's number within its request, outcome, latency), all on target
//! `outlast::trace` at `debug` level: below the default log level, in collectors
//! through `[tracing]`, and in log lines written inside them with `RUST_LOG=debug`.
//!
//! W3C Trace Context in: a client's valid `traceparent` (and `tracestate`) makes the
//! request span a child of the client's trace, and its sampled flag decides whether the
//! request is traced. Out: each attempt's HTTP request carries a `traceparent` with that
//! trace id and the attempt's own span id. Without `[tracing] otlp_endpoint` Outlast takes
//! no part in traces and behaves as an HTTP proxy that does not trace should: the
//! client's headers go to the upstreams unchanged, so a trace that reaches a traced
//! node behind Outlast stays whole. A header that does not parse is never passed on.
//!
//! With an endpoint, `install` adds an OpenTelemetry layer that sees only these spans
//! and exports them over OTLP/HTTP in batches from its own thread; `Exporter::shutdown`
//! flushes what is left. Without one, the spans are below the default log level: a
//! request pays a level check and a `traceparent` lookup, nothing more.
//!
//! Background work (head polls, probes, subscriptions' block feed) runs outside any
//! request and is never traced. Spans name upstreams, never their URLs. Nothing here
//! waits on the collector while a request is served: a full batch queue drops spans.

use std::{
    future::Future,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures_util::future::Either;
use http::{HeaderMap, HeaderValue, header::HeaderName};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use opentelemetry::{
    KeyValue,
    propagation::TextMapPropagator as _,
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpError};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider},
};
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{Layer, Registry, filter::Targets};

use crate::config::Tracing;

/// The target of every span made here: all the exporter's layer lets through.
pub const TARGET: &str = "outlast::trace";

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// One export to the collector, connection included (the OTLP default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, spans still queued get this long to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// A collector's reply is a small protobuf message; more is not read.
const MAX_COLLECTOR_REPLY: usize = 64 * 1024;
/// Methods named in a batch's `rpc.method`; the rest are counted in `calls`.
const MAX_METHODS_SHOWN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("[tracing] otlp_endpoint: cannot start the OTLP exporter: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

/// The layer that exports `outlast::trace` spans, for `tracing_subscriber::registry()`.
pub type ExportLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// The OTLP export `install` started: keep it until the gateway stops, then `shutdown`.
pub struct Exporter {
    provider: SdkTracerProvider,
}

/// With `[tracing] otlp_endpoint`: the exporter and the layer that feeds it; exports
/// are HTTP requests on `runtime`. `None` when tracing is not configured.
pub fn install(
    config: &Tracing,
    runtime: tokio::runtime::Handle,
) -> Result<Option<(ExportLayer, Exporter)>, TelemetryError> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let mut url = endpoint.expose().clone();
    if url.path() == "/" {
        url.set_path("/v1/traces");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(OnRuntime {
            client: collector_client(),
            runtime,
        })
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(TelemetryError::Exporter)?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("outlast"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_target(false)
        .with_filter(Targets::new().with_target(TARGET, tracing::Level::TRACE));
    Ok(Some((Box::new(layer), Exporter { provider })))
}

impl Exporter {
    /// Sends the spans still queued, within `FLUSH_TIMEOUT`, and stops the exporter.
    /// Runs the blocking flush off the runtime, whose threads carry its HTTP request.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("request traces not all exported at shutdown: {e}"),
            Err(e) => tracing::warn!("request traces not flushed at shutdown: {e}"),
        }
    }
}

/// The exporter's HTTP client. The batch processor exports from its own thread, where
/// hyper cannot run: each export is a task on Outlast's runtime, awaited from there.
#[derive(Debug, Clone)]
struct OnRuntime {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

/// http:// or https:// (webpki roots), as for upstreams; one pooled connection.
fn collector_client() -> Client<HttpsConnector<HttpConnector>, Full<Bytes>> {
    let mut tcp = HttpConnector::new();
    tcp.set_connect_timeout(Some(EXPORT_TIMEOUT));
    tcp.enforce_http(false);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(tcp);
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(tls)
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let response = client.request(request.map(Full::new)).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_COLLECTOR_REPLY)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(http::Response::from_parts(parts, body))
        };
        self.runtime
            .spawn(async move {
                tokio::time::timeout(EXPORT_TIMEOUT, exchange)
                    .await
                    .map_err(|_| format!("no answer within {} s", EXPORT_TIMEOUT.as_secs()))?
            })
            .await?
    }
}

tokio::task_local! {
    /// The request being served by this task, when it is traced or carries a client's
    /// trace context.
    static REQUEST: Arc<Context>;
}

/// What the upstream attempts of one request need: the span they belong to, the
/// client's trace headers, and the count that numbers them.
struct Context {
    span: Span,
    inbound: Option<Inbound>,
    attempts: AtomicU32,
    started: Instant,
}

/// A client's valid W3C trace context: its headers as sent, and as parsed.
#[derive(Clone)]
struct Inbound {
    traceparent: HeaderValue,
    tracestate: Option<HeaderValue>,
    parent: opentelemetry::Context,
}

impl Inbound {
    fn from(headers: &HeaderMap) -> Option<Inbound> {
        let mut sent = headers.get_all(TRACEPARENT).iter();
        let traceparent = sent.next()?.clone();
        if sent.next().is_some() || !well_formed(traceparent.as_bytes()) {
            return None;
        }
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        if !parent.span().span_context().is_valid() {
            return None;
        }
        Some(Inbound {
            traceparent,
            tracestate: headers.get(TRACESTATE).cloned(),
            parent,
        })
    }
}

/// `vv-<32 hex>-<16 hex>-<2 hex>`, lowercase, version never `ff`; a later version may
/// add fields after another `-`. The SDK's parser is more lenient (a short trace id is
/// padded with zeros), and a header passed on unchanged must be exactly right. All-zero
/// ids are refused by the parser after this.
fn well_formed(traceparent: &[u8]) -> bool {
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let Some((head, rest)) = traceparent.split_at_checked(55) else {
        return false;
    };
    let version = &head[..2];
    hex(version)
        && version != b"ff"
        && head[2] == b'-'
        && hex(&head[3..35])
        && head[35] == b'-'
        && hex(&head[36..52])
        && head[52] == b'-'
        && hex(&head[53..])
        && (rest.is_empty() || version != b"00" && rest[0] == b'-')
}

/// One JSON-RPC request's tracing: its span and its client's trace context. `run` the
/// request's work in it.
pub struct Request {
    context: Option<Arc<Context>>,
}

impl Request {
    /// A request over HTTP: `client` is the caller's name (its key's, `anonymous` or
    /// `open`), `address` where it came from, `headers` may hold its trace context.
    pub fn http(chain: &str, client: &str, address: IpAddr, headers: &HeaderMap) -> Request {
        let span = tracing::debug_span!(
            target: TARGET,
            "rpc",
            otel.kind = "server",
            rpc.system = "jsonrpc",
            chain,
            transport = "http",
            client,
            client.address = %address,
            rpc.method = Empty,
            calls = Empty,
            outcome = Empty,
            latency_ms = Empty,
            otel.status_code = Empty,
        );
        Request::new(span, Inbound::from(headers))
    }

    /// One message on a WebSocket. JSON-RPC messages carry no headers, and a connection
    /// lives for hours: each message is its own trace.
    pub fn websocket(chain: &str, client: &str) -> Request {
        let span = tracing::debug_span!(
            target: TARGET,
            "rpc",
            otel.kind = "server",
            rpc.system = "jsonrpc",
            chain,
            transport = "websocket",
            client,
            rpc.method = Empty,
            calls = Empty,
            outcome = Empty,
            latency_ms = Empty,
            otel.status_code = Empty,
        );
        Request::new(span, None)
    }

    fn new(span: Span, inbound: Option<Inbound>) -> Request {
        if span.is_disabled() && inbound.is_none() {
            return Request { context: None };
        }
        if let Some(inbound) = &inbound {
            // Fails only when nothing exports (no OpenTelemetry layer): then the
            // client's headers are passed on as they came.
            let _ = span.set_parent(inbound.parent.clone());
        }
        Request {
            context: Some(Arc::new(Context {
                span,
                inbound,
                attempts: AtomicU32::new(0),
                started: Instant::now(),
            })),
        }
    }

    /// `work`, inside this request's span and context.
    pub fn run<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        match self.context {
            None => Either::Left(work),
            Some(context) => {
                let span = context.span.clone();
                Either::Right(REQUEST.scope(context, work.instrument(span)))
            }
        }
    }
}

/// `work` on another task, still part of the request this task serves (a transaction
/// sent on after its client was answered): its attempts stay in the request's trace.
pub fn carry<F: Future>(work: F) -> impl Future<Output = F::Output> {
    match REQUEST.try_with(Arc::clone) {
        Ok(context) => Either::Right(REQUEST.scope(context, work)),
        Err(_) => Either::Left(work),
    }
}

/// What the calls of one request came to, for its span; nothing when it is not traced.
pub struct Summary {
    context: Option<Arc<Context>>,
    methods: Vec<String>,
    calls: usize,
    worst: Verdict,
}

/// A request's outcome is its worst call's, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Verdict {
    Ok,
    /// An upstream's JSON-RPC error given as the answer (a revert, bad params).
    Error,
    /// Refused before anything was sent: invalid, denied, not for this key.
    Rejected,
    Limited,
    Unverified,
    Unavailable,
}

impl Verdict {
    fn label(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Error => "error",
            Verdict::Rejected => "rejected",
            Verdict::Limited => "limited",
            Verdict::Unverified => "unverified",
            Verdict::Unavailable => "unavailable",
        }
    }
}

impl Summary {
    pub fn start() -> Summary {
        Summary {
            context: REQUEST
                .try_with(Arc::clone)
                .ok()
                .filter(|c| !c.span.is_disabled()),
            methods: Vec::new(),
            calls: 0,
            worst: Verdict::Ok,
        }
    }

    /// A call refused before it was sent; `limited`: by a limit (-32005), else as
    /// invalid, denied or not for the caller's key.
    pub fn rejected(&mut self, limited: bool) {
        if self.context.is_none() {
            return;
        }
        let verdict = if limited {
            Verdict::Limited
        } else {
            Verdict::Rejected
        };
        self.add(None, verdict);
    }

    /// A call answered; `outcome` as `route::Outcome::labels` names it (`result`,
    /// `error`, `limited`, `unverified`, `unavailable`).
    pub fn answered(&mut self, method: &str, outcome: &str) {
        if self.context.is_none() {
            return;
        }
        let verdict = match outcome {
            "result" => Verdict::Ok,
            "error" => Verdict::Error,
            "limited" => Verdict::Limited,
            "unverified" => Verdict::Unverified,
            _ => Verdict::Unavailable,
        };
        self.add(Some(method), verdict);
    }

    fn add(&mut self, method: Option<&str>, verdict: Verdict) {
        self.calls += 1;
        self.worst = self.worst.max(verdict);
        if let Some(m) = method
            && self.methods.len() < MAX_METHODS_SHOWN
            && !self.methods.iter().any(|seen| seen == m)
        {
            self.methods.push(m.to_owned());
        }
    }

    /// Records it all on the request's span.
    pub fn finish(self) {
        let Some(context) = self.context else { return };
        let span = &context.span;
        span.record("rpc.method", self.methods.join(",").as_str());
        span.record("calls", count(self.calls));
        span.record("outcome", self.worst.label());
        span.record("latency_ms", millis(context.started.elapsed()));
        if self.worst >= Verdict::Unverified {
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// One upstream attempt of a traced request: its span, closed when the attempt ends
/// (or is dropped: a hedge answered first).
pub struct Attempt {
    span: Span,
    inbound: Option<Inbound>,
    started: Instant,
    finished: bool,
}

/// The attempt about to send calls of these `methods` (one per call) to `upstream`;
/// `None` outside a request (a background check) or when the request is neither traced
/// nor carries a trace.
pub fn attempt<'m>(
    upstream: &str,
    methods: impl ExactSizeIterator<Item = &'m str>,
) -> Option<Attempt> {
    let context = REQUEST.try_with(Arc::clone).ok()?;
    let number = context.attempts.fetch_add(1, Ordering::Relaxed) + 1;
    let span = tracing::debug_span!(
        target: TARGET,
        parent: &context.span,
        "upstream",
        otel.kind = "client",
        upstream,
        attempt = i64::from(number),
        rpc.method = Empty,
        calls = count(methods.len()),
        outcome = Empty,
        latency_ms = Empty,
        error = Empty,
        otel.status_code = Empty,
    );
    if !span.is_disabled() {
        let mut shown: Vec<&str> = Vec::new();
        for method in methods {
            if shown.len() < MAX_METHODS_SHOWN && !shown.contains(&method) {
                shown.push(method);
            }
        }
        span.record("rpc.method", shown.join(",").as_str());
    }
    Some(Attempt {
        span,
        inbound: context.inbound.clone(),
        started: Instant::now(),
        finished: false,
    })
}

impl Attempt {
    /// Sets this attempt's `traceparent` (and `tracestate`) on its HTTP request: its own
    /// span in the request's trace when exporting, else the client's headers as sent.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let own = self.span.context();
        if own.span().span_context().is_valid() {
            TraceContextPropagator::new().inject_context(&own, &mut HeaderInjector(headers));
        } else if let Some(inbound) = &self.inbound {
            headers.insert(TRACEPARENT, inbound.traceparent.clone());
            if let Some(state) = &inbound.tracestate {
                headers.insert(TRACESTATE, state.clone());
            }
        }
    }

    /// Records how the attempt went, a failure by its `label` (`UpstreamError::label`);
    /// the span ends here.
    pub fn finish<T, E: std::fmt::Display>(
        mut self,
        result: &Result<T, E>,
        label: impl FnOnce(&E) -> &'static str,
    ) {
        self.finished = true;
        self.span
            .record("latency_ms", millis(self.started.elapsed()));
        match result {
            Ok(_) => {
                self.span.record("outcome", "ok");
            }
            Err(e) => {
                self.span.record("outcome", label(e));
                self.span.record("error", e.to_string().as_str());
                self.span.record("otel.status_code", "ERROR");
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.finished {
            self.span.record("outcome", "cancelled");
            self.span
                .record("latency_ms", millis(self.started.elapsed()));
        }
    }
}

/// A count as OpenTelemetry's integer attribute (`tracing`'s u64 arrives as text).
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn only_a_valid_traceparent_is_taken_from_a_client() {
        for (traceparent, taken) in [
            (PARENT, true),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
            ),
            // All-zero trace or span ids, wrong lengths, version ff, junk.
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            ("hello", false),
            // Upper case, a longer field, a future version with more fields.
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                false,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
                true,
            ),
        ] {
            let inbound = Inbound::from(&headers(&[
                ("traceparent", traceparent),
                ("tracestate", "vendor=1"),
            ]));
            assert_eq!(inbound.is_some(), taken, "{traceparent}");
        }
        assert!(Inbound::from(&headers(&[("tracestate", "vendor=1")])).is_none());
        assert!(
            Inbound::from(&headers(&[
                ("traceparent", PARENT),
                ("traceparent", PARENT)
            ]))
            .is_none(),
            "two traceparents are none"
        );
    }

    /// Without an exporter, an attempt passes the client's headers on byte for byte.
    #[tokio::test]
    async fn without_an_exporter_the_clients_trace_context_is_passed_on_unchanged() {
        let client = headers(&[("traceparent", PARENT), ("tracestate", "congo=t61rcWkgMzE")]);
        let request = Request::http("local", "open", IpAddr::from([127, 0, 0, 1]), &client);
        let sent = request
            .run(async {
                let attempt = attempt("u0", ["eth_blockNumber"].into_iter()).expect("in a request");
                let mut sent = HeaderMap::new();
                attempt.inject(&mut sent);
                attempt.finish::<(), String>(&Ok(()), |_| "never");
                sent
            })
            .await;
        assert_eq!(sent.get("traceparent").expect("traceparent"), PARENT);
        assert_eq!(
            sent.get("tracestate").expect("tracestate"),
            "congo=t61rcWkgMzE"
        );
        // Outside a request (a background check) there is no attempt, so no header.
        assert!(attempt("u0", ["eth_blockNumber"].into_iter()).is_none());
    }

    #[test]
    fn a_requests_outcome_is_its_worst_calls() {
        assert!(Verdict::Ok < Verdict::Error);
        assert!(Verdict::Rejected < Verdict::Unavailable);
        assert_eq!(Verdict::Ok.max(Verdict::Unverified).label(), "unverified");
    }
}
