#!/usr/bin/env bash
# Tests mkapk.sh the way test-mkipk.sh tests mkipk.sh: builds packages from a dummy binary,
# takes them apart stream by stream as apk-tools 2 does (no apk tool on Debian 12), and checks
# the format (two gzip streams, control tar segment without end blocks, .PKGINFO first,
# datahash = SHA-256 of the data stream, per-file SHA-1 pax headers), the metadata, the
# files, their modes and owners, the scripts, and that the apk and the ipk of the same binary
# install the same files with the same modes.
#
#   firmware/openwrt/test-mkapk.sh [BINARY TARGET]
#
# Prints "mkapk: N passed, M failed" and exits non-zero on any failure.
# Single-quoted $ strings below are for the inner shell or grep, not expansions here.
# shellcheck disable=SC2016
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version *= *"\(.*\)"/\1/p' "$HERE/../../Cargo.toml" | head -n 1)"

# shellcheck source=firmware/openwrt/checks.sh
source "$HERE/checks.sh"

# inspect APK IPK BINARY ARCH: one line "ok: ..." or "FAIL: ..." per property.
inspect() {
    python3 - "$@" <<'EOF'
import gzip, hashlib, io, os, subprocess, sys, tarfile, zlib

apk, ipk, binary, arch, version = sys.argv[1:6]
raw = open(apk, "rb").read()
streams, rest = [], raw
while rest:
    d = zlib.decompressobj(wbits=31)
    out = d.decompress(rest) + d.flush()
    streams.append((rest[: len(rest) - len(d.unused_data)], out))
    rest = d.unused_data

def check(what, cond, detail=""):
    print(("ok: " if cond else "FAIL: ") + what + ("" if cond else f" ({detail})"))

check("two gzip streams (control, data; unsigned)", len(streams) == 2, len(streams))
(ctl_gz, ctl), (data_gz, data) = streams[0], streams[1]
check("control is a whole number of tar blocks", len(ctl) % 512 == 0, len(ctl))
check("control is a segment (no end-of-archive blocks)", ctl[-1024:] != bytes(1024))
members = tarfile.open(fileobj=io.BytesIO(ctl + bytes(1024))).getmembers()
names = [m.name for m in members]
check(".PKGINFO first", names[:1] == [".PKGINFO"], names)
check("control members", names == [".PKGINFO", ".post-install", ".post-upgrade", ".pre-deinstall"], names)
ctar = tarfile.open(fileobj=io.BytesIO(ctl + bytes(1024)))
info = {}
for line in ctar.extractfile(".PKGINFO").read().decode().splitlines():
    if line and not line.startswith("#"):
        k, _, v = line.partition(" = ")
        info.setdefault(k, []).append(v)
one = lambda k: (info.get(k) or [""])[0]
check("pkgname", one("pkgname") == "smtpguard", one("pkgname"))
check("pkgver", one("pkgver") == f"{version}-r1", one("pkgver"))
check("arch", one("arch") == arch, one("arch"))
check("depend nftables-json, kmod-nf-conntrack-netlink", info.get("depend") == ["nftables-json", "kmod-nf-conntrack-netlink"], info.get("depend"))
check("license", one("license") == "Apache-2.0", one("license"))
check("maintainer with e-mail", "@" in one("maintainer"), one("maintainer"))
check("pkgdesc", len(one("pkgdesc")) > 20, one("pkgdesc"))
check("datahash = SHA-256 of the data stream", one("datahash") == hashlib.sha256(data_gz).hexdigest())
for m in members:
    check(f"{m.name} owned by root", (m.uid, m.gid) == (0, 0))
    if m.name != ".PKGINFO":
        check(f"{m.name} executable", m.mode == 0o755, oct(m.mode))
        script = ctar.extractfile(m).read()
        check(f"{m.name} parses", subprocess.run(["sh", "-n"], input=script).returncode == 0)
        text = script.decode()
        if m.name in (".post-install", ".post-upgrade"):
            check(f"{m.name} creates the user, then runs default_postinst for smtpguard",
                  'export pkgname="smtpguard"\nadd_group_and_user\ndefault_postinst\n' in text)
        if m.name == ".post-upgrade":
            check(".post-upgrade says it is an upgrade", "export PKG_UPGRADE=1" in text)
        if m.name == ".pre-deinstall":
            check(".pre-deinstall stops the service (default_prerm)", "\ndefault_prerm\n" in text)
            check(".pre-deinstall drops the nft table", "nft delete table inet smtpguard" in text)

dtar = tarfile.open(fileobj=io.BytesIO(data))
files = {m.name: m for m in dtar.getmembers()}
expected = {
    "usr/sbin/smtpguard-agent": 0o755, "etc/init.d/smtpguard": 0o755,
    "etc/config/smtpguard": 0o600, "etc/uci-defaults/90-smtpguard": 0o755,
    "lib/upgrade/keep.d/smtpguard": 0o644,
    "etc/capabilities/smtpguard.json": 0o644, "lib/apk/packages/smtpguard.rusers": 0o644,
    "lib/apk/packages/smtpguard.list": 0o644, "lib/apk/packages/smtpguard.conffiles": 0o644,
    "lib/apk/packages/smtpguard.conffiles_static": 0o644,
}
regular = {n: m.mode for n, m in files.items() if m.isfile()}
check("data files and modes", regular == expected, {n: oct(v) for n, v in regular.items()})
check("data ends with end-of-archive blocks", data[-1024:] == bytes(1024))
check("all data owned by root", all((m.uid, m.gid) == (0, 0) for m in files.values()))
for n, m in files.items():
    if m.isfile():
        content = dtar.extractfile(m).read()
        check(f"{n}: pax SHA-1 checksum",
              m.pax_headers.get("APK-TOOLS.checksum.SHA1") == hashlib.sha1(content).hexdigest())
read = lambda n: dtar.extractfile(files[n]).read()
check("binary packaged unchanged", read("usr/sbin/smtpguard-agent") == open(binary, "rb").read())
listed = read("lib/apk/packages/smtpguard.list").decode().split()
check("file list: every packaged file but the list and conffiles",
      listed == sorted("/" + n for n in expected if not n.startswith("lib/apk/packages/smtpguard.conffiles")
                       and n != "lib/apk/packages/smtpguard.list"), listed)
check("the agent's user (rusers)", read("lib/apk/packages/smtpguard.rusers") == b"smtpguard:smtpguard\n")
check("sysupgrade keeps the state directory", read("lib/upgrade/keep.d/smtpguard") == b"/etc/smtpguard/\n")
check("conffiles", read("lib/apk/packages/smtpguard.conffiles") == b"/etc/config/smtpguard\n")
static = read("lib/apk/packages/smtpguard.conffiles_static").decode().split()
check("conffiles_static: path and SHA-256",
      static == ["/etc/config/smtpguard", hashlib.sha256(read("etc/config/smtpguard")).hexdigest()], static)

# The ipk of the same binary installs the same files (apk's own metadata aside).
outer = tarfile.open(ipk)
ipk_data = tarfile.open(fileobj=io.BytesIO(outer.extractfile("./data.tar.gz").read()))
ipk_files = {os.path.normpath(m.name): (m.mode, ipk_data.extractfile(m).read())
             for m in ipk_data.getmembers() if m.isfile()}
apk_files = {n: (files[n].mode, read(n)) for n in regular if not n.startswith("lib/apk/")}
check("same files, modes and bytes as the ipk", ipk_files == apk_files,
      sorted(set(ipk_files) ^ set(apk_files)))
EOF
}

