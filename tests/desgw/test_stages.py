"""Decisions of the DESGW actions, in-process on real trees: list files, submission
recovery, CCD/forcefile settling, SKIPTO for a changed exposure list, season requests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from autoproc.actions import ActionContext, Fail, Hold, Outcome, Retry
from autoproc.config import parse_config
from autoproc.desgw import ccd
from autoproc.desgw.script import DesgwRequestError, create_season, season_settings
from autoproc.desgw.stages import (
    DAGMAKER_SCRIPT,
    check_ccds,
    check_forcefiles,
    exposure_key,
    exposure_list_file,
    find_dag_submission,
    find_postprocessing_result,
    resume_point,
    split_exposure_key,
    validate_season,
    write_dagmaker_rc,
)
from autoproc.machines import load_machines
from autoproc.script import override
from autoproc.sim.desgw.site import DAGMAKER_RC, SimExposure, format_exposures_list
from autoproc.store import Store, Subject

REPO = Path(__file__).resolve().parents[2]
S, NITE, EXP, BAND = 2206, "20190814", 941225, "i"
JOB_OUTPUT = "Submitting job(s).\n1 job(s) submitted to cluster 50000001.\n\nUse job id 50000001.0@jobsub01.fnal.gov\n"


def make_ctx(tmp_path: Path, kind: str, key: str, stage: str, data: dict | None = None, *, attempt_id: int = 10,
             previous: dict | None = None, **desgw) -> ActionContext:
    config = parse_config({"root": str(tmp_path / "root"), "desgw": {
        "exp_root": str(tmp_path / "exp"), "forcephoto_root": str(tmp_path / "fp"),
        "gw_workflow": str(tmp_path / "gw_workflow"), "stable_sweeps": 2, **desgw}})
    subject = Subject(id=1, kind=kind, key=key, state=stage, version=1, data=data or {}, held=None, entry=1,
                      entered=0.0, created=0.0, updated=0.0)
    workdir = config.work_dir / kind / key / f"{attempt_id:06d}-{stage}"
    workdir.mkdir(parents=True)
    return ActionContext(subject=subject, stage=stage, attempt_id=attempt_id, try_number=1, workdir=workdir,
                         config=config, previous=previous or {})


def exposure_ctx(tmp_path: Path, stage: str, **kwargs) -> ActionContext:
    return make_ctx(tmp_path, "exposure", exposure_key(S, EXP), stage, {"band": BAND, "nite": NITE}, **kwargs)


def lay_chips(tmp_path: Path, done: int, empty: int = 0) -> None:
    """`done` CCDs with their tarball (+ .fits/.psf), then `empty` never-started chip directories."""
    fp = tmp_path / "fp" / f"dp{S}" / NITE / str(EXP)
    fp.mkdir(parents=True, exist_ok=True)
    for i, chip in enumerate(ccd.SEARCH_CHIPS[: done + empty]):
        d = ccd.dp_dir(tmp_path / "exp", NITE, EXP, S) / ccd.chip_dir_name(BAND, chip)
        d.mkdir(parents=True, exist_ok=True)
        if i < done:
            (d / ccd.tarball_name(S, NITE, EXP, BAND, chip)).write_text("x")
            for ext in ("fits", "psf"):
                (fp / f"WS_{EXP}_{BAND}_{chip:02d}+fakeSN_diff_mh.{ext}").write_text("x")


def again(ctx: ActionContext, outcome: Outcome) -> ActionContext:
    """The context of the next poll of the same attempt (the engine hands back the last result)."""
    ctx.previous = {"kind": "outcome", "evidence": outcome.evidence}
    return ctx


# ---------------------------------------------------------------- keys and list files

def test_exposure_keys_match_the_machine() -> None:
    pattern = yaml.safe_load((REPO / "statemachines/exposure.yaml").read_text())["key_pattern"]
    assert re.match(pattern, exposure_key(S, EXP)) and split_exposure_key("2206.941225") == (S, EXP)
    assert not re.match(pattern, "2206") and not re.match(pattern, "2206.94x")


@pytest.mark.parametrize("name", ["S2206_night1.list", "2206.list", "2206-late.list", "S2206.list"])
def test_list_file_names_give_the_season(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("941225\n# a comment\n941226\n")
    info = exposure_list_file(path, parse_config({}))
    assert info.subject == ("season", "2206") and info.info == {"expnums": [941225, 941226]}


@pytest.mark.parametrize(("name", "text", "why"), [
    ("night1.list", "941225\n", "must start with the season"),
    ("2206.list", "941225\n94122x\n", "2206.list:2: '94122x' is not an exposure number"),
    ("2206.list", "941225\n941225\n", "already listed on line 1"),
    ("2206.list", "# nothing\n", "no exposure numbers"),
])
def test_bad_list_files_are_refused_with_the_reason(tmp_path: Path, name: str, text: str, why: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(why)):
        exposure_list_file(path, parse_config({}))


def test_dagmaker_runs_in_the_shell_that_sourced_the_setup(tmp_path: Path) -> None:
    (tmp_path / "setup.sh").write_text('export DES_SETUP="done $#"\n')  # sees no arguments of ours
    script = tmp_path / "DAGMaker.sh"
    script.write_text('#!/bin/sh\necho "setup=$DES_SETUP expnum=$1 args=$#"\n')
    script.chmod(0o755)

    def run(setup: str) -> str:
        argv = ["bash", "-c", DAGMAKER_SCRIPT, "autoproc-dagmaker", setup, "./DAGMaker.sh", "941225; rm -rf /"]
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=True).stdout  # noqa: S603

    assert run(str(tmp_path / "setup.sh")) == "setup=done 0 expnum=941225; rm -rf / args=1\n"
    assert run("") == "setup= expnum=941225; rm -rf / args=1\n"


# ---------------------------------------------------------------- submission recovery

def interrupted(ctx: ActionContext, files: dict[str, str]) -> Path:
    """The directory of the attempt before `ctx`, holding `files`; the engine names that
    attempt in `ctx.previous`."""
    d = ctx.workdir.parent / f"{ctx.attempt_id - 3:06d}-submitting"
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)
    ctx.previous = {"attempt": {"id": ctx.attempt_id - 3, "status": "interrupted", "cwd": str(d)}}
    return d


def test_recover_finds_the_job_id_of_the_interrupted_submission(tmp_path: Path) -> None:
    ctx = exposure_ctx(tmp_path, "submitting")
    interrupted(ctx, {"jobsub.child.json": "{}", "jobsub.log": JOB_OUTPUT})
    out = find_dag_submission(ctx)
    assert out.trigger == "submitted" and out.data["job_id"] == "50000001.0@jobsub01.fnal.gov"


def test_recover_takes_grid_outputs_as_evidence(tmp_path: Path) -> None:
    ctx = exposure_ctx(tmp_path, "submitting")
    interrupted(ctx, {"jobsub.child.json": "{}", "jobsub.log": ""})
    lay_chips(tmp_path, done=1, empty=58)  # DAGMaker's empty chip directories alone prove nothing
    out = find_dag_submission(ctx)
    assert out.trigger == "submitted" and out.evidence["chips"] == [1] and out.data["job_id"] is None


@pytest.mark.parametrize(("files", "verdict"), [
    ({"credentials.log": "expired"}, Retry),                                   # jobsub never started
    ({"jobsub.child.json": "{}", "jobsub.log": "error", "jobsub.log.exit": "1\n"}, Retry),  # it failed
    ({"jobsub.child.json": "{}", "jobsub.log": "Submitting job(s).\n"}, Hold),  # killed mid-way: unknown
    ({"jobsub.child.json": "{}", "jobsub.log": "", "jobsub.log.exit": "0\n"}, Hold),
])
def test_recover_without_evidence_retries_only_when_safe(tmp_path: Path, files: dict, verdict: type) -> None:
    ctx = exposure_ctx(tmp_path, "submitting")
    interrupted(ctx, files)
    lay_chips(tmp_path, done=0, empty=59)
    with pytest.raises(verdict):
        find_dag_submission(ctx)


# ---------------------------------------------------------------- CCD and forcefile checks

def test_ccds_pass_only_once_the_table_is_settled(tmp_path: Path) -> None:
    lay_chips(tmp_path, done=50, empty=9)
    ctx = exposure_ctx(tmp_path, "ccd_check", poll_seconds=7)
    first = check_ccds(ctx)
    assert first.trigger is None and first.retry_after == 7 and first.evidence["same_sweeps"] == 1
    second = check_ccds(again(ctx, first))
    assert second.trigger == "ccds_ok" and second.data["ccds"]["complete"] == 50
    assert second.data["ccd_table"]["01"] == "done" and second.data["ccd_table"]["62"] == "never_started"


def test_ccds_all_finished_pass_at_once_and_too_few_never(tmp_path: Path) -> None:
    lay_chips(tmp_path, done=59)
    assert check_ccds(exposure_ctx(tmp_path, "ccd_check")).trigger == "ccds_ok"
    short = tmp_path / "short"
    lay_chips(short, done=49, empty=10)
    ctx = make_ctx(short, "exposure", exposure_key(S, EXP), "ccd_check", {"band": BAND, "nite": NITE})
    out = check_ccds(ctx)
    for _ in range(3):
        out = check_ccds(again(ctx, out))
        assert out.trigger is None and "49 of 59 CCDs complete" in out.reason and "need 50" in out.reason


def test_forcefile_verdicts_wait_for_a_stable_count(tmp_path: Path) -> None:
    lay_chips(tmp_path, done=59)
    extra = tmp_path / "fp" / f"dp{S}" / NITE / str(EXP) / f"WS_{EXP}_{BAND}_01_rerun+fakeSN_diff_mh.fits"
    extra.write_text("x")
    ctx = exposure_ctx(tmp_path, "forcefile_check")
    first = check_forcefiles(ctx)
    assert first.trigger is None
    second = check_forcefiles(again(ctx, first))
    assert second.trigger == "too_many_forcefiles" and "119 forced-photometry files" in second.reason
    extra.unlink()
    ctx.previous = {}
    for fits in sorted((tmp_path / "fp").rglob("*_0[1-3]+fakeSN_diff_mh.fits")):
        fits.unlink()
    out = check_forcefiles(again(ctx, check_forcefiles(ctx)))
    assert out.trigger == "forcefiles_ok" and out.data["forcefiles"]["missing_fits"] == [1, 3]
    assert "missing .fits for CCDs [1, 3]" in out.reason


# ---------------------------------------------------------------- SKIPTO for the exposures of this run

def post_processed(outdir: Path, cwd: Path, expnums: list[int], *, truth_age: float = 0.0) -> None:
    for name in ("masterlist/expniteband_df.csv", "masterlist/MasterExposureList_prelim.fits",
                 "checkoutputs/step0_a_blacklist.txt", "checkoutputs/step0_expnums.txt",
                 f"truthtable{S}/truthplus.tab"):
        (outdir / name).parent.mkdir(parents=True, exist_ok=True)
        (outdir / name).write_text("".join(f"{e}\n" for e in expnums))
    (cwd / "hostmatchstatus.txt").write_text("0")
    if truth_age:
        t = (outdir / "checkoutputs/step0_expnums.txt").stat().st_mtime - truth_age
        os.utime(outdir / f"truthtable{S}/truthplus.tab", (t, t))


def test_resume_point_only_for_the_same_exposures(tmp_path: Path) -> None:
    outdir, cwd = tmp_path / "out", tmp_path
    post_processed(outdir, cwd, [941225, 941226])
    assert resume_point(outdir, S, cwd, [941226, 941225]).skipto == 5
    changed = resume_point(outdir, S, cwd, [941225, 941226, 941227])
    assert changed.skipto == 0 and "other exposures" in changed.reason
    # A truth table older than step 0 belongs to an earlier run over another list.
    post_processed(outdir, cwd, [941225, 941226], truth_age=60)
    stale = resume_point(outdir, S, cwd, [941225, 941226])
    assert stale.skipto == 1 and "predate step 0" in stale.reason


@pytest.mark.parametrize(("launched", "progress"), [
    (0, ["post-processing got from step 0 to 5 before it was interrupted"]),
    (5, []),  # killed again before step 5 finished: no progress
])
def test_recover_of_postprocessing_reports_steps_done(tmp_path: Path, launched: int, progress: list[str]) -> None:
    pp = tmp_path / "postproc"
    pp.mkdir()
    ctx = make_ctx(tmp_path, "season", str(S), "postprocessing", postproc_dir=str(pp), attempt_id=20)
    store = Store(ctx.config.db)
    for e in (941225, 941226):
        store.ensure_subject("exposure", exposure_key(S, e), "ready", actor="test")
    store.close()
    post_processed(pp / "outputs" / f"season{S}", pp, [941225, 941226])  # steps 0..4 finished
    interrupted(ctx, {"launch.json": json.dumps({"skipto": launched, "plusname": "truthplus.tab"})})
    heard: list[str] = []
    ctx.on_progress = lambda attempt_id, note: heard.append(note)
    with pytest.raises(Retry, match="did not complete"):
        find_postprocessing_result(ctx)
    assert heard == progress


# ---------------------------------------------------------------- season requests and dagmaker.rc

@pytest.fixture
def store_and_machines(tmp_path: Path):
    store = Store(tmp_path / "state.db")
    yield store, load_machines(REPO / "statemachines", ["exposure", "season"])
    store.close()


def test_season_numbers_are_never_reused(tmp_path: Path, store_and_machines) -> None:
    store, machines = store_and_machines
    config = parse_config({"desgw": {"exp_root": str(tmp_path / "exp"), "forcephoto_root": str(tmp_path / "fp"),
                                     "season_range": [100, 200]}})
    (tmp_path / "exp" / NITE / str(EXP) / "dp100").mkdir(parents=True)
    with pytest.raises(DesgwRequestError, match=r"season 100 is already in use: output directory exists: .*dp100"):
        create_season(store, machines, config, 100, settings={}, reason="t", operator="dana")
    with pytest.raises(DesgwRequestError, match=r"season 50 is already in use: reserved"):
        create_season(store, machines, config, 50, settings={}, reason="t", operator="dana")
    first = create_season(store, machines, config, None, settings={"bands": ["i"]}, reason="t", operator="dana")
    second = create_season(store, machines, config, None, settings={}, reason="t", operator="dana")
    assert (first.key, first.state, first.data, second.key) == ("101", "validating", {"bands": ["i"]}, "102")
    with pytest.raises(DesgwRequestError, match="known to autoproc"):
        create_season(store, machines, config, 101, settings={}, reason="t", operator="dana")


def test_season_command_seasons_are_used(tmp_path: Path, store_and_machines) -> None:
    store, machines = store_and_machines
    db = [os.sys.executable, "-c", "print('SEASON'); print('100, 101')"]
    config = parse_config({"desgw": {"exp_root": str(tmp_path), "forcephoto_root": str(tmp_path),
                                     "season_command": db}})
    assert create_season(store, machines, config, None, settings={}, reason="t", operator="dana").key == "102"


@pytest.mark.parametrize(("kwargs", "why"), [
    ({"bands": ["i", "q"]}, "unknown bands ['q']"),
    ({"rc_values": {"SEASON": "3"}}, "SEASON is the season number itself"),
    ({"rc_values": {"bad key": "3"}}, "invalid dagmaker.rc key"),
    ({"rc_values": {"TWINDOW": "1\n2"}}, "must not contain a newline"),
])
def test_season_settings_are_checked(kwargs: dict, why: str) -> None:
    with pytest.raises(DesgwRequestError, match=re.escape(why)):
        season_settings(**kwargs)


def test_validation_accepts_the_trees_of_its_own_dags_only(tmp_path: Path) -> None:
    """A season restored (or rebuilt) in `validating` meets the dp{S} trees its own DAGs made:
    those whose DAGMaker ran in the season's exposure attempts are ours; any other is foreign."""
    ctx = make_ctx(tmp_path, "season", str(S), "validating")
    out = validate_season(ctx)
    assert (out.trigger, out.reason) == ("valid", f"season {S} is free")
    lay_chips(tmp_path, done=2, empty=3)  # the grid's tree and forcefiles of exposure EXP
    with pytest.raises(Fail, match=rf"season {S} is already in use: output directory exists"):
        validate_season(ctx)  # no DAGMaker of ours made it
    ours = ctx.config.work_dir / "exposure" / exposure_key(S, EXP) / "000004-dagmaker"
    ours.mkdir(parents=True)
    (ours / "dagmaker.log").write_text("DAG written\n")
    out = validate_season(ctx)
    assert out.trigger == "valid" and len(out.evidence["own"]) == 2, out  # the exp_root and forcephoto dp{S}
    (tmp_path / "exp" / NITE / "941299" / f"dp{S}").mkdir(parents=True)  # another exposure's: not ours
    with pytest.raises(Fail, match=r"941299/dp2206"):
        validate_season(ctx)


