#!/usr/bin/env bash
# Tests mkipk.sh: builds packages from a dummy binary, unpacks them with tar and gzip as opkg
# would, and checks what a person installing them would check: layout, control fields,
# conffiles, file modes and owners, the maintainer scripts and the procd init script.
#
#   firmware/openwrt/test-mkipk.sh [BINARY TARGET]
#
# With BINARY and TARGET, the real cross-built agent is packaged and checked too.
# Prints "mkipk: N passed, M failed" and exits non-zero on any failure.
# Single-quoted $ strings below are literal text expected in the package, not expansions.
# shellcheck disable=SC2016
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MKIPK="$HERE/mkipk.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# shellcheck source=firmware/openwrt/checks.sh
source "$HERE/checks.sh"

# uci_names CONFIG: "section.option" for every option and list of a UCI file, one a line.
uci_names() {
    awk '$1 == "config" { s = $3; gsub(/\047|"/, "", s) }
         ($1 == "option" || $1 == "list") && s != "" { print s "." $2 }' "$1"
}

# init_reads_are_set INIT CONFIG: every `config_get VAR SECTION OPTION` of the init script
# names an option the packaged config sets (a renamed option would silently fall back to the
# init script's default).
init_reads_are_set() {
    local init="$1" config="$2" reads names missing=0 read
    reads="$(sed -n 's/^[[:space:]]*config_get [A-Za-z_]* \([A-Za-z_]*\) \([A-Za-z_]*\).*/\1.\2/p' "$init")"
    [[ -n "$reads" ]] || { printf '  %s reads no option\n' "$init" >&2 && return 1; }
    names="$(uci_names "$config")"
    for read in $reads; do
        grep -qxF -- "$read" <<<"$names" || { printf '  %s reads %s, which %s does not set\n' \
            "$init" "$read" "$config" >&2 && missing=1; }
    done
    [[ "$missing" == 0 ]]
}

# unpack IPK DIR: outer, control and data archives into DIR/{outer,control,data}.
unpack() {
    local ipk="$1" dir="$2"
    mkdir -p "$dir/outer" "$dir/control" "$dir/data"
    tar -xzf "$ipk" -C "$dir/outer"
    tar -xzpf "$dir/outer/control.tar.gz" -C "$dir/control"
    tar -xzpf "$dir/outer/data.tar.gz" -C "$dir/data"
}

