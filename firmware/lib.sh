# shellcheck shell=bash
# Shared by firmware/build.sh and firmware/ci.sh (sourced, not run): the router targets, what
# each one needs, and how to get the tools on a fresh Debian machine.
#
# How each target is built (measured on Debian 12, Rust stable):
# - aarch64-unknown-linux-musl: rustup ships its std.
# - armv7-unknown-linux-musleabihf, mips(el)-unknown-linux-musl: no usable std from rustup
#   (404 for ARMv7, tier 3 for MIPS), so std is built from source with -Zbuild-std on the
#   stable compiler (RUSTC_BOOTSTRAP=1; needs the rust-src component).
# - All four link with zig (PyPI `ziglang`, in a venv) through cargo-zigbuild: Debian's cross
#   gcc links glibc start files for these triples.
# - ARM: -C link-self-contained=no, so zig's musl start files are used (else crt1.o is missing).
# - MIPS: -C relocation-model=static; static-PIE MIPS binaries crash at start.

# Size budget of a stripped router agent in bytes: 2 MiB, the mipsel agent with TLS.
# shellcheck disable=SC2034 # read by build.sh and ci.sh
SG_SIZE_BUDGET="${SMTPGUARD_SIZE_BUDGET:-2097152}"

SG_TARGETS=(
    mipsel-unknown-linux-musl
    mips-unknown-linux-musl
    armv7-unknown-linux-musleabihf
    aarch64-unknown-linux-musl
)

# Pinned tool versions (override from the environment to try newer ones).
SG_ZIGBUILD_VERSION="${SMTPGUARD_ZIGBUILD_VERSION:-0.24.1}"
SG_ZIG_VERSION="${SMTPGUARD_ZIG_VERSION:-0.17.1}"
SG_CACHE="${SMTPGUARD_CACHE:-${HOME}/.cache/smtpguard-zig}"

sg_log() { printf '==> %s\n' "$*" >&2; }
sg_die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

sg_known_target() {
    local t
    for t in "${SG_TARGETS[@]}"; do
        [[ "$t" == "$1" ]] && return 0
    done
    return 1
}

# Targets whose std must be built from source.
sg_needs_build_std() {
    case "$1" in
        aarch64-*) return 1 ;;
        *) return 0 ;;
    esac
}

sg_rustflags() {
    case "$1" in
        mips*) printf '%s' "-C relocation-model=static" ;;
        armv7-* | aarch64-*) printf '%s' "-C link-self-contained=no" ;;
        *) sg_die "no flags known for $1" ;;
    esac
}

sg_qemu() {
    case "$1" in
        mipsel-*) printf 'qemu-mipsel' ;;
        mips-*) printf 'qemu-mips' ;;
        armv7-*) printf 'qemu-arm' ;;
        aarch64-*) printf 'qemu-aarch64' ;;
        *) sg_die "no qemu known for $1" ;;
    esac
}

# What `readelf -h` says about a binary of the target: "Machine|Data".
sg_elf_signature() {
    case "$1" in
        mipsel-*) printf 'MIPS R3000|little endian' ;;
        mips-*) printf 'MIPS R3000|big endian' ;;
        armv7-*) printf 'ARM|little endian' ;;
        aarch64-*) printf 'AArch64|little endian' ;;
        *) sg_die "no ELF signature known for $1" ;;
    esac
}

# OpenWrt package architecture for the target (the most common router SoC family of each).
sg_openwrt_arch() {
    case "$1" in
        mipsel-unknown-linux-musl) printf 'mipsel_24kc' ;;
        mips-unknown-linux-musl) printf 'mips_24kc' ;;
        armv7-unknown-linux-musleabihf) printf 'arm_cortex-a7_neon-vfpv4' ;;
        aarch64-unknown-linux-musl) printf 'aarch64_cortex-a53' ;;
        *) return 1 ;;
    esac
}

# CARGO_TARGET_<TRIPLE>_ prefix of cargo's per-target environment variables.
sg_cargo_env_prefix() {
    local up="${1^^}"
    printf 'CARGO_TARGET_%s_' "${up//-/_}"
}

