#!/usr/bin/env bash
# Throughput, latency and memory of Outlast against a direct upstream and nginx.
#
# Starts a fixed upstream (examples/fixed_upstream.rs: answers every POST at once),
# nginx in front of it (keepalive 32) and Outlast in front of it (one chain, verify
# off, the default cache), then loads each target with the same wrk settings for the
# workloads of issue 20:
#   single  eth_getBalance of a new address each call (bench/forward.lua): forwarded
#           every time, also by Outlast, whose cache never has it;
#   batch10 a batch of ten such calls (bench/forward10.lua);
#   hit     the same eth_getBalance at block 1 over and over (bench/single.lua): a
#           cache hit for Outlast, forwarded by nginx; its bar is the fixed upstream's
#           own speed (direct);
#   alone   `single` over one connection: the latency each hop adds when nothing queues;
#   head    eth_blockNumber (bench/head.lua; Outlast answers it from its consensus
#           head), only when WORKLOADS names it.
# Prints one table with ratios, then Outlast's RSS after the forwarded runs filled its
# cache (a new entry per call) against [cache] size_bytes.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
#
# Environment: DURATION (s per run, 10), WARMUP (s before each run, 1),
# CONNECTIONS (16), THREADS (1), NGINX_WORKERS (1, or auto), OUTLAST_THREADS
# (= NGINX_WORKERS; auto = the cores), WORKLOADS ("single batch10 hit alone"),
# CACHE_BYTES (Outlast's [cache] size_bytes, 64 MiB: the default), UPSTREAMS (1: the
# fixed upstream listed that many times, as several providers; bench/lib.sh),
# OUTLAST_ALT ("name=path …": more Outlast binaries loaded as further targets in the
# same run, to compare builds side by side), PROFILE=DIR (perf-record each Outlast
# target during each workload: DIR/<workload>-<target>.folded and .svg, with inferno),
# SKIP_OUTLAST=1 (only direct and nginx), KEEP=1 (keep the scratch folder), BARE=1
# (add `bare`: hyper's server and client with nothing between, examples/bare_proxy.rs,
# the floor of Outlast's stack), ROUNDS=N (load every target N times per workload,
# taking turns, in reverse order every other round, and print the medians:
# throughput here drifts by ±20% over minutes; an even N puts each target first as
# often as last).
# FILL is accepted and ignored (the forwarded runs fill the cache).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bench="$root/bench"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-1}"
CONNECTIONS="${CONNECTIONS:-16}"
THREADS="${THREADS:-1}"
NGINX_WORKERS="${NGINX_WORKERS:-1}"
# Outlast's [server] worker_threads: as many as nginx has workers, for a fair match.
OUTLAST_THREADS="${OUTLAST_THREADS:-$NGINX_WORKERS}"
[[ $OUTLAST_THREADS == auto ]] && OUTLAST_THREADS="$(nproc)"
SKIP_OUTLAST="${SKIP_OUTLAST:-0}"
ROUNDS="${ROUNDS:-1}"
BARE="${BARE:-0}"
KEEP="${KEEP:-0}"
WORKLOADS="${WORKLOADS:-single batch10 hit alone}"
CACHE_BYTES="${CACHE_BYTES:-67108864}"
OUTLAST_ALT="${OUTLAST_ALT:-}"
PROFILE="${PROFILE:-}"

