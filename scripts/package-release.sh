#!/usr/bin/env bash
# Packs release files the way scripts/install-action.sh unpacks them. The release workflow
# (.github/workflows/release.yml) runs it; tests/workflows.rs runs it on a stand-in binary, so the
# archive layout the workflow publishes and the one the action installs cannot drift apart.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/package-release.sh archive TAG TARGET BINARY OUTDIR
       scripts/package-release.sh sums DIR
       scripts/package-release.sh check-version TAG [MANIFEST]

archive  writes OUTDIR/envctl-TAG-TARGET.tar.gz holding the directory envctl-TAG-TARGET/ with
         BINARY as `envctl`, and README.md and LICENSE* from the repository when present
sums     writes DIR/SHA256SUMS: the SHA-256 of every DIR/envctl-*.tar.gz, in `sha256sum` format
check-version
         fails unless TAG is v<the [package] version of MANIFEST> (default: the repository's
         Cargo.toml): a release's commit then names its own release, which is what
         scripts/install-action.sh installs when the action is used at a commit
EOF
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

root=$(cd "$(dirname "$0")/.." && pwd)

case "${1:-}" in
  -h | --help)
    usage
    ;;
  archive)
    [ $# -eq 5 ] || die "archive needs TAG TARGET BINARY OUTDIR (see --help)"
    tag=$2 target=$3 binary=$4 outdir=$5
    printf '%s' "$tag" | grep -Eq '^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$' ||
      die "tag \`$tag\` is not a version such as v1.2.3"
    printf '%s' "$target" | grep -Eq '^[a-z0-9_]+-[a-z0-9_]+-[a-z0-9_]+(-[a-z0-9_]+)?$' ||
      die "target \`$target\` is not a target triple"
    [ -f "$binary" ] || die "no binary at $binary"
    name="envctl-$tag-$target"
    staging=$(mktemp -d "${TMPDIR:-/tmp}/envctl-package.XXXXXX")
    trap 'rm -rf "$staging"' EXIT
    mkdir "$staging/$name"
    cp "$binary" "$staging/$name/envctl"
    chmod 0755 "$staging/$name/envctl"
    for doc in "$root"/README.md "$root"/LICENSE*; do
      if [ -f "$doc" ]; then cp "$doc" "$staging/$name/"; fi
    done
    mkdir -p "$outdir"
    # COPYFILE_DISABLE: macOS's tar would add ._ files with extended attributes.
    COPYFILE_DISABLE=1 tar -czf "$outdir/$name.tar.gz" -C "$staging" "$name"
    echo "$outdir/$name.tar.gz"
    ;;
  sums)
    [ $# -eq 2 ] || die "sums needs DIR (see --help)"
    cd "$2"
    set -- envctl-*.tar.gz
    [ -f "$1" ] || die "$PWD has no envctl-*.tar.gz"
    if command -v sha256sum >/dev/null 2>&1; then
      sha256sum "$@" >SHA256SUMS
    else
      shasum -a 256 "$@" >SHA256SUMS
    fi
    cat SHA256SUMS
    ;;
  check-version)
    [ $# -eq 2 ] || [ $# -eq 3 ] || die "check-version needs TAG [MANIFEST] (see --help)"
    tag=$2 manifest=${3:-$root/Cargo.toml}
    [ -f "$manifest" ] || die "no $manifest"
    # The first `version = "…"` of the [package] table, as scripts/install-action.sh reads it.
    version=$(awk '
      /^\[/ { in_package = ($0 ~ /^\[package\][[:space:]]*$/) ; next }
      in_package && /^version[[:space:]]*=/ {
        sub(/^version[[:space:]]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
      }
    ' "$manifest")
    [ "$tag" = "v$version" ] ||
      die "tag \`$tag\` is not the version in $manifest (\`$version\`): set [package] version to ${tag#v} in a commit, and tag that commit"
    echo "$tag is the version of $manifest"
    ;;
  *)
    usage >&2
    exit 2
    ;;
esac
