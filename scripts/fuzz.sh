#!/usr/bin/env bash
# Run one fuzz target for a bounded time: scripts/fuzz.sh <target> [seconds]
#
# Targets: key_normaliser, entry_decoder, cache_control (see fuzz/src/lib.rs). Needs cargo-fuzz
# (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP=1 lets it use the sanitizer flags it passes on
# the stable toolchain. New inputs go to fuzz/grown/<target>/ (not committed); the committed
# seeds in fuzz/corpus/<target>/ are only read. Crashes land in fuzz/artifacts/<target>/.
# The last lines of the log give the executions and the coverage reached.
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

target="${1:-}"
seconds="${2:-600}"
case "$target" in
    key_normaliser | entry_decoder | cache_control) ;;
    *)
        echo "usage: $0 <key_normaliser|entry_decoder|cache_control> [seconds]" >&2
        exit 2
        ;;
esac
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "error: seconds must be a whole number, got '$seconds'" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "error: cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 1
fi

mkdir -p "grown/$target" "artifacts/$target"
export RUSTC_BOOTSTRAP=1
cargo fuzz build "$target"
echo "==> fuzzing $target for ${seconds}s on $(uname -srm), $(date -u +%Y-%m-%dT%H:%MZ)"
cargo fuzz run "$target" "grown/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1
