# Pieces the bench scripts share; sourced (`. "$bench/lib.sh"`), not run.

# cargo, one build at a time across scripts started side by side.
cargo_() {
    if command -v flock >/dev/null; then flock /tmp/outlast-cargo.lock cargo "$@"; else cargo "$@"; fi
}

# bench_config PORT UPSTREAM_PORT THREADS CACHE_BYTES: Outlast's config for the
# benchmarks, on stdout: one chain `bench`, verify off, in front of the fixed upstream.
bench_config() {
    cat <<CONFIG
[server]
listen = "127.0.0.1:$1"
worker_threads = $3

[cache]
size_bytes = $4

[[chains]]
name = "bench"
chain_id = 31337
verify = "off"

[[chains.upstreams]]
name = "fixed"
url = "http://127.0.0.1:$2"
operator = "bench"
CONFIG
}
