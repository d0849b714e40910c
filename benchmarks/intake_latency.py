"""File closed -> action started, through the real engine, watchers and Parsl executor.

For each mode (inotify, poll) an engine watches a temporary directory; the script writes
files one by one and measures, per file, the time from close() returning to the moment
the file's action began (recorded by the action itself). The baseline, measured in the
same run, is the watcher alone (close -> readiness event), so the ratio is what intake,
the store and dispatch add.

Reproduce: .venv/bin/python benchmarks/intake_latency.py [--files 500] [--poll-interval 0.5 --quiet 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from autoproc.config import parse_config  # noqa: E402
from autoproc.engine import Engine  # noqa: E402
from autoproc.watch import Watcher  # noqa: E402


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def write_files(inbox: Path, n: int, spacing: float) -> dict[str, float]:
    closed = {}
    for i in range(n):
        path = inbox / f"f{i:05d}.ping"
        with open(path, "wb") as f:
            f.write(b"x" * 1024)
        closed[path.stem] = time.time()
        time.sleep(spacing)
    return closed


def wait_until_watching(watcher: Watcher, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(s["watching"] for s in watcher.status().values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the first rescan runs in the background at start


def engine_latency(mode: str, n: int, spacing: float, poll: float, quiet: float) -> list[float]:
    tmp = Path(tempfile.mkdtemp(prefix="autoproc-bench-"))
    inbox = tmp / "inbox"
    inbox.mkdir()
    config = parse_config({
        "root": str(tmp / "root"), "machines_dir": str(HERE / "machines"),
        "watch": [{"name": "in", "path": str(inbox), "kind": "ping", "patterns": ["*.ping"], "mode": mode,
                   "poll_interval": poll, "quiet_seconds": quiet}],
    })
    engine = Engine(config)
    engine.start()
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    wait_until_watching(engine.watcher)  # as a daemon is, once it has said READY=1
    closed = write_files(inbox, n, spacing)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if engine.store.counts() == [("ping", "done", n)]:
            break
        time.sleep(0.2)
    latencies = []
    for row in engine.store.journal():
        if row["trigger"] == "recorded":
            latencies.append(row["evidence"]["action_started"] - closed[row["key"]])
    engine.stop()
    thread.join(10)
    engine.shutdown()
    return latencies


def watcher_latency(mode: str, n: int, spacing: float, poll: float, quiet: float) -> list[float]:
    from autoproc.config import WatchRoot

    inbox = Path(tempfile.mkdtemp(prefix="autoproc-bench-w-"))
    seen: dict[str, float] = {}
    root = WatchRoot(name="in", path=inbox, kind="ping", patterns=["*.ping"], mode=mode, poll_interval=poll,
                     quiet_seconds=quiet)
    watcher = Watcher([root], lambda r: seen.setdefault(Path(r.path).stem, time.time()))
    watcher.start()
    wait_until_watching(watcher)
    closed = write_files(inbox, n, spacing)
    deadline = time.monotonic() + 60
    while len(seen) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    watcher.stop()
    return [seen[k] - closed[k] for k in seen]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=500)
    ap.add_argument("--spacing", type=float, default=0.005, help="seconds between files")
    ap.add_argument("--poll-interval", type=float, default=0.5)
    ap.add_argument("--quiet", type=float, default=0.5, help="quiet_seconds (poll readiness)")
    ap.add_argument("--modes", default="inotify,poll")
    args = ap.parse_args()
    print(f"# reproduce: .venv/bin/python benchmarks/intake_latency.py --files {args.files} "
          f"--poll-interval {args.poll_interval} --quiet {args.quiet}")
    for mode in args.modes.split(","):
        base = watcher_latency(mode, args.files, args.spacing, args.poll_interval, args.quiet)
        full = engine_latency(mode, args.files, args.spacing, args.poll_interval, args.quiet)
        ms = 1000
        print(f"{mode:8s} files={len(full)}/{args.files}  close->action started: p50={pct(full, 50) * ms:7.1f} ms  "
              f"p99={pct(full, 99) * ms:7.1f} ms  max={max(full) * ms:7.1f} ms")
        print(f"{'':8s} baseline close->watcher event:      p50={pct(base, 50) * ms:7.1f} ms  "
              f"p99={pct(base, 99) * ms:7.1f} ms   engine adds p50 "
              f"{(statistics.median(full) - statistics.median(base)) * ms:.1f} ms")


if __name__ == "__main__":
    main()
