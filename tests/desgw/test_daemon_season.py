"""A DESGW season through a real `autoproc daemon` and the simulator (gw_workflow, grid,
Post-Processing), judged from the store, the files and the grid's spool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from autoproc.desgw.rc import read_rc
from autoproc.sim.desgw.site import SimExposure, SimSite, make_site
from autoproc.store import Store
from conftest import child_env, states, wait_for

REPO = Path(__file__).resolve().parents[2]
NITE = "20190814"
SEASON = 2206
NORMAL = [941201, 941202, 941203, 941208]
NO_TEMPLATES, STUCK, TOO_MANY, CRASH, LATE, BROKEN = 941204, 941205, 941206, 941207, 941209, 941210
SCENARIO = {
    "seconds_per_batch": 0.2,
    "batch_size": 30,
    "postproc_step_sleep": 0.3,
    "exposures": {
        941203: {"failed": {5: 3}, "stale_fails": 2},
        NO_TEMPLATES: {"no_templates": True},
        STUCK: {"never_started": 15},          # 44 complete: below 50 for good
        TOO_MANY: {"forcefiles_extra": 3},
        941208: {"forcefiles_missing": 3},     # short, but more than half: passes
        BROKEN: {"dagmaker_fail": True},       # DAGMaker exits 2 (no ~/.pgpass) every time
    },
}


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(config_path), *args],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), timeout=60)


@pytest.fixture
def site(tmp_path: Path) -> SimSite:
    bands = {941202: "z", LATE: "z"}
    expnums = [*NORMAL, NO_TEMPLATES, STUCK, TOO_MANY, CRASH, LATE, BROKEN]
    # The rc starts at the real file's SEASON=33; the season's configure step rewrites it.
    return make_site(tmp_path / "site", [SimExposure(e, NITE, bands.get(e, "i")) for e in expnums], SCENARIO,
                     season=33)


@pytest.fixture
def grid(site: SimSite):
    proc = subprocess.Popen(site.grid_argv(once=False), start_new_session=True)  # noqa: S603
    yield proc
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def slow_jobsub(site: SimSite, directory: Path, expnum: int) -> Path:
    """A jobsub_submit_dag that submits (the simulator's), then hangs for `expnum`'s DAG:
    the daemon can be killed after the submission and before it records the job id."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "jobsub_submit_dag"
    path.write_text(
        f"#!{sys.executable}\nimport subprocess, sys, time\n"
        f"rc = subprocess.call([{str(site.jobsub)!r}, *sys.argv[1:]])\n"
        f"if sys.argv[-1] == 'file://desgw_pipeline_{expnum}.dag':\n    time.sleep(120)\n"
        "sys.exit(rc)\n")
    path.chmod(0o755)
    return path


def desgw_config(write_config, site: SimSite, tmp_path: Path, executor: dict | None = None, **desgw) -> tuple:
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    config, path = write_config(
        machines_dir=str(REPO / "statemachines"), kinds=["exposure", "season"], limits={"dagmaker": 5},
        deadlines={"exposure.ccd_check": 8, "exposure.forcefile_check": 20},
        executor={"max_workers": 12, **(executor or {})},
        watch=[{"name": "lists", "path": str(lists), "kind": "desgw_exposure_list", "patterns": ["*.list"],
                "mode": "inotify", "quiet_seconds": 0.2}],
        desgw={"gw_workflow": str(site.gw_workflow), "exp_root": str(site.exp_root),
               "forcephoto_root": str(site.forcephoto_root), "postproc_dir": str(site.postproc),
               "jobsub_program": str(site.jobsub), "poll_seconds": 0.3, "stable_sweeps": 2,
               "postproc_python": sys.executable, **desgw})
    return config, path, lists


def spool_entries(site: SimSite, expnum: int) -> int:
    """Submissions of `expnum`'s DAG the grid received (queued, running or done)."""
    return len(spool_job_ids(site, expnum))


def spool_job_ids(site: SimSite, expnum: int) -> list[str]:
    return [json.loads(p.read_text())["job_id"] for d in ("incoming", "running", "done")
            for p in (site.spool / d).glob("*.json") if json.loads(p.read_text())["expnum"] == expnum]


def subject(config, kind: str, key: str):
    store = Store(config.db)
    try:
        s = store.subject(kind, key)
        return s, store.attempts(s.id), store.journal(s.id)
    finally:
        store.close()


def exposure_states(config) -> dict[int, str]:
    return {int(k.split(".")[1]): v for k, v in states(config, "exposure").items()}


def steps_run(outdir: Path) -> list[int]:
    log = outdir / "steps_run.log"
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def max_overlap(config, stage: str) -> int:
    """The most attempts of `stage` that ran at the same time."""
    store = Store(config.db)
    try:
        spans = [(a.started, a.ended) for a in store.attempts() if a.stage == stage and a.ended]
    finally:
        store.close()
    return max(sum(s <= t < e for s, e in spans) for t, _ in spans)


def running_child(config, kind: str, key: str) -> dict | None:
    _, attempts, _ = subject(config, kind, key)
    return next((a for a in attempts if a.status == "running" and a.pgid), None)


def test_season_through_the_daemon(write_config, tmp_path, daemon_factory, site, grid):
    config, path, lists = desgw_config(write_config, site, tmp_path,
                                       jobsub_program=str(slow_jobsub(site, tmp_path / "bin", CRASH)))
    made = cli(path, "desgw", "season", str(SEASON), "--trigger-mjd", "58709.437", "--propid", "2019B-0372",
               "--ligoid", "S190814bv", "--triggerid", "G298048", "--bands", "i,z", "--rc", "PNUM=12",
               "--reason", "S190814bv follow-up", "--operator", "dana")
    assert made.returncode == 0, made.stderr
    taken = cli(path, "desgw", "season", str(SEASON), "--reason", "again")
    assert taken.returncode == 2 and "season 2206 is already in use: known to autoproc" in taken.stderr

    daemon = daemon_factory(path).start()
    (lists / f"S{SEASON}_night1.list").write_text(
        "".join(f"{e}\n" for e in [*NORMAL, NO_TEMPLATES, STUCK, TOO_MANY, CRASH, BROKEN]))

    # Crash between submitting the DAG and recording it: the grid has it, the daemon dies.
    wait_for(lambda: spool_entries(site, CRASH) == 1, timeout=30, what="the crash exposure's DAG submitted")
    wait_for(lambda: running_child(config, "exposure", f"{SEASON}.{CRASH}"), what="jobsub still running")
    daemon.kill9()
    daemon_factory(path).start()

    # Post-processing killed after step 4; the next try resumes with --SKIPTO 5.
    outdir = site.postproc / "outputs" / f"season{SEASON}"
    wait_for(lambda: 4 in steps_run(outdir), timeout=45, what="post-processing past step 4")
    os.killpg(wait_for(lambda: running_child(config, "season", str(SEASON))).pgid, signal.SIGKILL)
    wait_for(lambda: subject(config, "season", str(SEASON))[0].data.get("postproc_runs"), timeout=30,
             what="first post-processing run complete")
    assert steps_run(outdir) == [-1, 0, 1, 2, 3, 4, -1, 1, 5, 6, 7]
    ready = sorted([*NORMAL, CRASH])
    wait_for(lambda: all(exposure_states(config)[e] == "done" for e in ready), what="ready exposures done")
    assert exposure_states(config) == {**dict.fromkeys(ready, "done"), NO_TEMPLATES: "no_templates",
                                       STUCK: "stalled", TOO_MANY: "needs_person", BROKEN: "failed"}

    season, season_attempts, _ = subject(config, "season", str(SEASON))
    (run,) = season.data["postproc_runs"]
    assert run["expnums"] == ready and run["skipto"] == 5 and run["status"]["state"] == "complete"
    tries = [a for a in season_attempts if a.stage == "postprocessing"]
    assert [a.status for a in tries] == ["failed", "succeeded"]
    # The launch script's arguments: postproc dir, outdir, season, SKIPTO, update links, nite, python.
    assert [a.argv[4:8] for a in tries] == [[str(site.postproc), str(outdir), str(SEASON), s] for s in ("", "5")]
    assert read_rc(site.gw_workflow / "dagmaker.rc")["SEASON"] == str(SEASON)
    assert {(c["key"], c["old"], c["new"], c["how"]) for c in season.data["rc_changes"]} == {
        ("SEASON", "33", "2206", "replaced"), ("PNUM", "7", "12", "replaced")}
    shown = cli(path, "show", "season", str(SEASON), "--json")
    assert '"how": "replaced"' in shown.stdout
    ini = (site.postproc / f"postproc_{SEASON}.ini").read_text()
    assert f"outdir = {outdir}" in ini and "bands = i,z" in ini and "ligoid = S190814bv" in ini

    # Each DAG went to the grid once; the crash exposure's was found again, not resubmitted.
    assert {e: spool_entries(site, e) for e in [*ready, STUCK, TOO_MANY, NO_TEMPLATES]} == {
        **dict.fromkeys([*ready, STUCK, TOO_MANY], 1), NO_TEMPLATES: 0}
    crashed, attempts, journal = subject(config, "exposure", f"{SEASON}.{CRASH}")
    submits = [(a.step, a.status) for a in attempts if a.stage == "submitting"]
    assert submits == [("jobsub", "interrupted"), ("recover", "succeeded")]
    (row,) = [r for r in journal if r["trigger"] == "submitted"]
    assert row["evidence"]["recovered"] is True and crashed.data["job_id"] == spool_job_ids(site, CRASH)[0]

    # No templates: DAGMaker once, never submitted, never retried.
    _, attempts, _ = subject(config, "exposure", f"{SEASON}.{NO_TEMPLATES}")
    assert [a.stage for a in attempts] == ["new", "dagmaker"]
    # Other DAGMaker failures: the retry budget, then failed with the log tail.
    _, attempts, journal = subject(config, "exposure", f"{SEASON}.{BROKEN}")
    # (the kill -9 above may interrupt one try; interruptions do not count against the budget)
    tries = [a.status for a in attempts if a.stage == "dagmaker" and a.status != "interrupted"]
    assert tries == ["failed"] * 3
    assert journal[-1]["reason"].startswith("gave up after 3 tries: DAGMaker exited 2")
    assert ".pgpass not found" in journal[-1]["evidence"]["log_tail"]
    # At most limits.dagmaker (5) DAGMakers at once, over every attempt of the season.
    assert max_overlap(config, "dagmaker") <= 5
    # Stuck below 50 CCDs: polled, then stalled by the deadline, with its table in the last poll.
    _, attempts, journal = subject(config, "exposure", f"{SEASON}.{STUCK}")
    assert journal[-1]["trigger"] == "stall" and journal[-1]["from_state"] == "ccd_check"
    last_poll = attempts[-1].result
    assert last_poll["evidence"]["complete"] == 44 and last_poll["evidence"]["incomplete"] == 15
    assert "need 50" in last_poll["reason"]
    # Too many forcefiles: held for a person, with the numbers.
    too_many, _, _ = subject(config, "exposure", f"{SEASON}.{TOO_MANY}")
    assert too_many.data["forcefiles"]["count"] == 121 and too_many.data["forcefiles"]["expected"] == 118
    # The per-chip table is stored: failures by step, stale FAILs ignored; short forcefiles listed.
    failing, _, _ = subject(config, "exposure", f"{SEASON}.941203")
    assert failing.data["ccds"]["complete"] == 56 and failing.data["ccds"]["failures_by_step"] == {"RUN05": 3}
    assert list(failing.data["ccd_table"].values()).count("RUN05") == 3 and failing.data["ccds"]["stale_fails"] == 2
    short, _, _ = subject(config, "exposure", f"{SEASON}.941208")
    assert short.data["forcefiles"]["count"] == 112 and len(short.data["forcefiles"]["missing_fits"]) == 3
    store = Store(config.db)
    problems = {p["source"]: p["message"] for p in store.problems(limit=50)}
    store.close()
    assert problems[f"exposure/{SEASON}.{STUCK}"].startswith("stalled: in ccd_check for more than 8 s")
    assert problems[f"exposure/{SEASON}.{TOO_MANY}"].startswith("needs_person:")
    assert problems[f"exposure/{SEASON}.{NO_TEMPLATES}"].startswith("no_templates:")

    # A late exposure: a second run, over all the ready exposures, from step 0 (a new list).
    added = cli(path, "desgw", "add-exposure", str(SEASON), str(LATE), "--operator", "dana")
    assert added.returncode == 0, added.stderr
    wait_for(lambda: len(subject(config, "season", str(SEASON))[0].data["postproc_runs"]) == 2, timeout=40,
             what="second post-processing run")
    wait_for(lambda: exposure_states(config)[LATE] == "done", what="late exposure done")
    second = subject(config, "season", str(SEASON))[0].data["postproc_runs"][1]
    assert second["expnums"] == sorted([*ready, LATE]) and second["skipto"] == 0
    assert "other exposures" in second["skipto_reason"]
    assert steps_run(outdir)[11:] == [-1, 0, 1, 2, 3, 4, 5, 6, 7]
    assert cli(path, "desgw", "report", str(SEASON)).returncode == 0
    rows = json.loads(cli(path, "desgw", "report", str(SEASON), "--json").stdout)["exposures"]
    assert {r["expnum"]: (r["state"], r["ccds_complete"]) for r in rows}[TOO_MANY] == ("needs_person", 59)


def test_expired_proxy_waits_then_submits(write_config, tmp_path, daemon_factory, site, grid):
    proxy = tmp_path / "proxy-valid"
    check = [sys.executable, "-c", "import os, sys; sys.exit(0 if os.path.exists(sys.argv[1]) else 1)", str(proxy)]
    config, path, _ = desgw_config(write_config, site, tmp_path, credential_check=check)
    assert cli(path, "desgw", "season", str(SEASON), "--reason", "test").returncode == 0
    assert cli(path, "desgw", "add-exposure", str(SEASON), "941201", "--reason", "test").returncode == 0
    daemon_factory(path).start()
    key = f"{SEASON}.941201"
    wait_for(lambda: states(config, "exposure").get(key) == "proxy_expired", timeout=30, what="proxy expired")
    _, _, journal = subject(config, "exposure", key)
    assert journal[-1]["reason"] == "grid proxy expired"
    store = Store(config.db)
    assert any(p["source"] == f"exposure/{key}" and "grid proxy expired" in p["message"] for p in store.problems())
    store.close()
    assert spool_entries(site, 941201) == 0
    proxy.touch()
    wait_for(lambda: states(config, "exposure").get(key) == "done", timeout=40, what="submitted once renewed")
    assert spool_entries(site, 941201) == 1
