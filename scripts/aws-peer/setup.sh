#!/usr/bin/env bash
# Creates or updates the AWS API peer's virtualenv (moto[server], boto3; see requirements.txt).
#
#   bash scripts/aws-peer/setup.sh                  # quiet on success
#   bash scripts/aws-peer/setup.sh --print-python   # then prints the venv's python path on stdout
#
# The venv lives outside the repository, at ${ENVCTL_VENV:-$HOME/.cache/envctl-venv}, and is reused
# across runs: a stamp file records a hash of requirements.txt and of the base interpreter's version,
# so an up-to-date venv costs one hash and no pip call. The base interpreter is ${ENVCTL_PYTHON:-python3}.
# Concurrent runs (parallel test binaries) are serialized with flock.
# On failure it says which command failed and shows that command's output on stderr.
set -euo pipefail

print_python=0
for arg in "$@"; do
    case "$arg" in
        --print-python) print_python=1 ;;
        -h | --help)
            sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "setup.sh: unknown argument: $arg (known: --print-python)" >&2
            exit 2
            ;;
    esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
requirements="$here/requirements.txt"
venv="${ENVCTL_VENV:-$HOME/.cache/envctl-venv}"
base_python="${ENVCTL_PYTHON:-python3}"
stamp="$venv/.envctl-requirements.sha256"
log=$(mktemp "${TMPDIR:-/tmp}/envctl-venv-setup.XXXXXX")
trap 'rm -f "$log"' EXIT

fail() {
    # $1: what failed; the command's output is in $log
    {
        echo "setup.sh: FAILED: $1"
        echo "setup.sh: venv: $venv"
        if [ -s "$log" ]; then
            echo "---- output ----"
            tail -n 60 "$log"
            echo "----------------"
        fi
    } >&2
    exit 1
}

run() {
    # Runs a command with its output captured; on failure reports the command and its output.
    if ! "$@" >>"$log" 2>&1; then
        fail "$*"
    fi
}

command -v "$base_python" >/dev/null 2>&1 || fail "no base interpreter '$base_python' on PATH (set ENVCTL_PYTHON)"
base_version=$("$base_python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>>"$log") \
    || fail "$base_python -c 'import sys; ...'"
want=$( { cat "$requirements"; echo "python $base_version"; } | sha256sum | cut -d' ' -f1)

up_to_date() {
    [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$venv/bin/python" -c '' >/dev/null 2>&1
}

if ! up_to_date; then
    mkdir -p "$(dirname "$venv")" || fail "mkdir -p $(dirname "$venv")"
    exec 9>"$venv.lock" || fail "cannot open lock file $venv.lock"
    flock 9 || fail "flock $venv.lock"
    # Another run may have finished the work while this one waited for the lock.
    if ! up_to_date; then
        rm -f "$stamp"
        if ! "$venv/bin/python" -c '' >/dev/null 2>&1 \
            || [ "$("$venv/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)" != "$base_version" ]; then
            rm -rf "$venv"
            run "$base_python" -m venv "$venv"
        fi
        run "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
            -r "$requirements"
        run "$venv/bin/python" -c 'import moto, boto3, botocore, flask, werkzeug'
        echo "$want" >"$stamp"
    fi
    exec 9>&-
fi

if [ "$print_python" = 1 ]; then
    echo "$venv/bin/python"
fi
