#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need, checks
# formatting and lints, then runs the test suite once (one build, one feature set).
#
# Usage: scripts/test.sh            (from anywhere inside the repository)
# Env:   MUSTER_SIM_SEEDS=N         simulator seeds (default 2000; MUSTER_SIM_FIRST_SEED=S starts at S)
#        MUSTER_FAULT_ROUNDS=full   the fault scenarios' full repetition counts (default: a few
#                                   rounds each; see docs/reliability.md)
#        MUSTER_FAULT_REPORT=FILE   append each fault scenario's result line to FILE
#        MUSTER_STAGGER_NODES=N     nodes in the staggered-start classic test, started one every
#                                   100 ms (default 30; e.g. 100)
#        MUSTER_ETCD_BIN=PATH       the etcd server the tests run (default: etcd 3.5.16, fetched)
#        MUSTER_CONSUL_BIN=PATH     the Consul agent the tests run (default: Consul 1.8.7, fetched)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# System packages the build and the server-backed tests need: etcd for the etcd backend's tests,
# protoc and the well-known .proto files for etcd-client's build, openssl for TLS test certificates,
# dnsmasq and bind9 for the DNS tests, iproute2 and util-linux (ip, unshare, nsenter) for the test
# namespace and the fault tests' test hosts, nftables for their partitions and packet loss;
# kubernetes-validate (PyPI) for the Kubernetes manifests; moto and cfn-lint (PyPI, in a private
# venv) for the AWS tests.
# apt-get update runs once, and only when something is missing.
APT_PACKAGES=(etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl dnsmasq-base bind9 bind9-dnsutils
  iproute2 util-linux nftables)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  # "install ok installed" only: a removed package keeps a dpkg record ("config-files").
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
# pip, for kubernetes-validate below.
if ! command -v kubernetes-validate >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
  missing+=(python3-pip)
fi
# venv, for moto and cfn-lint below (Debian splits it out of python3).
MUSTER_VENV=${MUSTER_VENV:-$HOME/.cache/muster/venv}
if [[ ! -x "$MUSTER_VENV/bin/moto_server" ]] && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# kubernetes-validate (PyPI) checks deploy/kubernetes against the Kubernetes 1.33 schemas it
# bundles, offline.
if ! command -v kubernetes-validate >/dev/null 2>&1; then
  log "installing kubernetes-validate from PyPI"
  python3 -m pip install --quiet kubernetes-validate==1.37.0 ||
    python3 -m pip install --quiet --break-system-packages kubernetes-validate==1.37.0
  hash -r
fi

# moto (the EC2 / Auto Scaling / SSM / CloudFormation emulator) and cfn-lint, in a private venv
# the AWS tests find through MUSTER_VENV.
MOTO_PIN='moto[server,ec2,autoscaling,ssm,cloudformation,elbv2,iam]==5.2.5'
if [[ ! -x "$MUSTER_VENV/bin/moto_server" || ! -x "$MUSTER_VENV/bin/cfn-lint" ]]; then
  log "installing moto and cfn-lint from PyPI into $MUSTER_VENV"
  python3 -m venv "$MUSTER_VENV"
  "$MUSTER_VENV/bin/pip" install --quiet "$MOTO_PIN" cfn-lint==1.58.0
fi
export MUSTER_VENV

# The real Consul agent and etcd 3.5, from Debian's packages of other releases (checksummed, into
# the project's cache; the machine's apt state is not changed). MUSTER_ETCD_BIN=/usr/bin/etcd
# runs the etcd tests against the machine's etcd 3.4 instead.
MUSTER_SERVERS=${MUSTER_SERVERS:-$HOME/.cache/muster/servers}
export MUSTER_SERVERS
bash scripts/fetch-servers.sh

# One build, run once: incremental compilation would only add its caches (gigabytes) to the
# build's disk use. CARGO_INCREMENTAL=1 keeps them for repeated runs on a workstation.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# A fresh build of every test takes about 6 GB. When the disk fills during a link, the linker dies
# with a bus error that does not say why, so say it first.
target_dir=${CARGO_TARGET_DIR:-target}
[[ -d "$target_dir" ]] || target_dir=.
free_kb=$(df -Pk "$target_dir" 2>/dev/null | awk 'NR == 2 { print $4 }')
if [[ -n "$free_kb" ]] && ((free_kb < 8 * 1024 * 1024)); then
  echo "warning: only $((free_kb / 1024)) MB free for $target_dir; a fresh build of the tests needs about 6 GB" \
    "(\`cargo clean\` frees an old target directory)" >&2
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo test (build)"
cargo test --workspace --locked --no-run

# The tests run in a private network namespace where only loopback exists, so no test can send
# traffic off this machine (for example a DNS query to the system resolver).
log "cargo test (run, in a network namespace with loopback only)"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
run_tests='ip link set lo up && cargo test --workspace --locked --offline --no-fail-fast'
if unshare -n true 2>/dev/null; then
  unshare -n -- bash -c "$run_tests" 2>&1 | tee "$out"
else
  echo "unshare -n is not permitted here: running the tests in the host network namespace"
  cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$out"
fi
# One closing line over every test binary and doctest run ("total: N passed, N failed").
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntotal: %d passed, %d failed\n", p, f }' "$out"
