#!/usr/bin/env bash
# Installs envctl: the released archive for this machine, checked against the release's SHA256SUMS
# and, where the GitHub CLI is, against its build provenance; or a build of this checkout. The GitHub Action (action.yml) runs it; it works on a laptop too, and
# the tests run it offline (tests/workflows.rs). Written for bash 3.2 as well (macOS's /bin/bash).
set -euo pipefail

TARGETS="x86_64-unknown-linux-gnu aarch64-unknown-linux-gnu x86_64-apple-darwin aarch64-apple-darwin"

usage() {
  cat <<'EOF'
Usage: scripts/install-action.sh [OPTIONS]

Install envctl. Downloads the release archive envctl-<version>-<target>.tar.gz for this machine
and the release's SHA256SUMS, refuses the archive unless its SHA-256 is the one listed and, where
`gh` (the GitHub CLI) is installed, unless `gh attestation verify` finds the build provenance the
release workflow published for it; then puts `envctl` in DEST/bin, and keeps the archive and
SHA256SUMS in DEST. An archive already in DEST (a restored cache) is checked against the SHA256SUMS
kept beside it, with no network. In GitHub Actions it also adds DEST/bin to $GITHUB_PATH and writes
`version` (the resolved tag) to $GITHUB_OUTPUT; anywhere else it says where envctl is, and how to
put it on PATH.

On a laptop (the releases of envctl/envctl):
  curl -fsSLO https://raw.githubusercontent.com/envctl/envctl/v1/scripts/install-action.sh
  bash install-action.sh --version latest --dest ~/.local/share/envctl

Options:
  --version V        `latest` (the default: resolved to a tag, see --action-ref), an exact tag
                     such as `v1.2.3`, or `source` (cargo install --locked from this checkout:
                     the directory above this script, or $GITHUB_ACTION_PATH)
  --action-ref REF   the ref the action is used at (`uses: envctl/envctl@REF`; action.yml passes
                     github.action_ref), which says what `latest` is:
                       v1         the newest release v1.x.y (drafts and prereleases skipped), so
                                  a new major version never reaches `@v1`
                       v1.2.3     that release, with no network
                       a commit   (40 hex digits) the release its Cargo.toml names, with no
                                  network: the commit of tag v1.2.3 says 1.2.3 (release.yml
                                  refuses a tag that differs)
                       other      (a branch, none) the newest release of any version (GitHub's
                                  releases/latest)
                     Default: the REF in $GITHUB_ACTION_PATH (.../_actions/OWNER/NAME/REF), else
                     none
  --repo OWNER/NAME  the repository whose releases hold envctl (default: the action's own
                     repository, read from $GITHUB_ACTION_PATH, else $GITHUB_REPOSITORY in
                     GitHub Actions; envctl/envctl anywhere else)
  --target TRIPLE    the target to install (default: this machine's)
  --dest DIR         where to install (default: $RUNNER_TOOL_CACHE/envctl/<version>/<target>,
                     else ~/.cache/envctl/<version>/<target>)
  --from DIR         take the release files (the archive and SHA256SUMS) from DIR instead of
                     downloading them; needs an exact --version
  --resolve-only     resolve the version, target and install directory, print them (and write
                     `version`, `target` and `dir` to $GITHUB_OUTPUT); install nothing
  --skip-attestation do not verify the build provenance even where gh is installed (a mirror
                     without GitHub's API, a GitHub Enterprise Server without artifact
                     attestations; in a workflow: ENVCTL_SKIP_ATTESTATION=true in the job's env);
                     the SHA256SUMS check stays
  -h, --help         show this help

Environment:
  GITHUB_TOKEN               a token for GitHub's API (resolving `latest`, and gh's attestation
                             check when GH_TOKEN is not set); optional
  GITHUB_API_URL             GitHub's API (set by GitHub Actions, also on GitHub Enterprise
                             Server; default https://api.github.com)
  GITHUB_SERVER_URL          where release files are downloaded from (set by GitHub Actions;
                             default https://github.com)
  ENVCTL_RELEASE_API_URL     overrides GITHUB_API_URL for envctl's releases (tests use a stand-in)
  ENVCTL_RELEASE_SERVER_URL  overrides GITHUB_SERVER_URL (a file:// URL laid out like GitHub's
                             works too, as in the tests)
  ENVCTL_GH                  the GitHub CLI to verify build provenance with (default: gh)
  ENVCTL_SKIP_ATTESTATION    `true`: as --skip-attestation

Targets: x86_64-unknown-linux-gnu, aarch64-unknown-linux-gnu, x86_64-apple-darwin,
aarch64-apple-darwin.
EOF
}

die() {
  # In GitHub Actions, also an error annotation (one line: workflow commands end at a newline).
  if [ -n "${GITHUB_ACTIONS:-}" ]; then
    printf '::error title=envctl install::%s\n' "$(printf '%s' "$*" | tr '\r\n' '  ')"
  fi
  printf 'error: %s\n' "$*" >&2
  exit 1
}

say() { printf '%s\n' "$*" >&2; }

version=latest
action_ref=
repo=
target=
dest=
from=
resolve_only=false
skip_attestation=false
[ "${ENVCTL_SKIP_ATTESTATION:-}" != true ] || skip_attestation=true

while [ $# -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --version | --action-ref | --repo | --target | --dest | --from)
      [ $# -ge 2 ] || die "$1 needs a value (see --help)"
      case "$1" in
        --version) version=$2 ;;
        --action-ref) action_ref=$2 ;;
        --repo) repo=$2 ;;
        --target) target=$2 ;;
        --dest) dest=$2 ;;
        --from) from=$2 ;;
      esac
      shift 2
      ;;
    --version=* | --action-ref=* | --repo=* | --target=* | --dest=* | --from=*)
      value=${1#*=}
      case "$1" in
        --version=*) version=$value ;;
        --action-ref=*) action_ref=$value ;;
        --repo=*) repo=$value ;;
        --target=*) target=$value ;;
        --dest=*) dest=$value ;;
        --from=*) from=$value ;;
      esac
      shift
      ;;
    --resolve-only) resolve_only=true; shift ;;
    --skip-attestation) skip_attestation=true; shift ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done

