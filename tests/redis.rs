//! Redis as the shared second cache tier: two Outlast instances share an answer, and
//! Redis dying never takes Outlast down. Runs a real `redis-server` (scripts/test.sh
//! installs it) on a free port, without persistence, stopped when the test ends.

mod testbed;

use std::{process::Stdio, time::Duration};

use serde_json::json;
use testbed::{
    Fleet, free_port,
    gateway::{FAST_ROUTING, Outlast, config},
};

/// A `redis-server` on 127.0.0.1; killed when dropped.
struct Redis {
    child: tokio::process::Child,
    url: String,
}

impl Redis {
    async fn start() -> Redis {
        let port = free_port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (apt-get install redis-server; scripts/test.sh does)");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Redis {
                    child,
                    url: format!("redis://127.0.0.1:{port}/"),
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("redis-server did not listen on {port}");
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Anvil finalizes 64 blocks behind its head: mine past that so block 3 is final.
const HEIGHT: u64 = 70;

async fn outlast(fleet: &Fleet, redis: &Redis) -> Outlast {
    let extra = format!(
        "{FAST_ROUTING}\n[cache]\nttl_secs = 60\n[redis]\nurl = \"{}\"\n",
        redis.url
    );
    let o = Outlast::start(&config(&fleet.urls(), &extra)).await;
    o.wait_for_head("/local", fleet.height()).await;
    o
}

/// Reads block 3 until Outlast has learned it is final (then the answer is cached).
async fn read_final_block(o: &Outlast) -> serde_json::Value {
    for _ in 0..200 {
        let (r, _) = o
            .call(
                "/local",
                "eth_getBlockByNumber",
                json!(["finalized", false]),
            )
            .await;
        if r["result"]["number"].as_str().is_some_and(|n| n != "0x0") {
            let (r, _) = o
                .call("/local", "eth_getBlockByNumber", json!(["0x3", false]))
                .await;
            return r;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("Outlast never learned the finalized block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_instance_answers_from_redis_with_every_upstream_killed() {
    let redis = Redis::start().await;
    let mut fleet = Fleet::start(2).await;
    fleet.mine(HEIGHT).await;
    let a = outlast(&fleet, &redis).await;
    let b = outlast(&fleet, &redis).await;
    let first = read_final_block(&a).await;
    assert_eq!(first["result"]["number"], "0x3", "{first}");
    // Redis is written in the background: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;

    fleet.kill(0);
    fleet.kill(1);
    let (shared, up) = b
        .call("/local", "eth_getBlockByNumber", json!(["0x3", false]))
        .await;
    assert_eq!(up.as_deref(), Some("cache"), "{shared}");
    assert_eq!(shared["result"], first["result"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlast_keeps_answering_when_redis_dies() {
    let mut redis = Redis::start().await;
    let mut fleet = Fleet::start(2).await;
    fleet.mine(3).await;
    let o = outlast(&fleet, &redis).await;
    redis.kill().await;
    let (r, up) = o
        .call("/local", "eth_getBlockByNumber", json!(["0x2", false]))
        .await;
    assert_eq!(r["result"]["number"], "0x2", "{r}");
    assert!(up.is_some_and(|u| u.starts_with('u')));
    // And again, now from the memory tier.
    let (r, up) = o
        .call("/local", "eth_getBlockByNumber", json!(["0x2", false]))
        .await;
    assert_eq!(r["result"]["number"], "0x2", "{r}");
    assert_eq!(up.as_deref(), Some("cache"));
}
