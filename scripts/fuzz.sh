#!/usr/bin/env bash
# Builds and runs procflow's fuzz targets (fuzz/fuzz_targets/*.rs) with
# libFuzzer, through libfuzzer-sys and plain cargo: the coverage and
# sanitizer flags are the ones `cargo fuzz build` passes (SanitizerCoverage
# with 8-bit counters, a PC table and compare tracing; AddressSanitizer;
# debug assertions and overflow checks on). -Zsanitizer needs a nightly
# compiler: RUSTC_BOOTSTRAP=1 lets the stable one take it. No cargo
# subcommand is installed, so this works where ~/.cargo/bin is read-only.
#
#   scripts/fuzz.sh build                  build every target
#   scripts/fuzz.sh list                   the targets, one a line
#   scripts/fuzz.sh run TARGET [SECONDS] [LIBFUZZER_ARGS...]
#                                          fuzz TARGET (default 60 s) from its
#                                          seeds in fuzz/corpus/TARGET; what it
#                                          finds goes to fuzz/work/TARGET, a
#                                          crash to fuzz/artifacts/TARGET/
#   scripts/fuzz.sh ci [SECONDS]           build, then run each target for
#                                          SECONDS (default 25); fails on the
#                                          first crash, leak or timeout
#   scripts/fuzz.sh merge TARGET           add fuzz/work/TARGET's inputs that
#                                          reach new coverage to the seeds
#   scripts/fuzz.sh repro TARGET FILE...   run the target on FILEs only
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ=$(pwd)/fuzz
export PATH="$HOME/.cargo/bin:$PATH"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR="$FUZZ/target"
BIN="$CARGO_TARGET_DIR/$TRIPLE/release"
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_odr_violation=0"

targets() {
    for f in "$FUZZ"/fuzz_targets/*.rs; do
        basename "$f" .rs
    done
}

build() {
    local flags=(
        -Cpasses=sancov-module
        -Cllvm-args=-sanitizer-coverage-level=4
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
        -Cllvm-args=-sanitizer-coverage-pc-table
        -Cllvm-args=-sanitizer-coverage-trace-compares
        -Cllvm-args=-sanitizer-coverage-stack-depth
        -Cllvm-args=-simplifycfg-branch-fold-threshold=0
        --cfg fuzzing
        -Zsanitizer=address
        -Cdebug-assertions
    )
    # Build scripts run on the host and get no RUSTFLAGS with --target.
    RUSTC_BOOTSTRAP=1 RUSTFLAGS="${flags[*]}" cargo build --release --locked \
        --manifest-path "$FUZZ/Cargo.toml" --target "$TRIPLE" --bins \
        --config 'profile.release.debug="line-tables-only"'
}

known() {
    [ -f "$FUZZ/fuzz_targets/$1.rs" ] || {
        echo "fuzz.sh: no target $1 (targets: $(targets | tr '\n' ' '))" >&2
        exit 2
    }
}

# run TARGET SECONDS [ARGS...]: libFuzzer's exit status (0: nothing found).
run() {
    local t=$1 secs=$2
    shift 2
    known "$t"
    mkdir -p "$FUZZ/work/$t" "$FUZZ/artifacts/$t"
    # New inputs go to the first directory: the seeds stay as committed.
    "$BIN/$t" "$FUZZ/work/$t" "$FUZZ/corpus/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
        -artifact_prefix="$FUZZ/artifacts/$t/" -print_final_stats=1 "$@"
}

cmd=${1:-}
case "$cmd" in
build) build ;;
list) targets ;;
run)
    [ $# -ge 2 ] || { echo "usage: scripts/fuzz.sh run TARGET [SECONDS] [ARGS...]" >&2; exit 2; }
    t=$2
    secs=${3:-60}
    shift $(($# < 3 ? $# : 3))
    [ -x "$BIN/$t" ] || build
    run "$t" "$secs" "$@"
    ;;
ci)
    secs=${2:-25}
    passed=0
    build
    for t in $(targets); do
        echo "==> fuzz.sh: $t for ${secs} s"
        # Only the summary: libFuzzer's progress lines would fill the log.
        log=$(mktemp)
        if ! run "$t" "$secs" >"$log" 2>&1; then
            tail -60 "$log" >&2
            rm -f "$log"
            echo "fuzz.sh: $t failed; the input is in fuzz/artifacts/$t/ (scripts/fuzz.sh repro $t FILE)" >&2
            exit 1
        fi
        grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|Done [0-9]+ runs)' "$log" || true
        rm -f "$log"
        passed=$((passed + 1))
    done
    echo "fuzz: $passed passed, 0 failed"
    ;;
merge)
    [ $# -eq 2 ] || { echo "usage: scripts/fuzz.sh merge TARGET" >&2; exit 2; }
    known "$2"
    [ -x "$BIN/$2" ] || build
    "$BIN/$2" -merge=1 "$FUZZ/corpus/$2" "$FUZZ/work/$2"
    ;;
repro)
    [ $# -ge 3 ] || { echo "usage: scripts/fuzz.sh repro TARGET FILE..." >&2; exit 2; }
    known "$2"
    t=$2
    shift 2
    [ -x "$BIN/$t" ] || build
    "$BIN/$t" "$@"
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