def test_rebuild_finds_seasons_and_exposures_in_the_evidence(tmp_path: Path) -> None:
    """`store rebuild`'s DESGW hooks: an exposure with a job id in its attempts comes back in
    `ccd_check` (never submitted again), one whose DAGMaker found no templates in
    `no_templates`, one only listed in `new`; the season, whose rc it names, in `waiting`."""
    from autoproc import rebuild

    config = parse_config({"root": str(tmp_path / "root"), "desgw": {
        "exp_root": str(tmp_path / "exp"), "forcephoto_root": str(tmp_path / "fp"),
        "gw_workflow": str(tmp_path / "gw_workflow"), "postproc_dir": str(tmp_path / "pp")},
        "watch": [{"name": "lists", "path": str(tmp_path / "lists"), "kind": "desgw_exposure_list"}]})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / f"S{S}_night1.list").write_text(f"{EXP}\n{EXP + 1}\n{EXP + 2}\n")
    (tmp_path / "gw_workflow").mkdir()
    (tmp_path / "gw_workflow" / "dagmaker.rc").write_text(DAGMAKER_RC.replace("@SEASON@", str(S)))
    (tmp_path / "gw_workflow" / "exposures.list").write_text(format_exposures_list(
        [SimExposure(e, NITE, BAND) for e in (EXP, EXP + 1, EXP + 2)]))
    for expnum, name, text in ((EXP, "jobsub.log", JOB_OUTPUT), (EXP + 1, "dagmaker.log", "NO TEMPLATE IMAGES\n")):
        d = config.work_dir / "exposure" / exposure_key(S, expnum) / "000007-x"
        d.mkdir(parents=True)
        (d / name).write_text(text)
    machines = load_machines(REPO / "statemachines", ["exposure", "season"])
    report = rebuild.rebuild(config, machines, operator="dana")
    assert {(k, key, state) for k, key, state, _ in report.created} == {
        ("season", str(S), "waiting"), ("exposure", exposure_key(S, EXP), "ccd_check"),
        ("exposure", exposure_key(S, EXP + 1), "no_templates"), ("exposure", exposure_key(S, EXP + 2), "new")}
    store = Store(config.db, readonly=True)
    try:
        exp = store.subject("exposure", exposure_key(S, EXP))
        assert exp.data["job_id"] == "50000001.0@jobsub01.fnal.gov" and exp.data["nite"] == NITE
        assert store.subject("season", str(S)).data["listed"] == [EXP, EXP + 1, EXP + 2]
        rows = [r for r in store.journal() if r["trigger"] == "rebuild"]
        assert len(rows) == 4 and all(r["actor"] == "dana" and "rebuilt from evidence" in r["reason"] for r in rows)
    finally:
        store.close()
    with pytest.raises(rebuild.RebuildError, match="exists: a rebuild would replace it"):
        rebuild.rebuild(config, machines)
    again_report = rebuild.rebuild(config, machines, replace=True, operator="dana")
    assert again_report.aside is not None and again_report.aside.exists()


