#!/usr/bin/env bash
# Checks of the OpenWrt feed package that need no SDK:
# 1. the feed Makefile says what a packages-feed maintainer asks for (real source and hash,
#    license file, maintainer e-mail, nftables-json, the feed's rust-package.mk, conffiles);
# 2. source-tarball.sh is reproducible and its hash format fits PKG_HASH;
# 3. the uci-defaults migration: an old (layout 1) config becomes the current layout, a
#    second run changes nothing, the current config is left alone. Debian has no `uci`, so it
#    runs against tests/fake-uci (the get/set/delete/commit subset, staged like uci).
#    With SMTPGUARD_HOST_AGENT set, the migrated config is also read by the real agent.
#
# Prints "feed: N passed, M failed" and exits non-zero on any failure.
# Single-quoted $ strings below are for the inner shell or grep, not expansions here.
# shellcheck disable=SC2016
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
MK="$HERE/smtpguard/Makefile"
FILES="$HERE/smtpguard/files"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=firmware/openwrt/checks.sh
source "$HERE/checks.sh"

# 1. The Makefile.
check "Makefile: no skipped hash" lacks "$MK" '(PKG_MIRROR_HASH|PKG_HASH):=skip'
check "Makefile: PKG_HASH is a SHA-256" has "$MK" '^PKG_HASH:=[0-9a-f]{64}$'
check "Makefile: a release tarball as PKG_SOURCE" has "$MK" '^PKG_SOURCE:=\$\(PKG_NAME\)-\$\(PKG_VERSION\)\.tar\.gz$'
check "Makefile: PKG_SOURCE_URL is the workspace repository's release" has "$MK" \
    "^PKG_SOURCE_URL:=$(sed -n 's/^repository *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")/releases/download/v\\\$\\(PKG_VERSION\\)\$"
check "Makefile: PKG_VERSION is the Cargo version" has "$MK" \
    "^PKG_VERSION:=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")\$"
check "Makefile: maintainer with an e-mail" has "$MK" '^PKG_MAINTAINER:=[^<]+ <[^@>]+@[^>]+>$'
cargo_license="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^license *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml")"
check "Makefile: PKG_LICENSE is the workspace license" has "$MK" "^PKG_LICENSE:=$cargo_license\$"
check "Makefile: PKG_LICENSE_FILES" has "$MK" '^PKG_LICENSE_FILES:=LICENSE$'
check "LICENSE at the repository root" test -s "$ROOT/LICENSE"
check "LICENSE is the Apache License 2.0" has "$ROOT/LICENSE" 'Apache License$'
check "LICENSE: version 2.0" has "$ROOT/LICENSE" 'Version 2\.0, January 2004'
check "Makefile: SPDX header" has "$MK" '^# SPDX-License-Identifier: '
check "Makefile: the packages feed's rust-package.mk" has "$MK" \
    '^include \$\(TOPDIR\)/feeds/packages/lang/rust/rust-package\.mk$'
check "Makefile: no INCLUDE_DIR/.. path" lacks "$MK" 'INCLUDE_DIR\)/\.\.'
check "Makefile: depends on nftables-json (the agent runs nft -j)" has "$MK" 'DEPENDS:=.*\+nftables-json( |$)'
check "Makefile: no bare +nftables" lacks "$MK" '\+nftables( |$)'
check "Makefile: no placeholder git source" lacks "$MK" 'PKG_SOURCE_PROTO|PKG_MIRROR_HASH'
check "Makefile: the 'stripped' profile is not mentioned" lacks "$MK" 'stripped. profile|`stripped`'
check "Makefile: router profile exists in Cargo.toml" has "$ROOT/Cargo.toml" '^\[profile\.router\]$'
check "Makefile: conffiles" has "$MK" '^/etc/config/smtpguard$'
check "Makefile: installs the uci-defaults" has "$MK" 'smtpguard\.uci-defaults \$\(1\)/etc/uci-defaults/90-smtpguard'
check "Makefile: installs the sysupgrade keep file" has "$MK" 'smtpguard\.keep \$\(1\)/lib/upgrade/keep.d/smtpguard'
check "keep file names the state directory" has "$FILES/smtpguard.keep" '^/etc/smtpguard/$'
check "Makefile: the agent's user" has "$MK" '^  USERID:=smtpguard:smtpguard$'
check "Makefile: installs procd's capability set" has "$MK" 'smtpguard\.capabilities \$\(1\)/etc/capabilities/smtpguard\.json'
check "the init script's capability file is the packaged one" has "$FILES/smtpguard.init" '^CAPABILITIES=/etc/capabilities/smtpguard\.json$'
check "Makefile: prerm drops the nft table" has "$MK" 'nft delete table inet smtpguard'

