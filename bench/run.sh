#!/usr/bin/env bash
# Throughput, latency and memory of Outlast against a direct upstream and nginx.
#
# Starts a fixed upstream (examples/fixed_upstream.rs: answers every POST at once),
# nginx in front of it (keepalive 32) and Outlast in front of it (one chain, verify
# off), then loads each with wrk (-t1 -c16) for three workloads: one eth_getBalance at
# block 1 (bench/single.lua, passed through), a batch of ten of them (bench/batch10.lua),
# and eth_blockNumber (bench/head.lua: Outlast answers it from its consensus head, the
# others forward it). Prints one table. Then weighs a cache entry: the cached instance
# is filled with distinct answers (bench/fill.lua) for FILL seconds, and its RSS growth
# and the cache's own accounting (/metrics) are divided by the entries it holds.
# Everything listens on 127.0.0.1; every process started here is stopped on exit.
#
# Environment: DURATION (s per run, 10), WARMUP (s before each run, 1),
# CONNECTIONS (16), THREADS (1), NGINX_WORKERS (1), OUTLAST_THREADS (= NGINX_WORKERS),
# FILL (s of distinct reads, 3),
# SKIP_OUTLAST=1 (only direct and nginx), KEEP=1 (keep the scratch folder).
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
SKIP_OUTLAST="${SKIP_OUTLAST:-0}"
FILL="${FILL:-3}"
KEEP="${KEEP:-0}"

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
cargo_() {
    if command -v flock >/dev/null; then flock /tmp/outlast-cargo.lock cargo "$@"; else cargo "$@"; fi
}
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
        p=$((20000 + RANDOM % 40000))
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

targets=(direct nginx)
declare -A url=(
    [direct]="http://127.0.0.1:$up_port/"
    [nginx]="http://127.0.0.1:$nginx_port/"
)
if [[ $SKIP_OUTLAST != 1 ]]; then
    # Two instances: `outlast` with its cache off (every call passes through) and
    # `cached` with the default cache (block-1 reads and finalized blocks are immutable).
    declare -A pid_of
    start_outlast() { # NAME CACHE_SECTION
        local port cfg="$work/$1.toml"
        port="$(free_port)"
        cat >"$cfg" <<EOF
[server]
listen = "127.0.0.1:$port"
worker_threads = $OUTLAST_THREADS
$2
[[chains]]
name = "bench"
chain_id = 31337
verify = "off"

[[chains.upstreams]]
name = "fixed"
url = "http://127.0.0.1:$up_port"
operator = "bench"
EOF
        "$outlast_bin" serve --config "$cfg" >"$work/$1.log" 2>&1 &
        local pid=$!
        pids+=("$pid")
        ready() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1") == 200 ]]; }
        if ! wait_for "$1" "$pid" ready "http://127.0.0.1:$port/readyz"; then
            tail -n 30 "$work/$1.log" >&2
            die "$1 did not become ready (GET /readyz)"
        fi
        targets+=("$1")
        url[$1]="http://127.0.0.1:$port/bench"
        pid_of[$1]=$pid
    }
    start_outlast outlast $'[cache]\nsize_bytes = 0\n'
    start_outlast cached ""
    outlast_pid=${pid_of[outlast]}
    sleep 1
    rss_idle="$(rss_kib "$outlast_pid" VmRSS)"
    rss_idle_cached="$(rss_kib "${pid_of[cached]}" VmRSS)"
fi

for t in "${targets[@]}"; do check "$t" "${url[$t]}"; done
say "servers up: ${targets[*]}; ${DURATION}s per run, $THREADS thread(s), $CONNECTIONS connections"

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

declare -A rps p50 p99 errs
# `alone` is `single` over one connection: the latency each hop adds when nothing queues.
workloads=(single batch10 head alone)
for w in "${workloads[@]}"; do
    script="$bench/$w.lua" conns="$CONNECTIONS"
    [[ $w == alone ]] && script="$bench/single.lua" conns=1
    for t in "${targets[@]}"; do
        if ((WARMUP > 0)); then
            load -t"$THREADS" -c"$conns" -d"${WARMUP}s" -s "$script" "${url[$t]}" >/dev/null
        fi
        say "wrk $w -> $t"
        out="$work/wrk-$w-$t.txt"
        load -t"$THREADS" -c"$conns" -d"${DURATION}s" --latency -s "$script" "${url[$t]}" >"$out"
        rps[$w,$t]="$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")"
        p50[$w,$t]="$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")"
        p99[$w,$t]="$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")"
        errs[$w,$t]="$(awk '/Socket errors:/ {gsub(/,/, ""); s += $4 + $6 + $8 + $10} /Non-2xx/ {s += $NF} END {print s + 0}' "$out")"
    done
