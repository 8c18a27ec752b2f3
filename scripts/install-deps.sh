#!/usr/bin/env bash
# Installs what procflow needs to build, run and test on Debian 12, as root.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    clang-19 llvm-19 libelf-dev zlib1g-dev pkg-config make \
    iproute2 nftables ethtool bpftool iperf3 sqlite3 procps python3 \
    fonts-dejavu-core >/dev/null
if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null; then
    echo "procflow: no Rust toolchain found; install the stable toolchain with rustup (https://rustup.rs) and run this again" >&2
    exit 1
fi
