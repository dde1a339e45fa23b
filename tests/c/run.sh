#!/usr/bin/env bash
# Builds the C tests against libnudge and runs them on a model.
#
#   tests/c/run.sh [--static | --asan | --valgrind] LIBDIR MODEL [TEST...]
#
# LIBDIR holds libnudge.so and libnudge.a (target/release after `cargo build --release
# -p nudge-ffi`). --static links libnudge.a; --asan builds the C side with
# AddressSanitizer (leak checking on);
# --valgrind runs under memcheck with leak checking. TEST defaults to every test
# (lifecycle generate generate_batch journal misuse threads serving header).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
mode=shared
case "${1:-}" in
  --static | --asan | --valgrind) mode="${1#--}"; shift ;;
esac
if [ $# -lt 2 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
libdir="$(cd "$1" && pwd)"
model="$2"
shift 2
tests=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(lifecycle generate generate_batch journal misuse threads serving header)

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
cflags=(-std=c99 -Wall -Wextra -Werror -g -I"$root/include")
cxxflags=(-std=c++11 -Wall -Werror -g -I"$root/include")
# What a Rust static library needs from the system (rustc --print native-static-libs).
static_libs=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)
shared_link=(-L"$libdir" -lnudge -Wl,-rpath,"$libdir" -lpthread -lm)
run=()
case "$mode" in
  static) link=("$libdir/libnudge.a" "${static_libs[@]}") ;;
  asan)
    cflags+=(-fsanitize=address -fno-omit-frame-pointer)
    cxxflags+=(-fsanitize=address -fno-omit-frame-pointer)
    link=("${shared_link[@]}")
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=1"
    export LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0"
    ;;
  valgrind)
    link=("${shared_link[@]}")
    # Blocks "possibly lost" are the Rust runtime's records of the threads that called in
    # (std's thread handle, crossbeam-epoch's registration), reached through tagged or
    # interior pointers and kept for the process's life: shown, not counted as errors.
    run=(valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect,possible
      --errors-for-leak-kinds=definite,indirect --error-exitcode=1)
    ;;
  *) link=("${shared_link[@]}") ;;
esac

for t in "${tests[@]}"; do
  if [ "$t" = header ]; then
    c++ "${cxxflags[@]}" "$here/header.cpp" -o "$out/$t" "${link[@]}"
  else
    cc "${cflags[@]}" "$here/$t.c" -o "$out/$t" "${link[@]}"
  fi
  echo "== $t ($mode)"
  "${run[@]}" "$out/$t" "$model"
done
