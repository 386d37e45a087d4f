#!/usr/bin/env bash
# The project's single test command: lints, docs and the full test suite.
#
# Meant for a fresh Debian machine with a Rust toolchain. It installs
# redis-server if missing; the tests start their own private servers on free
# ports and never use a system Redis on 6379.
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

step() {
    echo "==> $*"
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

# redis-server and redis-cli for the private servers and clusters the tests start; openssl for
# the certificates of the TLS tests.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1 \
    || ! command -v openssl >/dev/null 2>&1; then
    step "installing redis-server and openssl"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server openssl
fi
for tool in redis-server redis-cli openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: $tool is still not on PATH after installing redis-server and openssl" >&2
        exit 1
    fi
done

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings

step "cargo doc --no-deps --all-features (RUSTDOCFLAGS=\"-D warnings\")"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features

step "cargo test --all-features"
cargo test --all-features

echo "All checks passed."
