#!/usr/bin/env bash
# Quickstart: create this repository's example environment for a demo branch on the local
# provider (a private PostgreSQL under .envctl/postgres/), migrate and seed it, and print how to
# connect. Run it again: it converges and changes nothing. `cargo run -q -- local stop` stops the
# server.
set -euo pipefail
cd "$(dirname "$0")/.."
branch="${1:-feature/quickstart}"
envctl() { cargo run -q -- --repo "${ENVCTL_REPO:-envctl/quickstart}" "$@"; }
envctl apply --branch "$branch"
repo="${ENVCTL_REPO:-envctl/quickstart}"
echo "connect with: cargo run -q -- --repo $repo exec --branch $branch -- psql" >&2
echo "see it with:  cargo run -q -- --repo $repo status   (remove it: ... --repo $repo destroy --branch $branch)" >&2
envctl url --branch "$branch"
