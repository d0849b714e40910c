"""The simulator run as real subprocesses, judged by the domain layer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoproc.desgw.ccd import sweep_exposure
from autoproc.desgw.dagmaker import judge_dagmaker_run, parse_jobsub_job_id
from autoproc.desgw.forcefiles import check_forcefiles
from autoproc.desgw.postproc import (
    build_postproc_launch,
    derive_skipto,
    exposure_list_name,
    read_postproc_status,
    render_postproc_ini,
    stage_postproc_inputs,
    step7_outputs_exist,
)
from autoproc.sim.desgw.scenario import parse_scenario
from autoproc.sim.desgw.site import SimExposure, SimSite, make_site

NITE = "20190814"
SEASON = 2206
SCENARIO = {
    "seconds_per_batch": 0.0,
    "batch_size": 59,
    "exposures": {
        941225: {"failed": {5: 3, 18: 1}, "incomplete": 1, "never_started": 1, "stale_fails": 2,
                 "forcefiles_missing_psf": 2},
        941226: {"no_overlaps": 2, "missing": 1, "forcefiles_extra": 3},
        941227: {"no_templates": True},
        941228: {"jobsub_fail": True},
        941229: {"dagmaker_fail": True},
    },
}


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)  # noqa: S603


@pytest.fixture
def site(tmp_path: Path) -> SimSite:
    exposures = [SimExposure(941225, NITE, "i"), SimExposure(941226, NITE, "z"), SimExposure(941227, NITE, "i"),
                 SimExposure(941228, NITE, "r"), SimExposure(941229, NITE, "i"),
                 SimExposure(9412250, "20190815", "g")]  # expnum containing 941225 as a substring
    return make_site(tmp_path / "site", exposures, SCENARIO, season=SEASON)


def dagmaker(site: SimSite, expnum: str) -> subprocess.CompletedProcess[str]:
    return run([str(site.dagmaker), expnum], site.gw_workflow, site.env())


def test_dagmaker_jobsub_grid_checks_agree(site: SimSite) -> None:
    bad = dagmaker(site, "94122x")
    assert bad.returncode == 1 and "must be a number" in bad.stdout
    unknown = dagmaker(site, "94122")  # a substring of real expnums: the exact lookup finds nothing
    assert unknown.returncode == 1 and "Error with setting band" in unknown.stdout
    creds = dagmaker(site, "941229")
    assert creds.returncode == 2
    assert judge_dagmaker_run(site.gw_workflow, 941229, creds.stdout, creds.returncode).verdict == "failed"

    nt = dagmaker(site, "941227")
    assert nt.returncode == 0
    assert nt.stdout.splitlines()[-3] == "NO TEMPLATE IMAGES, DIFFIMG WILL FAIL"
    assert judge_dagmaker_run(site.gw_workflow, 941227, nt.stdout, 0).verdict == "no_templates"

    jobs = {}
    for expnum in (941225, 941226, 941228):
        out = dagmaker(site, str(expnum))
        res = judge_dagmaker_run(site.gw_workflow, expnum, out.stdout, out.returncode)
        assert res.ok, (res.reason, out.stdout[-500:])
        done = (site.gw_workflow / f"mytemp_{expnum}" / "DAGMaker.DONE").read_text().strip()
        assert done == " ".join(res.submit_argv)
        dag = res.dag_path.read_text().splitlines()
        assert dag[0] == "<parallel>" and "dummyjob.sh" in dag[1]
        second = dag.index("<parallel>", 1)
        search = dag[second + 1: dag.index("</parallel>", second)]
        assert len(search) == 59 and all("file://SEdiff.sh" in ln for ln in search)
        assert dag[-3:-1][0] == "<serial>" and "RUNMON.sh" in dag[-2] and dag[-1] == "</serial>"
        sub = run(list(res.submit_argv), site.gw_workflow, site.env())
        if expnum == 941228:
            assert sub.returncode == 1 and "jobsub" not in sub.stdout.split("@")[-1]
            with pytest.raises(ValueError):
                parse_jobsub_job_id(sub.stdout + sub.stderr)
            continue
        assert sub.returncode == 0, sub.stderr
        jobs[expnum] = parse_jobsub_job_id(sub.stdout)
    assert len(set(jobs.values())) == 2
    # 941225's band is i (exact match), not the g of 9412250
    assert (site.exp_root / NITE / "941225" / f"dp{SEASON}" / "i_01").is_dir()

    grid = run(site.grid_argv(once=True), site.root, timeout=60)
    assert grid.returncode == 0, grid.stderr
    assert sorted(p.name for p in (site.spool / "done").glob("*.json")) == sorted(
        f"{j.split('.')[0]}.json" for j in jobs.values())

    scenario = parse_scenario(SCENARIO)
    for expnum, band in ((941225, "i"), (941226, "z")):
        rep = sweep_exposure(site.exp_root, NITE, expnum, SEASON, band)
        want = scenario.for_exposure(expnum).expected_counts()
        assert (rep.complete, rep.failed, rep.incomplete, rep.missing, rep.stale) == (
            want["complete"], want["failed"], want["incomplete"], want["missing"], want["stale"])
        assert rep.input_files
        ff = check_forcefiles(site.forcephoto_root, SEASON, NITE, expnum, band, rep.complete_chips)
        if expnum == 941225:
            assert (rep.complete, rep.failed, rep.incomplete) == (53, 4, 2)
            assert rep.failures_by_step == {"RUN05": 3, "RUN18": 1}
            assert (ff.count, ff.expected, ff.verdict) == (104, 106, "pass")
            assert ff.missing_fits == () and ff.missing_psf == rep.complete_chips[-2:]
        else:
            assert (rep.complete, rep.failed, rep.missing) == (56, 2, 1)
            assert rep.failures_by_step == {"NOOVERLAPS": 2}
            assert (ff.count, ff.expected, ff.verdict) == (115, 112, "too_many")


def test_grid_batches_are_never_misread(tmp_path: Path) -> None:
    scenario = {"seconds_per_batch": 0.25, "batch_size": 15,
                "exposures": {941225: {"failed": {5: 20}, "stale_fails": 10}}}
    site = make_site(tmp_path / "site", [SimExposure(941225, NITE, "i")], scenario, season=SEASON)
    out = dagmaker(site, "941225")
    argv = list(judge_dagmaker_run(site.gw_workflow, 941225, out.stdout, out.returncode).submit_argv or [])
    assert run(argv, site.gw_workflow, site.env()).returncode == 0
    proc = subprocess.Popen(site.grid_argv(once=True), start_new_session=True)  # noqa: S603
    snapshots = []
    try:
        while proc.poll() is None:
            snapshots.append({c.chip: c.status for c in sweep_exposure(site.exp_root, NITE, 941225, SEASON, "i").chips})
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 0
    rep = sweep_exposure(site.exp_root, NITE, 941225, SEASON, "i")
    assert (rep.complete, rep.failed, rep.stale) == (39, 20, 10)
    final = {c.chip: c.status for c in rep.chips}
    stale_chips = {c.chip for c in rep.chips if c.stale_fails}
    assert len({tuple(sorted(s.items())) for s in snapshots}) >= 3   # 4 batches land over time
    for snap in snapshots:
        for chip, status in snap.items():
            # never a failed chip read as done; "failed" before the end only for a stale FAIL's chip
            assert status in ("never_started", final[chip]) or (status == "failed" and chip in stale_chips)
    for chip in final:
        seq = [snap[chip] for snap in snapshots]
        if final[chip] in seq:   # once final, it stays final
            assert set(seq[seq.index(final[chip]):]) == {final[chip]}


def _stage(site: SimSite, outdir: Path, expnums: list[int]) -> None:
    name = exposure_list_name(SEASON)
    ini = render_postproc_ini(
        (site.postproc / "template_postproc.ini").read_text(), season=SEASON, exposures_listfile=name,
        bands=["i"], outdir=outdir, extra={("general", "rootdir"): str(site.pnfs / "persistent" / "gw")},
    )
    stage_postproc_inputs(site.postproc, SEASON, ini, expnums, name)


def _steps(outdir: Path) -> list[int]:
    try:
        return [int(x) for x in (outdir / "steps_run.log").read_text().split()]
    except FileNotFoundError:
        return []


def test_postproc_full_killed_and_resumed(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [SimExposure(941225, NITE, "i")],
                     {"postproc_step_sleep": 0.4}, season=SEASON)
    outdir = tmp_path / "pp_out"
    _stage(site, outdir, [941225])
    launch = build_postproc_launch(site.postproc, outdir, SEASON, skipto=0, update_links=True,
                                   nite=NITE, python=sys.executable)
    proc = subprocess.Popen(list(launch.argv), cwd=launch.cwd, start_new_session=True,  # noqa: S603
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 20
    try:
        while 4 not in _steps(outdir):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.time() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert _steps(outdir) == [-1, 0, 1, 2, 3, 4]
    status = read_postproc_status(site.postproc, SEASON)
    assert status is not None and not status.complete and status.truthtable_ok and not status.datafiles_ok
    decision = derive_skipto(outdir, SEASON, site.postproc)
    assert decision.skipto == 5, decision
    assert "mastertableinfo.npy" in decision.missing

    # The sim crashes like the real one when asked to skip past what is missing.
    (site.postproc / "sim_postproc.json").write_text('{"step_sleep": 0}')
    bad = build_postproc_launch(site.postproc, outdir, SEASON, skipto=6, python=sys.executable)
    crashed = run(list(bad.argv), bad.cwd)
    assert crashed.returncode == 1 and "mastertableinfo.npy" in crashed.stderr
    (outdir / "steps_run.log").unlink()

    again = build_postproc_launch(site.postproc, outdir, SEASON, skipto=decision.skipto, python=sys.executable)
    done = run(list(again.argv), again.cwd)
    assert done.returncode == 0, done.stderr
    assert _steps(outdir) == [-1, 1, 5, 6, 7]          # step 1 always runs; 0, 2, 3, 4 did not re-run
    status = read_postproc_status(site.postproc, SEASON)
    assert status is not None and status.complete and status.html_ok
    assert step7_outputs_exist(outdir)
    assert derive_skipto(outdir, SEASON, site.postproc).skipto == 6
    assert (site.postproc / f"seasonTime{SEASON}.txt").read_text().startswith(f"{SEASON}\n")


def test_postproc_guards(tmp_path: Path) -> None:
    site = make_site(tmp_path / "site", [SimExposure(941225, NITE, "i")], None, season=SEASON)
    outdir = tmp_path / "out"
    # nothing staged: run_postproc refuses instead of running on an empty config
    direct = run([sys.executable, "run_postproc.py", "--season", str(SEASON), "--outputdir", str(outdir)],
                 site.postproc)
    assert direct.returncode == 2 and f"postproc_{SEASON}.ini not found" in direct.stderr
    _stage(site, outdir, [941225])
    skip8 = run([sys.executable, "run_postproc.py", "--season", str(SEASON), "--SKIPTO", "8"], site.postproc)
    assert skip8.returncode == 1 and "NOT VALID SKIP TO ARGUMENT" in skip8.stderr
    # without diffimg_setup.sh sourced in the same shell, step -1 fails
    nosetup = run([sys.executable, "run_postproc.py", "--season", str(SEASON), "--outputdir", str(outdir)],
                  site.postproc, env={k: v for k, v in os.environ.items() if k != "DIFFIMG_SETUP_DONE"})
    assert nosetup.returncode == 3
    assert run(["bash", "diffimg_setup.sh"], site.postproc).returncode == 1
    links = run(["bash", "update_forcephoto_links.sh"], site.postproc,
                env={k: v for k, v in os.environ.items() if k not in ("SEASON", "ROOTDIR")})
    assert links.returncode == 1 and "SEASON not set" in links.stdout
    # a second season's ini in the directory makes diffimg_setup.sh export the wrong SEASON
    (site.postproc / "postproc_9999.ini").write_text("[general]\nseason = 9999\n")
    launch = build_postproc_launch(site.postproc, outdir, SEASON, python=sys.executable)
    wrong = run(list(launch.argv), launch.cwd)
    assert wrong.returncode == 92 and "expected 2206" in wrong.stderr
