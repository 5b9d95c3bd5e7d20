//! The storage benchmark's local IPFS trustless gateway (bench/storage.sh): the test
//! bed's gateway (tests/testbed/storage_gateway.rs) as a program, honest, serving the
//! blocks of one CAR file.
//!
//!     cargo run --release --example storage_gateway -- FILE.car [127.0.0.1:PORT]
//!
//! Prints its URL on the first line, then serves until interrupted.

#[path = "../tests/testbed/storage_gateway.rs"]
mod storage_gateway;

use std::sync::Arc;

use storage_gateway::{BlockStore, IpfsGateway, Mode};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let Some(car) = args.next() else {
        eprintln!("usage: storage_gateway FILE.car [127.0.0.1:PORT]");
        std::process::exit(2);
    };
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let bytes = match std::fs::read(&car) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("storage_gateway: cannot read {car}: {e}");
            std::process::exit(1);
        }
    };
    let store = BlockStore::from_car(&bytes).await;
    drop(bytes);
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("storage_gateway: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let gateway = IpfsGateway::serve(listener, Arc::new(store), Mode::Honest);
    println!("{}", gateway.url);
    let _ = tokio::signal::ctrl_c().await;
}
