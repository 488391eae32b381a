#!/usr/bin/env bash
# Fuzzes the node's parsers of peer-supplied bytes: builds every target under fuzz/ once, then
# runs each for SECONDS (default 60) on stable Rust (`-s none`: libFuzzer and coverage, no
# sanitizer). Prints each target's executions and corpus size; exits non-zero when any target
# crashed, panicked, timed out or ran out of memory (its input is in fuzz/artifacts/TARGET/).
#
#   scripts/fuzz.sh [SECONDS]        FUZZ_JOBS=N targets at a time (default: CPU count)
#
# The checked-in corpus (fuzz/corpus/TARGET) is read only; what a run finds goes to a scratch
# directory that is deleted afterwards, so the tree stays clean. `make test` runs it for 30 s,
# `make fuzz` for an hour per target.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-60}
JOBS=${FUZZ_JOBS:-$(nproc)}
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(pdu dimse_command data_set assemble)

# Per target: the longest input (a P-DATA stream, a command set, a data set, a file) and extras.
declare -A OPTIONS=(
  [pdu]="-max_len=65536"
  [dimse_command]="-max_len=4096"
  [data_set]="-max_len=65536"
  [assemble]="-max_len=65536 -dict=fuzz/assemble.dict"
)
# libFuzzer for every target: memory and per-input time bounds (no sanitizer, so the single
# allocation cap is fcdnode_fuzz::CappedAlloc's, at the same 2048 MiB).
COMMON=(-rss_limit_mb=2048 -timeout=20 -print_final_stats=1)
# A panic's stack in the log.
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

if [ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

echo "fuzz: building ${TARGETS[*]} (stable, no sanitizer)"
cargo fuzz build -s none

scratch=$(mktemp -d "${TMPDIR:-/tmp}/fcdnode-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

run_target() {
  local target=$1
  mkdir -p "$scratch/$target"
  local status=0
  # shellcheck disable=SC2086 # OPTIONS holds several flags
  cargo fuzz run -s none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" "${COMMON[@]}" ${OPTIONS[$target]} \
    >"$scratch/$target.log" 2>&1 || status=$?
  echo "$status" >"$scratch/$target.status"
}

echo "fuzz: ${SECONDS_PER_TARGET} s per target, $JOBS at a time"
for target in "${TARGETS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
    wait -n || true
  done
  run_target "$target" &
done
wait

failed=()
printf '%-14s %12s %8s %10s  %s\n' target executions "exec/s" corpus result
for target in "${TARGETS[@]}"; do
  log="$scratch/$target.log"
  # libFuzzer's "Done N runs" line, or its final stats when it stopped on a failure.
  runs=$(grep -oE '^Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -n1 || true)
  [ -n "$runs" ] || runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n1 || true)
  rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n1 || true)
  corpus=$(grep -oE 'corp: [0-9]+/[0-9]+[a-zA-Z]*' "$log" | tail -n1 | cut -d' ' -f2 || true)
  new=$(find "$scratch/$target" -type f | wc -l)
  status=$(cat "$scratch/$target.status" 2>/dev/null || echo '?')
  if [ "$status" = 0 ] && grep -qE '^Done [0-9]+ runs' "$log"; then
    result="ok ($new new inputs, not kept)"
  else
    result="FAILED (exit $status)"
    failed+=("$target")
  fi
  printf '%-14s %12s %8s %10s  %s\n' "$target" "${runs:-?}" "${rate:-?}" "${corpus:-?}" "$result"
done

for target in "${failed[@]}"; do
  log="$scratch/$target.log"
  echo
  echo "===== $target: last lines of libFuzzer's output ====="
  tail -n 60 "$log"
  artifact=$(grep -oE '(Test unit|artifact) written to [^ ]+' "$log" | tail -n1 | awk '{print $NF}' || true)
  if [ -n "$artifact" ]; then
    echo "fuzz: $target failed on $artifact; reproduce with"
    echo "  cargo fuzz run -s none $target $artifact"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ok"
