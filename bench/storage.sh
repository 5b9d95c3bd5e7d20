#!/usr/bin/env bash
# Verified IPFS streaming through Outlast against fetching directly from one gateway.
#
# Makes a SIZE-byte file (100 MB) into a UnixFS DAG with the real importer
# (tests/fixtures/storage/tools/make-bench-car.mjs: CIDv1, raw 256 KiB leaves), serves
# it from one local trustless gateway (examples/storage_gateway.rs), and in the same
# run downloads, ROUNDS times each:
#   direct   GET {gateway}/ipfs/{cid}?format=car   the CAR as the gateway streams it,
#                                                 nothing checked
#   outlast  GET {outlast}/ipfs/{cid}              every block hashed against its CID,
#                                                 the file reassembled and streamed
# Every Outlast download is compared byte for byte with the original. Outlast's memory
# (VmRSS) is sampled every 50 ms while it streams, with the cache off (cache_bytes = 0:
# only what streaming holds) and then with a 64 MiB cache (the bound holds), and its
# peak (VmHWM) is read at the end. Prints one table.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
#
# Environment: SIZE (bytes, 100000000), ROUNDS (3), KEEP=1 (keep the scratch folder).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE="${SIZE:-100000000}"
ROUNDS="${ROUNDS:-3}"
KEEP="${KEEP:-0}"
tools="$root/tests/fixtures/storage/tools"

say() { echo "bench: $*" >&2; }
die() { say "error: $*"; exit 1; }

work="$(mktemp -d /tmp/outlast-storage-bench.XXXXXX)"
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 30); do
        local alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ $KEEP == 1 ]]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in curl node npm cmp awk; do
    command -v "$tool" >/dev/null || die "'$tool' is needed"
done

# ---------------------------------------------------------------- build
cargo_() {
    if command -v flock >/dev/null; then flock /tmp/outlast-cargo.lock cargo "$@"; else cargo "$@"; fi
}
say "building (release)"
(cd "$root" && cargo_ build --release --quiet --bin outlast --example storage_gateway)
outlast_bin="$root/target/release/outlast"
gateway_bin="$root/target/release/examples/storage_gateway"

# ---------------------------------------------------------------- the file
stamp="$tools/node_modules/.outlast-lock.sha256"
want="$(sha256sum "$tools/package-lock.json" | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]]; then
    say "installing the fixture tools (npm ci, pinned by $tools/package-lock.json)"
    npm ci --prefix "$tools" --no-audit --no-fund --loglevel=error >&2
    echo "$want" >"$stamp"
fi
say "making a $SIZE-byte UnixFS DAG with ipfs-unixfs-importer"
cid="$(node "$tools/make-bench-car.mjs" "$SIZE" "$work/file.car" "$work/file.bin")"
say "root $cid ($(stat -c %s "$work/file.car") bytes of CAR)"

# ---------------------------------------------------------------- processes
wait_line() { # file: waits for a first line, prints it
    for _ in $(seq 600); do
        if [[ -s $1 ]]; then head -n1 "$1"; return; fi
        sleep 0.05
    done
    die "no output in $1"
}

"$gateway_bin" "$work/file.car" >"$work/gateway.out" 2>"$work/gateway.err" &
pids+=($!)
gateway="$(wait_line "$work/gateway.out")"
say "gateway at $gateway"

port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_outlast() { # name cache_bytes -> sets outlast_pid, outlast_url
    local name="$1" cache="$2" port
    port="$(port_of)"
    cat >"$work/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[status]
data_dir = "$work/state-$name"

[[chains]]
name = "local"
chain_id = 31337
verify = "off"

[[chains.upstreams]]
name = "none"
url = "http://127.0.0.1:9"
operator = "none"

[storage]
cache_bytes = $cache
race = 1

[[storage.ipfs]]
name = "local"
url = "$gateway"
operator = "self"
EOF
    RUST_LOG=error "$outlast_bin" serve --config "$work/$name.toml" >"$work/$name.log" 2>&1 &
    outlast_pid=$!
    pids+=("$outlast_pid")
    outlast_url="http://127.0.0.1:$port"
    for _ in $(seq 200); do
        curl -s -o /dev/null "$outlast_url/healthz" && return
        sleep 0.05
    done
    die "Outlast ($name) did not start; see $work/$name.log"
}

kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# Downloads $1 to $2; prints "seconds bytes".
fetch() { curl -sS --fail -o "$2" -w '%{time_total} %{size_download}\n' "$1"; }

# Samples the peak VmRSS of pid $1 while pid $2 runs, into file $3.
sample_rss() {
    local peak=0 now
    while kill -0 "$2" 2>/dev/null; do
        now="$(kib "$1" VmRSS || echo 0)"
        ((now > peak)) && peak=$now
        sleep 0.05
    done
    echo "$peak" >"$3"
}

mbps() { awk -v s="$1" -v b="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
best() { sort -g | head -n1; }

run_outlast() { # name cache_bytes: ROUNDS verified downloads; sets globals
    local name="$1" cache="$2" i t b sampler
    start_outlast "$name" "$cache"
    idle_kib="$(kib "$outlast_pid" VmRSS)"
    peak_kib=0
    : >"$work/$name.times"
    for i in $(seq "$ROUNDS"); do
        rm -f "$work/out.bin"
        fetch "$outlast_url/ipfs/$cid" "$work/out.bin" >"$work/t" &
        local fetch_pid=$!
        sample_rss "$outlast_pid" "$fetch_pid" "$work/rss" &
        sampler=$!
        wait "$fetch_pid" || die "download through Outlast failed (round $i); see $work/$name.log"
        wait "$sampler"
        read -r t b <"$work/t"
        cmp -s "$work/out.bin" "$work/file.bin" || die "Outlast served different bytes (round $i)"
        echo "$t" >>"$work/$name.times"
        local p
        p="$(cat "$work/rss")"
        ((p > peak_kib)) && peak_kib=$p
    done
    hwm_kib="$(kib "$outlast_pid" VmHWM)"
    best_s="$(best <"$work/$name.times")"
    kill -TERM "$outlast_pid"
    wait "$outlast_pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- measure
say "direct: $ROUNDS downloads of the CAR from the gateway"
: >"$work/direct.times"
for i in $(seq "$ROUNDS"); do
    read -r t b < <(fetch "$gateway/ipfs/$cid?format=car" "$work/direct.car")
    echo "$t" >>"$work/direct.times"
    car_bytes=$b
done
direct_s="$(best <"$work/direct.times")"

say "outlast, cache off: $ROUNDS verified downloads"
run_outlast nocache 0
nocache_s=$best_s nocache_idle=$idle_kib nocache_peak=$peak_kib nocache_hwm=$hwm_kib

say "outlast, 64 MiB cache: $ROUNDS verified downloads"
run_outlast cache $((64 * 1024 * 1024))
cache_s=$best_s cache_idle=$idle_kib cache_peak=$peak_kib cache_hwm=$hwm_kib

direct_mbps="$(mbps "$direct_s" "$car_bytes")"
nocache_mbps="$(mbps "$nocache_s" "$SIZE")"
cache_mbps="$(mbps "$cache_s" "$SIZE")"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

echo
echo "storage benchmark: $SIZE-byte file ($cid), best of $ROUNDS, $(nproc) cores"
printf '%-28s %10s %8s %10s %10s %10s\n' "path" "MB/s" "ratio" "RSS idle" "RSS peak" "VmHWM"
printf '%-28s %10s %8s %10s %10s %10s\n' "direct (CAR, unchecked)" "$direct_mbps" "1.00" "-" "-" "-"
printf '%-28s %10s %8s %9sM %9sM %9sM\n' "outlast (verified, no cache)" "$nocache_mbps" "$(ratio "$nocache_mbps" "$direct_mbps")" \
    $((nocache_idle / 1024)) $((nocache_peak / 1024)) $((nocache_hwm / 1024))
printf '%-28s %10s %8s %9sM %9sM %9sM\n' "outlast (verified, 64M cache)" "$cache_mbps" "$(ratio "$cache_mbps" "$direct_mbps")" \
    $((cache_idle / 1024)) $((cache_peak / 1024)) $((cache_hwm / 1024))
echo "every Outlast download was compared with the original: identical"
