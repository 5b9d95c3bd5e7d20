#!/usr/bin/env bash
# Heap allocations per request, per workload: a count, not a time, so it is the same
# from run to run on this noisy VM and shows what a change to the hot path removed.
#
# Puts uprobes on mimalloc's entry points in the release binary (perf probe; Debian's
# linux-perf), starts a fixed upstream and Outlast (`bench_config` of bench/lib.sh, one
# serving thread, the default 64 MiB cache), loads each workload with wrk for a few seconds while
# `perf stat` counts the probes' hits, and prints hits per request. The probes slow
# every allocation down (a trap each), so the throughput shown is not Outlast's.
# With SITES=N, also records where the allocations come from (DWARF stacks) and prints
# the N most frequent call sites per request (slow: a few hundred MB of perf data).
#
# Environment: WORKLOADS ("single batch10 hit"), DURATION (s, 3), OUTLAST_BIN (a
# build to count instead of target/release/outlast), SITES (0).
# Needs root (uprobes). Everything listens on 127.0.0.1 and stops on exit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench"
WORKLOADS="${WORKLOADS:-single batch10 hit}"
DURATION="${DURATION:-3}"
SITES="${SITES:-0}"
say() { echo "allocs: $*" >&2; }
die() { say "error: $*"; exit 1; }

. "$bench/lib.sh"
command -v perf >/dev/null || die "perf is needed (apt-get install linux-perf)"
command -v wrk >/dev/null || die "wrk is needed (apt-get install wrk; bench/run.sh installs it)"
cd "$root"
if [[ -z ${OUTLAST_BIN:-} ]]; then
    say "building outlast and examples/fixed_upstream (release)"
    cargo_ build --release --quiet --example fixed_upstream
    cargo_ build --release --quiet
fi
bin="${OUTLAST_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/outlast}"
upstream_bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/fixed_upstream"

# The probes, named for this script so others' are left alone. Outlast's allocator
# (src/main.rs) calls the plain entry points for alignments up to 16 and the
# `mi_*_aligned` ones (what the mimalloc crate calls for everything) above; builds
# before f6bd092 call only the aligned ones. Neither calls the other's.
group=outlast_allocs
probes=(mi_malloc mi_zalloc mi_realloc mi_malloc_aligned mi_zalloc_aligned mi_realloc_aligned)
perf probe -q -d "$group:*" 2>/dev/null || true
probed=0
for p in "${probes[@]}"; do
    # An entry point the build never calls may not be in it (the plain ones, before).
    perf probe -q -x "$bin" --add "$group:$p=$p" 2>/dev/null && probed=$((probed + 1))
done
((probed > 0)) || die "cannot probe mimalloc's entry points in $bin"

work="$(mktemp -d /tmp/outlast-allocs.XXXXXX)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    perf probe -q -d "$group:*" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

up_port=20601 port=20602
"$upstream_bin" "$up_port" >"$work/upstream.log" 2>&1 &
pids+=($!)
bench_config "$port" "$up_port" 1 $((64 << 20)) >"$work/outlast.toml"
XDG_STATE_HOME="$work/state" "$bin" serve --config "$work/outlast.toml" >"$work/outlast.log" 2>&1 &
outlast_pid=$!
pids+=("$outlast_pid")
url="http://127.0.0.1:$port/bench"
for _ in $(seq 100); do
    curl -sf -m 1 -H 'content-type: application/json' \
        -d '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}' "$url" | grep -q result && break
    sleep 0.1
done

declare -A script_of=([single]=forward.lua [batch10]=forward10.lua [hit]=single.lua)
printf '%-8s %10s %12s\n' workload requests "allocs/req"
for w in $WORKLOADS; do
    [[ -n ${script_of[$w]:-} ]] || die "unknown workload $w (single batch10 hit)"
    lua="$bench/${script_of[$w]}"
    wrk -t1 -c16 -d1s -s "$lua" "$url" >/dev/null # warm: connections, the hit's entry
    perf stat -x, -e "$group:*" -p "$outlast_pid" -o "$work/$w.stat" -- sleep "$DURATION" &
    stat_pid=$!
    requests=$(wrk -t1 -c16 -d"${DURATION}s" -s "$lua" "$url" | awk '/requests in/ {print $1}')
    wait "$stat_pid"
    awk -F, -v n="$requests" -v w="$w" \
        '$3 ~ /outlast_allocs/ {t += $1} END {printf "%-8s %10d %12.1f\n", w, n, t / n}' \
        "$work/$w.stat"
    if ((SITES > 0)); then
        perf record -q -e "$group:*" --call-graph dwarf,16384 -p "$outlast_pid" \
            -o "$work/$w.data" -- sleep 2 >/dev/null 2>&1 &
        record_pid=$!
        wrk -t1 -c4 -d2s -s "$lua" "$url" >/dev/null
        wait "$record_pid"
        # Each sample's first frames outside the allocator and the standard library:
        # the code that asked.
        perf script -i "$work/$w.data" 2>/dev/null | awk -v n="$SITES" -v w="$w" '
            function flush() { if (site != "") count[site]++; total++; site = ""; depth = 0 }
            /^[^ \t]/ { if (started) flush(); started = 1; next }
            /^$/ { next }
            {
                if (depth >= 3) next
                f = $2
                if (f ~ /^(_?mi_|__rust|<?(alloc|core|std|mimalloc)::|<(alloc|core|std)::)/) next
                gsub(/<[^<>]*>/, "", f); gsub(/<[^<>]*>/, "", f); gsub(/\+0x[0-9a-f]+$/, "", f)
                site = site (depth ? " <- " : "") f; depth++
            }
            END {
                flush()
                for (s in count) printf "%6.1f%% %s\n", 100 * count[s] / total, s
            }' | sort -rn | head -n "$SITES" | sed "s/^/  $w /"
    fi
done
