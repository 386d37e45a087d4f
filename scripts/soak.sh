#!/usr/bin/env bash
# Soak run of the cache: scripts/soak.sh [seconds (600)] [restart every N seconds]
#
# Mixed load through the layer on a private redis-server for the given time, with Redis killed
# (SIGKILL) and restarted empty every 2 minutes (three times in runs shorter than 6 minutes)
# and 1 % of clients cancelling mid-request; then the load stops and the run checks that every
# fill finished. Prints request counts, cache-caused 5xx, bodies differing from the origin's,
# RSS, task and fd counts at start and end, and exits non-zero on any failure. Everything stays
# on 127.0.0.1. The driver is examples/soak.rs; record results in TESTING.md.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

seconds="${1:-600}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [seconds] [restart-every-seconds]" >&2
    exit 2
fi
restart_args=()
if [ -n "${2:-}" ]; then
    if ! [[ "$2" =~ ^[0-9]+$ ]]; then
        echo "usage: $0 [seconds] [restart-every-seconds]" >&2
        exit 2
    fi
    restart_args=("$2")
fi

if ! command -v redis-server >/dev/null 2>&1; then
    echo "error: redis-server is not on PATH (apt-get install -y redis-server)" >&2
    exit 1
fi

cargo build --release --example soak
echo "==> soak: ${seconds}s on $(uname -srm), $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
exec target/release/examples/soak "$seconds" "${restart_args[@]}"
