#!/usr/bin/env python3
"""Refresh a fuzz target's committed corpus, fuzz/corpus-min/<target>/.

Usage (from the repository root, after `cargo +nightly fuzz build -s none` in the fuzz crate):

    scripts/fuzz-corpus-min.py agent/fuzz leases [--cap N] [--target-dir DIR]

Runs the built target once over fuzz/corpus/<target> (what the fuzzer found) and the current
fuzz/corpus-min/<target> in libFuzzer's merge mode, which records the coverage edges of every
input, then keeps a greedy cover: repeatedly the input that adds the most edges not yet
covered (by the seeds, which are committed and replayed anyway, or by inputs already kept),
smaller first on ties, until nothing is added or --cap inputs (default 500) are kept, so the
committed corpus stays small. It is smaller than
`cargo fuzz cmin`, which keeps one input per coverage *feature* (edge and hit-count bucket).
The kept inputs replace fuzz/corpus-min/<target>/; the line printed says how many, their
bytes and the share of edges they cover.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile


def coverage(binary, dirs, work):
    """Edges of every file in `dirs`, by libFuzzer's merge control file: {path: set}."""
    empty = os.path.join(work, "empty")
    os.makedirs(empty, exist_ok=True)
    control = os.path.join(work, "merge.ctl")
    subprocess.run(
        [binary, "-merge=1", f"-merge_control_file={control}", empty, *dirs],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lines = open(control).read().split("\n")
    count = int(lines[0])
    files = lines[2 : 2 + count]
    edges = {}
    for line in lines[2 + count :]:
        parts = line.split()
        if parts and parts[0] == "COV":
            edges[files[int(parts[1])]] = set(map(int, parts[2:]))
    return edges


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fuzz_dir")
    ap.add_argument("target")
    ap.add_argument("--cap", type=int, default=500)
    ap.add_argument("--target-dir", default=None)
    args = ap.parse_args()
    fuzz = args.fuzz_dir
    target_dir = args.target_dir or os.path.join(fuzz, "target")
    binary = os.path.join(target_dir, "x86_64-unknown-linux-gnu", "release", args.target)
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not built (cargo +nightly fuzz build -s none in {fuzz})")
    seeds = os.path.join(fuzz, "seeds", args.target)
    found = os.path.join(fuzz, "corpus", args.target)
    kept = os.path.join(fuzz, "corpus-min", args.target)
    dirs = [d for d in (found, kept) if os.path.isdir(d) and os.listdir(d)]
    if not dirs:
        sys.exit(f"nothing to keep: {found} and {kept} are empty or missing")
    with tempfile.TemporaryDirectory() as work:
        covered = set().union(*coverage(binary, [seeds], os.path.join(work, "s")).values())
        edges = coverage(binary, dirs, os.path.join(work, "c"))
        everything = covered.union(*edges.values())
        chosen = []
        while len(chosen) < args.cap and edges:
            best = max(edges, key=lambda f: (len(edges[f] - covered), -os.path.getsize(f)))
            if not edges[best] - covered:
                break
            covered |= edges.pop(best)
            chosen.append(best)
        staged = os.path.join(work, "kept")
        os.makedirs(staged)
        for path in chosen:
            shutil.copy(path, os.path.join(staged, os.path.basename(path)))
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(staged, kept)
    size = sum(os.path.getsize(os.path.join(kept, f)) for f in os.listdir(kept))
    print(
        f"{args.target}: kept {len(chosen)} files, {size} bytes; with the seeds they cover "
        f"{len(covered)} of {len(everything)} edges ({100 * len(covered) / max(1, len(everything)):.1f}%)"
    )


if __name__ == "__main__":
    main()
