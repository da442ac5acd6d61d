#!/usr/bin/env bash
# Finds or fetches the etcd server the coordination tests start (Debian's
# package etcd-server, 3.4 on bookworm: the v3 API and its JSON gateway).
#
# An etcd on PATH is used as it is. Otherwise the package is downloaded with
# `apt-get download` (no root needed, nothing installed system-wide; the
# package lists are refreshed once when apt has none), unpacked with
# `dpkg -x` into DEST, and the binary's path printed. A complete DEST is
# left alone; concurrent callers wait for one another.
#
# Usage: bench-datasets/fetch_etcd.sh [DEST]
#   DEST defaults to .deps/etcd at the top of the checkout (git-ignored).
#   Prints the etcd binary's path on stdout as its last line.
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
    command -v etcd
    exit 0
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dest="${1:-$root/.deps/etcd}"
mkdir -p "$(dirname "$dest")"
exec 9>"$dest.lock"
flock 9

if [[ -x "$dest/usr/bin/etcd" ]]; then
    echo "$dest/usr/bin/etcd"
    exit 0
fi

work="$(mktemp -d "$(dirname "$dest")/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
echo "fetching Debian's etcd-server into $dest ..." >&2
if ! (cd "$work" && apt-get download etcd-server >&2); then
    # A fresh machine may have no package lists yet.
    apt-get update -qq >&2
    (cd "$work" && apt-get download etcd-server >&2)
fi
dpkg -x "$work"/etcd-server_*.deb "$work/x"
test -x "$work/x/usr/bin/etcd" || { echo "the package holds no usr/bin/etcd" >&2; exit 1; }
rm -rf "$dest"
mv "$work/x" "$dest"
echo "$dest/usr/bin/etcd"
