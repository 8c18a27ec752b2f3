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
T0=$(date +%s)
phase() { echo "==> test.sh: $1 ($(($(date +%s) - T0)) s since start)"; }
phase "installing packages (scripts/install-deps.sh)"
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
phase "building"
cargo build --release --locked --workspace --all-targets
phase "running every test (unit tests and root tests)"
cargo test --release --locked --workspace --no-fail-fast -- --test-threads=2
phase "fuzzing: each target of fuzz/ for ${PROCFLOW_FUZZ_SECONDS:-25} s from its seeds; any crash fails (scripts/fuzz.sh)"
bash scripts/fuzz.sh ci "${PROCFLOW_FUZZ_SECONDS:-25}"
phase "done"