say() { echo "bench: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
work="$(mktemp -d /tmp/outlast-bench.XXXXXX)"
pids=()
load_pid=""
cleanup() {
    local pid
    [[ -n $load_pid ]] && kill -TERM "$load_pid" 2>/dev/null
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    # nginx's master stops its workers on TERM: give everyone a moment before KILL.
    for _ in $(seq 50); do
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

# ---------------------------------------------------------------- (a) tools
missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
if ((${#missing[@]})); then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx wrk >/dev/null
fi
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
command -v curl >/dev/null || die "curl is needed"

# ---------------------------------------------------------------- (b) build
. "$bench/lib.sh"
cd "$root"
say "building examples/fixed_upstream (release)"
cargo_ build --release --quiet --example fixed_upstream
if [[ $SKIP_OUTLAST != 1 ]]; then
    say "building outlast (release)"
    cargo_ build --release --quiet
fi
upstream_bin="${CARGO_TARGET_DIR:-$root/target}/release/examples/fixed_upstream"
outlast_bin="${CARGO_TARGET_DIR:-$root/target}/release/outlast"

# ---------------------------------------------------------------- helpers
used_ports=" "
free_port() {
    local p
    while :; do
        # Below Linux's ephemeral range (32768-60999): a port some connection of an
        # earlier run still holds (TIME-WAIT, by the thousand after wrk) cannot be bound.
        p=$((20000 + RANDOM % 12000))
        [[ $used_ports == *" $p "* ]] && continue
        # Nobody accepts on it: free (bash's /dev/tcp, no extra tools).
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            used_ports+="$p "
            echo "$p"
            return
        fi
    done
}

# wait_for NAME PID CMD…: retries CMD for 20 s while PID lives.
wait_for() {
    local name=$1 pid=$2
    shift 2
    for _ in $(seq 200); do
        "$@" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || { say "$name exited early"; return 1; }
        sleep 0.1
    done
    say "$name not ready after 20 s"
    return 1
}

post() { curl -sS --max-time 5 -H 'content-type: application/json' --data-binary "$2" "$1"; }
CALL='"method":"eth_getBalance","params":["0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266","0x1"]'
SINGLE="{\"jsonrpc\":\"2.0\",\"id\":1,$CALL}"
BATCH="[$(for i in $(seq 0 9); do printf '%s{"jsonrpc":"2.0","id":%d,%s}' "$([[ $i == 0 ]] || echo ,)" "$i" "$CALL"; done)]"

# check NAME URL: one call and one batch of ten must come back as results.
check() {
    local name=$1 url=$2 one ten
    one="$(post "$url" "$SINGLE")" || die "$name: $url did not answer"
    [[ $one == *'"result"'* && $one != *'"error"'* ]] || die "$name: single call answered: $one"
    ten="$(post "$url" "$BATCH")" || die "$name: $url did not answer a batch"
    [[ $(grep -o '"result"' <<<"$ten" | wc -l) == 10 && $ten != *'"error"'* ]] ||
        die "$name: batch of 10 answered: $ten"
}

rss_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

# ---------------------------------------------------------------- (c) servers
up_port="$(free_port)"
"$upstream_bin" "$up_port" >"$work/upstream.log" 2>&1 &
pids+=($!)
up_pid=${pids[-1]}
wait_for "fixed upstream" "${pids[-1]}" post "http://127.0.0.1:$up_port/" "$SINGLE" || die "see $work/upstream.log"

nginx_port="$(free_port)"
mkdir -p "$work/nginx/tmp"
cat >"$work/nginx/nginx.conf" <<EOF
worker_processes $NGINX_WORKERS;
error_log $work/nginx/error.log warn;
pid $work/nginx/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    upstream fixed { server 127.0.0.1:$up_port; keepalive 32; }
    map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://fixed;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
        }
    }
}
EOF
"$nginx_bin" -p "$work/nginx" -c nginx.conf -e "$work/nginx/error.log" -g 'daemon off;' &
pids+=($!)
wait_for nginx "${pids[-1]}" post "http://127.0.0.1:$nginx_port/" "$SINGLE" || die "see $work/nginx/error.log"
nginx_pid=${pids[-1]}

targets=(direct nginx)
outlasts=()
declare -A url=(
    [direct]="http://127.0.0.1:$up_port/"
    [nginx]="http://127.0.0.1:$nginx_port/"
)
declare -A pid_of=([direct]=$up_pid [nginx]=$nginx_pid)
if [[ $BARE == 1 ]]; then
    # The floor of Outlast's stack: hyper's server and pooled client with nothing between
    # (examples/bare_proxy.rs), one thread.
    cargo_ build --release --quiet --example bare_proxy
    bare_port="$(free_port)"
    "${CARGO_TARGET_DIR:-$root/target}/release/examples/bare_proxy" "$bare_port" "http://127.0.0.1:$up_port/" >"$work/bare.log" 2>&1 &
    pids+=("$!")
    wait_for bare "${pids[-1]}" post "http://127.0.0.1:$bare_port/" "$SINGLE" || die "see $work/bare.log"
    targets+=(bare)
    url[bare]="http://127.0.0.1:$bare_port/"
    pid_of[bare]=${pids[-1]}
fi
if [[ $SKIP_OUTLAST != 1 ]]; then
    # Each Outlast target: one chain `bench` (verify off) on the fixed upstream, the
    # default cache (CACHE_BYTES). `outlast` is this tree's build; OUTLAST_ALT adds others.
    start_outlast() { # NAME BINARY
        local port cfg="$work/$1.toml"
        port="$(free_port)"
        bench_config "$port" "$up_port" "$OUTLAST_THREADS" "$CACHE_BYTES" >"$cfg"
        "$2" serve --config "$cfg" >"$work/$1.log" 2>&1 &
        local pid=$!
        pids+=("$pid")
        ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1") == 200 ]]; }
        if ! wait_for "$1" "$pid" ready "http://127.0.0.1:$port/readyz"; then
            tail -n 30 "$work/$1.log" >&2
            die "$1 did not become ready (GET /readyz)"
        fi
        targets+=("$1")
        outlasts+=("$1")
        url[$1]="http://127.0.0.1:$port/bench"
        pid_of[$1]=$pid
    }
    start_outlast outlast "$outlast_bin"
    for alt in $OUTLAST_ALT; do
        [[ -x ${alt#*=} ]] || die "OUTLAST_ALT: ${alt#*=} is not an executable"
        start_outlast "${alt%%=*}" "${alt#*=}"
    done
    sleep 1
    declare -A rss_idle
    for t in "${outlasts[@]}"; do rss_idle[$t]="$(rss_kib "${pid_of[$t]}" VmRSS)"; done
fi

for t in "${targets[@]}"; do check "$t" "${url[$t]}"; done
say "servers up: ${targets[*]}; ${DURATION}s per run, $THREADS thread(s), $CONNECTIONS connections"
say "machine: load $(cut -d' ' -f1-3 /proc/loadavg), $(pgrep -c rustc || true) rustc running"

# ---------------------------------------------------------------- (d) load
# to_ms 196.00us → 0.196
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        f = (u == "us") ? 0.001 : (u == "ms") ? 1 : (u == "s") ? 1000 : (u == "m") ? 60000 : -1
        if (f < 0) print "?"; else printf "%.3f", n * f
    }'
}

# Runs wrk in the background and waits, so INT/TERM stop it at once (bash defers
# traps until a foreground child exits).
load() {
    wrk "$@" &
    load_pid=$!
    wait "$load_pid"
    load_pid=""
}

# With PROFILE: perf-records an Outlast target during one run (DWARF call graphs: the
# release build keeps debug line tables, not frame pointers), then folds the stacks and
# draws them (inferno-collapse-perf, inferno-flamegraph: `cargo install inferno`).
profile_pid=""
profile_start() { # NAME PID
    [[ -z $PROFILE ]] && return
    mkdir -p "$PROFILE"
    perf record -q -F 499 --call-graph dwarf,16384 -o "$work/$1.perf" -p "$2" \
        -- sleep "$DURATION" >/dev/null 2>&1 &
    profile_pid=$!
}
profile_finish() { # NAME
    [[ -z $profile_pid ]] && return
    wait "$profile_pid" || true
    profile_pid=""
    perf script -i "$work/$1.perf" 2>/dev/null | inferno-collapse-perf >"$PROFILE/$1.folded" || true
    inferno-flamegraph --title "$1" <"$PROFILE/$1.folded" >"$PROFILE/$1.svg" 2>/dev/null || true
    rm -f "$work/$1.perf"
    say "profile: $PROFILE/$1.folded"
}

declare -A rps p50 p99 errs cpu
# median 3 1 2 → 2 (the lower middle of an even count; "-" when nothing was measured)
median() {
    (($#)) || { echo -; return; }
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'
}
# CPU time (user + system, clock ticks) of a target's process and its children (nginx's
# workers), for CPU per request: the same work costs the same whatever wrk and the
# other servers took from the two cores, so it compares builds better than rps does.
cpu_ticks() { # PID
    local p total=0
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        [[ -r /proc/$p/stat ]] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
tck=$(getconf CLK_TCK)
declare -A script_of=(
    [single]=forward.lua [batch10]=forward10.lua [hit]=single.lua [alone]=forward.lua
    [head]=head.lua
)
read -ra workloads <<<"$WORKLOADS"
for w in "${workloads[@]}"; do
    [[ -n ${script_of[$w]:-} ]] || die "unknown workload $w (single batch10 hit alone head)"
    script="$bench/${script_of[$w]}" conns="$CONNECTIONS"
    [[ $w == alone ]] && conns=1
    for ((round = 1; round <= ROUNDS; round++)); do
        # Every other round the other way round: the same build ran 4-15% faster when
        # loaded before another in a round than after it, whichever build it was (two
        # runs, bench/README.md), so with an even ROUNDS each goes first as often.
        order=("${targets[@]}")
        if ((round % 2 == 0)); then
            order=()
            for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
        fi
        for t in "${order[@]}"; do
            if ((WARMUP > 0 && round == 1)); then
                load -t"$THREADS" -c"$conns" -d"${WARMUP}s" -s "$script" "${url[$t]}" >/dev/null
            fi
            say "wrk $w -> $t (round $round of $ROUNDS)"
            out="$work/wrk-$w-$t-$round.txt"
            [[ $round == 1 && " ${outlasts[*]} " == *" $t "* ]] && profile_start "$w-$t" "${pid_of[$t]}"
            before="$(cpu_ticks "${pid_of[$t]}")"
            load -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency -s "$script" "${url[$t]}" >"$out"
            after="$(cpu_ticks "${pid_of[$t]}")"
            profile_finish "$w-$t"
            cpu[$w,$t]+="$(awk -v a="$after" -v b="$before" -v t="$tck" '/requests in/ {n = $1} END {if (n > 0) printf "%.1f", (a - b) / t * 1e6 / n; else print "-"}' "$out") "
            rps[$w,$t]+="$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out") "
            p50[$w,$t]+="$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")") "
            p99[$w,$t]+="$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")") "
            errs[$w,$t]=$((${errs[$w,$t]:-0} + $(awk '/Socket errors:/ {gsub(/,/, ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $NF} END {print s + 0}' "$out")))
        done
    done
    # Each figure is the median of the rounds (the targets take turns, so a slow spell
    # of the shared machine falls on all of them alike).
    for t in "${targets[@]}"; do
        for m in cpu rps p50 p99; do
            declare -n fig="$m"
            fig[$w,$t]="$(median ${fig[$w,$t]})"
            unset -n fig
        done
    done
done
declare -A rss_after rss_peak entries cbytes
metric() { awk -v k="$1" '$1 == k {printf "%.0f", $2}' <<<"$2"; }
for t in "${outlasts[@]}"; do
    kill -0 "${pid_of[$t]}" 2>/dev/null || die "$t died under load; see $work/$t.log"
    rss_after[$t]="$(rss_kib "${pid_of[$t]}" VmRSS)"
    rss_peak[$t]="$(rss_kib "${pid_of[$t]}" VmHWM)"
    m="$(curl -sS --max-time 5 "${url[$t]%/bench}/metrics")"
    entries[$t]="$(metric outlast_cache_entries "$m")"
    cbytes[$t]="$(metric outlast_cache_bytes "$m")"
done

# ---------------------------------------------------------------- (e) table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a > 0 && b > 0) printf "%.2f", a / b; else print "-"}'; }
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, medians of $ROUNDS round(s), $(nproc) cores; nginx $NGINX_WORKERS worker(s), keepalive 32;" \
    "Outlast worker_threads = $OUTLAST_THREADS, cache size_bytes $(mib $((CACHE_BYTES / 1024))); latency in ms"
printf '%-8s %-10s %10s %9s %9s %7s %10s\n' workload target rps p50 p99 errors cpu_us/req
for w in "${workloads[@]}"; do
    for t in "${targets[@]}"; do
        printf '%-8s %-10s %10s %9s %9s %7s %10s\n' "$w" "$t" "${rps[$w,$t]}" "${p50[$w,$t]}" "${p99[$w,$t]}" "${errs[$w,$t]}" "${cpu[$w,$t]}"
    done
done
echo
# Every proxy but nginx, against direct and nginx.
proxies=("${outlasts[@]}")
[[ $BARE == 1 ]] && proxies=(bare "${proxies[@]}")
printf '%-8s %9s %9s %9s' workload direct nginx nginx/dir
for t in "${proxies[@]}"; do printf ' %9s %14s %14s' "$t" "$t/direct" "$t/nginx"; done
echo
for w in "${workloads[@]}"; do
    printf '%-8s %9s %9s %9s' "$w" "${rps[$w,direct]}" "${rps[$w,nginx]}" "$(ratio "${rps[$w,nginx]}" "${rps[$w,direct]}")"
    for t in "${proxies[@]}"; do
        printf ' %9s %14s %14s' "${rps[$w,$t]}" "$(ratio "${rps[$w,$t]}" "${rps[$w,direct]}")" "$(ratio "${rps[$w,$t]}" "${rps[$w,nginx]}")"
    done
    echo
done
if [[ " ${workloads[*]} " == *" alone "* ]]; then
    added() { awk -v a="${p50[alone,$1]}" -v d="${p50[alone,direct]}" 'BEGIN {printf "%.0f us", (a - d) * 1000}'; }
    echo
    echo -n "p50 added over direct, one connection (alone): nginx $(added nginx)"
    for t in "${proxies[@]}"; do echo -n ", $t $(added "$t")"; done
    echo
fi
echo
if ((${#outlasts[@]})); then
    for t in "${outlasts[@]}"; do
        echo "$t RSS: idle $(mib "${rss_idle[$t]}"), after the runs $(mib "${rss_after[$t]}") (peak $(mib "${rss_peak[$t]}"));" \
            "cache counts $(mib $((${cbytes[$t]:-0} / 1024))) in ${entries[$t]:-0} entries, size_bytes $(mib $((CACHE_BYTES / 1024)));" \
            "RSS - size_bytes = $(mib $((${rss_after[$t]} - CACHE_BYTES / 1024)))"
    done
else
    echo "Outlast: skipped (SKIP_OUTLAST=1)"
fi
