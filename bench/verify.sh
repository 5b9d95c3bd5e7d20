#!/usr/bin/env bash
# What a verified read costs: eth_getBalance, and a token's balanceOf by eth_call,
# through Outlast with verify = "off" and with verify = "proofs", in the same run,
# against the same three Anvil nodes, plus the nodes directly. The answer cache is off
# in both, so every call is verified (proofs) or forwarded (off). Prints rps, p50/p99
# latency, and Outlast's CPU time per request (user+system from /proc, so it includes
# parsing the ~2-9 KB eth_getProof replies, checking the proofs and, for eth_call, the
# access list round trip and the local execution in revm).
#
# Environment: DURATION (s per run, 10), CONNECTIONS (4), PROFILE=DIR (perf-records the
# proofs instance during its two runs: DIR/verify-{balance,call}.folded and .svg; needs
# perf and inferno, as bench/run.sh's PROFILE).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-4}"
PROFILE="${PROFILE:-}"
say() { echo "bench: $*" >&2; }

command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
"$root/scripts/setup-testbed.sh" >/dev/null
anvil="$root/testbed/node_modules/.bin/anvil"
cargo_() { if command -v flock >/dev/null; then flock /tmp/outlast-cargo.lock cargo "$@"; else cargo "$@"; fi; }
(cd "$root" && cargo_ build --release --quiet)
outlast="${CARGO_TARGET_DIR:-$root/target}/release/outlast"

work="$(mktemp -d /tmp/outlast-verify-bench.XXXXXX)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
post() { curl -s -H 'content-type: application/json' -d "$2" "$1"; }

nodes=()
for i in 0 1 2; do
    p="$(port)"
    "$anvil" --port "$p" --chain-id 31337 --timestamp 1700000000 --no-mining --silent &
    pids+=($!)
    nodes+=("http://127.0.0.1:$p")
done
for n in "${nodes[@]}"; do
    for _ in $(seq 50); do post "$n" '{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}' >/dev/null && break; sleep 0.1; done
    for b in 1 2; do post "$n" "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"evm_mine\",\"params\":[$((1700000000 + 12 * b))]}" >/dev/null; done
    # The test suite's token (tests/fixtures/Token.sol), 42 to account 0: the same
    # transaction on every node, so the same contract at the same address.
    token_data="0x$(tr -d '\n' <"$root/tests/fixtures/token.hex")$(printf '%064x' 42)"
    post "$n" "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"eth_sendTransaction\",\"params\":[{\"from\":\"0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266\",\"data\":\"$token_data\",\"nonce\":\"0x0\",\"gas\":\"0x200000\",\"gasPrice\":\"0x77359400\"}]}" >/dev/null
    post "$n" "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"evm_mine\",\"params\":[$((1700000000 + 36))]}" >/dev/null
done
token=0x5FbDB2315678afecb367f032d93F642f64180aa3

start_outlast() { # NAME MODE
    local p cfg="$work/$1.toml"
    p="$(port)"
    {
        echo "[server]"; echo "listen = \"127.0.0.1:$p\""
        echo "[cache]"; echo "size_bytes = 0"
        echo "[[chains]]"; echo 'name = "local"'; echo 'chain_id = 31337'; echo "verify = \"$2\""; echo 'quorum = 2'
        for i in 0 1 2; do
            echo "[[chains.upstreams]]"; echo "name = \"node$i\""; echo "url = \"${nodes[$i]}\""; echo "operator = \"op$i\""
        done
    } >"$cfg"
    "$outlast" serve --config "$cfg" >"$work/$1.log" 2>&1 &
    pids+=($!)
    eval "${1}_pid=$!"
    eval "${1}_url=http://127.0.0.1:$p/local"
    for _ in $(seq 100); do [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/readyz") == 200 ]] && break; sleep 0.1; done
}
start_outlast plain off
start_outlast proofs proofs
sleep 1

cat >"$work/balance.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0x70997970C51812dc3A010C7d01b50e0d17dc79C8","latest"]}'
EOF

call_body='{"jsonrpc":"2.0","id":1,"method":"eth_call","params":[{"to":"'$token'","data":"0x70a08231000000000000000000000000f39fd6e51aad88f6f4ce6ab8827279cfffb92266"},"latest"]}'
printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = %s\n' "'$call_body'" >"$work/call.lua"
call_check=$(curl -s -D - -H 'content-type: application/json' -d "$call_body" "$proofs_url")
grep -qi 'x-outlast-verified: proof' <<<"$call_check" && grep -q '2a"' <<<"$call_check" ||
    { say "the proofs instance did not execute eth_call: $call_check"; exit 1; }

check=$(curl -s -D - -H 'content-type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"eth_getBalance","params":["0x70997970C51812dc3A010C7d01b50e0d17dc79C8","latest"]}' "$proofs_url")
grep -qi 'x-outlast-verified: proof' <<<"$check" || { say "the proofs instance did not verify: $check"; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tck=$(getconf CLK_TCK)
printf '%-16s %8s %9s %9s %14s\n' target rps p50_ms p99_ms cpu_us_per_req
run() { # NAME URL PID [SCRIPT]
    local out="$work/wrk-$1-${4:-balance}.txt" before after reqs script="$work/${4:-balance}.lua"
    wrk -t1 -c"$CONNECTIONS" -d1s -s "$script" "$2" >/dev/null
    before=$([[ -n $3 ]] && cpu_ticks "$3" || echo 0)
    local perf_pid=""
    if [[ -n $PROFILE && $1 == outlast-proofs ]]; then
        mkdir -p "$PROFILE"
        perf record -q -F 499 --call-graph dwarf,16384 -o "$work/p.perf" -p "$3" \
            -- sleep "$DURATION" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$script" "$2" >"$out"
    after=$([[ -n $3 ]] && cpu_ticks "$3" || echo 0)
    if [[ -n $perf_pid ]]; then
        wait "$perf_pid" || true
        local name="$PROFILE/verify-${4:-balance}"
        perf script -i "$work/p.perf" 2>/dev/null | inferno-collapse-perf >"$name.folded" || true
        inferno-flamegraph --title "verify ${4:-balance}" <"$name.folded" >"$name.svg" 2>/dev/null || true
        say "profile: $name.folded"
    fi
    reqs=$(awk '/requests in/ {print $1}' "$out")
    local rps p50 p99 cpu
    rps=$(awk '/^Requests\/sec:/ {printf "%.0f", $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out")
    p99=$(awk '$1 == "99%" {print $2}' "$out")
    cpu=$([[ -n $3 ]] && awk -v a="$after" -v b="$before" -v n="$reqs" -v t="$tck" 'BEGIN {printf "%.1f", (a - b) / t * 1e6 / n}' || echo -)
    printf '%-16s %8s %9s %9s %14s\n' "$1" "$rps" "$p50" "$p99" "$cpu"
}
echo "eth_getBalance at latest"
run anvil-direct "${nodes[0]}" ""
run outlast-off "$plain_url" "$plain_pid"
run outlast-proofs "$proofs_url" "$proofs_pid"
echo "eth_call balanceOf at latest (proofs: access list + proofs + local execution)"
run anvil-direct "${nodes[0]}" "" call
run outlast-off "$plain_url" "$plain_pid" call
run outlast-proofs "$proofs_url" "$proofs_pid" call
echo "(wrk -t1 -c$CONNECTIONS -d${DURATION}s; answer cache off; $(nproc) cores shared by wrk, Anvil and Outlast)"
