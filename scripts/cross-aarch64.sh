#!/usr/bin/env bash
# The aarch64 build, cross-compiled and run under emulation (qemu-user), on an x86_64
# Debian machine:
#   - the self-test (tests/selftest.rs: every kernel path, the tiny reference models, two
#     training steps, one golden example) with the NEON paths and again with the scalar
#     ones (NUDGE_NO_SIMD=1), both against the same stored digests;
#   - libnudge.so and libnudge.a, and the C example (examples/c/personalize.c) built with
#     aarch64-linux-gnu-gcc and run, every call on one thread, on the tiny Qwen2 test model
#     with a chat template added (the real model takes many minutes under emulation;
#     NUDGE_CROSS_MODEL=path runs it on another);
#   - the benchmarks, built (not run: emulated timings mean nothing).
# Installs Debian's cross toolchain when missing (rustc-web with the arm64 standard
# library, gcc-aarch64-linux-gnu, qemu-user-static): that Rust sits beside rustup's, with
# its own CARGO_HOME and target folder so the two never share a build.
#   scripts/cross-aarch64.sh            everything
#   scripts/cross-aarch64.sh --no-bench skip building the benchmarks
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target=aarch64-unknown-linux-gnu
bench=1
[ "${1:-}" = "--no-bench" ] && bench=0

need=()
[ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/$target ] || need+=(rustc-web cargo-web libstd-rust-web-dev:arm64)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi

cargo=/usr/bin/cargo
export CARGO_HOME="$root/target/cross-cargo-home"
export CARGO_TARGET_DIR="$root/target/cross"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Debug info only lengthens the build and the link here.
export CARGO_PROFILE_RELEASE_DEBUG=0
# rustup's proxies must not stand in for Debian's rustc.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
unset RUSTUP_TOOLCHAIN
out="$CARGO_TARGET_DIR/$target/release"
run=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)
echo "cross-aarch64: $($cargo --version), $(/usr/bin/rustc --version)"

# The self-test binary: cargo prints the path of what it built. The project's own
# warnings fail the build (on x86_64, clippy -D warnings does that; this is the aarch64 code).
selftest="$($cargo test --release --locked --target $target --test selftest --no-run --message-format=json \
  | python3 -c 'import json,sys
warnings = 0
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-message":
        sys.stderr.write(m["message"]["rendered"])
        warnings += m["message"]["level"] == "warning" and m["package_id"].split("#")[0].endswith(("/main", "/ffi"))
    elif m.get("reason") == "compiler-artifact" and m["target"]["name"] == "selftest" and m.get("executable"):
        print(m["executable"])
sys.exit(1 if warnings else 0)')"
echo "cross-aarch64: $selftest"
file -b "$selftest" | grep -q "ARM aarch64" || { echo "cross-aarch64: not an aarch64 binary" >&2; exit 1; }
"${run[@]}" "$selftest"
NUDGE_NO_SIMD=1 "${run[@]}" "$selftest"

# The C library and the C example, every call on the calling thread.
$cargo build --release --locked --target $target -p nudge-ffi
aarch64-linux-gnu-gcc -std=c99 -Wall -Wextra -Werror -O2 -Iinclude examples/c/personalize.c \
  -o "$out/personalize" -L"$out" -lnudge -Wl,-rpath,"$out"
aarch64-linux-gnu-gcc -std=c99 -Wall -Wextra -Werror -O2 -Iinclude examples/c/personalize.c \
  -o "$out/personalize-static" "$out/libnudge.a" -lpthread -lm -ldl
example_out="$(mktemp -d)"
trap 'rm -rf "$example_out"' EXIT
model="${NUDGE_CROSS_MODEL:-}"
if [ -z "$model" ]; then
  model="$example_out/tiny-chat"
  mkdir -p "$model"
  cp tests/data/tiny/qwen2/* bindings/java/test/chat_template.jinja "$model/"
fi
for exe in personalize personalize-static; do
  rm -rf "$example_out/run"
  NUDGE_THREADS=1 "${run[@]}" "$out/$exe" "$model" "$example_out/run" > "$example_out/log"
  grep -q "adapter saved to" "$example_out/log" || { cat "$example_out/log"; exit 1; }
  [ -s "$example_out/run/peft/adapter_model.safetensors" ] && [ -s "$example_out/run/adapter.gguf" ]
  echo "cross-aarch64: $exe ran: $(grep -c . "$example_out/log") lines, adapter saved"
done

if [ $bench = 1 ]; then
  $cargo bench --locked --target $target --no-run
fi
echo "cross-aarch64: ok"
