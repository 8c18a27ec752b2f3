#!/usr/bin/env bash
# Installs what procflow needs to build, run and test on Debian 12, as root.
# Nothing else is assumed: CI runs the test suite in a fresh debootstrap
# minbase root that has only what this script installs (and the Rust
# toolchain). libbpf is built from libbpf-sys's vendored source (gcc, make);
# libelf and zlib are linked statically from their -dev packages. g++ builds
# libFuzzer (C++, from libfuzzer-sys's source) for the fuzz targets
# (scripts/fuzz.sh); the stable compiler takes their sanitizer flags with
# RUSTC_BOOTSTRAP=1, so no other toolchain is needed. systemd brings
# systemd-analyze, which checks packaging/procflow.service (service_root.rs).
# dpkg-dev (dpkg-shlibdeps), binutils (strip) and lintian build and check the
# Debian package (scripts/build-deb.sh); debootstrap makes the fresh root it
# is installed in (scripts/fresh-root.sh, package_root.rs).
# prometheus is the real server metrics_root.rs scrapes procflow with (the
# test starts its own on its own port; the package's service is not used).
# pmacct (nfacctd), nfdump (nfcapd, nfdump) and tshark are the IPFIX
# collectors and decoder ipfix_root.rs reads procflow's export with (the
# test starts its own on loopback; tshark installs without questions under
# DEBIAN_FRONTEND=noninteractive).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    ca-certificates gcc g++ libc6-dev make pkg-config \
    clang-19 llvm-19 libelf-dev zlib1g-dev \
    iproute2 nftables ethtool bpftool iperf3 sqlite3 procps python3 \
    tmux passwd util-linux systemd \
    dpkg-dev binutils lintian debootstrap \
    prometheus \
    pmacct nfdump tshark \
    fonts-dejavu-core >/dev/null
if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
    echo "procflow: no Rust toolchain found; install the stable toolchain with rustup (https://rustup.rs) and run this again" >&2
    exit 1
fi
