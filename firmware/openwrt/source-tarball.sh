#!/usr/bin/env bash
# Makes the source tarball the feed package downloads, and prints its SHA-256 (PKG_HASH).
#
#   firmware/openwrt/source-tarball.sh [--update-makefile] [REF] OUT_DIR
#
# REF defaults to the release tag v<version> (the workspace's Cargo version). The tarball is
# `git archive` of REF under the prefix smtpguard-<version>/, gzip without a time stamp, so
# the same commit always gives the same bytes: the release uploads it next to the tag and
# the hash in the feed Makefile stays right. firmware/openwrt/ (the feed packages and these
# scripts) is left out: the feed keeps its own copy, and the Makefile that holds the hash
# cannot be inside the file it hashes.
#
# --update-makefile writes PKG_VERSION, PKG_SOURCE_URL (the workspace's `repository` +
# /releases/download/v<version>) and PKG_HASH into firmware/openwrt/smtpguard/Makefile.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MAKEFILE="$HERE/smtpguard/Makefile"

update=0
if [[ "${1:-}" == "--update-makefile" ]]; then
    update=1
    shift
fi
case $# in
    1) ref="" out="$1" ;;
    2) ref="$1" out="$2" ;;
    *)
        printf 'usage: %s [--update-makefile] [REF] OUT_DIR\n' "$0" >&2
        exit 2
        ;;
esac

workspace_key() {
    sed -n "/^\[workspace.package\]/,/^\[/ s/^$1 *= *\"\(.*\)\"/\1/p" "$ROOT/Cargo.toml" | head -n 1
}
version="$(workspace_key version)"
repository="$(workspace_key repository)"
[[ -n "$version" && -n "$repository" ]] || {
    printf 'error: no version or repository in [workspace.package] of Cargo.toml\n' >&2
    exit 1
}
ref="${ref:-v$version}"
git -C "$ROOT" rev-parse --verify --quiet "$ref^{commit}" >/dev/null || {
    printf 'error: %s is not a commit here (tag the release first, or name a ref)\n' "$ref" >&2
    exit 1
}

mkdir -p "$out"
tarball="$out/smtpguard-$version.tar.gz"
git -C "$ROOT" archive --format=tar --prefix="smtpguard-$version/" "$ref" -- . \
    ':(exclude)firmware/openwrt' | gzip -9n >"$tarball"
hash="$(sha256sum "$tarball" | cut -d' ' -f1)"

if [[ "$update" == 1 ]]; then
    sed -i \
        -e "s|^PKG_VERSION:=.*|PKG_VERSION:=$version|" \
        -e "s|^PKG_SOURCE_URL:=.*|PKG_SOURCE_URL:=$repository/releases/download/v\$(PKG_VERSION)|" \
        -e "s|^PKG_HASH:=.*|PKG_HASH:=$hash|" \
        "$MAKEFILE"
fi
printf '%s  %s\n' "$hash" "$tarball"