SG_APT_UPDATED=0
# sg_apt_install PACKAGE...: apt-get install (with one apt-get update per run).
sg_apt_install() {
    [[ "$(id -u)" == 0 ]] || sg_die "missing Debian package(s) $*: install them (needs root)"
    if [[ "$SG_APT_UPDATED" == 0 ]]; then
        sg_log "apt-get update"
        apt-get update -qq
        SG_APT_UPDATED=1
    fi
    sg_log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# sg_need_apt COMMAND PACKAGE: installs PACKAGE with apt when COMMAND is missing.
sg_need_apt() {
    command -v "$1" >/dev/null 2>&1 && return 0
    sg_apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || sg_die "$2 installed but $1 is still missing"
}

# zig in a Python venv under the cache, exposed as $SG_CACHE/bin/zig.
sg_ensure_zig() {
    local venv="$SG_CACHE/venv"
    if ! "$venv/bin/python" -m ziglang version >/dev/null 2>&1; then
        sg_log "installing ziglang $SG_ZIG_VERSION into $venv"
        mkdir -p "$SG_CACHE"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            # Debian's python3 has no ensurepip until python3-venv is installed.
            rm -rf "$venv"
            sg_apt_install python3-venv
            python3 -m venv "$venv"
        fi
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "ziglang==$SG_ZIG_VERSION"
    fi
    mkdir -p "$SG_CACHE/bin"
    printf '#!/bin/sh\nexec "%s" -m ziglang "$@"\n' "$venv/bin/python" >"$SG_CACHE/bin/zig"
    chmod 0755 "$SG_CACHE/bin/zig"
}

sg_ensure_zigbuild() {
    if command -v cargo-zigbuild >/dev/null 2>&1 &&
        [[ "$(cargo-zigbuild --version)" == *" $SG_ZIGBUILD_VERSION" ]]; then
        return 0
    fi
    sg_log "installing cargo-zigbuild $SG_ZIGBUILD_VERSION"
    cargo install --locked --quiet "cargo-zigbuild@$SG_ZIGBUILD_VERSION"
}

# Everything needed to build (and, with qemu, run) for TARGET.
sg_ensure_toolchain() {
    local target="$1"
    # std sources for every router build; the prebuilt std where rustup has one (tests).
    rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
    if ! sg_needs_build_std "$target"; then
        rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    fi
    sg_ensure_zig
    sg_ensure_zigbuild
}

# sg_cargo TARGET SUBCOMMAND ARGS...: cargo build/test/check for TARGET with zig as linker,
# std built from source where needed, the target's flags and qemu-user as the test runner.
sg_cargo() {
    local target="$1" sub="$2"
    shift 2
    local prefix flags
    prefix="$(sg_cargo_env_prefix "$target")"
    flags="$(sg_rustflags "$target")"
    local -a std_args=()
    if [[ "$sub" == build ]]; then
        # The router binary, which never unwinds (panic=abort), on every target with std
        # built here (even aarch64, whose prebuilt std rustup has): std without the
        # backtrace symbolizer (gimli, addr2line, miniz) and with its size-optimised
        # algorithms, no unwind tables, no file/line in panic messages, and derived
        # `Debug` printing type names only (hand-written ones, e.g. quoted strings in
        # error messages, are kept). Tests keep std's defaults: the harness unwinds.
        std_args=('-Zbuild-std=std,panic_abort' '-Zbuild-std-features=optimize_for_size')
        flags+=" -C force-unwind-tables=no -Z location-detail=none -Z fmt-debug=shallow"
    elif sg_needs_build_std "$target"; then
        std_args=('-Zbuild-std=std,panic_abort')
    fi
    local -a env_args=(
        "PATH=$SG_CACHE/bin:$PATH"
        "${prefix}RUSTFLAGS=$flags ${SMTPGUARD_EXTRA_RUSTFLAGS:-}"
        "${prefix}RUNNER=$(sg_qemu "$target")"
    )
    if [[ "${#std_args[@]}" -gt 0 ]]; then
        env_args+=("RUSTC_BOOTSTRAP=1")
    fi
    [[ "$sub" == build ]] && sub=zigbuild
    # RUSTFLAGS would override the per-target flags above (and reach build scripts).
    env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS "${env_args[@]}" \
        cargo-zigbuild "$sub" --target "$target" "${std_args[@]}" "$@"
}

# sg_slim FILE: removes sections a router never reads that `strip` keeps: MIPS procedure
# descriptors (.pdr, about 8% of a MIPS binary) and the linker's .comment. rust-objcopy
# (LLVM's objcopy, shipped with rustc) handles every target.
sg_slim() {
    local sysroot host
    sysroot="$(rustc --print sysroot)"
    host="$(rustc -vV | sed -n 's/^host: //p')"
    LD_LIBRARY_PATH="$sysroot/lib" "$sysroot/lib/rustlib/$host/bin/rust-objcopy" \
        --remove-section=.pdr --remove-section=.comment "$1"
}

# sg_check_elf TARGET FILE: a static, stripped executable for TARGET's CPU.
sg_check_elf() {
    local target="$1" file="$2" header sig machine data
    header="$(readelf -h "$file")" || sg_die "$file is not an ELF file"
    sig="$(sg_elf_signature "$target")"
    machine="${sig%%|*}"
    data="${sig##*|}"
    grep -q "Machine: *$machine\$" <<<"$header" || sg_die "$file: not a $machine binary: $(grep Machine <<<"$header")"
    grep -q "Data: .*$data" <<<"$header" || sg_die "$file: not $data"
    if readelf -l "$file" | grep -q 'INTERP'; then
        sg_die "$file is dynamically linked (has a program interpreter)"
    fi
    if readelf -S "$file" | grep -q '\.symtab'; then
        sg_die "$file is not stripped"
    fi
}
