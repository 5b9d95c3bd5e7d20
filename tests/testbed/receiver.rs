//! A webhook receiver on 127.0.0.1: records every POST body by path, and answers the
//! first `fail_first` requests of each path with HTTP 500 (to prove retries).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    routing::post,
};
use serde_json::Value;
use tokio::net::TcpListener;

#[derive(Default)]
struct Seen {
    /// Every request per path, failed ones included, in arrival order.
    attempts: HashMap<String, Vec<Value>>,
}

#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    seen: Arc<Mutex<Seen>>,
    fail_first: usize,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Receiver {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = (seen.clone(), fail_first);
        let app = Router::new()
            .route("/{path}", post(record))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            base,
            seen,
            fail_first,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// Requests that got 200, in order.
    pub fn delivered(&self, path: &str) -> Vec<Value> {
        let seen = self.seen.lock().expect("lock");
        seen.attempts
            .get(path)
            .map(|a| a.iter().skip(self.fail_first).cloned().collect())
            .unwrap_or_default()
    }

    /// Every request, failed ones included.
    pub fn attempts(&self, path: &str) -> usize {
        let seen = self.seen.lock().expect("lock");
        seen.attempts.get(path).map_or(0, Vec::len)
    }

    /// Waits (up to `within`) until `path` has a delivered body that `f` accepts.
    pub async fn wait_for(
        &self,
        path: &str,
        within: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(v) = self.delivered(path).into_iter().find(|v| f(v)) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "no matching webhook at /{path} within {within:?}; got: {:#?}",
                    self.delivered(path)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn record(
    State((seen, fail_first)): State<(Arc<Mutex<Seen>>, usize)>,
    Path(path): Path<String>,
    body: Bytes,
) -> StatusCode {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut seen = seen.lock().expect("lock");
    let list = seen.attempts.entry(path).or_default();
    list.push(value);
    if list.len() <= fail_first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}
