#!/usr/bin/env bash
# Every test of the project, on a fresh machine: fetches what the tests need (the model,
# the system's OpenBLAS for the `linalg` feature), then runs the formatting and lint checks,
# the import-cycle check, the C header drift check, a smoke run of every benchmark, the
# tests of the off-by-default `linalg` feature, a short run of every fuzz target, the C tests
# under AddressSanitizer, the Java binding, the aarch64 build under emulation, and the whole
# test suite (the engine, the C library and its C tests) in the optimized profile, last, so
# the log ends with it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
scripts/check-cycles.sh --quiet
scripts/check-header.sh
# The public API's documentation builds without a warning (broken links included).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace
# Benchmarks run once each in test mode (timings are for `cargo bench` and `nudge bench`).
cargo test --release --benches

# The `linalg` feature links libopenblas (BLAS + LAPACK); CI runs as root on Debian.
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y libopenblas-dev || { apt-get update && apt-get install -y libopenblas-dev; }
fi
cargo test --release --features linalg --test linalg

# Every fuzz target builds and runs its seeds for a few seconds (FUZZING.md; the long runs
# are `scripts/fuzz.sh SECONDS`). Needs the nightly toolchain; installs cargo-fuzz.
scripts/fuzz.sh 5

# The C tests (lifecycle, misuse, threads) with the C side under AddressSanitizer and its
# leak checker, which also sees the library's allocations: no leak, no invalid access.
# (tests/c/run.sh --valgrind does the same under memcheck, but takes over 15 minutes here.)
cargo build --release -p nudge-ffi
tests/c/run.sh --asan target/release "${NUDGE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"

# The Java binding (JNI) through the JVM, every result equal to the C API's (installs the
# JDK when missing).
scripts/test-java.sh

# The aarch64 build: cross-compiled, its self-test and the C example run under qemu, the
# benchmarks built (installs Debian's cross toolchain when missing).
scripts/cross-aarch64.sh

cargo test --release --workspace --lib --bins --tests
