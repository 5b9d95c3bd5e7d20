#!/usr/bin/env bash
# Fan-out latency and memory per subscriber of WebSocket subscriptions.
#
# Runs the benchmark mode of tests/websocket.rs (fan_out_latency_and_memory_per_subscriber)
# in release: two Anvil nodes that push their heads over WebSocket, `outlast serve` in
# front of them as its own process, SUBSCRIBERS clients (one connection each, in this
# process) subscribed to newHeads, and BLOCKS blocks mined GAP_MS apart. It asserts that
# every client got every block once and in order, and prints one line: latency from
# "the block is mined on every node" to "a client read its notification" (p50, p99, max
# over every client and block); for scale, one client subscribed to an Anvil node
# directly, measured from the start of the mining call; and Outlast's resident memory
# idle, with every client subscribed, and per subscriber. Everything listens on 127.0.0.1 and stops when the run ends.
#
# Environment: SUBSCRIBERS (1000), BLOCKS (100), GAP_MS (200).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
SUBSCRIBERS="${SUBSCRIBERS:-1000}"
BLOCKS="${BLOCKS:-100}"
GAP_MS="${GAP_MS:-200}"

cargo_() {
    if command -v flock >/dev/null; then flock /tmp/outlast-cargo.lock cargo "$@"; else cargo "$@"; fi
}

scripts/setup-testbed.sh >/dev/null
echo "bench/ws: building (release)" >&2
# Built under the lock; run without it, so other builds may go on meanwhile.
exe="$(cargo_ test --release --test websocket --no-run --message-format=json 2>/dev/null |
    grep '"name":"websocket"' | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)"
[[ -x "$exe" ]] || { echo "bench/ws: the test binary did not build" >&2; exit 1; }
echo "bench/ws: $SUBSCRIBERS subscribers, $BLOCKS blocks, one every $GAP_MS ms" >&2
OUTLAST_WS_SUBSCRIBERS="$SUBSCRIBERS" OUTLAST_WS_BLOCKS="$BLOCKS" OUTLAST_WS_GAP_MS="$GAP_MS" \
    "$exe" --exact fan_out_latency_and_memory_per_subscriber --nocapture 2>&1 |
    grep -E '^ws fan-out|panicked|FAILED' || { echo "bench/ws: no result" >&2; exit 1; }
