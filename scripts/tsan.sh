#!/usr/bin/env bash
# The load test (tests/concurrency.rs: trainings, scoring and generation at once on one
# model) under ThreadSanitizer, with the standard library rebuilt instrumented. Needs the
# nightly toolchain and its rust-src component (`rustup component add rust-src --toolchain
# nightly`). About 14 minutes on 2 cores; not part of scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Zsanitizer=thread"
export TSAN_OPTIONS="halt_on_error=1"
cargo +nightly test -Zbuild-std --target "$target" --release --test concurrency --target-dir target/tsan "$@"
