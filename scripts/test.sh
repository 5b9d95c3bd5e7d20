#!/usr/bin/env bash
# The one test command: installs the real test bed (system tools, Anvil, cast, ethers),
# then runs formatting and lint checks and every test — unit and end-to-end.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# System tools the end-to-end tests call: curl and ip (inside `unshare --net`), node/npm.
missing=()
for tool in curl ip unshare node npm; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "test: installing missing system tools: ${missing[*]}"
    pkgs=()
    for tool in "${missing[@]}"; do
        case "$tool" in
            curl) pkgs+=(curl) ;;
            ip) pkgs+=(iproute2) ;;
            unshare) pkgs+=(util-linux) ;;
            node | npm) pkgs+=(nodejs npm) ;;
        esac
    done
    apt-get update -qq && apt-get install -y -qq "${pkgs[@]}"
fi

scripts/setup-testbed.sh

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "test: cargo test"
cargo test --all-targets "$@"
