"""Where a DEEP night's time goes, step by step, from what autoproc leaves behind.

    .venv/bin/python benchmarks/step_profile.py ROOT   # an autoproc root after a night (deep_night.py --out)

Per attempt (`ROOT/work/deep/*/attempt.json`, the RUN's `<task>_metadata` in `ROOT/repo`):
the in-process graph build, the child's start-up (its start → the first quantum's prepUtc),
the pure quantum time (Σ endUtc − prepUtc), the child's time between its quanta (`between_q`:
registry writes, graph walking), the child's tail (last endUtc → its exit file),
the judging after it, and the daemon's time between attempts (checks of the steps with nothing
left, chain rebuilds, the engine). Printed per step and summed, in seconds. Then the night's
step checks (`quanta.check_step` calls of the actions, from their evidence in `ROOT/autoproc.db`)
and the steps taken as done from the night's step memory instead (docs/DEEP.md#step-memory).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path
from typing import TextIO


def _ts(s: str) -> float:
    return dt.datetime.fromisoformat(s).timestamp()


def profile(root: Path) -> list[dict]:
    import lsst.pipe.base.tests.mocks  # noqa: F401
    from lsst.daf.butler import Butler

    butler = Butler.from_config(str(root / "repo"))
    rows = []
    try:
        for att in sorted((root / "work" / "deep").glob("*/attempt.json")):
            rec = json.loads(att.read_text())
            out = rec.get("outcome") or {}
            if not rec.get("run") or not rec.get("started"):
                continue
            exit_file = Path(str(rec["log"]) + ".exit")
            started = _ts(rec["started"])
            ended = exit_file.stat().st_mtime if exit_file.exists() else started
            judged = att.stat().st_mtime  # the record's last write: the outcome, after the judging
            prep, end, quanta, n = [], [], 0.0, 0
            for task in rec["expected"]:
                for ref in butler.query_datasets(f"{task}_metadata", collections=rec["run"], find_first=False,
                                                 explain=False):
                    q = butler.get(ref)["quantum"]
                    p, e = _ts(q["prepUtc"]), _ts(q["endUtc"])
                    prep.append(p)
                    end.append(e)
                    quanta += e - p
                    n += 1
            graph = float((out.get("evidence") or {}).get("graph", {}).get("seconds", 0.0))
            rows.append({
                "step": f"{rec['parent'].split('/')[-1]} {rec.get('step')}", "quanta": n,
                "t0": started - graph, "t1": judged, "graph": graph,
                "startup": (min(prep) - started) if prep else ended - started,
                "quanta_s": quanta, "between_q": (max(end) - min(prep) - quanta) if prep else 0.0, "tail": (ended - max(end)) if end else 0.0,
                "judge": judged - ended,
            })
    finally:
        butler.close()
    rows.sort(key=lambda r: r["t0"])
    for prev, row in zip([None, *rows], rows, strict=False):
        row["between"] = row["t0"] - prev["t1"] if prev is not None else 0.0
    return rows


def _counted(evidence: object) -> tuple[int, int]:
    """(checked, remembered) summed over every `step_checks` in an attempt's evidence."""
    if isinstance(evidence, list):
        pairs = [_counted(v) for v in evidence]
    elif isinstance(evidence, dict):
        mine = evidence.get("step_checks")
        pairs = [_counted(v) for k, v in evidence.items() if k != "step_checks"]
        if isinstance(mine, dict):
            pairs.append((int(mine.get("checked", 0)), int(mine.get("remembered", 0))))
    else:
        return 0, 0
    return sum(c for c, _ in pairs), sum(r for _, r in pairs)


def step_checks(root: Path) -> dict[str, int]:
    """The step checks the actions of every attempt made, and the steps they took from memory."""
    from autoproc.store import Store

    store = Store(root / "autoproc.db")
    try:
        counts = [_counted(a.result.get("evidence") or {}) for a in store.attempts()]
    finally:
        store.close()
    return {"checked": sum(c for c, _ in counts), "remembered": sum(r for _, r in counts), "attempts": len(counts)}


COLUMNS = ("graph", "startup", "quanta_s", "between_q", "tail", "judge", "between")


def print_table(rows: list[dict], file: TextIO = sys.stdout) -> dict[str, float]:
    """Print the rows, their sums and means per attempt; returns the sums."""
    print(f"{'step':14} {'quanta':>6} " + " ".join(f"{c:>9}" for c in COLUMNS), file=file)
    for r in rows:
        print(f"{r['step']:14} {r['quanta']:6d} " + " ".join(f"{r[c]:9.2f}" for c in COLUMNS), file=file)
    sums = {c: sum(r[c] for r in rows) for c in COLUMNS}
    print(f"{'total':14} {sum(r['quanta'] for r in rows):6d} " + " ".join(f"{sums[c]:9.2f}" for c in COLUMNS),
          file=file)
    n = max(1, len(rows))
    print(f"{'per attempt':14} {'':6} " + " ".join(f"{sums[c] / n:9.2f}" for c in COLUMNS), file=file)
    return sums


def own_cost(rows: list[dict]) -> tuple[float, float, int]:
    """autoproc's own cost of an attempt as a fixed part and a part per quantum: the least
    squares line through (quanta, the attempt's time besides its pure quantum time, the
    daemon's time before it included) over the attempts but the night's first (which starts
    the warm server). (seconds per attempt, milliseconds per quantum, attempts used)."""
    pts = [(r["quanta"], sum(r[c] for c in COLUMNS if c != "quanta_s")) for r in rows[1:]]
    if len(pts) < 2:
        return float("nan"), float("nan"), len(pts)
    slope, intercept = statistics.linear_regression([float(q) for q, _ in pts], [c for _, c in pts])
    return intercept, 1000 * slope, len(pts)


def print_own_cost(rows: list[dict], file: TextIO = sys.stdout) -> tuple[float, float, int]:
    fixed, per_quantum, n = own_cost(rows)
    print(f"autoproc's own cost per attempt: {fixed:.2f} s + {per_quantum:.2f} ms per quantum "
          f"(least squares over {n} attempts, the night's first left out)", file=file)
    return fixed, per_quantum, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="the autoproc root of a finished night")
    args = ap.parse_args()
    rows = profile(args.root)
    print_table(rows)
    print_own_cost(rows)
    print("step checks: " + json.dumps(step_checks(args.root)))
    print("reproduce: .venv/bin/python benchmarks/step_profile.py " + str(args.root))
    return 0


if __name__ == "__main__":
    sys.exit(main())
