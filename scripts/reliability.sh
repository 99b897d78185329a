#!/usr/bin/env bash
# The reliability suites (RELIABILITY.md), with their counts printed.
#   scripts/reliability.sh          the short run: the counts `cargo test` (scripts/test.sh) uses
#   scripts/reliability.sh --long   the long run: 50 kills of apply per provider, 50 of destroy and
#                                    50 of prune (AWS), 20 fault applies, 20 races of each kind,
#                                    over a million fuzz inputs (about 90 min, 2 cores)
# ENVCTL_RELIABILITY_SEED=N replays a run; ENVCTL_FUZZ_CASES, ENVCTL_KILL_ITERATIONS,
# ENVCTL_DELETE_KILL_ITERATIONS, ENVCTL_FAULT_APPLIES and ENVCTL_RACE_ITERATIONS set one count
# each.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--long" ]; then
  export ENVCTL_RELIABILITY=long
elif [ -n "${1:-}" ]; then
  echo "usage: scripts/reliability.sh [--long]" >&2
  exit 1
fi
export ENVCTL_RELIABILITY_SEED="${ENVCTL_RELIABILITY_SEED:-$(date +%s)}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-0}"
log="${TMPDIR:-/tmp}/envctl-reliability-$$.log"
started=$(date +%s)
echo "envctl reliability (${ENVCTL_RELIABILITY:-short}) at $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)'), seed $ENVCTL_RELIABILITY_SEED"
status=0
cargo test --locked --no-fail-fast \
  --test never_panics --test identity --test reliability --test secrets -- --nocapture \
  >"$log" 2>&1 || status=$?
cargo test --locked --no-fail-fast --test aws -- --nocapture faults_and_slow_states \
  >>"$log" 2>&1 || status=$?
# The figures: every line a suite prints about what it did.
grep -E '^(fuzz |kill-|race-|faults:|secrets:|test result:)' "$log" || true
inputs=$(grep -E '^fuzz [a-z_]+: [0-9]+ inputs' "$log" | awk '{s += $3} END {print s + 0}')
echo "fuzz inputs in all: $inputs"
echo "wall time: $(( $(date +%s) - started ))s; full log: $log"
if [ "$status" != 0 ]; then
  grep -E 'panicked|FAILED|failed' "$log" | head -40 >&2
  echo "reliability run FAILED" >&2
fi
exit "$status"
