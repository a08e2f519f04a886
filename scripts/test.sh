#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need, checks
# formatting and lints, then runs the test suite once (one build, one feature set).
#
# Usage: scripts/test.sh            (from anywhere inside the repository)
# Env:   MUSTER_SIM_SEEDS=N         simulator seeds (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# System packages the build and the server-backed tests need: etcd for the etcd backend's tests,
# protoc and the well-known .proto files for etcd-client's build, openssl for TLS test certificates.
# apt-get update runs once, and only when something is missing.
APT_PACKAGES=(etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  # "install ok installed" only: a removed package keeps a dpkg record ("config-files").
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$out"
# One closing line over every test binary and doctest run ("total: N passed, N failed").
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntotal: %d passed, %d failed\n", p, f }' "$out"
