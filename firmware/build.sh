#!/usr/bin/env bash
# Builds a stripped, static smtpguard-agent for a router target with the `router` profile.
#
#   firmware/build.sh TARGET [--check-size]     TARGET: a triple below, `all`, or `host`
#
# Output: target/router/<triple>/smtpguard-agent (host: target/router/smtpguard-agent).
# Installs what is missing (rustup target or rust-src, zig in a venv under
# ${SMTPGUARD_CACHE:-~/.cache/smtpguard-zig}, cargo-zigbuild) and records the size of each
# router binary in firmware/SIZES.md.
#
# --check-size fails the build when a binary is larger than the budget:
# SMTPGUARD_SIZE_BUDGET bytes, default 2 MiB (the budget of the mipsel agent with TLS).
#
# Environment: SMTPGUARD_AGENT_FEATURES (cargo --features for the agent),
# SMTPGUARD_EXTRA_RUSTFLAGS, CARGO_TARGET_DIR (default: target/ of the repository).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=firmware/lib.sh
source "$ROOT/firmware/lib.sh"

PACKAGE=smtpguard-agent
BIN=smtpguard-agent
BUDGET="$SG_SIZE_BUDGET"
SIZES="$ROOT/firmware/SIZES.md"

usage() {
    printf 'usage: %s TARGET|all|host [--check-size]\ntargets: %s\n' "$0" "${SG_TARGETS[*]}" >&2
    exit 2
}

[[ $# -ge 1 ]] || usage
TARGET="$1"
shift
CHECK_SIZE=0
for arg in "$@"; do
    case "$arg" in
        --check-size) CHECK_SIZE=1 ;;
        *) usage ;;
    esac
done

cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT_ROOT="$CARGO_TARGET_DIR/router"

feature_args=()
if [[ -n "${SMTPGUARD_AGENT_FEATURES:-}" ]]; then
    feature_args=(--features "$SMTPGUARD_AGENT_FEATURES")
fi

agent_version() {
    cargo metadata --format-version 1 --no-deps --locked |
        python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="'"$PACKAGE"'"))'
}

# Rewrites the row of one target in SIZES.md, keeping the other targets' rows.
record_size() {
    local target="$1" bytes="$2" arch mib version rustc row t tmp
    arch="$(sg_openwrt_arch "$target")"
    mib="$(awk -v b="$bytes" 'BEGIN { printf "%.2f", b / 1048576 }')"
    version="$(agent_version)"
    rustc="$(rustc --version | awk '{ print $2 }')"
    row="| \`$target\` | \`$arch\` | $bytes | $mib | $version | $rustc |"
    tmp="$(mktemp)"
    # shellcheck disable=SC2016 # the backquotes are Markdown
    {
        printf '# Size of the stripped smtpguard-agent per router target\n\n'
        printf 'Written by `firmware/build.sh TARGET` (profile `router`: opt-level z, fat LTO, '
        printf 'panic=abort, stripped, static musl). Budget: %s bytes (%s MiB) for the mipsel agent ' \
            "$BUDGET" "$(awk -v b="$BUDGET" 'BEGIN { printf "%.1f", b / 1048576 }')"
        printf 'with TLS, enforced by `--check-size`.\n\n'
        printf '| target | OpenWrt arch | bytes | MiB | agent | rustc |\n'
        printf '|---|---|---:|---:|---|---|\n'
        for t in "${SG_TARGETS[@]}"; do
            if [[ "$t" == "$target" ]]; then
                printf '%s\n' "$row"
            elif [[ -f "$SIZES" ]]; then
                grep -F "| \`$t\` |" "$SIZES" || true
            fi
        done
    } >"$tmp"
    mv "$tmp" "$SIZES"
}

build_host() {
    sg_log "building $PACKAGE for the host (profile router)"
    cargo build --locked -p "$PACKAGE" --profile router "${feature_args[@]}"
    printf '%s\n' "$OUT_ROOT/$BIN"
}

build_target() {
    local target="$1" started out bytes
    sg_known_target "$target" || usage
    started=$SECONDS
    sg_ensure_toolchain "$target"
    sg_need_apt readelf binutils
    sg_log "building $PACKAGE for $target (profile router)"
    sg_cargo "$target" build --locked -p "$PACKAGE" --profile router "${feature_args[@]}"
    out="$OUT_ROOT/$target"
    mkdir -p "$out"
    cp "$CARGO_TARGET_DIR/$target/router/$BIN" "$out/$BIN"
    sg_slim "$out/$BIN"
    sg_check_elf "$target" "$out/$BIN"
    bytes="$(stat -c %s "$out/$BIN")"
    record_size "$target" "$bytes"
    sg_log "$target: $out/$BIN, $bytes bytes, built in $((SECONDS - started)) s"
    if [[ "$CHECK_SIZE" == 1 && "$bytes" -gt "$BUDGET" ]]; then
        sg_die "$target: $BIN is $bytes bytes, over the budget of $BUDGET bytes"
    fi
    printf '%s\n' "$out/$BIN"
}

case "$TARGET" in
    host) build_host ;;
    all) for t in "${SG_TARGETS[@]}"; do build_target "$t"; done ;;
    *) build_target "$TARGET" ;;
esac
