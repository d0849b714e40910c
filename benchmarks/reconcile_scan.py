"""Watcher.reconcile() over a large tree.

Builds (or reuses) DIRS x FILES empty files under --dir, then times reconcile() with an
emit that only counts: "first" runs use a fresh Watcher each time (every file emitted,
how="scan"); "rescan" runs repeat on one Watcher (nothing changed, nothing emitted).
Building the tree is not timed. Page cache is warm (the build, or a warm-up scan).

    .venv/bin/python benchmarks/reconcile_scan.py [--dir /tmp/autoproc-bench-tree]
        [--dirs 200] [--files 1000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autoproc.config import WatchRoot
from autoproc.watch import FileReady, Watcher


def build(base: Path, dirs: int, files: int) -> bool:
    marker = base / f".complete-{dirs}x{files}"
    if marker.exists():
        return False
    t0 = time.perf_counter()
    for d in range(dirs):
        sub = base / f"night{d:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        prefix = str(sub) + "/c4d_"
        for f in range(files):
            os.close(os.open(f"{prefix}{f:06d}_ori.fits", os.O_CREAT | os.O_WRONLY, 0o644))
    marker.touch()
    print(f"# built {dirs * files} files in {time.perf_counter() - t0:.1f} s (not timed below)")
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "autoproc-bench-tree"))
    ap.add_argument("--dirs", type=int, default=200)
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print("# reproduce: .venv/bin/python benchmarks/reconcile_scan.py " + shlex.join(sys.argv[1:]))
    base = Path(args.dir)
    quiet = 1.0
    if build(base, args.dirs, args.files):
        time.sleep(quiet + 0.1)  # every file older than quiet_seconds: emitted at once
    expected = args.dirs * args.files
    cfg = WatchRoot(
        name="bench", path=base, kind="raw", quiet_seconds=quiet, patterns=["*.fits", "*.fits.fz"]
    )
    count = 0

    def emit(r: FileReady) -> None:
        nonlocal count
        count += 1

    problems: list[str] = []

    def on_problem(where: str, msg: str) -> None:
        problems.append(f"{where}: {msg}")

    Watcher([cfg], emit, on_problem).reconcile()  # warm the dentry/inode caches
    firsts = []
    for _ in range(args.runs):
        count = 0
        w = Watcher([cfg], emit, on_problem)
        t0 = time.perf_counter()
        seen = w.reconcile()
        dt = time.perf_counter() - t0
        firsts.append(dt)
        assert seen == expected and count == expected, (seen, count, expected)
    rescans = []
    for _ in range(args.runs):
        count = 0
        t0 = time.perf_counter()
        seen = w.reconcile()
        rescans.append(time.perf_counter() - t0)
        assert seen == expected and count == 0, (seen, count)
    print(f"# tree: {base} ({args.dirs} dirs x {args.files} files), python {sys.version.split()[0]}")
    for label, times in (("first scan (all emitted)", firsts), ("rescan (none emitted)", rescans)):
        med = statistics.median(times)
        runs = ", ".join(f"{t:.3f}" for t in times)
        print(f"{label:26s} median {med:.3f} s = {expected / med:,.0f} files/s  (runs: {runs} s)")
    for p in problems[:10]:
        print(f"problem: {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
