#!/usr/bin/env bash
# Builds the OCI image `outlast:dev` with buildah, on an empty base (FROM scratch):
# the release binary, the shared libraries ldd says it needs, CA certificates, and a
# config (the embedded default, listening on 0.0.0.0:8545). Non-root (uid 65532); it
# writes only to /var/lib/outlast, so it runs with a read-only root filesystem and a
# volume there. Nothing is pulled. Prints the image's size at the end.
# Usage: scripts/image.sh
#   OUTLAST_BIN=path    package this binary instead of building target/release/outlast
#   OUTLAST_IMAGE=name  tag to build (default outlast:dev)
#   OUTLAST_STRIP=0     keep the binary's debug line tables (5x the size; backtraces
#                       name functions either way)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

image="${OUTLAST_IMAGE:-outlast:dev}"
command -v buildah >/dev/null || {
    echo "image: buildah not found; install it (Debian/Ubuntu: apt-get install -y buildah)" >&2
    exit 1
}
certs=/etc/ssl/certs/ca-certificates.crt
[[ -f "$certs" ]] || {
    echo "image: $certs not found; install it (Debian/Ubuntu: apt-get install -y ca-certificates)" >&2
    exit 1
}

if [[ -n "${OUTLAST_BIN:-}" ]]; then
    bin="$OUTLAST_BIN"
else
    # Always asked, so a changed source is never shipped stale; a no-op when fresh.
    echo "image: cargo build --release (the first time takes several minutes)"
    cargo build --release --quiet
    bin="target/release/outlast"
fi
[[ -x "$bin" ]] || { echo "image: $bin is not an executable" >&2; exit 1; }

ctx="$(mktemp -d "${TMPDIR:-/tmp}/outlast-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
rootfs="$ctx/rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/outlast" "$rootfs/etc/ssl/certs" "$ctx/state"
if [[ "${OUTLAST_STRIP:-1}" != 0 ]] && command -v objcopy >/dev/null; then
    objcopy --strip-debug "$bin" "$rootfs/usr/local/bin/outlast"
else
    cp "$bin" "$rootfs/usr/local/bin/outlast"
fi

# Shared libraries, at the paths the dynamic loader looks for them (symlinks resolved).
if ldd_out="$(ldd "$bin" 2>&1)"; then
    if grep -q 'not found' <<<"$ldd_out"; then
        echo "image: a library of $bin is missing on this machine:" >&2
        echo "$ldd_out" >&2
        exit 1
    fi
    while read -r lib; do
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out")
elif ! grep -q 'not a dynamic executable' <<<"$ldd_out"; then
    echo "image: ldd $bin failed: $ldd_out" >&2
    exit 1
fi

cp "$certs" "$rootfs/etc/ssl/certs/ca-certificates.crt"
# A name for uid 65532, for tools that print one; Outlast itself needs none.
echo 'outlast:x:65532:65532:outlast:/var/lib/outlast:/nonexistent' >"$rootfs/etc/passwd"
echo 'outlast:x:65532:' >"$rootfs/etc/group"

# The image's config: the binary's own embedded default (Ethereum and Base from public
# endpoints of many operators), listening on every interface of the container.
config="$rootfs/etc/outlast/outlast.toml"
"$bin" default-config | sed 's/^listen = "127\.0\.0\.1:8545"$/listen = "0.0.0.0:8545"/' >"$config"
grep -qx 'listen = "0.0.0.0:8545"' "$config" || {
    echo "image: the embedded default has no 'listen = \"127.0.0.1:8545\"' line to change; update scripts/image.sh" >&2
    exit 1
}
"$bin" check --config "$config" >/dev/null

version="$("$bin" --version | awk '{ print $2 }')"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
old="$(buildah images --noheading --format '{{.ID}}' "$image" 2>/dev/null | head -n1 || true)"
echo "image: building $image (outlast $version, $revision)"
buildah bud --quiet --format oci --layers=false \
    --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
    -f deploy/image/Containerfile -t "$image" "$ctx" >/dev/null

new="$(buildah images --noheading --format '{{.ID}}' "$image" | head -n1)"
# The image this one replaces, unless a container still uses it.
if [[ -n "$old" && "$old" != "$new" ]]; then
    buildah rmi "$old" >/dev/null 2>&1 || true
fi
size="$(buildah images --noheading --format '{{.Size}}' "$image" | head -n1)"
packed="$(tar -C "$rootfs" -c . | gzip -c | wc -c)"
echo "image: $image built: $size on disk, about $((packed / 1024 / 1024)) MiB compressed"
