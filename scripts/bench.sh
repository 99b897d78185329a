#!/usr/bin/env bash
# The benchmarks of BENCHMARKS.md: builds the release envctl, then runs benches/figures (built in
# the dev profile: it only drives the release binary and times it), which prints Markdown tables
# of each figure beside its reference on stdout. Never run by CI (.ci/run only builds them).
#
#   scripts/bench.sh                          all ten items (about 45 minutes, more the first time)
#   scripts/bench.sh --only plan --plan-n 1000,10000
#   scripts/bench.sh --only observe,startup --repeat 3
#   scripts/bench.sh --only clone --clone-mib 128 --repeat 1   item 8 on a smaller source
#   scripts/bench.sh --help                   every option
#
# Needs what the tests need (README.md): PostgreSQL's server binaries and psql, git, and the AWS
# peer's virtualenv (made here if missing); the proxy item also pgbench (Debian's postgresql),
# socat and strace (`apt-get install socat strace`). It starts its own AWS peers and PostgreSQL server on
# loopback under a temp directory and stops them when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/envctl-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

for arg in "$@"; do
  case "$arg" in
    -h|--help)
      exec cargo bench --quiet --locked --profile dev --bench figures -- --help ;;
  esac
done

bash scripts/aws-peer/setup.sh
# The aws-sdk crates make the first release build slow (15 minutes or more on 2 cores).
echo "building the release envctl" >&2
# Item 6 times token signing in an optimised build of its own (benches/signing.rs; its
# dev-dependencies make its first build about as long again). Built before the binary, which it
# would otherwise replace with a build of other features.
cargo bench --locked --bench signing --no-run
cargo build --release --locked --bin envctl
exec cargo bench --locked --profile dev --bench figures -- \
  --envctl "$CARGO_TARGET_DIR/release/envctl" "$@"