# check_apk APK IPK BINARY ARCH NAME
check_apk() {
    local apk="$1" ipk="$2" binary="$3" arch="$4" name="$5" line
    check "$name: file name" test "$(basename "$apk")" == "smtpguard-${VERSION}-r1.apk"
    check "$name: GNU tar reads it as one archive" tar --warning=no-unknown-keyword -tzf "$apk" .PKGINFO etc/config/smtpguard
    while IFS= read -r line; do
        check "$name: ${line#*: }" test "${line%%: *}" == ok
    done < <(inspect "$apk" "$ipk" "$binary" "$arch" "$VERSION" || echo "FAIL: inspector crashed")
}

dummy="$work/smtpguard-agent"
head -c 4096 /dev/urandom >"$dummy"
declare -A ARCHES=(
    [mipsel-unknown-linux-musl]=mipsel_24kc
    [mips-unknown-linux-musl]=mips_24kc
    [armv7-unknown-linux-musleabihf]=arm_cortex-a7_neon-vfpv4
    [aarch64-unknown-linux-musl]=aarch64_cortex-a53
)
for target in "${!ARCHES[@]}"; do
    apk="$("$HERE/mkapk.sh" "$target" "$dummy" "$work/apk/$target")"
    ipk="$("$HERE/mkipk.sh" "$target" "$dummy" "$work/ipk/$target")"
    check_apk "$apk" "$ipk" "$dummy" "${ARCHES[$target]}" "$target"
done

first="$("$HERE/mkapk.sh" mipsel-unknown-linux-musl "$dummy" "$work/again1")"
second="$("$HERE/mkapk.sh" mipsel-unknown-linux-musl "$dummy" "$work/again2")"
check "reproducible package" cmp -s "$first" "$second"
check "unknown target is refused" bash -c '! "$1" x86_64-unknown-linux-gnu "$2" "$3" 2>/dev/null' _ \
    "$HERE/mkapk.sh" "$dummy" "$work/bad"
check "missing binary is refused" bash -c '! "$1" mipsel-unknown-linux-musl "$2" "$3" 2>/dev/null' _ \
    "$HERE/mkapk.sh" "$work/nope" "$work/bad"
check "nothing written for refused builds" test "$(find "$work/bad" -type f 2>/dev/null | wc -l)" == 0

if [[ $# -eq 2 ]]; then
    apk="$("$HERE/mkapk.sh" "$2" "$1" "$work/real/apk")"
    ipk="$("$HERE/mkipk.sh" "$2" "$1" "$work/real/ipk")"
    check_apk "$apk" "$ipk" "$1" "${ARCHES[$2]}" "real-$2"
fi

checks_summary mkapk
