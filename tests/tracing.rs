//! Request tracing end to end: `outlast serve` as its own process, a real Anvil node
//! behind a small proxy that records the trace headers each request carries, and a
//! local OTLP/HTTP receiver that decodes what Outlast exports (protobuf, with the
//! OpenTelemetry project's own message types). Spans are read after a graceful stop,
//! so the flush on shutdown is what delivers them.

mod testbed;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{KeyValue, any_value::Value as Any},
    trace::v1::{Span, span::SpanKind},
};
use prost::Message as _;
use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, Fleet,
    gateway::{FAST_ROUTING, Outlast, config},
};

/// The client's trace: its trace id and the span Outlast's request span is a child of.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// One exported span with its resource's attributes (`service.name`, …).
type Exported = (Vec<KeyValue>, Span);

/// A local OTLP/HTTP receiver: every request it gets, and the spans of those to
/// `POST /v1/traces`, decoded.
struct Collector {
    url: String,
    requests: Arc<Mutex<usize>>,
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Collector {
    async fn start() -> Collector {
        let requests = Arc::new(Mutex::new(0usize));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (count, kept) = (requests.clone(), spans.clone());
        let app = Router::new().fallback(move |uri: axum::http::Uri, body: Bytes| {
            let (count, kept) = (count.clone(), kept.clone());
            async move {
                *count.lock().expect("lock") += 1;
                if uri.path() != "/v1/traces" {
                    return StatusCode::NOT_FOUND.into_response();
                }
                let Ok(export) = ExportTraceServiceRequest::decode(body) else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                let mut kept = kept.lock().expect("lock");
                for resource in export.resource_spans {
                    let attributes = resource.resource.map(|r| r.attributes).unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            kept.push((attributes.clone(), span));
                        }
                    }
                }
                // An empty ExportTraceServiceResponse: everything accepted.
                (
                    StatusCode::OK,
                    [("content-type", "application/x-protobuf")],
                    Vec::new(),
                )
                    .into_response()
            }
        });
        Collector {
            url: serve(app).await,
            requests,
            spans,
        }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().expect("lock").clone()
    }

    fn requests(&self) -> usize {
        *self.requests.lock().expect("lock")
    }
}

/// What reached the node: each request's JSON-RPC methods and its trace headers.
#[derive(Clone, Debug)]
struct Seen {
    methods: Vec<String>,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// A proxy in front of one node that records every request's methods and trace headers.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[derive(Clone)]
struct Relay {
    node: String,
    client: reqwest::Client,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start(node: String) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let relay = Relay {
            node,
            client: reqwest::Client::new(),
            seen: seen.clone(),
        };
        let app = Router::new().route("/", post(relay_one)).with_state(relay);
        Recorder {
            url: serve(app).await,
            seen,
        }
    }

