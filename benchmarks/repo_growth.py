"""A small step's cost as the repository fills with nights: is autoproc flat in it?

    .venv/bin/python benchmarks/repo_growth.py [--nights 30] [--detectors 1,2] [--biases 3] [--out DIR]

One repository; night after night (bias raws of the simulated DECam, `--biases` zeros ×
`--detectors` CCDs): ingest, tag, chain, then bias step1 and step2 through `runner.run_step`
with the warm executor and `autoproc-step` (the defaults), as the daemon runs them. For every night: the in-process check of
step1 before it ran (`quanta.check_step`, graph build), the whole step1 attempt (chain
rebuild, graph build and save, the warm child, judging) and its pure quantum time (Σ endUtc −
prepUtc), and the check of the finished night (the empty check a daemon makes of every done
step). Printed as medians over nights 2-6, 8-12 and 26-30 (every night too with --all), with the
ratio to the first window (night 1 also pays one-time costs: dataset types registered):
flat means autoproc's per-step cost does not grow with the nights already there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "deep"))


def _quantum_seconds(butler, run: str, tasks: list[str]) -> float:
    total = 0.0
    for task in tasks:
        for ref in butler.query_datasets(f"{task}_metadata", collections=run, find_first=False, explain=False):
            q = butler.get(ref)["quantum"]
            total += (dt.datetime.fromisoformat(q["endUtc"]) - dt.datetime.fromisoformat(q["prepUtc"])).total_seconds()
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nights", type=int, default=30)
    ap.add_argument("--detectors", default="1,2")
    ap.add_argument("--biases", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--all", action="store_true", help="print every night, not only 1, 10 and 30")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from lsst.daf.butler import Butler
    from steps_support import bias_pipeline

    from autoproc.deep import collections as colls
    from autoproc.deep import quanta, runner, warm
    from autoproc.deep.ingest import ingest_raws
    from autoproc.sim.deep.instrument import SimDECam
    from autoproc.sim.deep.raws import plan_night, write_night

    work = args.out or Path(tempfile.mkdtemp(prefix="repo-growth-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dets = [int(d) for d in args.detectors.split(",")]
    repo = work / "repo"
    Butler.makeRepo(str(repo))
    butler = Butler.from_config(str(repo), writeable=True)
    SimDECam().register(butler.registry)
    pipe = bias_pipeline(work)
    executor = warm.WarmExecutor(runner.venv_env(), log=work / "warm-server.log")
    executor.start()
    first = dt.date(2024, 6, 1)
    rows = []
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    try:
        for i in range(args.nights):
            night = int((first + dt.timedelta(days=i)).strftime("%Y%m%d"))
            paths = write_night(plan_night(night, n_bias=args.biases, flats_per_band=0, science=[], detectors=dets),
                                work / "raw" / str(night))
            res = ingest_raws(butler, paths)
            if res.bad:
                raise SystemExit(f"night {night}: bad raws {res.bad}")
            butler.registry.refresh()
            colls.tag_raws(butler, night, "bias")
            colls.ensure_chain(butler, "bias", night)
            parent = f"DEEP/{night}/bias"
            fixed = colls.DEFAULT_NAMES.fixed_inputs("bias", night)
            colls.rebuild_chain(butler, parent, fixed)
            t0 = time.perf_counter()
            st = quanta.check_step(butler, pipe, "step1", parent)
            t_check = time.perf_counter() - t0
            outs = {}
            for step in ("step1", "step2"):
                outs[step] = runner.run_step(butler, str(repo), pipe, step, parent, work / "attempts",
                                             fixed_inputs=fixed, run_child=executor.run)
                if outs[step].status != "succeeded":
                    raise SystemExit(f"night {night} {step}: {outs[step].status} {outs[step].error}")
            t0 = time.perf_counter()
            done = quanta.check_step(butler, pipe, "step1", parent)
            t_done = time.perf_counter() - t0
            q = _quantum_seconds(butler, outs["step1"].run, ["cpBiasIsr"])
            rows.append({"nights": i + 1, "quanta": st.n_to_run, "check": t_check, "step": outs["step1"].seconds,
                         "quanta_s": q, "overhead": outs["step1"].seconds - q, "check_done": t_done,
                         "done_empty": done.empty})
            print(f"night {i + 1:3d} ({night}): check {t_check:.3f} s, step1 {outs['step1'].seconds:.2f} s "
                  f"(quanta {q:.2f} s), empty check {t_done:.3f} s", file=sys.stderr, flush=True)
    finally:
        executor.close()
        butler.close()
    # One night is one sample on a shared machine: the table shows medians over 5 nights
    # around 2 (night 1 also pays one-time set-up: dataset types, the process's first graph), 10, 30.
    def window(center: int) -> list[dict]:
        lo = max(2, center - 2)
        return [r for r in rows if lo <= r["nights"] <= lo + 4]

    cols = ("check", "step", "quanta_s", "overhead", "check_done")
    wins = {c: window(c) for c in (2, 10, 30) if window(c)}
    med = {c: {k: statistics.median(r[k] for r in w) for k in cols} for c, w in wins.items()}
    base = med[min(med)]
    print(f"{'nights':>9} {'check s':>8} {'step1 s':>8} {'quanta s':>8} {'overhead':>8} {'ratio':>6} "
          f"{'empty check':>11} {'ratio':>6}   (medians)")
    for c, m in med.items():
        w = wins[c]
        print(f"{w[0]['nights']:>4}-{w[-1]['nights']:<4} {m['check']:8.3f} {m['step']:8.2f} {m['quanta_s']:8.2f} "
              f"{m['overhead']:8.2f} {m['overhead'] / base['overhead']:6.2f} {m['check_done']:11.3f} "
              f"{m['check_done'] / base['check_done']:6.2f}")
    if args.all:
        for r in rows:
            print(f"night {r['nights']:3d}: " + " ".join(f"{k} {r[k]:.3f}" for k in cols))
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    print("reproduce: .venv/bin/python benchmarks/repo_growth.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