def test_dagmaker_rc_edit_is_by_key_and_recorded(tmp_path: Path) -> None:
    (tmp_path / "gw_workflow").mkdir()
    rc_file = tmp_path / "gw_workflow" / "dagmaker.rc"
    rc_file.write_text(DAGMAKER_RC.replace("@SEASON@", "33"))
    ctx = make_ctx(tmp_path, "season", str(S), "configuring",
                   {"rc": {"MIN_NITE": "20190801", "JOBSUB_OPTS": "--memory=4000MB --disk=70GB"}})
    out = write_dagmaker_rc(ctx)
    hows = {c["key"]: (c["old"], c["how"]) for c in out.data["rc_changes"]}
    assert hows == {"SEASON": ("33", "replaced"), "MIN_NITE": ("20170831", "uncommented"),
                    "JOBSUB_OPTS": (hows["JOBSUB_OPTS"][0], "replaced")}
    text = rc_file.read_text()
    assert "SEASON=2206\n" in text and "MIN_NITE=20190801\n" in text and "#MAX_NITE=20170901" in text
    assert "JOBSUB_OPTS='--memory=4000MB --disk=70GB'" in text
    assert json.dumps(out.evidence)  # plain data, for the journal


# ---------------------------------------------------------------- rerun-from: what is set aside

