"""Crash consistency: the demo scenario under a real daemon that is SIGKILLed at random moments.

    AUTOPROC_CRASH_KILLS=20 AUTOPROC_CRASH_SEED=7 .venv/bin/pytest -s tests/reliability/test_crash.py

`AUTOPROC_CRASH_KILLS` (default 4, for CI) kills, each after a seeded random interval
(`AUTOPROC_CRASH_SEED`, default 1); the daemon is started again after each. The simulators
(grid, the two nights' raws, the season's list) keep running: they are the outside world.
`AUTOPROC_CRASH_INTERVAL=LO,HI` (default 2,12) bounds the seconds between kills.
`AUTOPROC_CRASH_REPORT=FILE` writes the figures (where each kill landed, what was lost) as
JSON; they are printed too.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest
from steps_support import outputs_twice

from autoproc.decision import crashes_since_progress
from autoproc.script import demo as scenario
from autoproc.store import Attempt, Store
from conftest import journal_consistent, pgid_of

pytestmark = pytest.mark.middleware

KILLS = int(os.environ.get("AUTOPROC_CRASH_KILLS", "4"))
SEED = int(os.environ.get("AUTOPROC_CRASH_SEED", "1"))
INTERVAL = tuple(float(x) for x in os.environ.get("AUTOPROC_CRASH_INTERVAL", "2,12").split(","))  # seconds, uniform
SETTLE_TIMEOUT = float(os.environ.get("AUTOPROC_CRASH_SETTLE_TIMEOUT", "900"))
QUIET = 120.0  # seconds with no journal row and no attempt active: nothing will change any more


def expected_states() -> dict[tuple[str, str], str]:
    """The uninterrupted demo's end, from the demo's own constants."""
    want = {("night", night): "done" for night, _, _ in scenario.NIGHTS}
    want[("template", scenario.TEMPLATE)] = "done"
    for expnum, behaviour in scenario.EXPOSURES.items():
        if behaviour.get("no_templates"):
            state = "no_templates"  # DAGMaker finds no templates: nothing is submitted
        elif behaviour.get("forcefiles_extra"):
            state = "needs_person"  # more forced-photometry files than CCDs allow
        else:
            state = "done"  # failed CCDs and stale FAILs still leave enough CCDs
        want[("exposure", f"{scenario.SEASON}.{expnum}")] = state
    want[("season", str(scenario.SEASON))] = "waiting"
    return want


def where_it_lands(config) -> list[dict]:
    """The attempts running or queued right now (read just before a kill)."""
    if not config.db.exists():
        return []
    try:
        store = Store(config.db, readonly=True)
    except Exception as err:  # noqa: BLE001 - the store may not exist yet at the first kill
        return [{"error": str(err)}]
    try:
        subjects = {s.id: s for s in store.subjects()}
        out = []
        for a in store.attempts(status=("queued", "running")):
            s = subjects.get(a.subject_id)
            out.append({"kind": s.kind if s else "?", "key": s.key if s else "?", "state": s.state if s else "?",
                        "stage": a.stage, "step": a.step, "status": a.status, "attempt": a.id})
        return out
    finally:
        store.close()


def raws_in_butler(repo: str) -> list[tuple[int, int]]:
    from lsst.daf.butler import Butler

    from autoproc.deep.ingest import RAW_RUN

    butler = Butler.from_config(repo, writeable=False)
    try:
        refs = butler.query_datasets("raw", collections=RAW_RUN, find_first=False, explain=False)
        return [(int(r.dataId["exposure"]), int(r.dataId["detector"])) for r in refs]
    finally:
        butler.close()


def steps_by_launch(outdir: Path) -> list[list[int]]:
    """steps_run.log split into launches: every launch of run_postproc.py logs step -1 first."""
    log = outdir / "steps_run.log"
    launches: list[list[int]] = []
    for step in (int(x) for x in log.read_text().split()) if log.exists() else ():
        if step == -1 or not launches:
            launches.append([])
        launches[-1].append(step)
    return launches


def leftover_processes(root: Path, pgids: set[int]) -> list[str]:
    """Live processes started under the demo directory, or in a group some attempt or daemon had."""
    found = []
    me = os.getpid()
    for proc in psutil.process_iter(["status", "cmdline", "cwd"]):
        if proc.pid == me or proc.info["status"] in (None, psutil.STATUS_ZOMBIE):
            continue
        pgid = pgid_of(proc)
        if pgid is None:
            continue
        cmdline = " ".join(proc.info["cmdline"] or [])
        cwd = proc.info["cwd"] or ""
        if str(root) in cmdline or cwd == str(root) or cwd.startswith(f"{root}/") or pgid in pgids:
            found.append(f"pid {proc.pid} pgid {pgid} cwd {cwd}: {cmdline[:200]}")
    return found


def progress(config) -> tuple[int, int]:
    """(last journal id, active attempts): what changes while anything can still happen."""
    store = Store(config.db, readonly=True)
    try:
        return store.last_journal_id(), len(store.attempts(status=("queued", "running", "waiting")))
    finally:
        store.close()


def longest_crash_streak(attempts: list[Attempt]) -> int:
    """The most crashes one state entry suffered in a row with no progress between them
    (what `max_interruptions` is compared with)."""
    by_entry: dict[tuple[int, int], list[Attempt]] = {}
    for a in sorted(attempts, key=lambda a: a.id):
        by_entry.setdefault((a.subject_id, a.entry), []).append(a)
    return max((crashes_since_progress(chain[:i + 1]) for chain in by_entry.values() for i in range(len(chain))),
               default=0)


def settle(config, daemon: subprocess.Popen) -> bool:
    """Wait until the demo settles; give up (False) at the timeout, when the daemon exits, or
    when nothing has moved for QUIET seconds with no attempt active (a stuck state)."""
    end = time.monotonic() + SETTLE_TIMEOUT
    last, since = None, time.monotonic()
    while time.monotonic() < end and daemon.poll() is None:
        if config.db.exists():
            if scenario.snapshot(config)["settled"]:
                return True
            now = progress(config)
            if now != last or now[1]:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > QUIET:
                return False
        time.sleep(1.0)
    return False


@pytest.mark.slow
@pytest.mark.timeout(SETTLE_TIMEOUT + KILLS * 30 + 300)
def test_demo_survives_sigkills(tmp_path: Path):
    """SIGKILL the daemon at seeded random moments of the demo; restart it each time; then
    the end must be the uninterrupted run's, with nothing done twice and nothing left over.

    Definitions:
    - *final states*: as the uninterrupted demo (`expected_states`), no subject held, and
      the season's post-processing runs cover exactly the exposures that end `done`.
    - *raw ingested twice*: a (exposure, detector) with more than one `raw` dataset in the
      Butler, or `raw` datasets other than exactly the (EXPNUM, CCDNUM)s of the raw files
      written (from their headers, as recorded at intake); every raw file is recorded once
      in the intake table and `consumed` (the table is keyed by path, so a file cannot be
      consumed by two ingests).
    - *DAG submitted twice*: more than one submission (`{cluster}.json` in the grid spool's
      incoming/, running/ or done/) for one EXPNUM; also, exactly the exposures DAGMaker
      makes a DAG for (all but the no-template ones) are submitted.
    - *post-processing launched twice for the same inputs*: a launch of run_postproc.py is
      a run of steps starting at step -1 in `steps_run.log`. A launch with SKIPTO > 0 (it
      does not run step 0) continues an earlier one and is not a second launch. Step 0 is
      the one that reads the exposure list; it must run at most once per distinct exposure
      list the season post-processed (its `postproc_runs`), and the list step 0 last read
      (`checkoutputs/step0_expnums.txt`) must be the one of the final run.
    - *journal*: `journal_consistent` (ids strictly increasing and contiguous, per subject
      from_state = previous to_state, versions increasing, final state = last to_state).
    - *child processes*: after a SIGTERM to the last daemon and the simulators stopped, no
      live process has the demo directory in its argv or as its cwd, or is in a process
      group of any attempt (attempts table) or of any of the daemons started.
    """
    rng = random.Random(SEED)
    t0 = time.monotonic()
    demo, site = scenario.set_up(tmp_path / "demo", quiet=True)
    config = demo.config
    root = demo.root
    daemons: list[subprocess.Popen] = []
    kills: list[dict] = []
    restart_failures: list[str] = []
    figures: dict = {"seed": SEED, "kills_planned": KILLS, "interval": INTERVAL}
    try:
        daemons.append(scenario.start_daemon(demo))
        scenario.start_data(demo, site)
        for n in range(KILLS):
            wait = rng.uniform(*INTERVAL)
            time.sleep(wait)
            daemon = daemons[-1]
            if daemon.poll() is not None:
                restart_failures.append(f"daemon {daemon.pid} exited {daemon.returncode} before kill {n + 1}")
            landed = where_it_lands(config)
            view_settled = bool(config.db.exists() and scenario.snapshot(config)["settled"])
            os.kill(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=10)
            kills.append({"n": n + 1, "after_seconds": round(wait, 2), "t": round(time.monotonic() - t0, 1),
                          "settled": view_settled, "running": landed})
            daemons.append(scenario.start_daemon(demo))
        figures["settled"] = settle(config, daemons[-1])
        figures["settled_seconds"] = round(time.monotonic() - t0, 1)
        last = daemons[-1]
        last.send_signal(signal.SIGTERM)
        figures["last_daemon_exit"] = last.wait(timeout=30)
    finally:
        demo.stop_all()
    figures["seconds"] = round(time.monotonic() - t0, 1)

    store = Store(config.db, readonly=True)
    try:
        subjects = store.subjects()
        final = {(s.kind, s.key): s.state for s in subjects}
        held = {f"{s.kind}/{s.key}": s.held for s in subjects if s.held}
        season = store.subject("season", str(scenario.SEASON))
        attempts = store.attempts()
        raw_files = store.files()
        failures = {f"{store.subject_by_id(r['subject_id']).kind}/{store.subject_by_id(r['subject_id']).key}":
                    r["reason"] for r in store.journal() if r["trigger"] == "fail"}
        journal_error = None
        ids = []
        try:
            journal_consistent(store)
            ids = [r["id"] for r in store.journal()]
            assert ids == list(range(ids[0], ids[0] + len(ids))), "journal ids have gaps"
        except AssertionError as err:
            journal_error = str(err) or repr(err)
    finally:
        store.close()

    problems: dict[str, object] = {}
    if not figures["settled"]:
        problems["not settled"] = {f"{k}/{key}": state for (k, key), state in final.items()}
    want = expected_states()
    wrong = {f"{k}/{key}": (final.get((k, key)), state) for (k, key), state in want.items()
             if final.get((k, key)) != state}
    if wrong:
        problems["wrong final states (got, want)"] = wrong
    if held:
        problems["held"] = held
    done = sorted(int(key.split(".")[1]) for (k, key), state in want.items() if k == "exposure" and state == "done")
    runs = season.data.get("postproc_runs") or []
    if not runs or sorted(runs[-1]["expnums"]) != done:
        problems["post-processing runs do not cover the done exposures"] = runs

    # Raws: one per (exposure, detector), as many as files written, each file consumed once.
    written = sorted(p for p in (root / "raws").iterdir() if p.name.endswith((".fits", ".fits.fz")))
    in_butler = raws_in_butler(str(config.deep.repo))
    if twice_written := outputs_twice(str(config.deep.repo)):
        problems["quantum outputs written twice"] = twice_written
    twice = {k: n for k, n in Counter(in_butler).items() if n > 1}
    intake_info = {f["path"]: f["info"] for f in raw_files if f["kind"] == "raw"}
    should_be = sorted((int(i["expnum"]), int(d)) for i in intake_info.values() for d in i["detectors"])
    if twice or sorted(in_butler) != should_be or len(intake_info) != len(written):
        problems["raws"] = {"twice": twice, "datasets": len(in_butler), "files": len(written),
                            "detectors in the files": len(should_be)}
    intake = {f["path"]: f["status"] for f in raw_files if f["kind"] == "raw"}
    not_consumed = {str(p): intake.get(str(p)) for p in written if intake.get(str(p)) != "consumed"}
    if not_consumed:
        problems["raw files not consumed once"] = not_consumed

    # DAGs: one submission per EXPNUM, for exactly the exposures that have a DAG.
    submissions: Counter[int] = Counter()
    for where in ("incoming", "running", "done"):
        for path in (site.spool / where).glob("*.json"):
            submissions[int(json.loads(path.read_text())["expnum"])] += 1
    should_submit = {e for e, b in scenario.EXPOSURES.items() if not b.get("no_templates")}
    if any(n != 1 for n in submissions.values()) or set(submissions) != should_submit:
        problems["DAG submissions per EXPNUM"] = dict(submissions)

    # Post-processing: step 0 at most once per distinct exposure list.
    outdir = Path(season.data.get("outdir") or "")
    launches = steps_by_launch(outdir) if season.data.get("outdir") else []
    step0_runs = sum(1 for launch in launches if 0 in launch)
    lists = {tuple(sorted(r["expnums"])) for r in runs}
    step0_file = outdir / "checkoutputs" / "step0_expnums.txt"
    step0_list = sorted(int(x) for x in step0_file.read_text().split()) if step0_file.exists() else None
    if step0_runs > max(1, len(lists)) or (runs and step0_list != sorted(runs[-1]["expnums"])):
        problems["post-processing step 0 runs"] = {"launches": launches, "lists": sorted(lists),
                                                   "step0_expnums": step0_list}

    if journal_error:
        problems["journal"] = journal_error
    if restart_failures:
        problems["restarts"] = restart_failures

    pgids = {a.pgid for a in attempts if a.pgid} | {d.pid for d in daemons}
    time.sleep(1.0)
    left = leftover_processes(root, pgids)
    if left:
        problems["processes left"] = left

    interrupted = [a for a in attempts if a.status == "interrupted"]
    figures.update({
        "kills": len(kills),
        "kills_landing_on_running_attempts": sum(1 for k in kills if k["running"]),
        "kills_after_settled": sum(1 for k in kills if k["settled"]),
        "interrupted_by_step": dict(Counter(f"{r['kind']}:{r['state']}/{r['step'] or r['stage']}"
                                            for k in kills for r in k["running"] if "state" in r)),
        "interrupted_attempts_in_store": len(interrupted),
        "interrupted_attempts_by_step": dict(Counter(a.step or a.stage for a in interrupted)),
        "attempts_reporting_progress": sum(1 for a in attempts if a.result.get("progress")),
        "longest_crash_streak_without_progress": longest_crash_streak(attempts),
        "failures": failures,
        "postproc_launches": launches,
        "dag_submissions": dict(submissions),
        "raw_datasets": len(in_butler), "raw_files": len(written), "raw_detectors_expected": len(should_be),
        "journal_rows": len(ids),
        "lost_or_duplicated": problems,
        "kill_log": kills,
    })
    text = json.dumps(figures, indent=1, default=str)
    print(text)
    if os.environ.get("AUTOPROC_CRASH_REPORT"):
        Path(os.environ["AUTOPROC_CRASH_REPORT"]).write_text(text + "\n")
    assert not problems, json.dumps(problems, indent=1, default=str)
