#!/usr/bin/env bash
# Installs what procflow needs, builds it, and starts `procflow run` with its
# embedded defaults (flow history in /var/lib/procflow/procflow.db).
# Run as root from the repository: sudo scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
install -m 0755 target/release/procflow /usr/local/bin/procflow
echo "procflow: installed /usr/local/bin/procflow; starting 'procflow run' (Ctrl-C stops it)" >&2
exec /usr/local/bin/procflow run "$@"
