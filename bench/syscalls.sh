#!/usr/bin/env bash
# System calls per request, per workload, for Outlast and the `bare` hyper proxy
# (examples/bare_proxy.rs): issue 20 asks whether Outlast makes more of them than a
# plain proxy does (writes not coalesced, extra flushes, wake-ups). strace counts every
# call of every thread while wrk loads the target for DURATION seconds; the counts per
# request are printed, the most frequent first. strace slows each call down, so the
# request rates are not the targets' own; only the counts are meant.
#
# Environment: WORKLOADS ("single batch10 hit"), DURATION (s, 3), OUTLAST_BIN (a build
# to count instead of target/release/outlast), TOP (how many calls per line, 4).
# Installs strace and wrk with apt-get when missing. Everything on 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench"
WORKLOADS="${WORKLOADS:-single batch10 hit}"
DURATION="${DURATION:-3}"
TOP="${TOP:-4}"
say() { echo "syscalls: $*" >&2; }
die() { say "error: $*"; exit 1; }

. "$bench/lib.sh"
bench_tools strace wrk
cd "$root"
bench_build_proxies
bench_scratch syscalls

up_port=20901
"$release/examples/fixed_upstream" "$up_port" >"$work/upstream.log" 2>&1 &
pids+=($!)
bench_config 20902 "$up_port" 1 $((64 << 20)) >"$work/outlast.toml"
XDG_STATE_HOME="$work/state" "$bin" serve --config "$work/outlast.toml" >"$work/outlast.log" 2>&1 &
outlast=$!
pids+=("$outlast")
"$release/examples/bare_proxy" 20903 "http://127.0.0.1:$up_port/" >"$work/bare.log" 2>&1 &
bare=$!
pids+=("$bare")

declare -A script_of=([single]=forward.lua [batch10]=forward10.lua [hit]=single.lua)
printf '%-8s %-8s %9s  %s\n' target workload requests "calls per request"
for target in "outlast=$outlast=http://127.0.0.1:20902/bench" "bare=$bare=http://127.0.0.1:20903/"; do
    IFS== read -r name pid url <<<"$target"
    bench_ready "$url"
    for w in $WORKLOADS; do
        [[ -n ${script_of[$w]:-} ]] || die "unknown workload $w (single batch10 hit)"
        lua="$bench/${script_of[$w]}"
        wrk -t1 -c16 -d1s -s "$lua" "$url" >/dev/null # warm: connections, the hit's entry
        trace="$work/$name-$w.strace"
        strace -c -f -p "$pid" -o "$trace" 2>/dev/null &
        tracer=$!
        sleep 0.5 # attached to every thread before the load starts
        requests=$(wrk -t1 -c16 -d"${DURATION}s" -s "$lua" "$url" | awk '/requests in/ {print $1}')
        kill -INT "$tracer" 2>/dev/null || true
        wait "$tracer" 2>/dev/null || true
        [[ -s $trace ]] || die "strace wrote nothing for $name ($w)"
        # strace -c: "% time seconds usecs/call calls [errors] syscall"; the last line is the total.
        counts=$(awk -v r="$requests" '$NF != "total" && $4 ~ /^[0-9]+$/ {printf "%s %.2f\n", $NF, $4 / r}' "$trace" |
            sort -k2 -rn | head -"$TOP" | awk '{printf "%s %s  ", $1, $2}')
        total=$(awk -v r="$requests" '$NF == "total" {printf "%.2f", $4 / r}' "$trace")
        printf '%-8s %-8s %9d  total %s: %s\n' "$name" "$w" "$requests" "$total" "$counts"
    done
done
