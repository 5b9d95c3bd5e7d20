//! The floor under Outlast's forwarding, for `bench/run.sh`: the same HTTP stack with
//! none of Outlast's work. A hyper HTTP/1.1 server that sends every request's body to
//! one upstream through hyper-util's pooled client and returns the answer's body: no
//! JSON, no routing, no cache, no metrics. One current-thread runtime, so it matches
//! Outlast with `worker_threads = 1`.
//!
//! `cargo run --release --example bare_proxy -- PORT UPSTREAM_URL`
//!
//! If this baseline is far from nginx, the gap is the stack's, not Outlast's logic.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};

type Upstream = Client<HttpConnector, Full<Bytes>>;

/// A JSON reply with `status` and `body`.
fn reply(status: hyper::StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn forward(
    client: Upstream,
    target: hyper::Uri,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    use hyper::StatusCode;
    let Ok(body) = req.into_body().collect().await else {
        return Ok(reply(StatusCode::BAD_REQUEST, Bytes::new()));
    };
    let mut up = Request::new(Full::new(body.to_bytes()));
    *up.method_mut() = hyper::Method::POST;
    *up.uri_mut() = target;
    up.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let Ok(answer) = client.request(up).await else {
        return Ok(reply(StatusCode::BAD_GATEWAY, Bytes::new()));
    };
    let Ok(body) = answer.into_body().collect().await else {
        return Ok(reply(StatusCode::BAD_GATEWAY, Bytes::new()));
    };
    Ok(reply(StatusCode::OK, body.to_bytes()))
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_proxy PORT UPSTREAM_URL");
        std::process::exit(2);
    };
    let target: hyper::Uri = upstream
        .parse()
        .map_err(|e| std::io::Error::other(format!("{upstream}: {e}")))?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let mut tcp = HttpConnector::new();
            tcp.set_nodelay(true);
            let client: Upstream = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(512)
                .build(tcp);
            let listener =
                tokio::net::TcpListener::bind(("127.0.0.1", port.parse().unwrap_or(0))).await?;
            loop {
                let (stream, _) = listener.accept().await?;
                let _ = stream.set_nodelay(true);
                let (client, target) = (client.clone(), target.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| forward(client.clone(), target.clone(), req));
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
}
