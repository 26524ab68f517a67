# shellcheck shell=bash disable=SC2034 # pkg_args sets variables for the sourcing script
# What mkipk.sh and mkapk.sh share: their command line and environment, and the files the
# package installs (one list, so the opkg and the apk package cannot drift apart).
# Sourced after firmware/lib.sh, with HERE set to firmware/openwrt.

FILES="$HERE/smtpguard/files"

# pkg_args "$@": reads TARGET BINARY OUT_DIR and sets TARGET, BINARY, OUT_DIR, ARCH (the
# OpenWrt architecture, SMTPGUARD_OPENWRT_ARCH overriding), VERSION (SMTPGUARD_VERSION, else
# the workspace's Cargo version), RELEASE (SMTPGUARD_RELEASE, default 1) and EPOCH
# (SOURCE_DATE_EPOCH, default 0).
pkg_args() {
    [[ $# -eq 3 ]] || {
        printf 'usage: %s TARGET BINARY OUT_DIR\n' "$0" >&2
        exit 2
    }
    TARGET="$1"
    BINARY="$2"
    OUT_DIR="$3"
    ARCH="$(sg_openwrt_arch "$TARGET")" || sg_die "unknown target $TARGET (known: ${SG_TARGETS[*]})"
    ARCH="${SMTPGUARD_OPENWRT_ARCH:-$ARCH}"
    [[ "$ARCH" =~ ^[a-z0-9_.+-]+$ ]] || sg_die "invalid OpenWrt architecture: $ARCH"
    [[ -f "$BINARY" ]] || sg_die "no such binary: $BINARY"
    VERSION="${SMTPGUARD_VERSION:-$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n 1)}"
    [[ -n "$VERSION" ]] || sg_die "cannot tell the version; set SMTPGUARD_VERSION"
    RELEASE="${SMTPGUARD_RELEASE:-1}"
    EPOCH="${SOURCE_DATE_EPOCH:-0}"
}

# pkg_stage_data DIR: the files the package installs, under DIR.
pkg_stage_data() {
    local data="$1"
    mkdir -p "$data/usr/sbin" "$data/etc/init.d" "$data/etc/config" "$data/etc/uci-defaults" \
        "$data/etc/capabilities" "$data/lib/upgrade/keep.d"
    install -m 0755 "$BINARY" "$data/usr/sbin/smtpguard-agent"
    install -m 0755 "$FILES/smtpguard.init" "$data/etc/init.d/smtpguard"
    # The config holds the broker password: root only.
    install -m 0600 "$FILES/smtpguard.config" "$data/etc/config/smtpguard"
    # Migrates an older config on install and after sysupgrade (default_postinst runs it).
    install -m 0755 "$FILES/smtpguard.uci-defaults" "$data/etc/uci-defaults/90-smtpguard"
    # sysupgrade keeps the state directory (the router's key: a new one means a new
    # enrollment).
    install -m 0644 "$FILES/smtpguard.keep" "$data/lib/upgrade/keep.d/smtpguard"
    # procd's capability set for the agent (the init script uses it when the user exists).
    install -m 0644 "$FILES/smtpguard.capabilities" "$data/etc/capabilities/smtpguard.json"
}
