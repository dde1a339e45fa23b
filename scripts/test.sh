#!/usr/bin/env bash
# Every test of the project, on a fresh machine: fetches what the tests need (the model),
# then runs the formatting and lint checks, the C header drift check, a smoke run of every
# benchmark, the C lifecycle test under valgrind, and the whole test suite (the engine, the
# C library and its C tests) in the optimized profile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
scripts/check-header.sh
# Benchmarks run once each in test mode (timings are for `cargo bench` and `nudge bench`).
cargo test --release --benches
# The C lifecycle under valgrind: no leak, no invalid access, on either side of the ABI.
if ! command -v valgrind >/dev/null; then
  apt-get install -y valgrind
fi
cargo build --release --workspace
tests/c/run.sh --valgrind target/release "${NUDGE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" lifecycle
cargo test --release --workspace --lib --bins --tests
