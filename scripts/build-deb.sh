#!/usr/bin/env bash
# Builds the Debian package procflow_VERSION_amd64.deb (VERSION from the
# workspace Cargo.toml) with dpkg-deb: the binary, the systemd unit, the man
# pages and completions, the example configuration (a conffile), the
# procflow group (sysusers.d, created by postinst) and the maintainer
# scripts that enable and start the unit where systemd runs.
# docs/package.md describes the package and lintian's verdict on it.
#
#   scripts/build-deb.sh [--bin PATH] [--out DIR]
#
# Without --bin it builds the binary (cargo build --release --locked -p
# procflow); with --bin it packages PATH. The package goes in DIR (default
# target/debian); its path is the last line printed.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
BIN=
OUT=$SRC/target/debian
while [ $# -gt 0 ]; do
    case "$1" in
    --bin) BIN=${2:?--bin needs a path}; shift 2 ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
for tool in dpkg-deb dpkg-shlibdeps strip gzip; do
    command -v "$tool" >/dev/null || {
        echo "build-deb.sh: $tool is needed (scripts/install-deps.sh installs it)" >&2
        exit 1
    }
done
CONFIG=packaging/procflow.toml
[ -f "$CONFIG" ] || {
    echo "build-deb.sh: $CONFIG (the example configuration) is missing" >&2
    exit 1
}

# The version is the workspace's: the first version = "..." line after
# [workspace.package].
VERSION=$(awk '/^\[workspace.package\]/ { p = 1; next } /^\[/ { p = 0 }
    p && /^version *=/ { gsub(/[" ]/, "", $0); sub(/^version=/, "", $0); print; exit }' Cargo.toml)
[[ "$VERSION" =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || {
    echo "build-deb.sh: cannot read the version from Cargo.toml's [workspace.package] (got '$VERSION')" >&2
    exit 1
}
ARCH=$(dpkg --print-architecture)
[ "$ARCH" = amd64 ] || {
    echo "build-deb.sh: the eBPF programs are built for x86_64; this machine is $ARCH" >&2
    exit 1
}

if [ -z "$BIN" ]; then
    cargo build --release --locked -p procflow
    BIN=target/release/procflow
fi
[ -x "$BIN" ] || { echo "build-deb.sh: $BIN is not an executable" >&2; exit 1; }
BINVERSION=$("$BIN" --version | awk '{print $2}')
[ "$BINVERSION" = "$VERSION" ] || {
    echo "build-deb.sh: $BIN says version '$BINVERSION', Cargo.toml '$VERSION'" >&2
    exit 1
}

# Dates in the package are the last commit's (reproducible), or now.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
MAINTAINER=${PROCFLOW_MAINTAINER:-procflow maintainers <maintainers@procflow.invalid>}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/procflow-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
R=$WORK/root
DOC=$R/usr/share/doc/procflow

install -d -m 0755 "$R/DEBIAN" "$R/usr/bin" "$R/lib/systemd/system" \
    "$R/usr/share/man/man1" "$R/usr/share/bash-completion/completions" \
    "$R/usr/share/zsh/vendor-completions" "$R/usr/share/fish/vendor_completions.d" \
    "$R/etc/procflow" "$R/usr/lib/sysusers.d" "$R/usr/share/lintian/overrides" "$DOC"

# The binary, stripped as dh_strip does (the debug info stays in the build).
install -m 0755 "$BIN" "$R/usr/bin/procflow"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$R/usr/bin/procflow"

install -m 0644 packaging/procflow.service "$R/lib/systemd/system/procflow.service"
for page in packaging/man/*.1; do
    install -m 0644 "$page" "$R/usr/share/man/man1/"
    gzip -9n "$R/usr/share/man/man1/$(basename "$page")"
done
install -m 0644 packaging/completions/procflow.bash "$R/usr/share/bash-completion/completions/procflow"
install -m 0644 packaging/completions/_procflow "$R/usr/share/zsh/vendor-completions/_procflow"
install -m 0644 packaging/completions/procflow.fish "$R/usr/share/fish/vendor_completions.d/procflow.fish"
install -m 0644 "$CONFIG" "$R/etc/procflow/procflow.toml"
# The group the API socket is given to (docs/api.md): members read the API.
printf '%s\n' '# procflow(1): members of group procflow may read the local API' \
    '# (/run/procflow/api.sock).' 'g procflow - -' >"$R/usr/lib/sysusers.d/procflow.conf"
chmod 0644 "$R/usr/lib/sysusers.d/procflow.conf"
install -m 0644 packaging/debian/lintian-overrides "$R/usr/share/lintian/overrides/procflow"

# /usr/share/doc/procflow: copyright, the changelog (a native package's is
# changelog.gz) and the README.
install -m 0644 packaging/debian/copyright "$DOC/copyright"
gzip -9n <README.md >"$DOC/README.md.gz"
DATE=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
{
    echo "procflow ($VERSION) unstable; urgency=medium"
    echo
    echo "  * procflow $VERSION: the changes are in the repository's history."
    echo
    echo " -- $MAINTAINER  $DATE"
} | gzip -9n >"$DOC/changelog.gz"
chmod 0644 "$DOC"/*

# Maintainer scripts and conffiles.
for script in postinst prerm postrm; do
    install -m 0755 "packaging/debian/$script" "$R/DEBIAN/$script"
done
echo /etc/procflow/procflow.toml >"$R/DEBIAN/conffiles"
chmod 0644 "$R/DEBIAN/conffiles"

# Depends: the shared libraries the binary links (dpkg-shlibdeps, which
# reads a debian/control), adduser for postinst's addgroup and procps for
# the unit's ExecReload=/bin/kill.
mkdir -p "$WORK/shlibs/debian"
printf 'Source: procflow\n\nPackage: procflow\nArchitecture: amd64\n' >"$WORK/shlibs/debian/control"
SHLIBS=$(cd "$WORK/shlibs" && dpkg-shlibdeps -O "$R/usr/bin/procflow" | sed -n 's/^shlibs:Depends=//p')
[ -n "$SHLIBS" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies" >&2; exit 1; }
DEPENDS="$SHLIBS, adduser, procps"

(cd "$R" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$R/DEBIAN/md5sums"
SIZE=$(du -sk --exclude=DEBIAN "$R" | cut -f1)
cat >"$R/DEBIAN/control" <<EOF
Package: procflow
Version: $VERSION
Architecture: $ARCH
Maintainer: $MAINTAINER
Installed-Size: $SIZE
Depends: $DEPENDS
Section: net
Priority: optional
Description: per-process network traffic monitor and application firewall
 procflow sees every connection and datagram flow the moment it is made,
 attributes it to the process that owns it (pid, executable, command line,
 user, cgroup) and counts its bytes and packets exactly in both directions,
 for TCP, UDP, ICMP and other IP protocols, IPv4 and IPv6, in every network
 namespace. Rules allow or block connections by process, in the kernel, at
 the moment they are made. The counting is done by eBPF programs in the
 kernel.
 .
 The package runs "procflow run" as a hardened systemd service
 (procflow.service) with a flow history in /var/lib/procflow and a local
 API for the members of group procflow; "procflow top", "ps", "flows" and
 "report" read them.
EOF
chmod 0644 "$R/DEBIAN/control"

DEB=$OUT/procflow_${VERSION}_${ARCH}.deb
dpkg-deb --root-owner-group -Zxz --build "$R" "$DEB" >/dev/null
echo "$DEB"
