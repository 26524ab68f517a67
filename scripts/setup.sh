#!/usr/bin/env bash
# Installs what smtpguard's tests and demo need on a fresh Debian machine, only where missing.
# Idempotent and quiet when everything is present; safe to run on every test run.
#   scripts/setup.sh            everything the tests need
#   scripts/setup.sh --demo     only what the demo needs (the Rust toolchain's components)
set -euo pipefail

want_demo_only=0
[ "${1:-}" = "--demo" ] && want_demo_only=1

log() { printf 'setup: %s\n' "$*" >&2; }

need_rust_components() {
    local c
    for c in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
}

# Debian packages the tests use, with a command or file that proves each is installed.
apt_packages=(
    "nft:nftables"                       # enforcement tests
    "dnsmasq:dnsmasq"                    # MX records in the netns end-to-end test
    "swaks:swaks"                        # real SMTP client
    "/usr/lib/python3/dist-packages/aiosmtpd:python3-aiosmtpd"  # real SMTP servers
    "openssl:openssl"                    # test certificates
    "ip:iproute2"                        # network namespaces
    "mosquitto:mosquitto"                # real external broker
    "mosquitto_passwd:mosquitto-clients"
    "chromium:chromium"                  # browser tests
    "chromedriver:chromium-driver"
    "qemu-mipsel:qemu-user"              # router targets under emulation
    "/usr/share/ieee-data/oui.csv:ieee-data"  # device vendors
    "/usr/bin/time:time"                 # peak RSS in benchmark scripts
    "curl:curl"
    "nc:netcat-openbsd"                  # nft forwarding tests
    "dig:bind9-dnsutils"                 # MX lookups in the end-to-end test
    "perl=Net%SSLeay:libnet-ssleay-perl"  # swaks STARTTLS
    "glob=/usr/lib/postgresql/*/bin/initdb:postgresql"  # store tests on PostgreSQL (smtpguard-pgtest)
)

have() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        perl=*) local m="${1#perl=}"; perl -M"${m//%/::}" -e1 2>/dev/null ;;
        glob=*) compgen -G "${1#glob=}" >/dev/null ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

install_apt() {
    local missing=() entry
    for entry in "${apt_packages[@]}"; do
        have "${entry%%:*}" || missing+=("${entry#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages: ${missing[*]} (run as root, or install them)"
        exit 1
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages such as dnsmasq, mosquitto and postgresql would start system daemons on ports
    # 53, 1883 and 5432; the tests start their own instances (PostgreSQL: a throwaway cluster
    # per test binary, as user postgres), so keep the package scripts from starting any.
    local guard=/usr/sbin/policy-rc.d created_guard=0
    if [ ! -e "$guard" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$guard" && chmod +x "$guard" && created_guard=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ "$created_guard" -eq 1 ]; then rm -f "$guard"; fi
}

need_rust_components
[ "$want_demo_only" -eq 1 ] && exit 0
install_apt
