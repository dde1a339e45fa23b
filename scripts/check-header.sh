#!/usr/bin/env bash
# Fails when include/nudge.h is not what cbindgen generates from ffi/src (someone changed
# the C API without regenerating the header). Installs the pinned cbindgen when missing.
#   scripts/check-header.sh          check
#   scripts/check-header.sh --write  regenerate include/nudge.h
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
version="0.29.4"
if ! command -v cbindgen >/dev/null || [ "$(cbindgen --version)" != "cbindgen $version" ]; then
  cargo install cbindgen --version "$version" --locked
fi
if [ "${1:-}" = "--write" ]; then
  cbindgen --quiet --config ffi/cbindgen.toml --output include/nudge.h ffi
  exit 0
fi
fresh="$(mktemp)"
trap 'rm -f "$fresh"' EXIT
cbindgen --quiet --config ffi/cbindgen.toml --output "$fresh" ffi
if ! diff -u include/nudge.h "$fresh"; then
  echo "check-header: include/nudge.h differs from ffi/src; run scripts/check-header.sh --write" >&2
  exit 1
fi
echo "check-header: include/nudge.h is up to date"
