#!/usr/bin/env bash
# Every test of the project, on a fresh machine: fetches what the tests need (the model),
# then runs the formatting and lint checks, a smoke run of every benchmark, and the whole
# test suite in the optimized profile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
# Benchmarks run once each in test mode (timings are for `cargo bench` and `nudge bench`).
cargo test --release --benches
cargo test --release --lib --bins --tests
