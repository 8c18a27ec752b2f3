#!/usr/bin/env bash
# Makes a fresh Debian 12 root file system in DIR, as CI's: debootstrap
# --variant=minbase bookworm from this machine's apt mirror, then this
# machine's apt sources and settings, its keyrings, its resolver and the
# certificate authorities its administrator added, so that apt-get works in
# it as it does here. Nothing else of this machine goes in. Used by .ci/run
# and crates/procflow/tests/package_root.rs.
#
#   scripts/fresh-root.sh DIR      (as root; DIR is created or must be empty)
set -euo pipefail
ROOT=${1:?usage: scripts/fresh-root.sh DIR}
command -v debootstrap >/dev/null || {
    echo "fresh-root.sh: debootstrap is needed (scripts/install-deps.sh installs it)" >&2
    exit 1
}
# The mirror this machine's apt is configured with.
MIRROR=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

mkdir -p "$ROOT"
chmod 0755 "$ROOT" # it becomes /: every user must be able to walk it
echo "fresh-root.sh: debootstrap --variant=minbase bookworm from $MIRROR into $ROOT"
debootstrap --variant=minbase bookworm "$ROOT" "$MIRROR" >"$ROOT.debootstrap.log" 2>&1 || {
    tail -30 "$ROOT.debootstrap.log" >&2
    exit 1
}
rm -f "$ROOT.debootstrap.log"
# The same apt sources and settings as this machine, and its resolver.
rm -f "$ROOT/etc/apt/sources.list"
cp -a /etc/apt/sources.list.d/. "$ROOT/etc/apt/sources.list.d/"
if [ -f /etc/apt/sources.list ]; then cp /etc/apt/sources.list "$ROOT/etc/apt/sources.list"; fi
cp -a /etc/apt/apt.conf.d/. "$ROOT/etc/apt/apt.conf.d/"
cp /usr/share/keyrings/*.gpg "$ROOT/usr/share/keyrings/" 2>/dev/null || true
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Certificate authorities this machine's administrator added (a TLS proxy in
# front of the registries, say): ca-certificates in the root takes them.
if [ -d /usr/local/share/ca-certificates ]; then
    mkdir -p "$ROOT/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
fi
echo "fresh-root.sh: $ROOT has $(chroot "$ROOT" dpkg-query -f '.\n' -W | wc -l) packages, no compiler: $(chroot "$ROOT" sh -c 'command -v cc || echo none')"