def _stored_exposure(ctx: ActionContext, state: str, data: dict) -> Store:
    store = Store(ctx.config.db)
    subject, _ = store.ensure_subject("exposure", ctx.subject.key, "new", actor="test", data=data)
    store.transition(subject, state, trigger="force", actor="test")
    return store


def test_rerun_from_submitting_sets_aside_the_old_grid_outputs(tmp_path: Path) -> None:
    machines = load_machines(REPO / "statemachines", ["exposure", "season"])
    ctx = exposure_ctx(tmp_path, "ccd_check")
    old = {"band": BAND, "nite": NITE, "season": S, "job_id": "50000001.0@jobsub01.fnal.gov", "submitted": 1.0,
           "ccds": {"complete": 59}, "ccd_table": {"01": "done"}, "forcefiles": {"count": 118}}
    store = _stored_exposure(ctx, "ready", old)
    lay_chips(tmp_path, done=59)                   # the earlier grid run's outputs, an hour old
    hour_ago = time.time() - 3600
    for f in [*(tmp_path / "exp").rglob("*.tar.gz"), *(tmp_path / "fp").rglob("*.*")]:
        os.utime(f, (hour_ago, hour_ago))

    dry = override.rerun_from(store, machines, "exposure", ctx.subject.key, "submitting", reason="bad DAG",
                              operator="ann", dry_run=True, config=ctx.config)
    text = dry.describe()
    assert "states to run again, in machine order: submitting -> proxy_expired -> ccd_check -> forcefile_check" \
        in text
    assert "data job_id: 50000001.0@jobsub01.fnal.gov" in text and "data ccd_table" in text
    assert "CCD and forcefile outputs written before" in text and "dag" not in text.split("set aside")[1]
    assert store.subject("exposure", ctx.subject.key).state == "ready"

    plan = override.rerun_from(store, machines, "exposure", ctx.subject.key, "submitting", reason="bad DAG",
                               operator="ann", config=ctx.config)
    subject = store.subject("exposure", ctx.subject.key)
    assert plan.done and subject.state == "submitting"
    assert (subject.data["job_id"], subject.data["ccds"], subject.data["ccd_table"]) == (None, {}, {})
    assert subject.data["band"] == BAND and subject.data["outputs_since"] > hour_ago
    row = store.journal(subject.id)[-1]
    assert (row["trigger"], row["actor"], row["reason"]) == ("rerun", "ann", "bad DAG")
    assert row["evidence"]["cleared"]["job_id"] == old["job_id"]

    # The old run's 59 tarballs no longer count; the new run's do, and its forcefiles.
    ctx.subject = subject
    out = check_ccds(ctx)
    assert out.trigger is None and "0 of 59 CCDs complete" in out.reason
    lay_chips(tmp_path, done=52)
    out = check_ccds(again(ctx, check_ccds(ctx)))
    assert out.trigger == "ccds_ok" and out.data["ccds"]["complete"] == 52
    ctx.subject = Subject(**{**subject.__dict__, "data": {**subject.data, **out.data}})
    ctx.previous = {}
    ff = check_forcefiles(again(ctx, check_forcefiles(ctx)))
    assert ff.trigger == "forcefiles_ok" and ff.data["forcefiles"]["count"] == 2 * 52
    store.close()


