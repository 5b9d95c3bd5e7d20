#!/usr/bin/env bash
# Verified IPFS streaming through Outlast against fetching directly from one gateway.
#
# Makes a SIZE-byte file (100 MB) into a UnixFS DAG with the real importer
# (tests/fixtures/storage/tools/make-bench-car.mjs: CIDv1, raw 256 KiB leaves), serves
# it from one local trustless gateway (examples/storage_gateway.rs), and in the same
# run downloads it ROUNDS times each way, the ways interleaved round by round:
#   direct   GET {gateway}/ipfs/{cid}?format=car   the CAR as the gateway streams it,
#                                                 nothing checked
#   outlast  GET {outlast}/ipfs/{cid}              every block hashed against its CID,
#                                                 the file reassembled and streamed
# Every Outlast download is compared byte for byte with the original. Two Outlasts
# run: one with the cache off (cache_bytes = 0: its memory is only what streaming
# holds) and one with a 64 MiB cache (memory must stay near the bound; its rounds after
# the first are partly served from the cache). Memory is read from /proc: VmRSS before
# the first download and after the last, and VmHWM (the largest resident set since
# start). Prints one table.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
#
# Environment: SIZE (bytes, 100000000), ROUNDS (5), KEEP=1 (keep the scratch folder).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SIZE="${SIZE:-100000000}"
ROUNDS="${ROUNDS:-5}"
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

for tool in curl node npm cmp awk python3 sha256sum; do
    command -v "$tool" >/dev/null || die "'$tool' is needed"
done

# ---------------------------------------------------------------- build
cargo_() {
    if command -v flock >/dev/null; then flock /tmp/outlast-cargo.lock cargo "$@"; else cargo "$@"; fi
}
say "building (release)"
(cd "$root" && cargo_ build --release --quiet --bin outlast --example storage_gateway)
outlast_bin="${CARGO_TARGET_DIR:-$root/target}/release/outlast"
gateway_bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/storage_gateway"

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
"$gateway_bin" "$work/file.car" >"$work/gateway.out" 2>"$work/gateway.err" &
pids+=($!)
for _ in $(seq 600); do
    [[ -s $work/gateway.out ]] && break
    sleep 0.05
done
gateway="$(head -n1 "$work/gateway.out")"
[[ -n $gateway ]] || die "the gateway did not start; see $work/gateway.err"
say "gateway at $gateway"

port_of() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

start_outlast() { # name cache_bytes -> prints "pid url"
    local name="$1" cache="$2" port pid
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
    pid=$!
    for _ in $(seq 200); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/healthz"; then
            echo "$pid http://127.0.0.1:$port"
            return
        fi
        sleep 0.05
    done
    die "Outlast ($name) did not start; see $work/$name.log"
}

kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
# Downloads $1 to $2; prints the seconds it took.
fetch() { curl -sS --fail -o "$2" -w '%{time_total}\n' "$1"; }
mbps() { awk -v s="$1" -v b="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
best() { sort -g | head -n1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

read -r nocache_pid nocache_url < <(start_outlast nocache 0)
pids+=("$nocache_pid")
read -r cache_pid cache_url < <(start_outlast cache $((64 * 1024 * 1024)))
pids+=("$cache_pid")
nocache_idle="$(kib "$nocache_pid" VmRSS)"
cache_idle="$(kib "$cache_pid" VmRSS)"

# ---------------------------------------------------------------- measure
car_bytes=0
: >"$work/direct.times"
: >"$work/nocache.times"
: >"$work/cache.times"
for i in $(seq "$ROUNDS"); do
    say "round $i of $ROUNDS: direct, Outlast without cache, Outlast with cache"
    fetch "$gateway/ipfs/$cid?format=car" "$work/direct.car" >>"$work/direct.times"
    car_bytes="$(stat -c %s "$work/direct.car")"
    for name in nocache cache; do
        url_var="${name}_url"
        rm -f "$work/out.bin"
        fetch "${!url_var}/ipfs/$cid" "$work/out.bin" >>"$work/$name.times" ||
            die "download through Outlast ($name) failed in round $i; see $work/$name.log"
        cmp -s "$work/out.bin" "$work/file.bin" || die "Outlast ($name) served different bytes in round $i"
    done
done
nocache_hwm="$(kib "$nocache_pid" VmHWM)"
cache_hwm="$(kib "$cache_pid" VmHWM)"
nocache_after="$(kib "$nocache_pid" VmRSS)"
cache_after="$(kib "$cache_pid" VmRSS)"

direct_median="$(mbps "$(median <"$work/direct.times")" "$car_bytes")"
row() { # label bytes times-file [rss-idle peak rss-after, KiB]
    local b m
    b="$(mbps "$(best <"$3")" "$2")"
    m="$(mbps "$(median <"$3")" "$2")"
    if [[ $# -gt 3 ]]; then
        printf '%-34s %7s %7s %7s %8sM %8sM %8sM\n' "$1" "$b" "$m" "$(ratio "$m" "$direct_median")" \
            $(($4 / 1024)) $(($5 / 1024)) $(($6 / 1024))
    else
        printf '%-34s %7s %7s %7s %9s %9s %9s\n' "$1" "$b" "$m" "1.00" "-" "-" "-"
    fi
}

echo
echo "storage benchmark: a $SIZE-byte file ($cid), $ROUNDS rounds, $(nproc) cores"
printf '%-34s %7s %7s %7s %9s %9s %9s\n' "MB/s of file (direct: of CAR)" "best" "median" "ratio" "RSS idle" "peak" "RSS after"
row "direct from the gateway, unchecked" "$car_bytes" "$work/direct.times"
row "Outlast, verified, no cache" "$SIZE" "$work/nocache.times" "$nocache_idle" "$nocache_hwm" "$nocache_after"
row "Outlast, verified, 64 MiB cache" "$SIZE" "$work/cache.times" "$cache_idle" "$cache_hwm" "$cache_after"
echo "Every Outlast download was compared with the original: identical."
echo "ratio = median / direct median; peak = VmHWM. The cached Outlast serves rounds after"
echo "the first partly from its cache."
