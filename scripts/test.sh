#!/usr/bin/env bash
# Every test of the project, on a fresh machine: fetches what the tests need (the model),
# then runs formatting and lint checks and the whole test suite in the optimized profile.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release --all-targets