# check_ipk IPK BINARY ARCH NAME: every property of one package.
check_ipk() {
    local ipk="$1" binary="$2" arch="$3" name="$4" dir
    dir="$work/unpacked-$name"
    unpack "$ipk" "$dir"

    check "$name: file name" same "$(basename "$ipk")" "smtpguard_${VERSION}-1_${arch}.ipk"
    check "$name: outer members in ipkg-build order" \
        same "$(tar -tzf "$ipk" | tr '\n' ' ')" "./debian-binary ./data.tar.gz ./control.tar.gz "
    check "$name: debian-binary" same "$(cat "$dir/outer/debian-binary")" "2.0"

    local c="$dir/control/control"
    check "$name: Package" has_line "$c" "Package: smtpguard"
    check "$name: Version" has_line "$c" "Version: ${VERSION}-1"
    check "$name: Architecture" has_line "$c" "Architecture: $arch"
    check "$name: Depends (nft -j needs the JSON build; NAT look-ups need ctnetlink)" has_line "$c" "Depends: nftables-json, kmod-nf-conntrack-netlink"
    check "$name: Maintainer with e-mail" grep -qE '^Maintainer: .+ <[^@>]+@[^>]+>$' "$c"
    check "$name: Description" has_text "$c" "Description: "
    check "$name: no blank line inside control (opkg stops there)" \
        same "$(grep -c '^$' "$c" || true)" "0"
    local size
    size="$(du -sb --apparent-size "$dir/data" | cut -f1)"
    check "$name: Installed-Size" has_line "$c" "Installed-Size: $size"
    check "$name: conffiles" same "$(cat "$dir/control/conffiles")" "/etc/config/smtpguard"
    check "$name: control members" \
        same "$(tar -tzf "$dir/outer/control.tar.gz" | sort | tr '\n' ' ')" \
        "./ ./conffiles ./control ./postinst ./prerm "

    check "$name: data layout" \
        same "$(tar -tzf "$dir/outer/data.tar.gz" | sort | tr '\n' ' ')" \
        "./ ./etc/ ./etc/capabilities/ ./etc/capabilities/smtpguard.json ./etc/config/ ./etc/config/smtpguard ./etc/init.d/ ./etc/init.d/smtpguard ./etc/uci-defaults/ ./etc/uci-defaults/90-smtpguard ./lib/ ./lib/upgrade/ ./lib/upgrade/keep.d/ ./lib/upgrade/keep.d/smtpguard ./usr/ ./usr/sbin/ ./usr/sbin/smtpguard-agent "
    check "$name: all files owned by root" \
        same "$(tar -tvzf "$dir/outer/data.tar.gz" | awk '$2 != "0/0"' | wc -l)" "0"
    check "$name: agent mode 0755" same "$(stat -c %a "$dir/data/usr/sbin/smtpguard-agent")" "755"
    check "$name: init script mode 0755" same "$(stat -c %a "$dir/data/etc/init.d/smtpguard")" "755"
    check "$name: config mode 0600 (holds the broker password)" \
        same "$(stat -c %a "$dir/data/etc/config/smtpguard")" "600"
    check "$name: uci-defaults mode 0755" same "$(stat -c %a "$dir/data/etc/uci-defaults/90-smtpguard")" "755"
    check "$name: uci-defaults packaged unchanged" cmp -s "$HERE/smtpguard/files/smtpguard.uci-defaults" "$dir/data/etc/uci-defaults/90-smtpguard"
    check "$name: capabilities for procd" cmp -s "$HERE/smtpguard/files/smtpguard.capabilities" "$dir/data/etc/capabilities/smtpguard.json"
    check "$name: the agent's user is created on install" has_line "$c" "Require-User: smtpguard:smtpguard"
    check "$name: sysupgrade keeps the state directory" \
        same "$(cat "$dir/data/lib/upgrade/keep.d/smtpguard")" "/etc/smtpguard/"
    check "$name: postinst executable" same "$(stat -c %a "$dir/control/postinst")" "755"
    check "$name: prerm executable" same "$(stat -c %a "$dir/control/prerm")" "755"
    check "$name: binary packaged unchanged" cmp -s "$binary" "$dir/data/usr/sbin/smtpguard-agent"

    local init="$dir/data/etc/init.d/smtpguard"
    check "$name: init script uses rc.common" same "$(head -n 1 "$init")" "#!/bin/sh /etc/rc.common"
    check "$name: init script is procd" has_line "$init" "USE_PROCD=1"
    check "$name: init starts the agent" has_text "$init" 'procd_set_param command "$PROG" run --config'
    check "$name: init restarts on config change" has_text "$init" 'procd_set_param file "$CONFIG_FILE"'
    check "$name: init respawns" has_text "$init" "procd_set_param respawn"
    check "$name: init gives a clean stop time (term_timeout)" has_text "$init" "procd_set_param term_timeout"
    check "$name: init has service_triggers" has_text "$init" "service_triggers()"
    check "$name: init reload trigger" has_text "$init" "procd_add_reload_trigger smtpguard"
    check "$name: init script parses" sh -n "$init"
    check "$name: postinst parses" sh -n "$dir/control/postinst"
    check "$name: prerm parses" sh -n "$dir/control/prerm"
    check "$name: postinst enables the service" has_text "$dir/control/postinst" 'default_postinst "$0" "$@"'
    check "$name: prerm stops the service" has_text "$dir/control/prerm" 'default_prerm "$0" "$@"'
    check "$name: config names the LAN bridge" has_line "$dir/data/etc/config/smtpguard" $'\toption interface \'br-lan\''
    check "$name: init reads only options the config sets" \
        init_reads_are_set "$init" "$dir/data/etc/config/smtpguard"
}

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$HERE/../../Cargo.toml" | head -n 1)"

# A dummy binary: any bytes will do, the packaging must not care.
dummy="$work/smtpguard-agent"
head -c 4096 /dev/urandom >"$dummy"

declare -A ARCHES=(
    [mipsel-unknown-linux-musl]=mipsel_24kc
    [mips-unknown-linux-musl]=mips_24kc
    [armv7-unknown-linux-musleabihf]=arm_cortex-a7_neon-vfpv4
    [aarch64-unknown-linux-musl]=aarch64_cortex-a53
)
for target in "${!ARCHES[@]}"; do
    ipk="$("$MKIPK" "$target" "$dummy" "$work/out")"
    check_ipk "$ipk" "$dummy" "${ARCHES[$target]}" "$target"
done

# The same input gives the same bytes (a rebuilt package does not look like an upgrade).
first="$("$MKIPK" mipsel-unknown-linux-musl "$dummy" "$work/again1")"
second="$("$MKIPK" mipsel-unknown-linux-musl "$dummy" "$work/again2")"
check "reproducible package" cmp -s "$first" "$second"

other="$(SMTPGUARD_OPENWRT_ARCH=arm_cortex-a9_vfpv3-d16 "$MKIPK" armv7-unknown-linux-musleabihf "$dummy" "$work/other")"
check_ipk "$other" "$dummy" arm_cortex-a9_vfpv3-d16 "arch-override"

check "unknown target is refused" bash -c '! "$1" x86_64-unknown-linux-gnu "$2" "$3" 2>/dev/null' _ \
    "$MKIPK" "$dummy" "$work/bad"
check "missing binary is refused" bash -c '! "$1" mipsel-unknown-linux-musl "$2" "$3" 2>/dev/null' _ \
    "$MKIPK" "$work/nope" "$work/bad"
check "nothing written for refused builds" same "$(find "$work/bad" -type f 2>/dev/null | wc -l)" "0"

if [[ $# -eq 2 ]]; then
    real="$1"
    target="$2"
    ipk="$("$MKIPK" "$target" "$real" "$work/real")"
    check_ipk "$ipk" "$real" "${ARCHES[$target]}" "real-$target"
fi

checks_summary mkipk