# ---- what to install --------------------------------------------------------------------------

# This machine's target, or nothing when envctl has no release for it.
host_target() {
  local arch
  case "$(uname -m)" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) return 0 ;;
  esac
  case "$(uname -s)" in
    Linux) echo "$arch-unknown-linux-gnu" ;;
    Darwin) echo "$arch-apple-darwin" ;;
  esac
}

# The repository whose releases to use. A remote action runs from
# RUNNER_WORK/_actions/OWNER/NAME/REF (github.action_repository is empty inside composite actions);
# `uses: ./` runs from the workspace, and then the releases are this repository's own. Outside
# GitHub Actions: envctl/envctl. With `optional`, a repository it cannot tell is left empty.
set_default_repo() {
  local rest owner name
  case "${GITHUB_ACTION_PATH:-}" in
    */_actions/*/*/*)
      rest=${GITHUB_ACTION_PATH##*/_actions/}
      owner=${rest%%/*}
      rest=${rest#*/}
      name=${rest%%/*}
      repo="$owner/$name"
      return
      ;;
  esac
  if [ "${GITHUB_ACTIONS:-}" != true ]; then
    repo=envctl/envctl
    return
  fi
  if [ -z "${GITHUB_REPOSITORY:-}" ]; then
    [ "${1:-}" = optional ] ||
      die "cannot tell which repository's releases hold envctl; pass --repo OWNER/NAME"
    return 0
  fi
  repo=$GITHUB_REPOSITORY
}

# GitHub Actions sets GITHUB_API_URL and GITHUB_SERVER_URL, to its own host on GitHub Enterprise
# Server.
api_url=${ENVCTL_RELEASE_API_URL:-${GITHUB_API_URL:-https://api.github.com}}
api_url=${api_url%/}
server_url=${ENVCTL_RELEASE_SERVER_URL:-${GITHUB_SERVER_URL:-https://github.com}}
server_url=${server_url%/}
token=${GITHUB_TOKEN:-}

# curl with GitHub's API headers; the token goes through a file descriptor, never the command
# line (where `ps` would show it).
api_get() {
  if [ -n "$token" ]; then
    curl -fsSL --retry 3 -H 'Accept: application/vnd.github+json' \
      -H @<(printf 'Authorization: Bearer %s\n' "$token") "$1"
  else
    curl -fsSL --retry 3 -H 'Accept: application/vnd.github+json' "$1"
  fi
}

# The ref in RUNNER_WORK/_actions/OWNER/NAME/REF, the directory a remote action runs from (the
# runner does not promise github.action_ref inside composite actions), else nothing.
default_action_ref() {
  case "${GITHUB_ACTION_PATH:-}" in
    */_actions/*/*/*)
      local rest=${GITHUB_ACTION_PATH##*/_actions/}
      rest=${rest#*/}
      echo "${rest#*/}"
      ;;
  esac
}

# The tags of the published releases (not drafts, not prereleases) in a page of GitHub's list of
# releases, one a line, then `releases N` (how many the page holds, drafts and prereleases too);
# fails when the page is not as expected. Each release object holds one tag_name, draft and
# prerelease, and no object nested in it has any of them; the contents of a string never match,
# since the quotes in them are escaped.
published_tags() {
  { grep -oE '"(tag_name|draft|prerelease)"[[:space:]]*:[[:space:]]*("[^"]*"|true|false)' || true; } |
    sed -E 's/^"([a-z_]+)"[[:space:]]*:[[:space:]]*"?([^"]*)"?$/\1 \2/' |
    awk '
      { value[$1] = $2; n++ }
      n == 3 {
        if (!("tag_name" in value) || !("draft" in value) || !("prerelease" in value)) { bad = 1; exit }
        if (value["draft"] == "false" && value["prerelease"] == "false") print value["tag_name"]
        split("", value); n = 0; releases++
      }
      END { if (bad || n != 0) exit 1; printf "releases %d\n", releases }
    '
}

# Sets `version` to the newest release vMAJOR.x.y (MAJOR a number), skipping drafts and
# prereleases. GitHub lists releases newest-created first, 100 a page; every page is read, since a
# fix of an older version can be published after a newer one.
resolve_latest_of_major() {
  local major=$1 page=1 body found tags="" tag
  while [ "$page" -le 100 ]; do
    body=$(api_get "$api_url/repos/$repo/releases?per_page=100&page=$page") ||
      die "cannot resolve \`latest\`: cannot list the releases of $repo at $api_url"
    found=$(printf '%s' "$body" | published_tags) ||
      die "cannot resolve \`latest\`: the list of releases of $repo from $api_url is not as expected"
    tags="$tags$(printf '%s\n' "$found" | sed '/^releases /d')"$'\n'
    [ "$(printf '%s\n' "$found" | sed -n 's/^releases //p')" -ge 100 ] || break
    page=$((page + 1))
  done
  tag=$(printf '%s' "$tags" | grep -E "^v$major\.[0-9]+\.[0-9]+\$" | sort -t . -k 2,2n -k 3,3n |
    tail -n 1) || true
  [ -n "$tag" ] ||
    die "cannot resolve \`latest\`: $repo has no release v$major.x.y at $api_url (drafts and prereleases do not count); set \`version\` to an exact tag"
  version=$tag
}

# Sets `version` to the release the action's own commit is: the version its Cargo.toml names (the
# release workflow refuses a tag other than v<that version>), read from the action's checkout.
resolve_commit() {
  local commit=$1 dir manifest found
  dir=${GITHUB_ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}
  manifest="$dir/Cargo.toml"
  [ -f "$manifest" ] ||
    die "cannot resolve \`latest\` at commit $commit: $dir has no Cargo.toml to say which release it is; use the action at a release tag (\`@v1.2.3\`) or set \`version\` to one"
  # The first `version = "…"` of the [package] table.
  found=$(awk '
    /^\[/ { in_package = ($0 ~ /^\[package\][[:space:]]*$/) ; next }
    in_package && /^version[[:space:]]*=/ {
      sub(/^version[[:space:]]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
    }
  ' "$manifest")
  printf '%s' "$found" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$' ||
    die "cannot resolve \`latest\` at commit $commit: the [package] version in $manifest is \`$found\`, not a version such as 1.2.3; set \`version\` to a release tag"
  version="v$found"
}

# Sets `version` to the tag of the newest release (GitHub's "latest": no drafts, no prereleases).
resolve_latest() {
  local body tag
  body=$(api_get "$api_url/repos/$repo/releases/latest") ||
    die "cannot resolve \`latest\`: no release found for $repo at $api_url (none published yet? set \`version\` to an exact tag, or to \`source\` to build from source)"
  tag=$(printf '%s' "$body" | grep -o '"tag_name"[[:space:]]*:[[:space:]]*"[^"]*"' | head -n 1 |
    sed 's/.*"\([^"]*\)"$/\1/') || true
  [ -n "$tag" ] || die "cannot resolve \`latest\`: the answer from $api_url for $repo has no tag_name"
  version=$tag
}

case "$version" in
  "" | latest | source) ;;
  [0-9]*) version="v$version" ;; # 1.2.3 means v1.2.3
esac
[ -n "$version" ] || version=latest
case "$version" in
  latest | source) ;;
  *)
    printf '%s' "$version" | grep -Eq '^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$' ||
      die "version \`$version\` is not \`latest\`, \`source\` or a release tag such as v1.2.3"
    ;;
esac

if [ -n "$target" ]; then
  case " $TARGETS " in
    *" $target "*) ;;
    *) die "unknown target \`$target\` (releases: $TARGETS)" ;;
  esac
