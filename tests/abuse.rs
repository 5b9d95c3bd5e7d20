//! Hostile clients on the real server (`outlast serve` as its own process, in the
//! default verify mode, in front of real Anvil nodes behind providers that refuse
//! `eth_getLogs` over a few blocks): each attack gets its exact answer or is cut off,
//! a well-behaved client is served throughout, and the process is alive at the end.
//!
//! Attackers connect from 127.0.0.2 and the well-behaved client from 127.0.0.1, so the
//! per-address connection cap is seen doing its job: the attacker is capped, the
//! client is not.

mod testbed;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};
use testbed::{
    ACCOUNT0_ADDRESS, Fleet,
    gateway::{Misbehaviour, Outlast, misbehaving_upstream, range_limited_upstream},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

/// The providers' eth_getLogs block-range limit.
const PROVIDER_RANGE: u64 = 4;
const ATTACKER: &str = "127.0.0.2";
const PER_IP: usize = 40;

const SERVER: &str = "header_timeout_ms = 800\nbody_timeout_ms = 1500\nidle_timeout_secs = 2\nrequest_timeout_ms = 20000\nmax_connections_per_ip = 40\ndrain_secs = 2\n";

/// The default verify mode (proofs, quorum 2): no `verify` or `quorum` keys.
fn config(urls: &[String]) -> String {
    let mut s = String::from(
        "[routing]\nconnect_timeout_ms = 500\nrequest_timeout_ms = 2000\nhead_poll_ms = 100\n\n[[chains]]\nname = \"local\"\nchain_id = 31337\n",
    );
    for (i, url) in urls.iter().enumerate() {
        s.push_str(&format!(
            "\n[[chains.upstreams]]\nname = \"u{i}\"\nurl = \"{url}\"\noperator = \"op{i}\"\n"
        ));
    }
    s
}

/// A client that behaves: reads a balance and the block number in a loop and counts
/// every call that did not get a proper answer within 10 s.
struct GoodClient {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl GoodClient {
    fn start(url: String) -> GoodClient {
        let (ok, failed, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (ok2, failed2, stop2) = (ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .local_address(Some("127.0.0.1".parse().expect("ip")))
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut errors = Vec::new();
            let calls = [
                json!({"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[ACCOUNT0_ADDRESS,"latest"]}),
                json!({"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}),
            ];
            let mut i = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let body = calls[i % 2].to_string();
                i += 1;
                let answer = async {
                    let r = client.post(&url).body(body).send().await?;
                    r.text().await
                }
                .await;
                let parsed = answer
                    .map(|t| serde_json::from_str::<Value>(&t).map_err(|e| format!("{e}: {t}")));
                match parsed {
                    Ok(Ok(v)) if v.get("result").is_some() => {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        failed2.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("{other:?}"));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            errors
        });
        GoodClient {
            ok,
            failed,
            stop,
            task,
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self.task.await.expect("good client");
        assert_eq!(self.failed.load(Ordering::Relaxed), errors.len());
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

async fn attacker_socket(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ATTACKER}:0").parse().expect("addr"))?;
    socket.connect(addr).await
}

/// Everything the server sends until it closes the connection (or `within` passes:
/// then `None`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&got).into_owned())
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let r = client.post(url).body(body).send().await.expect("post");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

fn error_of(v: &Value) -> (i64, String) {
    (
        v["error"]["code"].as_i64().unwrap_or_default(),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_get_exact_answers_while_a_good_client_is_served() {
    let mut fleet = Fleet::start(3).await;
    fleet.mine(24).await;
    let mut urls = Vec::new();
    let mut refusals = Vec::new();
    for i in 0..3 {
        let (url, refused) = range_limited_upstream(fleet.url(i), PROVIDER_RANGE).await;
        urls.push(url);
        refusals.push(refused);
    }
    let outlast = Outlast::start_process_with_server(SERVER, &config(&urls)).await;
    let pid = outlast.pid().expect("a process");
    let url = outlast.url("/local");
    let addr: SocketAddr = outlast
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let good = GoodClient::start(url.clone());
    let client = reqwest::Client::new();

    // 1. A log range no provider would take, and one whose length does not fit 64 bits:
    //    refused before anything is sent, naming the limit; nothing learned from them.
    for from in ["0x1", "0x0"] {
        let body = json!({"jsonrpc":"2.0","id":7,"method":"eth_getLogs","params":[{"fromBlock":from,"toBlock":"0xffffffffffffffff"}]});
        let (status, v) = post(&client, &url, body.to_string()).await;
        let (code, message) = error_of(&v);
        assert_eq!(
            (status, code, v["id"].clone()),
            (200, -32005, json!(7)),
            "{v}"
        );
        assert!(message.contains("max_logs_range"), "{message}");
    }
    assert_eq!(
        refusals
            .iter()
            .map(|r| *r.lock().expect("lock"))
            .sum::<usize>(),
        0,
        "the hostile ranges never reached a provider"
    );
    // A normal query afterwards is split by the providers' real limit (4), not by
    // anything the hostile ones could have taught: 24 blocks = 1 refusal + 6 pieces.
    let normal = json!({"jsonrpc":"2.0","id":8,"method":"eth_getLogs","params":[{"fromBlock":"0x1","toBlock":"0x18"}]});
    let (_, v) = post(&client, &url, normal.to_string()).await;
    assert!(v["result"].is_array(), "{v}");
    let direct = testbed::rpc(&fleet.url(0), "eth_getLogs", normal["params"].clone()).await;
    assert_eq!(
        v["result"], direct["result"],
        "merged logs = one node's answer"
    );

    // 2. Half a request header, from many sockets: over the per-address cap they are
    //    refused with a 503 the client can read; the rest are closed at the header
    //    timeout. The good client (another address) is unaffected.
    let mut slow = Vec::new();
    let mut refused_503 = 0;
    for _ in 0..(PER_IP + 20) {
        let mut s = attacker_socket(addr).await.expect("connect");
        let _ = s
            .write_all(b"POST /local HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
            .await;
        slow.push(s);
    }
    for s in &mut slow {
        let seen = read_until_closed(s, Duration::from_secs(15))
            .await
            .expect("every half-header connection is closed by the server");
        if seen.starts_with("HTTP/1.1 503") {
            assert!(seen.contains("-32005"), "{seen}");
            refused_503 += 1;
        }
    }
    assert!(
        (1..=slow.len() - PER_IP).contains(&refused_503),
        "{refused_503} of {} refused by the per-address cap of {PER_IP}",
        slow.len()
    );
    drop(slow);

    // 3. A body that stops half-way: 408 after the body timeout, connection closed.
    let mut s = attacker_socket(addr).await.expect("connect");
    s.write_all(
        b"POST /local HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"",
    )
    .await
    .expect("write");
    let seen = read_until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("closed");
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert!(seen.contains("body_timeout_ms"), "{seen}");

    // 4. An idle keep-alive connection is closed after the idle timeout.
    let mut s = attacker_socket(addr).await.expect("connect");
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#;
    s.write_all(
        format!(
            "POST /local HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{call}",
            call.len()
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let seen = read_until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("the idle connection is closed");
    assert!(
        seen.starts_with("HTTP/1.1 200") && seen.contains("0x7a69"),
        "{seen}"
    );

    // 5. 20 MB written whole before reading (as urllib does): the client reads the 413.
    let mut s = attacker_socket(addr).await.expect("connect");
    let big = 20usize << 20;
    let head = format!("POST /local HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {big}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 1 << 20];
    for _ in 0..20 {
        s.write_all(&chunk)
            .await
            .expect("the body is read, not refused mid-way");
    }
    let seen = read_until_closed(&mut s, Duration::from_secs(15))
        .await
        .expect("closed after the 413");
    assert!(seen.starts_with("HTTP/1.1 413"), "{seen}");
    assert!(
        seen.contains("-32005") && seen.contains("exceeds"),
        "{seen}"
    );

    // 6. A batch of two million items: refused at the limit while parsing, without
    //    memory proportional to it.
    let before = rss_kib(pid);
    let mut batch = String::with_capacity(4 << 20);
    batch.push('[');
    for i in 0..2_000_000 {
        if i > 0 {
            batch.push(',');
        }
        batch.push('1');
    }
    batch.push(']');
    let (_, v) = post(&client, &url, batch).await;
    let (code, message) = error_of(&v);
    assert_eq!(code, -32005, "{v}");
    assert!(
        message.contains("batch of more than 100 calls"),
        "{message}"
    );
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 48 * 1024, "RSS grew {grown} KiB for a 4 MB batch");

    // 7. Denied methods, whatever their case.
    for method in [
        "Debug_traceTransaction",
        "eth_sendtransaction",
        "ADMIN_peers",
    ] {
        let body = json!({"jsonrpc":"2.0","id":3,"method":method,"params":[]});
        let (_, v) = post(&client, &url, body.to_string()).await;
        assert_eq!(error_of(&v).0, -32004, "{method}: {v}");
    }

    let (served, errors) = good.finish().await;
    assert!(served > 0, "the good client was served");
    assert!(
        errors.is_empty(),
        "the good client failed {} times: {errors:?}",
        errors.len()
    );

    // 8. A client holding a connection open does not hold up shutdown past the drain.
    let _holder = attacker_socket(addr).await.expect("connect");
    let mut held = attacker_socket(addr).await.expect("connect");
    let _ = held
        .write_all(b"POST /local HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await;
    assert!(rss_kib(pid) > 0, "alive at the end");
    outlast.stop().await;
}

/// A flood of connections over a cap: each is refused (and counted), but only a bounded
/// number are held for their 503 at once, so the flood cannot take the file descriptors
/// kept for upstreams beyond the cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_the_connection_cap_holds_few_descriptors() {
    const FLOOD: usize = 300;
    let server = "max_connections_per_ip = 1\n";
    let fleet = Fleet::start(1).await;
    let outlast = Outlast::start_process_with_server(server, &config(&fleet.urls())).await;
    let pid = outlast.pid().expect("a process");
    let addr: SocketAddr = outlast
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let descriptors = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // The one connection the cap allows the attacker's address, held open.
    let _held = attacker_socket(addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = descriptors();
    // Sockets that never read nor close: a refusal waits up to a second for each.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(attacker_socket(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during = descriptors();
    assert!(
        during < before + FLOOD / 3,
        "{} descriptors held for {FLOOD} refused connections",
        during.saturating_sub(before)
    );
    let refused = outlast
        .counter("outlast_limits_exceeded_total{limit=\"connections_per_ip\"}")
        .await;
    assert!(
        refused.is_some_and(|n| n >= FLOOD as f64),
        "{refused:?} counted of {FLOOD}"
    );
    drop(flood);
    outlast.stop().await;
}

/// A client that asks for large answers and reads none of them: once its socket is full
/// it must read at a minimum rate, or it is closed (after a grace of seconds), where each
/// byte it read let it hold the connection and the answers for another idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_answers_is_closed_for_its_send_rate() {
    // Each answer is 2 MiB: more than the sockets on both sides hold, after a few.
    let (upstream, _) = misbehaving_upstream(Misbehaviour::Oversized).await;
    let config = format!(
        "[cache]\nsize_bytes = 0\n\n[[chains]]\nname = \"local\"\nchain_id = 31337\nverify = \"off\"\n\n[[chains.upstreams]]\nname = \"u0\"\nurl = \"{upstream}\"\noperator = \"op0\"\n"
    );
    let outlast = Outlast::start(&config).await;
    let addr: SocketAddr = outlast
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4096)
        .expect("a small receive buffer");
    let mut stream = socket.connect(addr).await.expect("connect");
    let body =
        json!({"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":[ACCOUNT0_ADDRESS,"0x1"]})
            .to_string();
    let one = format!(
        "POST /local HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Eight requests in a row, their answers never read.
    stream
        .write_all(one.repeat(8).as_bytes())
        .await
        .expect("write");
    // Closed within the grace and some: the idle timeout (60 s) would be later.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let metrics = outlast.metrics().await;
        if metrics.contains("outlast_limits_exceeded_total{limit=\"send_rate\"} 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open, its answers unread: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    drop(stream);
}