# 2. The source tarball.
if git -C "$ROOT" rev-parse --verify --quiet HEAD >/dev/null; then
    a="$("$HERE/source-tarball.sh" HEAD "$work/src1")"
    b="$("$HERE/source-tarball.sh" HEAD "$work/src2")"
    check "source tarball is reproducible" same "${a%% *}" "${b%% *}"
    check "source tarball has the prefix and the LICENSE" \
        bash -c 'tar -tzf "$1" | grep -qx "smtpguard-[0-9.]*/LICENSE"' _ "${a#*  }"
    check "source tarball leaves out the feed directory" \
        bash -c '! tar -tzf "$1" | grep -q "/firmware/openwrt/"' _ "${a#*  }"
    version="$(sed -n 's/^PKG_VERSION:=//p' "$MK")"
    if git -C "$ROOT" rev-parse --verify --quiet "v$version^{commit}" >/dev/null; then
        tag="$("$HERE/source-tarball.sh" "$work/tag")"
        check "PKG_HASH is the hash of tag v$version" has "$MK" "^PKG_HASH:=${tag%% *}\$"
    else
        # Until the tag exists, the Makefile's comment names the commit the hash is of.
        commit="$(sed -n 's/^# Until v.* is tagged, PKG_HASH is that of commit \([0-9a-f]*\) .*/\1/p' "$MK")"
        check "Makefile names the commit of its PKG_HASH (no tag v$version yet)" test -n "$commit"
        if [[ -n "$commit" ]] && git -C "$ROOT" rev-parse --verify --quiet "$commit^{commit}" >/dev/null; then
            pinned="$("$HERE/source-tarball.sh" "$commit" "$work/pinned")"
            check "PKG_HASH is the hash of commit $commit" has "$MK" "^PKG_HASH:=${pinned%% *}\$"
        else
            printf 'note: commit %s is not in this clone: PKG_HASH checked for form only\n' "$commit"
        fi
    fi
fi

# 3. uci-defaults.
migrate() { env UCI_CONFIG_DIR="$1" PATH="$work/bin:$PATH" sh "$FILES/smtpguard.uci-defaults"; }
mkdir -p "$work/bin"
# The system Python without site packages: a version manager's shim in front of python3
# costs a third of a second per call, and the test makes a few hundred.
py=python3
[[ -x /usr/bin/python3 ]] && py=/usr/bin/python3
printf '#!/bin/sh\nexec %s -S -E %q "$@"\n' "$py" "$HERE/tests/fake-uci" >"$work/bin/uci"
chmod +x "$work/bin/uci"
# No logger on the host? The script tolerates that; keep the host's syslog out of it anyway.
printf '#!/bin/sh\nexit 0\n' >"$work/bin/logger"
chmod +x "$work/bin/logger"
check "uci-defaults parses (sh -n)" sh -n "$FILES/smtpguard.uci-defaults"

old="$work/old"
mkdir -p "$old"
cp "$HERE/tests/smtpguard.config.layout1" "$old/smtpguard"
get() { PATH="$work/bin:$PATH" uci -q -c "$1" get "smtpguard.$2"; }
check "layout 1: migration runs" migrate "$old"
check "layout 1 -> capture.interface" same "$(get "$old" capture.interface)" "br-lan"
check "layout 1 -> uplink.broker_url" same "$(get "$old" uplink.broker_url)" "mqtts://controller.isp.example:8883"
check "layout 1 -> uplink.tls_ca_file" same "$(get "$old" uplink.tls_ca_file)" "/etc/ssl/certs/ca-certificates.crt"
check "layout 1 -> uplink.controller_public_key" same "$(get "$old" uplink.controller_public_key)" ""
check "layout 1 -> uplink.enabled 0 without a controller key" same "$(get "$old" uplink.enabled)" "0"
check "layout 1 -> led.name" same "$(get "$old" led.name)" ""
check "layout 1 -> agent.state_dir kept" same "$(get "$old" agent.state_dir)" "/etc/smtpguard"
check "layout 1 -> agent.runtime_dir in RAM" same "$(get "$old" agent.runtime_dir)" "/var/run/smtpguard"
for gone in controller thresholds agent.interface agent.mode agent.key_path agent.enabled agent.log_level agent.led; do
    check "layout 1: $gone is gone" bash -c '! PATH="$1:$PATH" uci -q -c "$2" get "smtpguard.$3" >/dev/null' _ \
        "$work/bin" "$old" "$gone"
