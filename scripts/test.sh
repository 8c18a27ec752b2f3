#!/usr/bin/env bash
# Runs procflow's whole test suite: unit tests and the root tests that load
# the eBPF programs and move traffic between network namespaces they create.
# Run as root from the repository: sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "procflow: the test suite must run as root (its kernel tests load eBPF programs)" >&2
    exit 1
fi
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked --workspace --all-targets
cargo test --release --locked --workspace --no-fail-fast -- --test-threads=2
