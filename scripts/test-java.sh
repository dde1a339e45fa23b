#!/usr/bin/env bash
# Builds the Java binding (bindings/java: JNI glue + package dev.nudge) against libnudge and
# runs its test on this machine's JVM, under -Xcheck:jni. BindingTest personalizes a model
# through the binding and requires every result to equal, to the bit, what
# bindings/java/test/reference.c gets doing the same through the C API.
#
#   scripts/test-java.sh [MODEL]
#
# MODEL defaults to the tiny Qwen2 test model (tests/data/tiny/qwen2) with a ChatML chat
# template added (bindings/java/test/chat_template.jinja), copied to target/java/tiny-chat;
# any model with a chat template works, e.g. models/SmolLM2-135M-Instruct.Q4_1.gguf.
# Everything built goes to target/java/. Installs the JDK when javac is missing (CI runs as
# root on Debian).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="$root/target/java"
lib="$root/target/release"

if ! command -v javac >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y default-jdk-headless || { apt-get update && apt-get install -y default-jdk-headless; }
fi
if [ -z "${JAVA_HOME:-}" ]; then
    JAVA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")"
fi

cargo build --release -p nudge-ffi

rm -rf "$out/classes" "$out/test-classes"
mkdir -p "$out/lib" "$out/classes" "$out/test-classes"
cc -std=c99 -shared -fPIC -O2 -Wall -Wextra -Werror -I include -I "$JAVA_HOME/include" \
    -I "$JAVA_HOME/include/linux" bindings/java/jni/nudge_jni.c -o "$out/lib/libnudge_jni.so" \
    -L "$lib" -lnudge -Wl,-rpath,"$lib"
# The library's sources are compiled for Java 8: the language and APIs every Android takes.
mapfile -t sources < <(find bindings/java/src/main/java -name '*.java' | sort)
"$JAVA_HOME/bin/javac" --release 8 -Xlint:all -Werror -d "$out/classes" "${sources[@]}"
"$JAVA_HOME/bin/javac" --release 17 -Xlint:all -Werror -cp "$out/classes" -d "$out/test-classes" \
    bindings/java/src/test/java/dev/nudge/BindingTest.java
cc -std=c99 -O2 -Wall -Wextra -Werror -I include bindings/java/test/reference.c -o "$out/reference" \
    -L "$lib" -lnudge -lm -Wl,-rpath,"$lib"

if [ $# -gt 0 ]; then
    model="$1"
else
    model="$out/tiny-chat"
    rm -rf "$model"
    mkdir -p "$model"
    cp tests/data/tiny/qwen2/* bindings/java/test/chat_template.jinja "$model/"
fi

# -Xcheck:jni only prints its warnings (a pending exception ignored, a local reference leaked
# past its capacity): they fail the test here.
log="$out/test.log"
"$JAVA_HOME/bin/java" -Xcheck:jni -Djava.library.path="$out/lib:$lib" \
    -cp "$out/classes:$out/test-classes" dev.nudge.BindingTest "$model" "$out/reference" 2>&1 | tee "$log"
if grep -q '^WARNING' "$log"; then
    echo "test-java: -Xcheck:jni printed warnings (above)" >&2
    exit 1
fi
