#!/usr/bin/env bash
# Installs the test bed's real parts (Anvil, cast, ethers, viem) into testbed/node_modules
# from the committed testbed/package-lock.json, then checks that the binaries run.
# Idempotent: when node_modules already matches the lock it only runs the checks.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
testbed="$root/testbed"
lock="$testbed/package-lock.json"
modules="$testbed/node_modules"
# Written after a successful `npm ci`: the sha256 of the lock it installed.
stamp="$modules/.outlast-lock.sha256"

for tool in node npm sha256sum; do
    command -v "$tool" >/dev/null || { echo "setup-testbed: '$tool' not found; install Node.js 20+" >&2; exit 1; }
done
[[ -f "$lock" ]] || { echo "setup-testbed: $lock is missing" >&2; exit 1; }

want="$(sha256sum "$lock" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"

if [[ ! -d "$modules" ]]; then
    reason="testbed/node_modules is missing"
elif [[ "$want" != "$have" ]]; then
    reason="testbed/node_modules is stale against testbed/package-lock.json"
else
    reason=""
fi

if [[ -n "$reason" ]]; then
    echo "setup-testbed: $reason; running npm ci --prefix testbed"
    start=$SECONDS
    npm ci --prefix "$testbed" --no-audit --no-fund --loglevel=error
    echo "$want" >"$stamp"
    echo "setup-testbed: installed in $((SECONDS - start)) s"
else
    echo "setup-testbed: testbed/node_modules is up to date with the lock; nothing to install"
fi

for bin in anvil cast; do
    path="$modules/.bin/$bin"
    if ! version="$("$path" --version 2>&1 | head -n1)"; then
        echo "setup-testbed: $path --version failed:" >&2
        echo "$version" >&2
        echo "setup-testbed: remove testbed/node_modules and run this script again" >&2
        exit 1
    fi
    echo "setup-testbed: $bin OK ($version)"
done
node -e 'const e = require(process.argv[1]); console.log(`setup-testbed: ethers OK (${e.version})`)' "$modules/ethers"
node -e 'const v = require(process.argv[1] + "/package.json"); console.log(`setup-testbed: viem OK (${v.version})`)' "$modules/viem"