else
  target=$(host_target)
  [ -n "$target" ] ||
    die "envctl has no release for $(uname -s) on $(uname -m) (releases: $TARGETS); use \`version: source\` to build it"
fi

# With --from the release files are at hand: the repository only names the signer of their
# build provenance.
if [ "$version" != source ]; then
  if [ -z "$repo" ]; then
    if [ -n "$from" ]; then set_default_repo optional; else set_default_repo; fi
  fi
  [ -z "$repo" ] || printf '%s' "$repo" | grep -Eq '^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$' ||
    die "repository \`$repo\` is not OWNER/NAME"
fi

if [ "$version" = latest ]; then
  [ -z "$from" ] || die "--from needs an exact --version (a tag such as v1.2.3), not \`latest\`"
  [ -n "$action_ref" ] || action_ref=$(default_action_ref)
  if printf '%s' "$action_ref" | grep -Eq '^v[0-9]+$'; then
    resolve_latest_of_major "${action_ref#v}"
    say "latest release of $repo for $action_ref: $version"
  elif printf '%s' "$action_ref" | grep -Eq '^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$'; then
    # Pinned to a release: that release, never a newer one.
    version=$action_ref
    say "the action is used at $action_ref: envctl $version"
  elif printf '%s' "$action_ref" | grep -Eq '^[0-9a-f]{40}$'; then
    resolve_commit "$action_ref"
    say "the action is used at commit $action_ref, whose Cargo.toml names release $version"
  else
    resolve_latest
    printf '%s' "$version" | grep -Eq '^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$' ||
      die "the latest release of $repo has the tag \`$version\`, which is not a version such as v1.2.3"
    say "latest release of $repo: $version"
  fi
