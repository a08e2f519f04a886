#!/usr/bin/env bash
# Fetches the real servers the tests run that this machine's Debian release does not package, from
# Debian's own packages of other releases, into the project's cache directory; the machine's apt
# configuration and installed packages are left untouched.
#
#   Consul 1.8.7  (bullseye `consul` 1.8.7+dfsg1-2+b3)  -> $MUSTER_SERVERS/consul-1.8.7/consul
#   etcd 3.5.16   (trixie `etcd-server` 3.5.16-4)       -> $MUSTER_SERVERS/etcd-3.5.16/etcd
#
# Each .deb is checked against its SHA-256 before it is unpacked. A server already in place is
# kept. The tests find them through MUSTER_SERVERS (default ~/.cache/muster/servers).
#
# Usage: scripts/fetch-servers.sh
set -euo pipefail

MUSTER_SERVERS=${MUSTER_SERVERS:-$HOME/.cache/muster/servers}

# name | suite | package=version | sha256 of the .deb | binary inside the package
SERVERS=(
  "consul-1.8.7|bullseye|consul=1.8.7+dfsg1-2+b3|e4e888bba104daba1d9161f49bfc52649a7e4efd45b1a7ead5bc54f2cb9c89d9|usr/bin/consul"
  "etcd-3.5.16|trixie|etcd-server=3.5.16-4|0875921bb0d023f2af9b8e15cdfbe417a03e65731345fb832c40f9c2dd72967b|usr/bin/etcd"
)

# The mirror this machine's apt already uses (deb822 or one-line sources), with another suite.
mirror() {
  local uri
  uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  if [[ -z "$uri" ]]; then
    uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  fi
  [[ -n "$uri" ]] || { echo "fetch-servers: no Debian mirror in this machine's apt sources" >&2; return 1; }
  printf '%s\n' "$uri"
}

fetch() {
  local name=$1 suite=$2 pkg=$3 sha=$4 inner=$5
  local dest="$MUSTER_SERVERS/$name" bin
  bin="$dest/$(basename "$inner")"
  [[ -x "$bin" ]] && return 0
  echo "fetch-servers: fetching $pkg from Debian $suite into $dest"
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
  printf 'deb %s %s main\n' "$(mirror)" "$suite" >"$work/sources.list"
  local apt=(apt-get -qq -o Dir::Etc::SourceList="$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root
    -o Debug::NoLocking=1)
  "${apt[@]}" update
  (cd "$work/deb" && "${apt[@]}" download "$pkg")
  local deb
  deb=$(ls "$work"/deb/*.deb)
  echo "$sha  $deb" | sha256sum -c --quiet - ||
    { echo "fetch-servers: $deb does not have the expected SHA-256; not installing it" >&2; return 1; }
  dpkg-deb -x "$deb" "$work/root"
  mkdir -p "$dest"
  install -m 0755 "$work/root/$inner" "$bin"
}

for entry in "${SERVERS[@]}"; do
  IFS='|' read -r name suite pkg sha inner <<<"$entry"
  fetch "$name" "$suite" "$pkg" "$sha" "$inner"
done
