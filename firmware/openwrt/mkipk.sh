#!/usr/bin/env bash
# Builds an opkg package (.ipk) of smtpguard from a cross-built agent, without the OpenWrt SDK.
#
#   firmware/openwrt/mkipk.sh TARGET BINARY OUT_DIR
#
# TARGET is a Rust triple (mapped to an OpenWrt architecture), BINARY the stripped static
# smtpguard-agent for it. Writes OUT_DIR/smtpguard_<version>_<arch>.ipk and prints its path.
#
# Format: the outer archive is a gzipped tar holding ./debian-binary, ./data.tar.gz and
# ./control.tar.gz, in that order: what OpenWrt's own ipkg-build writes, so opkg on every
# OpenWrt release that uses opkg reads it, and it needs only tar and gzip (the classic `ar`
# outer archive would need binutils' ar and is not what OpenWrt's feeds ship). The archive is
# reproducible: fixed owner (root), mtime (SOURCE_DATE_EPOCH, default 0) and member order.
#
# Environment: SMTPGUARD_OPENWRT_ARCH (another OpenWrt architecture of the same CPU family),
# SMTPGUARD_VERSION (default: the agent's Cargo version), SMTPGUARD_RELEASE
# (package release, default 1), SOURCE_DATE_EPOCH.
set -euo pipefail
umask 022

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=firmware/lib.sh
source "$ROOT/firmware/lib.sh"
# shellcheck source=firmware/openwrt/package.sh
source "$HERE/package.sh"
pkg_args "$@"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
data="$work/data"
control="$work/control"
mkdir -p "$control"
pkg_stage_data "$data"

installed_size="$(du -sb --apparent-size "$data" | cut -f1)"

cat >"$control/control" <<EOF
Package: smtpguard
Version: $VERSION-$RELEASE
Depends: nftables-json, kmod-nf-conntrack-netlink
Source: firmware/openwrt/smtpguard
SourceName: smtpguard
License: $(sed -n 's/^PKG_LICENSE:=//p' "$HERE/smtpguard/Makefile")
Section: net
Priority: optional
Maintainer: $(sed -n 's/^PKG_MAINTAINER:=//p' "$HERE/smtpguard/Makefile")
Architecture: $ARCH
Installed-Size: $installed_size
Require-User: smtpguard:smtpguard
Description: Edge defence against spam bots on the LAN.
 smtpguard-agent watches the outbound mail traffic of each LAN device, throttles or blocks
 a device that behaves like a spam bot and reports signed evidence to the ISP's controller.
EOF

printf '/etc/config/smtpguard\n' >"$control/conffiles"

# Same behaviour as the scripts OpenWrt's build generates: default_postinst runs the package's
# uci-defaults, enables and (on a running router) starts the service; default_prerm stops and
# disables it.
cat >"$control/postinst" <<'EOF'
#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_postinst "$0" "$@"
EOF

cat >"$control/prerm" <<'EOF'
#!/bin/sh
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
. "${IPKG_INSTROOT}/lib/functions.sh"
default_prerm "$0" "$@"
# Drop the agent's nftables table so that no block outlives the package.
[ -n "${IPKG_INSTROOT}" ] || nft delete table inet smtpguard 2>/dev/null
exit 0
EOF
chmod 0755 "$control/postinst" "$control/prerm"
chmod 0644 "$control/control" "$control/conffiles"

# Reproducible tar: sorted names, root-owned, fixed mtime, no gzip timestamp.
mktar() {
    local dir="$1" out="$2"
    shift 2
    tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner \
        --mtime="@$EPOCH" -C "$dir" -cf - "$@" | gzip -9n >"$out"
}

mkdir -p "$work/pkg"
printf '2.0\n' >"$work/pkg/debian-binary"
mktar "$data" "$work/pkg/data.tar.gz" .
mktar "$control" "$work/pkg/control.tar.gz" .
touch -d "@$EPOCH" "$work/pkg/debian-binary" "$work/pkg/data.tar.gz" "$work/pkg/control.tar.gz"

mkdir -p "$OUT_DIR"
ipk="$OUT_DIR/smtpguard_${VERSION}-${RELEASE}_${ARCH}.ipk"
# Member order as ipkg-build writes it; no --sort here.
tar --format=gnu --owner=0 --group=0 --numeric-owner --mtime="@$EPOCH" -C "$work/pkg" \
    -cf - ./debian-binary ./data.tar.gz ./control.tar.gz | gzip -9n >"$ipk"
printf '%s\n' "$ipk"
