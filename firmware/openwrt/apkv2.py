#!/usr/bin/env python3
"""Writes an apk v2 package (apk-v2(5)) from a staged file tree; used by mkapk.sh.

    apkv2.py DATA_DIR CONTROL_DIR EPOCH OUT

DATA_DIR is the root of the files to install, CONTROL_DIR holds PKGINFO (every key but
datahash, which is computed here) and the scripts (post-install, pre-deinstall, ...), each
stored as ".<name>". The package is two concatenated gzip streams, unsigned:

1. the control section: a tar *segment* (no end-of-archive blocks, so it runs on into the
   next stream) with .PKGINFO first, then the scripts;
2. the data section: a complete tar of DATA_DIR in which every regular file carries its
   SHA-1 in a pax header APK-TOOLS.checksum.SHA1, as abuild writes it.

.PKGINFO's datahash is the SHA-256 of the second gzip stream, so a signature (added by a
repository's signing step in front of both) covers the data too. Everything is
reproducible: root-owned, sorted, mtime EPOCH, gzip without name or time stamp.
"""
import gzip
import hashlib
import io
import os
import sys
import tarfile

BLOCK = 512


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def info(name: str, st: os.stat_result, epoch: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = st.st_mode & 0o7777
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = "root"
    ti.mtime = epoch
    return ti


def control_segment(control_dir: str, pkginfo: bytes, epoch: int) -> bytes:
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT)
    ti = tarfile.TarInfo(".PKGINFO")
    ti.mode, ti.mtime, ti.size = 0o644, epoch, len(pkginfo)
    ti.uname = ti.gname = "root"
    tar.addfile(ti, io.BytesIO(pkginfo))
    for name in sorted(os.listdir(control_dir)):
        if name == "PKGINFO":
            continue
        path = os.path.join(control_dir, name)
        ti = info("." + name, os.stat(path), epoch)
        ti.size = os.path.getsize(path)
        with open(path, "rb") as f:
            tar.addfile(ti, f)
    end = tar.offset  # end of the last member, before the end-of-archive blocks
    tar.close()
    return buf.getvalue()[:end]


def data_tar(data_dir: str, epoch: int) -> bytes:
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)
    entries = []
    for root, dirs, files in os.walk(data_dir):
        dirs.sort()
        rel = os.path.relpath(root, data_dir)
        if rel != ".":
            entries.append(rel)
        entries.extend(os.path.normpath(os.path.join(rel, f)) for f in sorted(files))
    for rel in entries:
        path = os.path.join(data_dir, rel)
        st = os.lstat(path)
        ti = info(rel, st, epoch)
        if os.path.isdir(path):
            ti.type = tarfile.DIRTYPE
            tar.addfile(ti)
        elif os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                content = f.read()
            ti.size = len(content)
            ti.pax_headers = {"APK-TOOLS.checksum.SHA1": hashlib.sha1(content).hexdigest()}
            tar.addfile(ti, io.BytesIO(content))
        else:
            sys.exit(f"apkv2.py: only files and directories are packaged: {rel}")
    tar.close()
    return buf.getvalue()


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit("usage: apkv2.py DATA_DIR CONTROL_DIR EPOCH OUT")
    data_dir, control_dir, epoch, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    data = gz(data_tar(data_dir, epoch))
    with open(os.path.join(control_dir, "PKGINFO"), "rb") as f:
        pkginfo = f.read()
    if b"\ndatahash = " in pkginfo:
        sys.exit("apkv2.py: PKGINFO must not set datahash")
    pkginfo += b"datahash = " + hashlib.sha256(data).hexdigest().encode() + b"\n"
    control = gz(control_segment(control_dir, pkginfo, epoch))
    with open(out, "wb") as f:
        f.write(control + data)


if __name__ == "__main__":
    main()
