#!/usr/bin/env bash
# See Outlast at work in two minutes, offline: installs the test bed (Anvil from npm, as
# scripts/test.sh does), then runs examples/demo.rs — six labelled local nodes, Outlast in
# front, a client reading balances, and a fault schedule (a cloud region dies, a provider
# lags, one lies, all recover). Open the status page URL it prints.
# Usage: scripts/demo.sh [--port 8545] [--once]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

missing=()
for tool in node npm; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "demo: installing Node.js and npm (for Anvil)"
    apt-get update -qq && apt-get install -y -qq nodejs npm
fi
scripts/setup-testbed.sh >/dev/null
echo "demo: building (the first time takes a few minutes)…"
cargo build --quiet --example demo
exec cargo run --quiet --example demo -- "$@"
