#!/usr/bin/env bash
# The load benchmark: every configuration side by side on loopback, one command.
#
# Builds examples/loadbench.rs in release mode, starts a private redis-server
# (free loopback port, no persistence; stopped on exit), and runs wrk against
# each configuration in turn: no cache, the one-GET floor, this crate (memory
# store, Redis store, near cache, bypass, misses), tower-http-cache (Redis and
# memory backends) and axum-response-cache; then the four-instance stampede and
# the bytes per entry. It writes the "Load" section of BENCHMARKS.md and draws
# docs/bench-chart.svg. Not part of the test suite.
#
# Environment (all optional):
#   BENCH_SECONDS=10          measured seconds per run
#   BENCH_WARMUP=2            warm-up seconds before each measured run
#   BENCH_CONNECTIONS=64,256  connection counts
#   BENCH_THREADS=2           wrk threads
#   BENCH_STAMPEDE_ROUNDS=3   stampede rounds (one cold key each)
#   BENCH_ONLY=a,b            only these configurations (names as in
#                             `loadbench run --help`; add `stampede` and/or
#                             `memory` to keep those parts)
#   BENCH_WRITE=1             0: print the tables only; leave BENCHMARKS.md and
#                             the chart alone (the default when BENCH_ONLY is set)
#   BENCH_NICE=               a niceness for redis-server, the servers and wrk
#                             (e.g. -10 on a machine shared with other work; as root)
#
# About 5 to 6 minutes with the defaults, plus the build.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

BENCH_SECONDS="${BENCH_SECONDS:-10}"
BENCH_WARMUP="${BENCH_WARMUP:-2}"
BENCH_CONNECTIONS="${BENCH_CONNECTIONS:-64,256}"
BENCH_THREADS="${BENCH_THREADS:-2}"
BENCH_STAMPEDE_ROUNDS="${BENCH_STAMPEDE_ROUNDS:-3}"
BENCH_ONLY="${BENCH_ONLY:-}"
BENCH_NICE="${BENCH_NICE:-}"
niced=()
if [ -n "$BENCH_NICE" ]; then
    niced=(nice -n "$BENCH_NICE")
fi
if [ -n "$BENCH_ONLY" ]; then
    BENCH_WRITE="${BENCH_WRITE:-0}"
else
    BENCH_WRITE="${BENCH_WRITE:-1}"
fi

step() {
    echo "==> $*" >&2
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
fi
for tool in redis-server redis-cli wrk; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is still not on PATH" >&2
        exit 1
    fi
done

# 1000 client sockets in the stampede, plus the servers' own.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 8192 ]; then
    ulimit -n 8192 2>/dev/null || true
fi

step "cargo build --release --example loadbench"
cargo build --release --example loadbench
target_dir="${CARGO_TARGET_DIR:-target}"
loadbench="$target_dir/release/examples/loadbench"

scratch="$(mktemp -d)"
redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A private redis-server on a free port: bind a random port, check it answers.
port=""
for _ in 1 2 3 4 5 6 7 8 9 10; do
    candidate=$((20000 + RANDOM % 30000))
    ${niced[@]+"${niced[@]}"} redis-server --port "$candidate" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$scratch" --logfile "$scratch/redis.log" --daemonize no &
    redis_pid=$!
    for _ in $(seq 1 50); do
        if redis-cli -p "$candidate" ping 2>/dev/null | grep -q PONG; then
            port="$candidate"
            break
        fi
        if ! kill -0 "$redis_pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if [ -n "$port" ]; then
        break
    fi
    kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
    redis_pid=""
done
if [ -z "$port" ]; then
    echo "error: could not start redis-server on a free port" >&2
    exit 1
fi
step "redis-server $(redis-server --version | awk '{print $3}') on 127.0.0.1:$port (pid $redis_pid)"
step "load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"

command_text="./scripts/bench.sh"
[ "$BENCH_SECONDS" = 10 ] || command_text="BENCH_SECONDS=$BENCH_SECONDS $command_text"
[ "$BENCH_WARMUP" = 2 ] || command_text="BENCH_WARMUP=$BENCH_WARMUP $command_text"
[ "$BENCH_CONNECTIONS" = 64,256 ] || command_text="BENCH_CONNECTIONS=$BENCH_CONNECTIONS $command_text"
[ "$BENCH_THREADS" = 2 ] || command_text="BENCH_THREADS=$BENCH_THREADS $command_text"
[ "$BENCH_STAMPEDE_ROUNDS" = 3 ] || command_text="BENCH_STAMPEDE_ROUNDS=$BENCH_STAMPEDE_ROUNDS $command_text"
[ -z "$BENCH_ONLY" ] || command_text="BENCH_ONLY=$BENCH_ONLY $command_text"
[ -z "$BENCH_NICE" ] || command_text="BENCH_NICE=$BENCH_NICE $command_text"

args=(run --redis "redis://127.0.0.1:$port/"
    --seconds "$BENCH_SECONDS" --warmup "$BENCH_WARMUP"
    --connections "$BENCH_CONNECTIONS" --threads "$BENCH_THREADS"
    --stampede-rounds "$BENCH_STAMPEDE_ROUNDS" --command "$command_text")
if [ -n "$BENCH_ONLY" ]; then
    args+=(--only "$BENCH_ONLY")
fi
if [ "$BENCH_WRITE" = 1 ]; then
    args+=(--md BENCHMARKS.md --svg docs/bench-chart.svg)
fi

step "loadbench ${args[*]}"
started=$(date +%s)
${niced[@]+"${niced[@]}"} "$loadbench" "${args[@]}"
step "done in $(($(date +%s) - started)) s; load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
