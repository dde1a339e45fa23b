#!/usr/bin/env bash
# Fuzzes every parser of outside bytes with cargo-fuzz and libFuzzer (targets in fuzz/,
# described in FUZZING.md):
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Builds all targets (nightly toolchain; release with debug assertions and AddressSanitizer,
# cargo-fuzz's defaults), adds the committed seeds (fuzz/seeds/TARGET) to each working
# corpus (fuzz/corpus/TARGET, git-ignored), then runs the targets one after the other for
# SECONDS each (default 60). Exits non-zero when any target found a crash, a hang (a run
# over 10 s) or an out-of-memory (over 2 GiB), printing the artifact's path. `scripts/fuzz.sh 5`
# is the short run that keeps the targets building.
#
# FUZZ_KEEP_GOING=1 goes on after a finding (libFuzzer's fork mode, one job), so that one
# long run collects every distinct finding instead of stopping at the first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

seconds="${1:-60}"
[[ $# -gt 0 ]] && shift
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [[ "$seconds" -eq 0 ]]; then
    echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]  (SECONDS: a positive whole number)" >&2
    exit 2
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "fuzz.sh: cargo-fuzz needs the nightly toolchain; installing it" >&2
    rustup toolchain install nightly --profile minimal || {
        echo "fuzz.sh: could not install the nightly toolchain (rustup toolchain install nightly)" >&2
        exit 2
    }
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo +nightly install cargo-fuzz --locked
fi

mapfile -t all < <(cargo +nightly fuzz list)
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=("${all[@]}")
for t in "${targets[@]}"; do
    if ! printf '%s\n' "${all[@]}" | grep -qx -- "$t"; then
        echo "fuzz.sh: no target '$t' (targets: ${all[*]})" >&2
        exit 2
    fi
done

start=$(date +%s)
cargo +nightly fuzz build
echo "fuzz.sh: built in $(($(date +%s) - start)) s"
# The binaries just built run directly: `cargo fuzz run` would rebuild first whenever a
# source changed meanwhile.
bin="target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

# Largest input per target: a little over its biggest seed, so that runs stay fast.
max_len() {
    case "$1" in
        gguf_model | gguf_file) echo 65536 ;;
        hf_tokenizer | safetensors_model) echo 16384 ;;
        checkpoint | peft_adapter | gguf_lora | journal) echo 8192 ;;
        *) echo 4096 ;;
    esac
}

dict() {
    case "$1" in
        gguf_*) echo dicts/gguf.dict ;;
        chat_template) echo dicts/jinja.dict ;;
        hf_* | jsonl | peft_adapter) echo dicts/json.dict ;;
    esac
}

# The targets write their fuzzed files here (in RAM where possible); removed on any exit.
shm=/dev/shm
[[ -d $shm && -w $shm ]] || shm="${TMPDIR:-/tmp}"
scratch="$(mktemp -d "$shm/nudge-fuzz.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
export NUDGE_FUZZ_TMP="$scratch"

keep_going=()
if [[ "${FUZZ_KEEP_GOING:-0}" == 1 ]]; then
    keep_going=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
fi

failed=()
for t in "${targets[@]}"; do
    corpus="corpus/$t"
    artifacts="artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    # Seeds join the corpus without replacing what earlier runs grew.
    for seed in seeds/"$t"/*; do
        [[ -f "$seed" && ! -e "$corpus/$(basename "$seed")" ]] && cp "$seed" "$corpus/"
    done
    before="$(ls "$artifacts")"
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")"
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${keep_going[@]}")
    d="$(dict "$t")"
    [[ -n "$d" ]] && args+=(-dict="$d")
    log="$artifacts/last-run.log"
    echo "fuzz.sh: $t for ${seconds} s (log: fuzz/$log)"
    status=0
    "$bin/$t" "${args[@]}" "$corpus" >"$log" 2>&1 || status=$?
    # The final stats, or in fork mode the last progress line (#EXECUTIONS: cov: ...).
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    [[ -z "$execs" ]] && execs="$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "$log" | tail -1)"
    echo "fuzz.sh: $t: exit $status, ${execs:-?} executions, corpus $(ls "$corpus" | wc -l) files"
    new="$(comm -13 <(echo "$before") <(ls "$artifacts") | grep -E '^(crash|timeout|oom|leak)-' || true)"
    if [[ $status -ne 0 || -n "$new" ]]; then
        failed+=("$t")
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY' "$log" | head -5 | sed 's/^/    /' || true
        if [[ -z "$new" ]]; then
            echo "fuzz.sh: $t: failed without an artifact; see fuzz/$log"
        else
            # A keep-going run may collect hundreds of one finding: the first few name it.
            echo "$new" | head -5 | sed "s|^|fuzz.sh: $t: finding: fuzz/$artifacts/|"
            count=$(echo "$new" | wc -l)
            [[ $count -gt 5 ]] && echo "fuzz.sh: $t: ... $count artifacts in fuzz/$artifacts/"
        fi
    fi
done

echo "fuzz.sh: done in $(($(date +%s) - start)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: findings in: ${failed[*]}" >&2
    exit 1
fi
