# Pieces the bench scripts share; sourced (`. "$bench/lib.sh"`), not run.

# cargo, one build at a time across scripts started side by side.
cargo_() {
    if command -v flock >/dev/null; then flock /tmp/outlast-cargo.lock cargo "$@"; else cargo "$@"; fi
}

# bench_config PORT UPSTREAM_PORT THREADS CACHE_BYTES: Outlast's config for the
# benchmarks, on stdout: one chain `bench`, verify off, in front of the fixed upstream.
# With UPSTREAMS=N (1) the chain lists it N times, as N providers of N operators: what
# choosing among several (and hedging, on by default) costs a call.
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
CONFIG
    local i n=""
    for ((i = 0; i < ${UPSTREAMS:-1}; i++)); do
        ((i)) && n=$i
        printf '\n[[chains.upstreams]]\nname = "fixed%s"\nurl = "http://127.0.0.1:%s"\noperator = "bench%s"\n' "$n" "$2" "$n"
    done
}

# bench_tools CMD...: installs (apt-get, Debian package names = the commands) those
# missing. Uses the caller's `say`.
bench_tools() {
    local missing=()
    for t in "$@"; do command -v "$t" >/dev/null || missing+=("$t"); done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# bench_build_proxies: builds the fixed upstream and the bare proxy, and Outlast unless
# OUTLAST_BIN names a build; sets `release` (the examples' folder) and `bin` (Outlast).
# Run from the repository's root.
bench_build_proxies() {
    say "building outlast and the examples fixed_upstream, bare_proxy (release)"
    cargo_ build --release --quiet --example fixed_upstream --example bare_proxy
    [[ -n ${OUTLAST_BIN:-} ]] || cargo_ build --release --quiet
    release="${CARGO_TARGET_DIR:-$PWD/target}/release"
    bin="${OUTLAST_BIN:-$release/outlast}"
}

# bench_scratch NAME: a scratch folder in `work`, and `pids`, the processes started;
# on exit every one is stopped and the folder removed.
bench_scratch() {
    work="$(mktemp -d "/tmp/outlast-$1.XXXXXX")"
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# bench_ready URL: waits (up to 40 s) until a JSON-RPC endpoint answers a call.
bench_ready() {
    for _ in $(seq 200); do
        curl -sf -m 2 -H 'content-type: application/json' \
            -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}' "$1" | grep -q result && return 0
        sleep 0.2
    done
}
