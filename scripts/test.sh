#!/usr/bin/env bash
# Every test of the project, on a fresh machine: fetches what the tests need (the model),
# then runs formatting and lint checks and the whole test suite in the optimized profile,
# then the tests of the off-by-default `linalg` feature (LAPACK through the system's OpenBLAS).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release --all-targets

# The `linalg` feature links libopenblas (BLAS + LAPACK); CI runs as root on Debian.
if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y libopenblas-dev || { apt-get update && apt-get install -y libopenblas-dev; }
fi
cargo test --release --features linalg --test linalg
