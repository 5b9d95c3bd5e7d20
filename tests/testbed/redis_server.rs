//! A real `redis-server` for tests that share state between Outlast instances
//! (scripts/test.sh installs it): on a free port, without persistence, killed when
//! dropped.

use std::{process::Stdio, time::Duration};

use super::free_port;

pub struct RedisServer {
    child: tokio::process::Child,
    pub url: String,
}

impl RedisServer {
    /// On a free port: one that another process takes between our probe and
    /// redis-server's bind makes it exit, and the next port is tried.
    pub async fn start() -> RedisServer {
        let mut failures = Vec::new();
        for _ in 0..5 {
            match RedisServer::try_start_on(free_port()).await {
                Ok(redis) => return redis,
                Err(e) => failures.push(e),
            }
        }
        panic!("redis-server did not start: {failures:#?}");
    }

    /// On `port` again (a restart where Outlast expects it); panics if it cannot.
    pub async fn start_on(port: u16) -> RedisServer {
        RedisServer::try_start_on(port)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn port(&self) -> u16 {
        self.url
            .trim_start_matches("redis://127.0.0.1:")
            .trim_end_matches('/')
            .parse()
            .expect("a port in the URL this type wrote")
    }

    /// Starts redis-server on `port` and waits until it answers PING — our own server,
    /// not another process that holds the port.
    async fn try_start_on(port: u16) -> Result<RedisServer, String> {
        let mut child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (apt-get install redis-server; scripts/test.sh does)");
        let url = format!("redis://127.0.0.1:{port}/");
        for _ in 0..500 {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("redis-server on {port} exited: {status}"));
            }
            if let Ok(mut conn) = connect(&url).await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok_and(|p| p == "PONG")
                && child.try_wait().is_ok_and(|s| s.is_none())
            {
                return Ok(RedisServer { child, url });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(format!("redis-server did not answer on {port} within 5 s"))
    }

    /// A connection of the test's own, to look at or tamper with what Outlast wrote.
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.url).await.expect("connect to redis-server")
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}
