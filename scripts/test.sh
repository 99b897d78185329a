#!/usr/bin/env bash
# The project's test command (README.md): formatting, lints, the benchmarks built, then every test.
# Tests that need PostgreSQL start a private server themselves (initdb/pg_ctl from PATH or
# /usr/lib/postgresql/*/bin); .ci/run installs those binaries on a machine that lacks them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The benchmarks (BENCHMARKS.md) are built, never run, here: a few seconds in the dev profile.
# scripts/bench.sh runs them.
cargo build --benches --locked
cargo test --locked --no-fail-fast