done
if [[ $SKIP_OUTLAST != 1 ]]; then
    rss_after="$(rss_kib "$outlast_pid" VmRSS)"
    rss_peak="$(rss_kib "$outlast_pid" VmHWM)"
    kill -0 "$outlast_pid" 2>/dev/null || die "Outlast died under load; see $work/outlast.log"

    cached_pid=${pid_of[cached]}
    metric() { awk -v k="$1" '$1 == k {printf "%.0f", $2}' <<<"$2"; }
    before="$(curl -sS --max-time 5 "${url[cached]%/bench}/metrics")"
    rss_before_fill="$(rss_kib "$cached_pid" VmRSS)"
    say "wrk fill -> cached (${FILL}s of distinct reads)"
    load -t1 -c"$CONNECTIONS" -d"${FILL}s" -s "$bench/fill.lua" "${url[cached]}" >"$work/wrk-fill.txt"
    after="$(curl -sS --max-time 5 "${url[cached]%/bench}/metrics")"
    rss_after_fill="$(rss_kib "$cached_pid" VmRSS)"
    entries_added=$(($(metric outlast_cache_entries "$after") - $(metric outlast_cache_entries "$before")))
    bytes_added=$(($(metric outlast_cache_bytes "$after") - $(metric outlast_cache_bytes "$before")))
fi

# ---------------------------------------------------------------- (e) table
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $(nproc) cores; nginx $NGINX_WORKERS worker(s), keepalive 32; Outlast worker_threads = $OUTLAST_THREADS; latency in ms"
printf '%-8s %-8s %10s %9s %9s %7s\n' workload target rps p50 p99 errors
for w in "${workloads[@]}"; do
    for t in "${targets[@]}"; do
        printf '%-8s %-8s %10s %9s %9s %7s\n' "$w" "$t" "${rps[$w,$t]}" "${p50[$w,$t]}" "${p99[$w,$t]}" "${errs[$w,$t]}"
    done
done
echo
printf '%-8s %12s %12s %12s %12s\n' workload nginx/direct outlast/direct outlast/nginx cached/nginx
for w in "${workloads[@]}"; do
    c_a="-" c_b="-" c_c="-"
    if [[ $SKIP_OUTLAST != 1 ]]; then
        c_a="$(ratio "${rps[$w,outlast]}" "${rps[$w,direct]}")"
        c_b="$(ratio "${rps[$w,outlast]}" "${rps[$w,nginx]}")"
        c_c="$(ratio "${rps[$w,cached]}" "${rps[$w,nginx]}")"
    fi
    printf '%-8s %12s %12s %12s %12s\n' "$w" "$(ratio "${rps[$w,nginx]}" "${rps[$w,direct]}")" "$c_a" "$c_b" "$c_c"
done
added() { awk -v a="${p50[alone,$1]}" -v d="${p50[alone,direct]}" 'BEGIN {printf "%.0f us", (a - d) * 1000}'; }
echo
echo -n "p50 added over direct, one connection (alone): nginx $(added nginx)"
[[ $SKIP_OUTLAST != 1 ]] && echo -n ", outlast $(added outlast), cached $(added cached)"
echo
if [[ $SKIP_OUTLAST != 1 ]]; then
    echo "Outlast RSS: idle $(mib "$rss_idle"), after load $(mib "$rss_after") (peak $(mib "$rss_peak")); cached instance idle $(mib "$rss_idle_cached")"
    per() { awk -v a="$1" -v n="$2" 'BEGIN {if (n > 0) printf "%.0f B", a / n; else print "-"}'; }
    echo "Cache entry (eth_getBalance answer, ~110-byte key): $entries_added entries added;" \
        "accounted $(per "$bytes_added" "$entries_added") each," \
        "RSS $(mib "$rss_before_fill") -> $(mib "$rss_after_fill") = $(per $(((rss_after_fill - rss_before_fill) * 1024)) "$entries_added") each"
else
    echo "Outlast: skipped (SKIP_OUTLAST=1)"
fi