fi

[ -n "$dest" ] || dest="${RUNNER_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}}/envctl/$version/$target"

output() {
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
  fi
}

if [ "$resolve_only" = true ]; then
  printf 'version=%s\ntarget=%s\ndir=%s\n' "$version" "$target" "$dest"
  output version "$version"
  output target "$target"
  output dir "$dest"
  exit 0
fi

mkdir -p "$dest/bin"
dest=$(cd "$dest" && pwd)

put_on_path() {
  if [ -n "${GITHUB_PATH:-}" ]; then
    echo "$dest/bin" >>"$GITHUB_PATH"
  fi
  output version "$version"
}

# Outside GitHub Actions, where nothing puts DEST/bin on PATH: how to.
path_hint() {
  [ "${GITHUB_ACTIONS:-}" != true ] || return 0
  case ":$PATH:" in
    *":$dest/bin:"*) ;;
    *)
      say "$dest/bin is not on PATH; to run envctl by name, add this line to your shell's profile:"
      say "  export PATH=\"$dest/bin:\$PATH\""
      ;;
  esac
}

# ---- from source --------------------------------------------------------------------------------

if [ "$version" = source ]; then
  source_dir=${GITHUB_ACTION_PATH:-$(cd "$(dirname "$0")/.." && pwd)}
  [ -f "$source_dir/Cargo.toml" ] || die "\`source\` builds envctl from $source_dir, which has no Cargo.toml"
  command -v cargo >/dev/null 2>&1 ||
    die "\`source\` needs cargo (a Rust toolchain, e.g. dtolnay/rust-toolchain) on PATH"
  say "building envctl from $source_dir"
  cargo install --locked --force --path "$source_dir" --root "$dest"
  put_on_path
  say "installed envctl (built from source) to $dest/bin/envctl"
  path_hint
  exit 0
fi

# ---- a release ----------------------------------------------------------------------------------

