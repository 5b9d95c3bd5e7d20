#!/usr/bin/env bash
# The one test command: installs the real test bed (system tools, Anvil, cast, ethers,
# viem, web3.py), then runs formatting and lint checks and every test — unit and end-to-end.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# System tools the end-to-end tests call: curl and ip (inside `unshare --net`), node/npm,
# headless Chromium (the status page), Python 3 with pip (feed and metrics parsers) and
# redis-server (tests/redis.rs starts its own on a free port, without persistence, and
# stops it; apt starts no service here); buildah and CA certificates (tests/deploy.rs
# builds and runs the image) and kubectl (its built-in kustomize renders the Kubernetes
# base).
missing=()
for tool in curl ip unshare node npm chromium python3 redis-server buildah kubectl; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
    echo "test: installing missing system tools: ${missing[*]}"
    pkgs=()
    for tool in "${missing[@]}"; do
        case "$tool" in
            curl) pkgs+=(curl) ;;
            ip) pkgs+=(iproute2) ;;
            unshare) pkgs+=(util-linux) ;;
            node | npm) pkgs+=(nodejs npm) ;;
            chromium) pkgs+=(chromium) ;;
            python3) pkgs+=(python3 python3-pip) ;;
            redis-server) pkgs+=(redis-server) ;;
            buildah) pkgs+=(buildah) ;;
            kubectl) pkgs+=(kubernetes-client) ;;
            ca-certificates) pkgs+=(ca-certificates) ;;
        esac
    done
    apt-get update -qq && apt-get install -y -qq "${pkgs[@]}"
fi

# A clean build of every test binary writes ~7 GB under target/; a full disk shows up
# late and obscurely (the linker killed by SIGBUS), so say so first.
mkdir -p target
free_gb=$(df --output=avail -BG target | tail -n 1 | tr -dc '0-9')
if [[ -n $free_gb ]] && ((free_gb < 8)); then
    echo "test: warning: ${free_gb} GB free for target/; a clean test build needs about 8 GB" >&2
fi

scripts/setup-testbed.sh

# Python parsers the tests check Outlast's output with: feedparser (the Atom feed), the
# Prometheus client's text parser (/metrics), and kubernetes-validate (the Kubernetes
# base, against the schemas it ships: no network). Pinned; skipped when importable.
if ! python3 -c 'import feedparser, prometheus_client, kubernetes_validate' 2>/dev/null; then
    echo "test: installing feedparser, prometheus_client and kubernetes-validate for python3"
    python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-pip; }
    py_pkgs=(feedparser==6.0.14 prometheus_client==0.26.0 kubernetes-validate==1.37.0)
    python3 -m pip install --quiet --disable-pip-version-check "${py_pkgs[@]}" ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "${py_pkgs[@]}"
fi

# web3.py for the client compatibility suite (tests/compat.rs). Pinned; skipped when
# already importable at that version.
if ! python3 -c 'import web3, sys; sys.exit(web3.__version__ != "8.0.0")' 2>/dev/null; then
    echo "test: installing web3==8.0.0 for python3"
    python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3-pip; }
    python3 -m pip install --quiet --disable-pip-version-check web3==8.0.0 ||
        python3 -m pip install --quiet --disable-pip-version-check --break-system-packages web3==8.0.0
fi

echo "test: cargo fmt --check"
cargo fmt --all -- --check
echo "test: cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "test: cargo test"
# `outlast serve` run by the tests keeps incident history under XDG_STATE_HOME: not
# the user's own (in-process gateways get a temporary directory each).
export XDG_STATE_HOME="$root/target/test-state"
cargo test --all-targets "$@"