    /// The requests that carried a call of `method`.
    fn of(&self, method: &str) -> Vec<Seen> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.methods.iter().any(|m| m == method))
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn relay_one(
    State(relay): State<Relay>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned())
    };
    let methods = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Array(calls)) => calls
            .iter()
            .map(|c| c["method"].as_str().unwrap_or("").to_owned())
            .collect(),
        Ok(call) => vec![call["method"].as_str().unwrap_or("").to_owned()],
        Err(_) => Vec::new(),
    };
    relay.seen.lock().expect("lock").push(Seen {
        methods,
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
    });
    let reply = relay
        .client
        .post(&relay.node)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    match reply {
        Ok(r) => (
            StatusCode::OK,
            [("content-type", "application/json")],
            r.bytes().await.unwrap_or_default(),
        )
            .into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// `eth_getBalance` through Outlast, with these extra headers; the reply's `result`.
async fn balance(base: &str, headers: &[(&str, &str)]) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/local"))
        .timeout(Duration::from_secs(10))
        .header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "eth_getBalance", "params": [ACCOUNT0_ADDRESS, "latest"]});
    let reply: Value = request
        .body(body.to_string())
        .send()
        .await
        .expect("Outlast answers")
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .expect("a JSON reply");
    assert!(reply["result"].is_string(), "{reply}");
    reply["result"].clone()
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Any> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> Option<String> {
    match attribute(attributes, key) {
        Some(Any::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `version-traceid-spanid-flags`, split; panics on anything else.
fn parts(traceparent: &str) -> [String; 4] {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "not a traceparent: {traceparent}");
    [p[0], p[1], p[2], p[3]].map(str::to_owned)
}

/// Waits (bounded) until the collector holds spans of `trace` or `within` passed.
async fn spans_of(collector: &Collector, trace: &str, within: Duration) -> Vec<Exported> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .collect();
        if spans.len() >= 2 || tokio::time::Instant::now() >= deadline {
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tracing_config(collector: &Collector, upstream: &str) -> String {
    config(
        &[upstream.to_owned()],
        &format!(
            "[tracing]\notlp_endpoint = \"{}\"\nservice_name = \"outlast-under-test\"\n\n{FAST_ROUTING}",
            collector.url
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_trace_continues_through_outlast_to_the_upstream() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(2).await;
    let recorder = Recorder::start(fleet.url(0)).await;
    let collector = Collector::start().await;
    let outlast = Outlast::start_process(&tracing_config(&collector, &recorder.url)).await;

    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    balance(
        &outlast.base,
        &[("traceparent", &traceparent), ("tracestate", "client=7")],
    )
    .await;
    // A graceful stop flushes the spans still queued (the batch waits 5 s otherwise).
    tokio::time::timeout(Duration::from_secs(20), outlast.stop())
        .await
        .expect("outlast stops within 20 s");

    let spans = spans_of(&collector, TRACE_ID, Duration::from_secs(5)).await;
    let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
    let request = spans
        .iter()
        .find(|(_, s)| s.name == "rpc")
        .unwrap_or_else(|| {
            panic!(
                "no request span in the client's trace; spans: {names:?}, all: {:#?}",
                collector.spans()
            )
        });
    let (resource, request) = (&request.0, &request.1);
    assert_eq!(
        text(resource, "service.name").as_deref(),
        Some("outlast-under-test")
    );
    assert_eq!(
        hex(&request.parent_span_id),
        CLIENT_SPAN,
        "child of the client's span"
    );
    assert_eq!(request.kind, SpanKind::Server as i32);
    assert_eq!(text(&request.attributes, "chain").as_deref(), Some("local"));
    assert_eq!(
        text(&request.attributes, "rpc.method").as_deref(),
        Some("eth_getBalance")
    );
    assert_eq!(text(&request.attributes, "outcome").as_deref(), Some("ok"));
    assert_eq!(
        text(&request.attributes, "transport").as_deref(),
        Some("http")
    );

    let attempts: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "upstream")
        .collect();
    assert_eq!(attempts.len(), 1, "one upstream, one attempt: {names:?}");
    let attempt = attempts[0];
    assert_eq!(
        attempt.parent_span_id, request.span_id,
        "the attempt is the request's child"
    );
    assert_eq!(attempt.kind, SpanKind::Client as i32);
    assert_eq!(text(&attempt.attributes, "upstream").as_deref(), Some("u0"));
    assert_eq!(text(&attempt.attributes, "outcome").as_deref(), Some("ok"));
    assert!(
        matches!(
            attribute(&attempt.attributes, "attempt"),
            Some(Any::IntValue(1))
        ),
        "{:?}",
        attempt.attributes
    );

    // The node got the same trace, with the attempt's span as the parent.
    let sent = recorder.of("eth_getBalance");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let upstream = sent[0]
        .traceparent
        .as_deref()
        .expect("a traceparent upstream");
    let [version, trace, span, flags] = parts(upstream);
    assert_eq!(
        (version.as_str(), trace.as_str(), flags.as_str()),
        ("00", TRACE_ID, "01")
    );
    assert_eq!(span, hex(&attempt.span_id), "the attempt's own span id");
    assert_eq!(sent[0].tracestate.as_deref(), Some("client=7"));
    // Outlast's own background calls (chain id, head polls) are no one's trace.
    let background: Vec<Seen> = recorder
        .all()
        .into_iter()
        .filter(|s| !s.methods.iter().any(|m| m == "eth_getBalance"))
        .collect();
    assert!(!background.is_empty(), "head polls reached the node");
    assert!(
        background.iter().all(|s| s.traceparent.is_none()),
        "{background:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_gets_a_trace_of_its_own_and_a_clients_unsampled_trace_is_not_exported() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(2).await;
    let recorder = Recorder::start(fleet.url(0)).await;
    let collector = Collector::start().await;
    let outlast = Outlast::start_process(&tracing_config(&collector, &recorder.url)).await;

    balance(&outlast.base, &[]).await;
    let unsampled = format!("00-{TRACE_ID}-{CLIENT_SPAN}-00");
    balance(&outlast.base, &[("traceparent", &unsampled)]).await;
    tokio::time::timeout(Duration::from_secs(20), outlast.stop())
        .await
        .expect("outlast stops within 20 s");

    let sent = recorder.of("eth_getBalance");
    assert_eq!(sent.len(), 2, "{sent:?}");
    // Without a client's trace: a new one, exported, the node told of it.
    let [_, own_trace, own_span, own_flags] = parts(
        sent[0]
            .traceparent
            .as_deref()
            .expect("a traceparent upstream"),
    );
    assert_ne!(own_trace, TRACE_ID);
    assert_eq!(own_flags, "01", "sample_ratio defaults to every request");
    let own = spans_of(&collector, &own_trace, Duration::from_secs(5)).await;
    let request = own
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "rpc")
        .unwrap_or_else(|| {
            panic!(
                "no request span of trace {own_trace}: {:#?}",
                collector.spans()
            )
        });
    assert!(request.parent_span_id.is_empty(), "a root span");
    assert!(
        own.iter()
            .any(|(_, s)| s.name == "upstream" && hex(&s.span_id) == own_span),
        "the attempt's span is the one the node was told of"
    );
    // The client decided not to sample: its trace id goes on, flagged unsampled, and
    // nothing of it is exported.
    let [_, trace, _, flags] = parts(sent[1].traceparent.as_deref().expect("a traceparent"));
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE_ID, "00"));
    assert!(
        spans_of(&collector, TRACE_ID, Duration::ZERO)
            .await
            .is_empty(),
        "an unsampled trace was exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_nothing_is_exported_and_a_clients_trace_context_passes_unchanged() {
    let mut fleet = Fleet::start(1).await;
    fleet.mine(2).await;
    let recorder = Recorder::start(fleet.url(0)).await;
    let collector = Collector::start().await;
    // The standard OpenTelemetry variables point at the collector, as they may in a
    // pod shared with traced services: without `[tracing]` Outlast still sends nothing.
    let outlast = Outlast::start_process_with_env(
        &config(std::slice::from_ref(&recorder.url), FAST_ROUTING),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                format!("{}/v1/traces", collector.url),
            ),
        ],
    )
    .await;

    let traceparent = format!("00-{TRACE_ID}-{CLIENT_SPAN}-01");
    balance(
        &outlast.base,
        &[
            ("traceparent", &traceparent),
            ("tracestate", "client=7,other=x"),
        ],
    )
    .await;
    balance(&outlast.base, &[]).await;
    // Not a valid traceparent (all-zero span id): not passed on.
    balance(
        &outlast.base,
        &[("traceparent", &format!("00-{TRACE_ID}-0000000000000000-01"))],
    )
    .await;
    tokio::time::timeout(Duration::from_secs(20), outlast.stop())
        .await
        .expect("outlast stops within 20 s");

    let sent = recorder.of("eth_getBalance");
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent[0].traceparent.as_deref(), Some(traceparent.as_str()));
    assert_eq!(sent[0].tracestate.as_deref(), Some("client=7,other=x"));
    assert_eq!(
        (
            sent[1].traceparent.as_deref(),
            sent[1].tracestate.as_deref()
        ),
        (None, None),
        "no trace made up"
    );
    assert_eq!(
        sent[2].traceparent, None,
        "an invalid traceparent is dropped"
    );
    assert_eq!(
        collector.requests(),
        0,
        "no [tracing], yet something was exported"
    );
}
