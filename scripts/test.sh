#!/usr/bin/env bash
# Every test of the project, on a fresh machine: fetches what the tests need (the model,
# the system's OpenBLAS for the `linalg` feature), then runs the formatting and lint checks,
# a smoke run of every benchmark, the tests of the off-by-default `linalg` feature, and the
# whole test suite in the optimized profile (last, so the log ends with its summary).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
# Benchmarks run once each in test mode (timings are for `cargo bench` and `nudge bench`).
cargo test --release --benches

# The `linalg` feature links libopenblas (BLAS + LAPACK); CI runs as root on Debian.
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y libopenblas-dev || { apt-get update && apt-get install -y libopenblas-dev; }
fi
cargo test --release --features linalg --test linalg

cargo test --release --lib --bins --tests
