#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) with cargo fuzz on the nightly toolchain,
# two at a time (MUSTER_FUZZ_JOBS to change), and prints a table: executions, time, crashes.
# New inputs go to target/fuzz-corpus/<target> (the committed seeds in fuzz/corpus stay as they
# are); a crash leaves its input in fuzz/artifacts/<target>/ — fix the bug, then copy the input
# to fuzz/regressions/<target>/ so every CI run replays it (tests/tests/fuzz_corpus.rs).
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
jobs=${MUSTER_FUZZ_JOBS:-2}

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "cargo fuzz needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz@0.13.2
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^muster-fuzz$')
fi

echo "== building ${#targets[@]} fuzz targets"
(cd fuzz && cargo +nightly fuzz build)

logs=target/fuzz-logs
mkdir -p "$logs"
run_one() {
  local t=$1 work=target/fuzz-corpus/$1
  mkdir -p "$work"
  local rc=0
  (cd fuzz && cargo +nightly fuzz run "$t" "../$work" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1) \
    >"$logs/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$logs/$t.rc"
}

echo "== fuzzing each target for ${secs} s, ${jobs} at a time (logs in $logs)"
running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if ((running >= jobs)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=0
printf '\n| target | executions | seconds | exec/s | corpus | crashes |\n|---|---|---|---|---|---|\n'
for t in "${targets[@]}"; do
  log=$logs/$t.log
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  corpus=$(find "target/fuzz-corpus/$t" "fuzz/corpus/$t" -type f | wc -l)
  rc=$(cat "$logs/$t.rc")
  crashes=0
  if [[ "$rc" != 0 ]]; then
    crashes=1
    failed=1
  fi
  rate=$(( ${execs:-0} / (${took:-1} > 0 ? ${took:-1} : 1) ))
  printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "${execs:-?}" "${took:-?}" "$rate" "$corpus" "$crashes"
done
if ((failed)); then
  echo "a fuzz target failed: see $logs/<target>.log and fuzz/artifacts/" >&2
  exit 1
fi
