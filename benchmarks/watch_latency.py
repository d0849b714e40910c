"""File closed -> FileReady emitted, per watch mode.

For each mode a Watcher watches a fresh temporary directory; the benchmark writes N
files (open, write a few KB, close) spaced a few ms apart and measures, in this process
with time.monotonic, the time from close() returning to `emit` being called.

    .venv/bin/python benchmarks/watch_latency.py [--files 500] [--spacing 0.005]
        [--poll-interval 5.0] [--quiet 2.0]
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from autoproc.config import WatchRoot
from autoproc.watch import FileReady, Watcher


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s)) - 1))]


def run_mode(mode: str, args: argparse.Namespace) -> None:
    emitted: dict[str, float] = {}
    dups = 0
    lock = threading.Lock()

    def emit(r: FileReady) -> None:
        nonlocal dups
        t = time.monotonic()
        with lock:
            if r.path in emitted:
                dups += 1
            else:
                emitted[r.path] = t

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"autoproc-lat-{mode}-") as tmp:
        root = Path(tmp) / "raw"
        root.mkdir()
        cfg = WatchRoot(
            name="raw",
            path=root,
            kind="raw",
            mode=mode,
            poll_interval=args.poll_interval,
            quiet_seconds=args.quiet,
        )
        w = Watcher([cfg], emit, lambda where, msg: problems.append(f"{where}: {msg}"))
        w.start()
        payload = os.urandom(args.size)
        closed: dict[str, float] = {}
        try:
            for i in range(args.files):
                p = str(root / f"c4d_{i:06d}_ori.fits")
                with open(p, "wb") as fh:
                    fh.write(payload)
                closed[p] = time.monotonic()
                time.sleep(args.spacing)
            deadline = time.monotonic() + args.poll_interval + args.quiet + 10
            while time.monotonic() < deadline:
                with lock:
                    if len(emitted) >= len(closed):
                        break
                time.sleep(0.01)
        finally:
            w.stop()
    with lock:
        lat = [(emitted[p] - closed[p]) * 1000 for p in closed if p in emitted]
    missing = len(closed) - len(lat)
    print(
        f"{mode:8s} poll_interval={args.poll_interval:g}s quiet_seconds={args.quiet:g}s "
        f"files={args.files} size={args.size}B spacing={args.spacing * 1000:g}ms"
    )
    if lat:
        print(
            f"         p50={statistics.median(lat):9.2f} ms  p99={pct(lat, 99):9.2f} ms  "
            f"max={max(lat):9.2f} ms  min={min(lat):7.2f} ms  emitted={len(lat)} missing={missing} dup={dups}"
        )
    else:
        print(f"         nothing emitted (missing={missing})")
    for p in problems:
        print(f"         problem: {p}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--size", type=int, default=4096, help="bytes per file")
    ap.add_argument("--spacing", type=float, default=0.005, help="seconds between files")
    ap.add_argument("--poll-interval", type=float, default=5.0, help="poll mode (WatchRoot default 5.0)")
    ap.add_argument("--quiet", type=float, default=2.0, help="quiet_seconds (WatchRoot default 2.0)")
    ap.add_argument("--modes", default="inotify,poll")
    args = ap.parse_args()
    print("# reproduce: .venv/bin/python benchmarks/watch_latency.py " + shlex.join(sys.argv[1:]))
    print(f"# python {sys.version.split()[0]}, {os.cpu_count()} CPUs, tmp={tempfile.gettempdir()}")
    for mode in args.modes.split(","):
        run_mode(mode.strip(), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