done
check "layout 1: committed (nothing left staged)" test ! -e "$old/.staged/smtpguard"
cp "$old/smtpguard" "$work/after-first"
# OpenWrt sources uci-defaults scripts in a subshell (`( . "$i" ) && rm -f "$i"`, in
# /etc/init.d/boot and default_postinst): the same result that way.
sourced="$work/sourced"
mkdir -p "$sourced"
cp "$HERE/tests/smtpguard.config.layout1" "$sourced/smtpguard"
check "layout 1, sourced as OpenWrt does: succeeds" env UCI_CONFIG_DIR="$sourced" PATH="$work/bin:$PATH" \
    sh -c '( cd /tmp && . "$1" )' _ "$FILES/smtpguard.uci-defaults"
check "layout 1, sourced: same result" cmp -s "$work/after-first" "$sourced/smtpguard"
check "layout 1: a second run succeeds" migrate "$old"
check "layout 1: a second run changes nothing" cmp -s "$work/after-first" "$old/smtpguard"
if [[ -n "${SMTPGUARD_HOST_AGENT:-}" ]]; then
    # `keygen --config` (without --key) parses the whole config, like `run`, then writes
    # agent.key into agent.state_dir (a scratch directory here).
    sed "s|'/etc/smtpguard'|'$work/state-old'|" "$HERE/tests/smtpguard.config.layout1" >"$work/layout1.config"
    check "the real agent refuses the layout-1 config (why the migration exists)" \
        bash -c '! "$1" keygen --config "$2" >/dev/null 2>&1' _ "$SMTPGUARD_HOST_AGENT" "$work/layout1.config"
    sed -i "s|'/etc/smtpguard'|'$work/state'|" "$old/smtpguard"
    check "the real agent reads the migrated config" \
        "$SMTPGUARD_HOST_AGENT" keygen --config "$old/smtpguard"
    check "... and used its state_dir" test -s "$work/state/agent.key"
fi

enrolled="$work/enrolled"
mkdir -p "$enrolled"
sed "s|option public_key ''|option public_key 'ed25519:$(printf '%064d' 7)'|; s|option interface 'br-lan'|option interface 'br-home'|" \
    "$HERE/tests/smtpguard.config.layout1" >"$enrolled/smtpguard"
check "enrolled layout 1: migration runs" migrate "$enrolled"
check "enrolled layout 1 -> uplink.enabled 1" same "$(get "$enrolled" uplink.enabled)" "1"
check "enrolled layout 1 -> the key moved" same "$(get "$enrolled" uplink.controller_public_key)" "ed25519:$(printf '%064d' 7)"
check "enrolled layout 1 -> a changed interface kept" same "$(get "$enrolled" capture.interface)" "br-home"

layout2="$work/layout2"
mkdir -p "$layout2"
cp "$HERE/tests/smtpguard.config.layout2" "$layout2/smtpguard"
check "layout 2: migration runs" migrate "$layout2"
check "layout 2 -> agent.runtime_dir in RAM" same "$(get "$layout2" agent.runtime_dir)" "/var/run/smtpguard"
check "layout 2: the other options kept" same "$(get "$layout2" uplink.broker_url) $(get "$layout2" capture.interface)" \
    "mqtts://controller.isp.example:8883 br-lan"
cp "$layout2/smtpguard" "$work/layout2-first"
check "layout 2: a second run changes nothing" bash -c 'env UCI_CONFIG_DIR="$1" PATH="$2:$PATH" sh "$3" && cmp -s "$1/smtpguard" "$4"' _ \
    "$layout2" "$work/bin" "$FILES/smtpguard.uci-defaults" "$work/layout2-first"
set_own="$work/own-runtime"
mkdir -p "$set_own"
sed "s|option runtime_dir '/var/run/smtpguard'|option runtime_dir '/tmp/sg'|" "$FILES/smtpguard.config" >"$set_own/smtpguard"
check "a runtime_dir of one's own: migration runs" migrate "$set_own"
check "a runtime_dir of one's own is kept" same "$(get "$set_own" agent.runtime_dir)" "/tmp/sg"

current="$work/current"
mkdir -p "$current"
cp "$FILES/smtpguard.config" "$current/smtpguard"
check "current layout: migration runs" migrate "$current"
check "current layout: file untouched" cmp -s "$FILES/smtpguard.config" "$current/smtpguard"
check "current layout: nothing staged" test ! -e "$current/.staged/smtpguard"

none="$work/none"
mkdir -p "$none"
check "no config at all: exits 0" migrate "$none"

checks_summary feed