archive="envctl-$version-$target.tar.gz"
work=$(mktemp -d "${TMPDIR:-/tmp}/envctl-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

fetch() { # fetch FILE OUT: one file of the release
  if [ -n "$from" ]; then
    [ -f "$from/$1" ] || die "$from has no $1"
    cp "$from/$1" "$2"
  else
    curl -fsSL --retry 3 -o "$2" "$server_url/$repo/releases/download/$version/$1" ||
      die "cannot download $1 of release $version from $server_url/$repo (is $version released for $target?)"
  fi
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d ' ' -f 1
  else
    shasum -a 256 "$1" | cut -d ' ' -f 1
  fi
}

# The SHA-256 that the SHA256SUMS file $1 lists for the archive, in lower case, or nothing.
listed_sum() {
  awk -v f="$archive" '$2 == f || $2 == "*" f { print $1; exit }' "$1" |
    { grep -E '^[0-9a-fA-F]{64}$' || true; } | tr 'A-F' 'a-f'
}

# Checks the archive $1 against the build provenance the release workflow published for it, where
# the GitHub CLI is installed: signed for this repository by its release workflow.
verify_provenance() {
  local gh=${ENVCTL_GH:-gh} host
  if [ "$skip_attestation" = true ]; then
    say "not checking the build provenance of $archive (--skip-attestation); SHA256SUMS was checked"
    return 0
  fi
  if ! command -v "$gh" >/dev/null 2>&1; then
    say "gh (the GitHub CLI) is not installed: the build provenance of $archive is not checked (SHA256SUMS was); install gh to check it too"
    return 0
  fi
  if ! "$gh" attestation verify --help >/dev/null 2>&1; then
    say "warning: this gh has no \`gh attestation verify\` (gh 2.49 or later has it): the build provenance of $archive is not checked (SHA256SUMS was)"
    return 0
  fi
  [ -n "$repo" ] ||
    die "cannot check the build provenance of $archive: pass --repo OWNER/NAME (the repository whose release workflow built it), or --skip-attestation"
  local args=(attestation verify "$1" --repo "$repo" --signer-workflow "$repo/.github/workflows/release.yml")
  host=${server_url#*://}
  host=${host%%/*}
  case "$server_url" in
    https://github.com) ;;
    https://*) args+=(--hostname "$host") ;;
  esac
  # In GitHub Actions gh needs a token: the job's, which resolves `latest` too.
  if [ -z "${GH_TOKEN:-}" ] && [ -n "$token" ]; then
    GH_TOKEN=$token "$gh" "${args[@]}" >&2
  else
    "$gh" "${args[@]}" >&2
  fi || die "the build provenance of $archive does not check out (\`gh attestation verify\` above): refusing to install it. If gh could not reach GitHub or is not logged in, run \`gh auth login\` (or set GH_TOKEN) and try again; --skip-attestation relies on SHA256SUMS alone"
  say "build provenance of $archive verified (signed by $repo's release workflow)"
}

# A restored cache holds the archive and the SHA256SUMS it was checked against when it was
# downloaded: checked again here, with no network. What a cache holds was verified before it was
# stored, and GitHub restores a cache only to runs of the branch that saved it or of the default
# branch.
cached=false
if [ -f "$dest/$archive" ] && [ -f "$dest/SHA256SUMS" ]; then
  expected=$(listed_sum "$dest/SHA256SUMS")
  if [ -n "$expected" ] && [ "$(sha256_of "$dest/$archive")" = "$expected" ]; then
    cached=true
    say "using the cached $archive (checksum verified against the SHA256SUMS cached with it)"
  else
    say "warning: the cached $archive does not match the SHA256SUMS cached with it; downloading both again"
  fi
fi
if [ "$cached" = false ]; then
  rm -f "$dest/$archive" "$dest/SHA256SUMS"
  fetch SHA256SUMS "$work/SHA256SUMS"
  expected=$(listed_sum "$work/SHA256SUMS")
  [ -n "$expected" ] || die "the SHA256SUMS of release $version has no line for $archive"
  fetch "$archive" "$work/$archive"
  actual=$(sha256_of "$work/$archive")
  [ "$actual" = "$expected" ] ||
    die "checksum mismatch for $archive: SHA256SUMS says $expected, the download is $actual; refusing to install it (a corrupt or tampered download)"
  say "downloaded $archive (checksum verified)"
  verify_provenance "$work/$archive"
  mv "$work/SHA256SUMS" "$dest/SHA256SUMS"
  mv "$work/$archive" "$dest/$archive"
fi

mkdir "$work/unpacked"
tar -xzf "$dest/$archive" -C "$work/unpacked"
binary="$work/unpacked/envctl-$version-$target/envctl"
[ -f "$binary" ] || die "$archive holds no envctl-$version-$target/envctl"
chmod 0755 "$binary"
mv -f "$binary" "$dest/bin/envctl"

# A binary that cannot run here (a C library too old for it) says so now rather than in a later step.
if [ "$target" = "$(host_target)" ]; then
  "$dest/bin/envctl" --version >/dev/null ||
    die "the installed $dest/bin/envctl does not run on this machine"
fi
put_on_path
say "installed envctl $version ($target) to $dest/bin/envctl"
path_hint