def test_rerun_of_a_season_from_postprocessing_starts_at_step_0(tmp_path: Path) -> None:
    outdir, cwd = tmp_path / "out", tmp_path
    post_processed(outdir, cwd, [941225, 941226])
    assert resume_point(outdir, S, cwd, [941225, 941226]).skipto == 5
    again_ = resume_point(outdir, S, cwd, [941225, 941226], since=time.time() + 1)
    assert again_.skipto == 0 and "rerun" in again_.reason

    machines = load_machines(REPO / "statemachines", ["exposure", "season"])
    ctx = make_ctx(tmp_path, "season", str(S), "waiting")
    store = Store(ctx.config.db)
    subject, _ = store.ensure_subject("season", str(S), "validating", actor="test",
                                      data={"postprocessed": [941225, 941226], "rc_path": "/x/dagmaker.rc"})
    store.transition(subject, "waiting", trigger="force", actor="test")
    plan = override.rerun_from(store, machines, "season", str(S), "postprocessing", reason="new ZPs",
                               operator="ann", config=ctx.config)
    subject = store.subject("season", str(S))
    assert subject.state == "postprocessing" and subject.data["postprocessed"] == []
    assert subject.data["rc_path"] == "/x/dagmaker.rc"  # configuring does not run again
    assert "data postprocessed: [941225, 941226]" in plan.describe()
    assert resume_point(outdir, S, cwd, [941225, 941226], since=subject.data["outputs_since"]).skipto == 0
    store.close()
