#!/usr/bin/env bash
# The whole multi-stage build of config/Dockerfile (dorun compiled inside the build stage),
# with podman or docker, from the repository root:
#
#   bash config/build-image.sh [tag]        # default tag: dorun
#
# Online nothing else is needed. Where the build cannot download V8's prebuilt library, set
# RUSTY_V8_ARCHIVE to the archive on this machine: its directory is mounted into the build
# (podman) and the path passed as the build argument. Where no registry serves the base
# images (rust:1-bookworm, debian:bookworm-slim), podman makes them here: the Debian base with
# mmdebstrap from this machine's apt sources, and the Rust one from that plus this machine's
# Rust toolchain (rustup's default). On two cores the release build takes about 15 minutes.
# tests/container/run.sh (CI) builds only the final stage, around a binary already built.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-dorun}
engine=${CONTAINER_ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
work=$(mktemp -d /tmp/dorun-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

args=(build -f config/Dockerfile -t "$tag")
if [ "$engine" = podman ]; then
  # podman's default OCI format drops HEALTHCHECK.
  args+=(--format docker)
  base=docker.io/library/debian:bookworm-slim
  if ! podman image exists "$base" && ! podman pull -q "$base" >/dev/null 2>&1; then
    echo "no registry: making $base with mmdebstrap"
    mmdebstrap --quiet --variant=minbase \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
      bookworm "$work/base.tar"
    podman import -q "$work/base.tar" "$base" >/dev/null
  fi
  rust=docker.io/library/rust:1-bookworm
  if ! podman image exists "$rust" && ! podman pull -q "$rust" >/dev/null 2>&1; then
    toolchain=$(rustc --print sysroot)
    echo "no registry: making $rust from $base and the toolchain in $toolchain"
    mkdir -p "$work/rust"
    cp -al "$toolchain" "$work/rust/toolchain" 2>/dev/null || cp -a "$toolchain" "$work/rust/toolchain"
    # This machine's own certificate authorities (e.g. an egress proxy's), so that cargo
    # inside the build reaches the registry the way it does here.
    mkdir -p "$work/rust/ca"
    cp /usr/local/share/ca-certificates/*.crt "$work/rust/ca/" 2>/dev/null || true
    cat >"$work/rust/Containerfile" <<EOF
FROM $base
RUN apt-get update && apt-get install -y --no-install-recommends \\
      ca-certificates gcc g++ libc6-dev make pkg-config binutils git curl \\
    && rm -rf /var/lib/apt/lists/*
COPY ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
COPY toolchain /usr/local/rust
ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:\$PATH CARGO_HOME=/usr/local/cargo
EOF
    podman build -q -t "$rust" "$work/rust" >/dev/null
  fi
fi
if [ -n "${RUSTY_V8_ARCHIVE:-}" ]; then
  archive=$(realpath "$RUSTY_V8_ARCHIVE")
  [ "$engine" = podman ] || {
    echo "RUSTY_V8_ARCHIVE with docker: copy the archive into the build context and pass" >&2
    echo "--build-arg RUSTY_V8_ARCHIVE=/src/<its path in the context> yourself" >&2
    exit 1
  }
  args+=(-v "$(dirname "$archive"):/v8:ro" --build-arg "RUSTY_V8_ARCHIVE=/v8/$(basename "$archive")")
fi
"$engine" "${args[@]}" .
"$engine" image inspect --format '{{.Size}}' "$tag" | awk -v t="$tag" '{printf "%s: %d MB\n", t, $1 / 1000000}'
