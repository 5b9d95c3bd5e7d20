#!/usr/bin/env bash
# Instructions per request, per workload: user-space instructions the proxy executes
# (valgrind's callgrind counts them), for Outlast, the `bare` hyper proxy
# (examples/bare_proxy.rs, the same HTTP stack with none of Outlast's work) and any
# OUTLAST_ALT builds. A count, not a time: within a fraction of a percent from run to
# run on this VM, where wall-clock CPU per request moves ±10%, so a change of 1-2% to
# the hot path shows. It leaves out the kernel's work (the sockets), which is the same
# for every target, and cache misses, which `bench/run.sh` still sees.
#
# Each target runs under callgrind with instrumentation off, is warmed with wrk, then
# counted while wrk loads it for DURATION seconds; instructions / requests is printed.
# With KEEP=DIR the callgrind files stay there, for `callgrind_annotate` (where the
# instructions go: `--inclusive=yes`, `--tree=caller`).
#
# Environment: WORKLOADS ("single batch10 hit"), DURATION (s, 4), OUTLAST_BIN (a build
# to count instead of target/release/outlast), OUTLAST_ALT ("name=/path/to/outlast …"),
# BARE (1: count the bare proxy too), KEEP (a directory), CACHESIM (1: also simulate
# the processor's caches, `--cache-sim=yes`, and print first- and last-level misses
# per request: what a change to the memory a request touches does, which instructions
# alone do not show), LL (the simulated last level's size in bytes, 32 MiB), FILL (s,
# 0: load batches of new calls this long before counting, so the cache is full and
# every store evicts, as in bench/run.sh; under the simulation about 3k calls a second
# are stored), CACHE_BYTES ([cache] size_bytes, 64 MiB; a smaller cache with a smaller
# LL fills sooner). Runs valgrind 50x slower than native, so the request counts are
# small; everything on 127.0.0.1.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench"
WORKLOADS="${WORKLOADS:-single batch10 hit}"
DURATION="${DURATION:-4}"
BARE="${BARE:-1}"
KEEP="${KEEP:-}"
CACHESIM="${CACHESIM:-0}"
FILL="${FILL:-0}"
CACHE_BYTES="${CACHE_BYTES:-67108864}"
say() { echo "instructions: $*" >&2; }
die() { say "error: $*"; exit 1; }

. "$bench/lib.sh"
bench_tools valgrind wrk
cd "$root"
bench_build_proxies
bench_scratch instructions

up_port=20801
"$release/examples/fixed_upstream" "$up_port" >"$work/upstream.log" 2>&1 &
pids+=($!)

# The targets: name, then the command that serves on the port given as $1.
targets=("outlast=$bin")
for alt in ${OUTLAST_ALT:-}; do targets+=("$alt"); done
((BARE)) && targets+=("bare=bare")

declare -A script_of=([single]=forward.lua [batch10]=forward10.lua [hit]=single.lua)
sim=()
if ((CACHESIM)); then
    # valgrind takes this machine's L3 for a 256 MiB direct-mapped cache; the last level
    # is given as the processor's (LL, bytes: 32 MiB, 16-way) so a working set past it
    # misses as it does on the processor.
    sim=(--cache-sim=yes "--LL=${LL:-33554432},16,64")
    printf '%-10s %-8s %9s %12s %10s %10s\n' target workload requests "instr/req" "D1miss/req" "LLmiss/req"
else
    printf '%-10s %-8s %9s %12s\n' target workload requests "instr/req"
fi
port=20802
for target in "${targets[@]}"; do
    name="${target%%=*}" path="${target#*=}"
    port=$((port + 1))
    out="$work/$name.callgrind"
    if [[ $path == bare ]]; then
        cmd=("$release/examples/bare_proxy" "$port" "http://127.0.0.1:$up_port/")
        url="http://127.0.0.1:$port/"
    else
        bench_config "$port" "$up_port" 1 "$CACHE_BYTES" >"$work/$name.toml"
        cmd=("$path" serve --config "$work/$name.toml")
        url="http://127.0.0.1:$port/bench"
    fi
    XDG_STATE_HOME="$work/state-$name" valgrind --tool=callgrind --instr-atstart=no "${sim[@]}" \
        --callgrind-out-file="$out.%p" "${cmd[@]}" >"$work/$name.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    bench_ready "$url"
    ((FILL > 0)) && wrk -t1 -c8 -d"${FILL}s" -s "$bench/forward10.lua" "$url" >/dev/null
    for w in $WORKLOADS; do
        [[ -n ${script_of[$w]:-} ]] || die "unknown workload $w (single batch10 hit)"
        lua="$bench/${script_of[$w]}"
        wrk -t1 -c8 -d2s -s "$lua" "$url" >/dev/null # warm: connections, the hit's entry
        callgrind_control -z "$pid" >/dev/null 2>&1 # what warming counted is dropped
        callgrind_control -i on "$pid" >/dev/null 2>&1
        requests=$(wrk -t1 -c8 -d"${DURATION}s" -s "$lua" "$url" | awk '/requests in/ {print $1}')
        callgrind_control -i off "$pid" >/dev/null 2>&1
        callgrind_control -d "$w" "$pid" >/dev/null 2>&1
        dump=$(ls -t "$out.$pid".* 2>/dev/null | head -1)
        [[ -n $dump ]] || die "no callgrind dump from $name"
        # The totals line, in the order of "Events shown:" (Ir, and with the simulation
        # Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw); callgrind_annotate may put a percentage
        # after each count, so only numbers are kept.
        read -r total d1 ll < <(callgrind_annotate "$dump" 2>/dev/null | awk '
            /^Events shown:/ { for (i = 3; i <= NF; i++) ev[$i] = i - 2 }
            /PROGRAM TOTALS/ {
                gsub(",", ""); n = 0
                for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+$/) e[++n] = $i
                print e[ev["Ir"]], e[ev["I1mr"]] + e[ev["D1mr"]] + e[ev["D1mw"]], \
                    e[ev["ILmr"]] + e[ev["DLmr"]] + e[ev["DLmw"]] }')
        if ((CACHESIM)); then
            awk -v n="$name" -v w="$w" -v r="$requests" -v t="$total" -v d="$d1" -v l="$ll" \
                'BEGIN { printf "%-10s %-8s %9d %12.0f %10.1f %10.1f\n", n, w, r, t / r, d / r, l / r }'
        else
            printf '%-10s %-8s %9d %12.0f\n' "$name" "$w" "$requests" "$((total / requests))"
        fi
        if [[ -n $KEEP ]]; then
            mkdir -p "$KEEP"
            cp "$dump" "$KEEP/$name-$w.callgrind"
        fi
        rm -f "$dump"
    done
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
done
