"""One simulated DEEP night, processed by autoproc and the seed's way, timed.

    .venv/bin/python benchmarks/deep_night.py [--exposures-science 10] [--detectors 1,2,3,4] [--out DIR]
                                              [--registry sqlite|postgres|both] [--no-seed]

The night: 5 zeros, 5 VR dome flats, 10 VR science exposures (20 exposures) × 4 CCDs, bias →
flat → DRP with the DEEP step lists (bias step1-2, flat step0-3, DRP step0-step3a), the
simulator's mock pipelines. The seed's side runs every step as `pipetask run -j 1`; autoproc's
as `--executor` says (bps submit would add the same ~3 s per step and job start-ups to both
sides; the point here is the orchestration).

autoproc: a real `autoproc daemon` on a watched directory already holding the raws (its
reconcile scan finds them); timed from daemon start to the night's `waiting_template`/`done`.
The registry work, the "anything left?" checks, certification and tagging run in-process.

Seed: night.py's command sequence, one CLI process at a time (docs/DEEP.md#steps, docs/DEEP.md#skip-rules): per proc type
ingest → raw (tag) → collection → define-visits; per step collection → fixup → check →
`pipetask qgraph` → `pipetask run` → retries → fixup → check → collection; then decertify →
`butler certify-calibrations`. `butler`/`pipetask` are the real CLIs; the repo-specific DEEP
scripts (ingest.py, raw.py, collection.py, qgraph.py, retries.py, decertify.py) are `python -c`
calls of the same functions autoproc uses (`butler define-visits` needs obs_base, absent here).

Reported: wall time of both, the ratio, and autoproc's overhead over pure quantum execution
(Σ endUtc − prepUtc over every `<task>_metadata` of the night), per step and per quantum (the
child's time between quanta), with the per-step profile of `step_profile.py` on stderr, and the
night's step checks (`step_checks`: `checked` in-process checks, `remembered` steps the night's
step memory took as done instead, each a check before that memory).
`--executor step pipetask` (the default) runs the autoproc night twice in the run: each step's
graph through `autoproc-step` (one quantum-backed Butler, one registration per step), then
through `pipetask run`, both forked from the warm server (`deep.warm`); `process` adds a fresh
`pipetask` process per step. The last one named is the baseline of the ratios, and its pure
quantum time is reported against the others' wall time too (pipetask registers each output
inside the quantum, so its pure quantum time is the larger). `--drp-through step1`
stops both sides after that DRP step (the survey-scale night: `--detectors 1,...,60`).

`--registry postgres` puts autoproc's Butler registry on a private PostgreSQL server started
for the run (tests/postgres_server.py; the server binaries of Debian's postgresql package);
`--registry both` runs the autoproc night on SQLite and then on PostgreSQL, same raws, same
run, and reports the two wall times and their ratio.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import step_profile

NIGHT = "20240601"
STEPS = {"bias": ["step1", "step2"], "flat": ["step0", "step1", "step2", "step3"],
         "drp": ["step0", "step1", "step2a", "step2b", "step2c", "step2d", "step2e", "step2f", "step3a"]}
BIN = Path(sys.executable).parent
WHERE = "instrument='DECam' AND skymap='discrete'"


def make_night(raw_dir: Path, n_science: int, detectors: list[int]) -> list[Path]:
    from autoproc.sim.deep.raws import plan_night, write_night

    exps = plan_night(int(NIGHT), 5, 5, [("VR", n_science)], detectors=detectors)
    return write_night(exps, raw_dir)


def init_repo(repo: Path, registry_db: str | None = None, namespace: str | None = None) -> None:
    from autoproc.deep.repo import RepoSetup, init_repo
    from autoproc.sim.deep.instrument import INSTRUMENT_CLASS
    from autoproc.sim.deep.raws import DEFAULT_FIELD

    init_repo(RepoSetup(root=repo, instrument_class=INSTRUMENT_CLASS, fields=[DEFAULT_FIELD], registry_db=registry_db,
                        registry_namespace=namespace))


def quantum_seconds(repo: Path, chains: list[str]) -> tuple[float, int]:
    """Σ (endUtc − prepUtc) over the metadata of every quantum in the chains, and their count."""
    import lsst.pipe.base.tests.mocks  # noqa: F401
    from lsst.daf.butler import Butler

    b = Butler.from_config(str(repo))
    total, n = 0.0, 0
    for dtype in b.registry.queryDatasetTypes("*_metadata"):
        for ref in b.query_datasets(dtype, collections=chains, find_first=False, explain=False):
            q = b.get(ref)["quantum"]
            total += (dt.datetime.fromisoformat(q["endUtc"]) - dt.datetime.fromisoformat(q["prepUtc"])).total_seconds()
            n += 1
    b.close()
    return total, n


# --- autoproc ---------------------------------------------------------------------------


# How autoproc's steps run (deep.* keys): the graph through `autoproc-step` forked warm (the
# default), `pipetask run` forked warm, `pipetask run` as a fresh process per step.
EXECUTORS = {"step": {"quantum_backed": True, "warm": True},
             "pipetask": {"quantum_backed": False, "warm": True},
             "process": {"quantum_backed": False, "warm": False}}


def run_autoproc(work: Path, raw_dir: Path, name: str = "autoproc", registry_db: str | None = None,
                 executor: str = "step") -> float:
    from autoproc.store import Store

    root = work / name
    from autoproc.sim.deep.scenario import deep_settings

    deep = {**deep_settings(), "mode": "pipetask", "ingest_quiet_seconds": 0.3, **EXECUTORS[executor],
            "steps": STEPS}
    namespace = name.replace("-", "_") if registry_db else None  # a PostgreSQL schema name
    if registry_db:
        deep.update(registry_db=registry_db, registry_namespace=namespace)
    cfg = {"root": str(root), "kinds": ["night", "template"], "poll_seconds": 0.2,
           "watch": [{"name": "raws", "path": str(raw_dir), "kind": "raw", "patterns": ["*.fits"],
                      "mode": "inotify", "quiet_seconds": 0.2}],
           "deep": deep}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    init_repo(root / "repo", registry_db, namespace)
    t0 = time.perf_counter()
    log = open(work / f"{name}-daemon.log", "w")
    daemon = subprocess.Popen([str(BIN / "autoproc"), "-c", str(path), "daemon"], stdout=log,  # noqa: S603
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            time.sleep(0.2)
            if (root / "autoproc.db").exists():
                store = Store(root / "autoproc.db")
                s = store.find_subject("night", NIGHT)
                store.close()
                if s is not None and s.state in ("waiting_template", "done"):
                    return time.perf_counter() - t0
                if s is not None and s.state == "failed":
                    raise SystemExit(f"autoproc: the night failed; see {log.name}")
            if daemon.poll() is not None:
                raise SystemExit(f"autoproc daemon exited {daemon.returncode}; see {log.name}")
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()


# --- the seed's way ---------------------------------------------------------------------

PY_INGEST = """
import sys
from autoproc.deep.ingest import ingest_raws, read_raw_header
paths = [p for p in sys.argv[2:] if read_raw_header(p).obstype == sys.argv[1]]
print(ingest_raws(REPO, paths, define_visits=False).summary())
"""
PY_TAG = "from autoproc.deep.collections import tag_raws\nprint(tag_raws(B, NIGHT, PROC).to_json())"
PY_CHAIN = "from autoproc.deep.collections import ensure_chain\nprint(ensure_chain(B, PROC, NIGHT).to_json())"
PY_FIXUP = "from autoproc.deep.collections import fixup_chain\nprint(fixup_chain(B, f'DEEP/{NIGHT}/{PROC}').to_json())"
PY_VISITS = """
import sys
from autoproc.deep.ingest import define_visits, read_raw_header
infos = [i for i in (read_raw_header(p) for p in sys.argv[2:]) if i.obstype == sys.argv[1] and i.is_science]
print(define_visits(B, infos))
"""
PY_CHECK = """
import sys
from autoproc.deep.quanta import check_step
st = check_step(B, PIPE, STEP, f'DEEP/{NIGHT}/{PROC}', where=WHERE)
print(st.to_run)
sys.exit(0 if not st.empty else 3)
"""
PY_RETRIES = """
from autoproc.deep.runner import judge_run, rename_retry_logs
from autoproc.deep.quanta import load_pipeline_graph
tasks = list(load_pipeline_graph(PIPE, STEP).tasks)
print(rename_retry_logs(B, [f for f in judge_run(B, RUN, tasks)[3] if f.retryable]))
"""
PY_DECERTIFY = """
from autoproc.deep.calibs import _decertify
_decertify(B, f'DEEP/{NIGHT}/calib/{PROC}', PROC)
"""


class Seed:
    """night.py for one night, one process per command, timed as a whole."""

    def __init__(self, work: Path, repo: Path):
        self.work, self.repo = work, repo
        self.commands = 0
        self.log = open(work / "seed.log", "w")

    def run(self, argv: list[str], ok: tuple[int, ...] = (0,)) -> int:
        self.commands += 1
        self.log.write("$ " + shlex.join(argv) + "\n")
        self.log.flush()
        rc = subprocess.run(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.work,  # noqa: S603
                            check=False).returncode
        if rc not in ok:
            raise SystemExit(f"seed: {argv[:3]} exited {rc}; see {self.work / 'seed.log'}")
        return rc

    def py(self, body: str, *args: str, ok: tuple[int, ...] = (0,), **values: str) -> int:
        head = ["import lsst.pipe.base.tests.mocks", "from lsst.daf.butler import Butler",
                f"REPO = {str(self.repo)!r}", "B = Butler.from_config(REPO, writeable=True)",
                *(f"{k} = {v!r}" for k, v in values.items())]
        return self.run([sys.executable, "-c", "\n".join(head) + "\n" + body, *args], ok=ok)

    def night(self, raws: list[Path], pipelines: dict[str, str]) -> None:
        obstypes = {"bias": "zero", "flat": "dome flat", "drp": "object"}
        for proc in ("bias", "flat", "drp"):
            v = {"NIGHT": NIGHT, "PROC": proc}
            self.py(PY_INGEST, obstypes[proc], *map(str, raws))
            self.py(PY_TAG, **v)
            self.py(PY_CHAIN, **v)
            self.py(PY_VISITS, obstypes[proc], *map(str, raws))  # `butler define-visits` on the proc's raws
            for step in STEPS[proc]:
                self.step(proc, pipelines[proc], step, v)
            if proc in ("bias", "flat"):
                self.py(PY_DECERTIFY, **v)
                self.run([str(BIN / "butler"), "certify-calibrations", str(self.repo), f"DEEP/{NIGHT}/{proc}",
                          f"DEEP/{NIGHT}/calib/{proc}", proc, "--begin-date", "2000-01-01T00:00:00",
                          "--end-date", "2050-01-01T00:00:00", "--search-all-inputs"])

    def step(self, proc: str, pipeline: str, step: str, v: dict) -> None:
        parent = f"DEEP/{NIGHT}/{proc}"
        sv = {**v, "PIPE": pipeline, "STEP": step, "WHERE": WHERE}
        self.py(PY_CHAIN, **v)
        self.py(PY_FIXUP, **v)
        while self.py(PY_CHECK, ok=(0, 3), **sv) == 0:  # execute.py: while check(): inner()
            run = f"{parent}/{Path(pipeline).stem}/{step}/{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}"
            qg = self.work / (run.replace("/", "_") + ".qgraph")
            self.run([str(BIN / "pipetask"), "--long-log", "qgraph", "-b", str(self.repo), "-p",
                      f"{pipeline}#{step}", "-i", parent, "--output-run", run, "--save-qgraph", str(qg),
                      "--qgraph-datastore-records", "-d", WHERE, "--skip-existing-in", parent])
            self.run([str(BIN / "pipetask"), "--long-log", "run", "-b", str(self.repo), "-g", str(qg),
                      "--register-dataset-types", "-j", "1", "--no-versions"])
            self.py(PY_RETRIES, **sv, RUN=run)
            self.py(PY_FIXUP, **v)
        self.py(PY_CHAIN, **v)


def run_seed(work: Path, raws: list[Path]) -> tuple[float, int]:
    from autoproc.sim.deep.scenario import PIPELINES, pipeline_path

    repo = work / "seed-repo"
    init_repo(repo)
    seed = Seed(work, repo)
    t0 = time.perf_counter()
    seed.night(raws, {p: pipeline_path(PIPELINES[p]) for p in ("bias", "flat", "drp")})
    return time.perf_counter() - t0, seed.commands


def postgres_server(work: Path):
    """A private PostgreSQL server for this run (the tests' own, see tests/postgres_server.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from postgres_server import DATABASE, PostgresServer, _bin_dir

    server = PostgresServer(_bin_dir(), Path(tempfile.mkdtemp(prefix="deep-night-bench-pg-")))
    server.init()
    server.start()
    server.execute(f"CREATE DATABASE {DATABASE}", "postgres")
    server.execute("CREATE EXTENSION btree_gist")
    return server


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--exposures-science", type=int, default=10)
    ap.add_argument("--detectors", default="1,2,3,4")
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--registry", choices=["sqlite", "postgres", "both"], default="sqlite",
                    help="autoproc's Butler registry; both: the night on each, in this run")
    ap.add_argument("--no-seed", action="store_true", help="skip the seed's way")
    ap.add_argument("--drp-through", default=None, choices=STEPS["drp"],
                    help="the last DRP step run (both sides); default: all of them")
    ap.add_argument("--executor", nargs="+", choices=list(EXECUTORS), default=["step", "pipetask"],
                    help="how autoproc's steps run, one night each in this run, in this order (the overhead "
                    "and seed ratio are of the first): step = autoproc-step forked warm (the default), "
                    "pipetask = pipetask run forked warm, process = a fresh pipetask run per step")
    args = ap.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="deep-night-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    dets = [int(d) for d in args.detectors.split(",")]
    if args.drp_through:
        STEPS["drp"] = STEPS["drp"][:STEPS["drp"].index(args.drp_through) + 1]
    raws = make_night(work / "raws", args.exposures_science, dets)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n_exp = len(raws)
    steps = sum(len(s) for s in STEPS.values())
    server = postgres_server(work) if args.registry != "sqlite" else None
    try:
        walls, quanta, profiles, loads, checks, own = {}, {}, {}, {}, {}, {}
        for registry in (["sqlite", "postgres"] if args.registry == "both" else [args.registry]):
            for executor in args.executor:
                key = f"{registry}/{executor}"
                name = f"autoproc-{registry}-{executor}"
                loads[key] = os.getloadavg()[0]
                walls[key] = run_autoproc(work, work / "raws", name, server.url() if registry == "postgres" else None,
                                          executor)
                quanta[key] = quantum_seconds(work / name / "repo", [f"DEEP/{NIGHT}/{p}" for p in STEPS])
                print(f"{key}: per-step profile (seconds)", file=sys.stderr)
                rows = step_profile.profile(work / name)
                profiles[key] = {c: round(v, 2) for c, v in step_profile.print_table(rows, file=sys.stderr).items()}
                fixed, per_quantum, _ = step_profile.print_own_cost(rows, file=sys.stderr)
                own[key] = {"seconds_per_attempt": round(fixed, 2), "ms_per_quantum": round(per_quantum, 2)}
                checks[key] = step_profile.step_checks(work / name)
    finally:
        if server is not None:
            server.stop()
    first = next(iter(walls))  # the overhead and the seed ratio are of the first registry run
    t_auto, (q_auto, n_q) = walls[first], quanta[first]
    result = {"night": f"{n_exp} exposures x {len(dets)} detectors, {steps} steps, {n_q} quanta",
              "autoproc_seconds": {r: round(t, 1) for r, t in walls.items()},
              "quantum_seconds_autoproc": {r: round(q, 2) for r, (q, _) in quanta.items()},
              "autoproc_overhead_seconds": round(t_auto - q_auto, 1),
              "autoproc_overhead_per_step_seconds": round((t_auto - q_auto) / steps, 2),
              "overhead_per_step_seconds": {k: round((walls[k] - quanta[k][0]) / steps, 2) for k in walls},
              "autoproc_over_quanta": {k: round(walls[k] / quanta[k][0], 2) for k in walls},
              # autoproc's own cost per quantum (in the child, between quanta) and per step (the rest)
              "ms_per_quantum": {k: round(1000 * profiles[k]["between_q"] / quanta[k][1], 1) for k in walls},
              "ms_per_step": {k: round(1000 * (walls[k] - quanta[k][0] - profiles[k]["between_q"]) / steps)
                              for k in walls},
              # step_profile.own_cost: the line through each attempt's time besides its quanta
              "own_cost": own,
              # graph builds over the night, and steps taken as done from the step memory
              "step_checks": checks,
              "profile_sums": profiles, "load_average_at_start": loads, "work_dir": str(work)}
    registries = sorted({k.split("/")[0] for k in walls})
    base = args.executor[-1]  # the baseline: the last executor of the run
    for ex in args.executor[:-1]:
        for reg in registries:
            result[f"ratio_{ex}_over_{base}" + ("" if len(registries) == 1 else f"_{reg}")] = round(
                walls[f"{reg}/{ex}"] / walls[f"{reg}/{base}"], 3)
        # The same quanta's pure time in the baseline's run (pipetask writes each output through
        # the registry inside the quantum, so its pure time is larger than autoproc-step's).
        result[f"{ex}_over_{base}_quanta"] = {
            reg: round(walls[f"{reg}/{ex}"] / quanta[f"{reg}/{base}"][0], 2) for reg in registries}
    if args.registry == "both":
        ex = args.executor[0]
        result["ratio_postgres_over_sqlite"] = round(walls[f"postgres/{ex}"] / walls[f"sqlite/{ex}"], 3)
    if not args.no_seed:
        t_seed, n_cmd = run_seed(work, raws)
        q_seed, _ = quantum_seconds(work / "seed-repo", [f"DEEP/{NIGHT}/{p}" for p in STEPS])
        result.update({"seed_seconds": round(t_seed, 1), "ratio_autoproc_over_seed": round(t_auto / t_seed, 3),
                       "ratio_over_seed": {k: round(w / t_seed, 3) for k, w in walls.items()},
                       "seed_processes": n_cmd, "quantum_seconds_seed": round(q_seed, 2)})
    print(json.dumps(result, indent=1))
    for registry, wall in walls.items():
        print(f"autoproc on {registry}: {wall:.1f} s")
    if "ratio_postgres_over_sqlite" in result:
        print(f"PostgreSQL / SQLite: {result['ratio_postgres_over_sqlite']:.2f}")
    for k, v in result.items():
        if k.startswith("ratio_") and "_over_" in k and "seed" not in k and "postgres" not in k:
            print(f"{k[6:].replace('_over_', ' / ')}: {v:.2f}")
    if not args.no_seed:
        print(f"autoproc {t_auto:.1f} s vs seed {t_seed:.1f} s ({n_cmd} processes): ratio {t_auto / t_seed:.2f} "
              f"(goal <= 0.5); autoproc overhead over quantum execution {t_auto - q_auto:.1f} s "
              f"({(t_auto - q_auto) / steps:.2f} s per step, pure quanta {q_auto:.1f} s)")
    print("reproduce: .venv/bin/python benchmarks/deep_night.py " + shlex.join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
