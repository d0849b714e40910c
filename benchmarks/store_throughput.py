"""The store: durable journaled transitions per second, and `autoproc status --json`
with 100k subjects.

Transitions: each one is a compare-and-set of a subject's version plus a journal row in
one BEGIN IMMEDIATE transaction (Store.transition). The baseline, in the same run, is
the same number of bare single-row UPDATE commits on the same database, so the ratio is
the cost of the CAS + journal. Figures for synchronous=NORMAL (the daemon's setting:
durable across a process crash, kill -9 included) and FULL (also across power loss).

Status: a store with 100k subjects (and a journal row each), then the real CLI in a fresh
process, median of 5; the baseline is a bare `python -c pass` start-up.

Reproduce: .venv/bin/python benchmarks/store_throughput.py [--transitions 5000] [--subjects 100000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from autoproc.store import Store


def transitions_per_second(path: Path, n: int, synchronous: str) -> tuple[float, float]:
    store = Store(path)
    store.conn.execute(f"PRAGMA synchronous = {synchronous}")
    subjects = [store.ensure_subject("bench", f"s{i}", "a", actor="bench")[0] for i in range(100)]
    states = ("a", "b")
    t0 = time.perf_counter()
    for i in range(n):
        k = i % len(subjects)
        s = subjects[k]
        subjects[k] = store.transition(s, states[(i // len(subjects) + 1) % 2], trigger="flip", actor="bench",
                                       reason="benchmark", evidence={"i": i})
    cas = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(n):
        store.conn.execute("UPDATE subjects SET updated = ? WHERE id = ?", (time.time(), subjects[i % 100].id))
    bare = n / (time.perf_counter() - t0)
    store.close()
    return cas, bare


def fill(path: Path, n: int) -> None:
    store = Store(path)
    now = time.time()
    states = ["new", "building", "checking", "done", "failed", "stalled"]
    with store.write() as c:
        c.executemany(
            "INSERT INTO subjects (kind, key, state, version, data, entered, created, updated)"
            " VALUES (?, ?, ?, 1, ?, ?, ?, ?)",
            ((("night", "exposure", "season")[i % 3], f"k{i:07d}", states[i % len(states)],
              json.dumps({"n": i}), now, now, now) for i in range(n)))
        c.execute("INSERT INTO journal (subject_id, from_state, to_state, trigger, actor, reason, evidence, version,"
                  " time) SELECT id, NULL, state, 'create', 'bench', '', '{}', 1, entered FROM subjects")
    store.close()


def median_run(argv: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transitions", type=int, default=5000)
    ap.add_argument("--subjects", type=int, default=100_000)
    args = ap.parse_args()
    print(f"# reproduce: .venv/bin/python benchmarks/store_throughput.py --transitions {args.transitions} "
          f"--subjects {args.subjects}")
    tmp = Path(tempfile.mkdtemp(prefix="autoproc-store-"))
    for sync in ("NORMAL", "FULL"):
        cas, bare = transitions_per_second(tmp / f"t-{sync}.db", args.transitions, sync)
        print(f"journaled CAS transitions/s, synchronous={sync:6s}: {cas:8.0f}   "
              f"(bare UPDATE commits/s {bare:8.0f}; ratio {bare / cas:.1f}x)")
    db = tmp / "status.db"
    fill(db, args.subjects)
    cfg = tmp / "autoproc.yaml"
    cfg.write_text(f"root: {tmp}\ndb: {db}\n")
    exe = str(Path(sys.executable).with_name("autoproc"))
    status = median_run([exe, "-c", str(cfg), "status", "--json"])
    python = median_run([sys.executable, "-c", "pass"])
    print(f"autoproc status --json, {args.subjects} subjects: {status * 1000:.0f} ms median of 5 "
          f"(python start-up alone {python * 1000:.0f} ms; status adds {(status - python) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
