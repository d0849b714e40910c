"""The DESGW stage: actions, conditions, callbacks and the file kind behind
`statemachines/exposure.yaml` and `statemachines/season.yaml`.

Subjects: a season is keyed by its number (`2206`), an exposure by `{season}.{expnum}`
(`2206.941225`), so one exposure can belong to two seasons and a season finds its
exposures by key prefix. The decisions live in `autoproc.desgw.*`; this module wires them
to the engine: it runs children through `ctx.run` (argv lists, own process group, a log
per attempt) and turns what it finds into Outcomes.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from autoproc import actions, process
from autoproc.actions import (
    ActionContext,
    Env,
    Fail,
    FileInfo,
    Hold,
    Outcome,
    Retry,
    Wait,
    action,
    callback,
    condition,
    file_kind,
)
from autoproc.config import Config
from autoproc.desgw import ccd, dagmaker, exposures, forcefiles, postproc, rc, season
from autoproc.desgw import rebuild as _rebuild  # noqa: F401 - registers the rebuild hooks
from autoproc.desgw.config import DesgwConfig
from autoproc.desgw.errors import DesgwError, DesgwInputError
from autoproc.desgw.rerun import OUTPUTS_SINCE
from autoproc.store import Store, Subject

# Exposure states in which an exposure may still become ready: its season waits for
# them before post-processing, so one run covers everything that is coming.
ACTIVE = frozenset({"new", "queued", "dagmaker", "submitting", "proxy_expired", "ccd_check", "forcefile_check"})
# Exposure states that still need `dagmaker.rc` to name their season.
NEEDS_RC = frozenset({"new", "queued", "dagmaker"})
# Season states in which its dagmaker.rc is written.
CONFIGURED = frozenset({"waiting", "reading_lists", "postprocessing"})
# Exposures whose outputs a post-processing run covers.
POSTPROCESSABLE = frozenset({"ready", "done"})

# Sources the setup script in the shell that then becomes DAGMaker (docs/DESGW.md#dagmaker: a
# separate `source` has no effect). Constant text: data only as positional arguments.
DAGMAKER_SCRIPT = r"""setup=$1 script=$2 expnum=$3
set --
if [ -n "$setup" ]; then
    source "$setup" || { echo "autoproc: sourcing $setup failed" >&2; exit 97; }
fi
exec "$script" "$expnum"
"""

_LIST_NAME = re.compile(r"^S?(?P<season>[1-9][0-9]{0,5})(?:[_.-].*)?\.list$")


# ---------------------------------------------------------------- keys and config

def exposure_key(season_number: int, expnum: int) -> str:
    """`{season}.{expnum}`."""
    return f"{int(season_number)}.{int(expnum)}"


def split_exposure_key(key: str) -> tuple[int, int]:
    """(season, expnum) of an exposure key."""
    s, _, e = key.partition(".")
    return int(s), int(e)


def gw_workflow_dir(cfg: DesgwConfig) -> Path:
    if cfg.gw_workflow is None:
        raise Fail("desgw.gw_workflow is not configured")
    return cfg.gw_workflow


def exposures_list_path(cfg: DesgwConfig) -> Path:
    return cfg.exposures_list or gw_workflow_dir(cfg) / "exposures.list"


def postproc_dir(cfg: DesgwConfig) -> Path:
    if cfg.postproc_dir is None:
        raise Fail("desgw.postproc_dir is not configured")
    return cfg.postproc_dir.resolve()


def season_outdir(cfg: DesgwConfig, number: int, data: Mapping[str, Any]) -> Path:
    """The absolute outdir: the same path goes into the ini, SKIPTO detection and the launch."""
    pp = postproc_dir(cfg)
    chosen = Path(data["outdir"]) if data.get("outdir") else (cfg.outdir_root or pp / "outputs") / f"season{number}"
    return chosen if chosen.is_absolute() else (pp / chosen).resolve()


def _rc_path(cfg: DesgwConfig) -> Path:
    return gw_workflow_dir(cfg) / "dagmaker.rc"


def _rc_season(cfg: DesgwConfig) -> int | None:
    """SEASON in gw_workflow's dagmaker.rc, or None if it cannot be read."""
    try:
        return rc.rc_season(rc.read_rc(_rc_path(cfg)))
    except (OSError, DesgwError, Fail):
        return None


def _log_text(result: process.ChildResult) -> str:
    try:
        return result.log.read_text(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------- intake

@file_kind("desgw_exposure_list")
def exposure_list_file(path: Path, config: Config) -> FileInfo:
    """A `.list` of exposure numbers for one season, named `S{season}…list` or `{season}….list`."""
    m = _LIST_NAME.match(path.name)
    if m is None:
        raise ValueError(f"{path.name}: the name must start with the season, e.g. S2206_night1.list or 2206.list")
    expnums = exposures.read_expnum_list(path)
    if not expnums:
        raise ValueError(f"{path.name}: no exposure numbers in it")
    return FileInfo(subject=("season", m["season"]), info={"expnums": expnums})


# ---------------------------------------------------------------- exposure: look-up, DAGMaker, submission

@action()
def look_up_exposure(ctx: ActionContext) -> Outcome:
    """Band and nite from exposures.list, by exact EXPNUM (the original matched substrings)."""
    cfg = ctx.config.desgw
    number, expnum = split_exposure_key(ctx.subject.key)
    path = exposures_list_path(cfg)
    try:
        row = exposures.find_exposure(exposures.read_exposures_list(path), expnum)
    except FileNotFoundError:
        raise Wait(f"{path} does not exist (yet)", retry_after=cfg.poll_seconds) from None
    except DesgwInputError as err:
        # getExposureInfo may be rewriting it; a lasting problem ends in `stalled`.
        raise Wait(str(err), retry_after=cfg.poll_seconds) from None
    if row is None:
        raise Wait(f"EXPNUM {expnum} is not in {path} (yet)", retry_after=cfg.poll_seconds)
    return Outcome("found", reason=f"{expnum}: band {row.band}, nite {row.nite}", data=exposure_data(number, row))


def exposure_data(number: int, row: exposures.Exposure) -> dict[str, Any]:
    """What an exposure records from its exposures.list row."""
    return {"season": number, "expnum": row.expnum, "band": row.band, "nite": row.nite, "propid": row.propid,
            "mjd_obs": row.mjd_obs}


def attempt_logs(config: Config, key: str, name: str) -> list[Path]:
    """The `name` logs an exposure's attempts left in the work directory, newest first. The
    engine names attempt directories `{work_dir}/{kind}/{key}/{id}-{state}` (a valid
    exposure key is already a safe path component); they outlive the state database."""
    return sorted((config.work_dir / "exposure" / key).glob(f"*/{name}"), reverse=True)


def dags_made(config: Config, number: int) -> list[int]:
    """The expnums of the season whose DAGMaker autoproc ran (their attempts' logs say so)."""
    base = config.work_dir / "exposure"
    found = []
    for d in sorted(base.glob(f"{number}.*")) if base.is_dir() else ():
        if attempt_logs(config, d.name, "dagmaker.log"):
            found.append(split_exposure_key(d.name)[1])
    return found


@action()
def run_dagmaker(ctx: ActionContext) -> Outcome:
    """`DAGMaker.sh EXPNUM` in gw_workflow, the setup script sourced in the same shell."""
    cfg = ctx.config.desgw
    wf = gw_workflow_dir(cfg)
    number, expnum = split_exposure_key(ctx.subject.key)
    current = _rc_season(cfg)
    if current != number:
        # Another season took the shared gw_workflow; its DAG would carry the wrong dp{S}.
        raise Wait(f"{_rc_path(cfg)} names season {current}, not {number}", retry_after=cfg.poll_seconds)
    argv = ["bash", "-c", DAGMAKER_SCRIPT, "autoproc-dagmaker", str(cfg.setup_script or ""),
            cfg.dagmaker_script, str(expnum)]
    result = ctx.run(argv, name="dagmaker", cwd=wf)
    verdict = dagmaker.judge_dagmaker_run(wf, expnum, _log_text(result), result.returncode)
    evidence = {"log": str(result.log), "exit": result.returncode}
    if verdict.verdict == "no_templates":
        return Outcome("no_templates", reason=verdict.reason, evidence=evidence)
    if not verdict.ok:
        raise Retry(verdict.reason, evidence={**evidence, "log_tail": result.tail(20)})
    if f"-S dp{number}" not in verdict.dag_path.read_text(errors="replace"):
        raise Retry(f"{verdict.dag_path} is not for dp{number} (dagmaker.rc changed while DAGMaker ran?)",
                    evidence=evidence)
    return Outcome("made", reason=verdict.reason, evidence=evidence,
                   data={"dag": str(verdict.dag_path), "submit_argv": list(verdict.submit_argv or ())})


def _credentials_ok(ctx: ActionContext) -> tuple[bool, dict[str, Any]]:
    """Run the configured credential check (none configured: fine)."""
    check = ctx.config.desgw.credential_check
    if not check:
        return True, {}
    result = ctx.run(check, name="credentials", timeout=120)
    return result.ok, {"check": check, "exit": result.returncode, "log_tail": result.tail(5)}


@action()
def submit_dag(ctx: ActionContext) -> Outcome:
    """Check the grid credentials, then run the submit command DAGMaker printed, as an argv."""
    cfg = ctx.config.desgw
    _, expnum = split_exposure_key(ctx.subject.key)
    ok, check = _credentials_ok(ctx)
    if not ok:
        return Outcome("proxy_expired", reason="grid proxy expired", evidence=check)
    try:
        # Checked again: the data may have been edited by hand since DAGMaker ran.
        argv = dagmaker.validate_submit_command(" ".join(ctx.subject.data.get("submit_argv") or ()), expnum)
    except DesgwInputError as err:
        raise Fail(str(err)) from None
    argv[0] = cfg.jobsub_program
    forgotten = _forgotten_submission(ctx)
    if forgotten is not None:
        return forgotten
    result = ctx.run(argv, name="jobsub", cwd=gw_workflow_dir(cfg))
    evidence = {"log": str(result.log), "exit": result.returncode, "argv": argv}
    try:
        job_id = dagmaker.parse_jobsub_job_id(_log_text(result), str(result.log))
    except DesgwInputError:
        job_id = None
    if job_id:
        return Outcome("submitted", reason=f"job {job_id}", evidence=evidence,
                       data={"job_id": job_id, "submitted": time.time()})
    if result.ok:
        raise Hold("jobsub_submit_dag exited 0 but printed no job id: was the DAG submitted? If it was, "
                   "`autoproc set exposure KEY ccd_check`; if not, `autoproc release exposure KEY` submits it",
                   evidence=evidence)
    raise Retry(f"jobsub_submit_dag exited {result.returncode}: {result.tail(3)}", evidence=evidence)


def _forgotten_submission(ctx: ActionContext) -> Outcome | None:
    """A submission the store does not know of but the world shows (the store was restored
    from a backup taken before it): never submit twice (DESIGN rule 1). Only when the data
    records no submission, so an operator's rerun of a submitted exposure still submits."""
    if ctx.subject.data.get("submitted"):
        return None
    return earlier_submission(ctx.config, ctx.subject.key, ctx.subject.data, skip=ctx.workdir)


def earlier_submission(config: Config, key: str, data: Mapping[str, Any], *,
                       skip: Path | None = None) -> Outcome | None:
    """The evidence that the exposure's DAG went to the grid, as a `submitted` Outcome: a job
    id in an attempt's jobsub output (not `skip`'s), or grid outputs under its dp{S}."""
    for log in attempt_logs(config, key, "jobsub.log"):
        if log.parent == skip:
            continue
        try:
            job_id = dagmaker.parse_jobsub_job_id(log.read_text(errors="replace"), str(log))
        except (DesgwInputError, OSError):
            continue
        if job_id:
            return Outcome("submitted", reason=f"job {job_id}, found in an earlier submission's output {log}",
                           evidence={"log": str(log), "recovered": True},
                           data={"job_id": job_id, "submitted": log.stat().st_mtime})
    number, expnum = split_exposure_key(key)
    report = ccd.sweep_exposure(config.desgw.exp_root, data["nite"], expnum, number, data["band"],
                                config.desgw.chips)
    started = [c.chip for c in report.chips if c.status not in ("never_started", "missing")]
    if started:
        return Outcome("submitted", reason=f"{len(started)} CCDs already have grid outputs under {report.dp_dir}",
                       evidence={"recovered": True, "chips": started}, data={"job_id": None, "submitted": None})
    return None


def _interrupted_attempt_dir(ctx: ActionContext) -> Path | None:
    """The directory of the attempt this recover follows (the engine says which it was)."""
    cwd = ctx.previous.get("attempt", {}).get("cwd")
    return Path(cwd) if cwd else None


@action()
def find_dag_submission(ctx: ActionContext) -> Outcome:
    """After a crash while submitting: find out whether the DAG went to the grid, never guess.

    Evidence, strongest first: a job id in the interrupted attempt's jobsub output; grid
    outputs under the exposure's dp{S} (DAGMaker only creates empty chip directories).
    Safe to submit when jobsub never started or exited non-zero without a job id.
    Otherwise the exposure is held for a person.
    """
    _, expnum = split_exposure_key(ctx.subject.key)
    earlier = _interrupted_attempt_dir(ctx)
    log = earlier / "jobsub.log" if earlier else None
    if log is not None and log.exists():
        try:
            job_id = dagmaker.parse_jobsub_job_id(log.read_text(errors="replace"), str(log))
        except DesgwInputError:
            job_id = None
        if job_id:
            return Outcome("submitted", reason=f"job {job_id}, found in the interrupted submission's output",
                           evidence={"log": str(log), "recovered": True},
                           data={"job_id": job_id, "submitted": log.stat().st_mtime})
    report = _sweep(ctx)
    started = [c.chip for c in report.chips if c.status not in ("never_started", "missing")]
    if started:
        return Outcome("submitted", reason=f"{len(started)} CCDs have grid outputs under {report.dp_dir}",
                       evidence={"recovered": True, "chips": started}, data={"job_id": None})
    if earlier is None or not actions.child_started(earlier, "jobsub"):
        raise Retry("the interrupted attempt never started jobsub_submit_dag: safe to submit")
    status = actions.child_exit(earlier, "jobsub")
    if status not in (None, 0):
        raise Retry(f"the interrupted jobsub_submit_dag exited {status} without a job id: safe to submit")
    raise Hold("the DAG submission was interrupted and left no job id and no grid outputs; check the grid "
               "(jobsub_q) — autoproc will not submit twice. Submitted: `autoproc set exposure KEY ccd_check`; "
               "not submitted: `autoproc release exposure KEY` submits it",
               evidence={"attempt_dir": str(earlier), "dp_dir": str(report.dp_dir)})


@action()
def wait_for_proxy(ctx: ActionContext) -> Outcome:
    """Poll the credential check until it passes again."""
    ok, check = _credentials_ok(ctx)
    if ok:
        return Outcome("proxy_valid", reason="credential check passes", evidence=check)
    return Outcome(None, reason="grid proxy expired", evidence=check, retry_after=ctx.config.desgw.poll_seconds)


# ---------------------------------------------------------------- exposure: CCD and forcefile checks

def same_sweeps(ctx: ActionContext, name: str, seen: object) -> int:
    """How many sweeps in a row (this one included) saw `seen` as evidence `name`; the
    count travels in the evidence of the previous poll of this attempt."""
    previous = ctx.previous.get("evidence", {})
    return previous.get("same_sweeps", 0) + 1 if previous.get(name) == seen else 1


def _sweep(ctx: ActionContext) -> ccd.ExposureCcdReport:
    cfg = ctx.config.desgw
    number, expnum = split_exposure_key(ctx.subject.key)
    data = ctx.subject.data
    return ccd.sweep_exposure(cfg.exp_root, data["nite"], expnum, number, data["band"], cfg.chips,
                              copyback_slack=cfg.copyback_slack_minutes * 60, not_before=data.get(OUTPUTS_SINCE))


def ccd_table(report: ccd.ExposureCcdReport) -> dict[str, str]:
    """Chip -> status label (`done`, `RUN05`, `never_started`, …), for the store and `autoproc show`."""
    return {f"{c.chip:02d}": c.label for c in report.chips}


@action()
def check_ccds(ctx: ActionContext) -> Outcome:
    """Sweep the exposure's dp{S} tree; pass at `min_ccds` complete once the table is settled.

    Settled: every chip finished (done or failed), or the same table over `stable_sweeps`
    sweeps. One sweep alone is not trusted: a CCD being copied back can look done before
    its FAIL lands. Below the threshold it keeps polling; the state's deadline ends that.
    """
    cfg = ctx.config.desgw
    report = _sweep(ctx)
    table = ccd_table(report)
    same = same_sweeps(ctx, "table", table)
    summary = report.summary()
    finished = report.incomplete == 0 and report.missing == 0
    line = (f"{report.complete} of {len(report.chips)} CCDs complete, {report.failed} failed "
            f"{report.failures_by_step or ''}, {report.incomplete} not finished, {report.missing} missing")
    if report.complete >= cfg.min_ccds and (finished or same >= cfg.stable_sweeps):
        return Outcome("ccds_ok", reason=line, evidence=summary, data={"ccds": summary, "ccd_table": table})
    return Outcome(None, reason=f"{line}; need {cfg.min_ccds}", retry_after=cfg.poll_seconds,
                   evidence={**summary, "table": table, "same_sweeps": same})


@action()
def check_forcefiles(ctx: ActionContext) -> Outcome:
    """Forced-photometry files against 2 × complete CCDs (both counted in this same sweep).

    More than half and no more than expected passes (the missing ones are listed); more
    than expected needs a person; too few keeps polling. Verdicts wait for `stable_sweeps`.
    """
    cfg = ctx.config.desgw
    number, expnum = split_exposure_key(ctx.subject.key)
    data = ctx.subject.data
    report = _sweep(ctx)
    found = forcefiles.check_forcefiles(cfg.forcephoto_root, number, data["nite"], expnum, data["band"],
                                        report.complete_chips, not_before=data.get(OUTPUTS_SINCE))
    summary = found.summary()
    same = same_sweeps(ctx, "counted", [found.count, found.expected])
    line = f"{found.count} forced-photometry files for {report.complete} complete CCDs (expected {found.expected})"
    if found.missing_fits or found.missing_psf:
        line += f"; missing .fits for CCDs {list(found.missing_fits)}, .psf for {list(found.missing_psf)}"
    if same >= cfg.stable_sweeps and found.verdict == "pass":
        return Outcome("forcefiles_ok", reason=line, evidence=summary, data={"forcefiles": summary})
    if same >= cfg.stable_sweeps and found.verdict == "too_many":
        return Outcome("too_many_forcefiles", reason=f"{line}: more than expected, needs a person",
                       evidence=summary, data={"forcefiles": summary})
    return Outcome(None, reason=line, retry_after=cfg.poll_seconds,
                   evidence={**summary, "counted": [found.count, found.expected], "same_sweeps": same})


# ---------------------------------------------------------------- season: number, dagmaker.rc, lists

@action()
def validate_season(ctx: ActionContext) -> Outcome:
    """The season must be unused: not reserved, no dp{S} on disk, not in the season database.

    Uses autoproc made itself do not count (`own_season_use`): after a restore from a backup
    taken before the season's first DAG, or a rebuild, the season meets its own trees."""
    cfg = ctx.config.desgw
    number = int(ctx.subject.key)
    try:
        used = season.collect_used_seasons(
            reserved=cfg.reserved, exp_root=cfg.exp_root, forcephoto_root=cfg.forcephoto_root,
            command=cfg.season_command or None, command_timeout=cfg.season_command_timeout)
    except season.SeasonQueryError as err:
        raise Retry(str(err)) from None
    uses = used.why(number)
    ours = own_season_use(ctx.config, number)
    foreign = [u for u in uses if not ours(u)]
    if foreign:
        raise Fail(str(season.SeasonInUseError(number, foreign)))
    if uses:
        return Outcome("valid", reason=f"season {number} is used only by what autoproc made for it: "
                       + "; ".join(u.describe() for u in uses), evidence={"own": [u.describe() for u in uses]})
    return Outcome("valid", reason=f"season {number} is free", evidence={"database": bool(cfg.season_command)})


def own_season_use(config: Config, number: int) -> Callable[[season.SeasonUse], bool]:
    """Tells the uses of a season autoproc made itself from foreign ones.

    Ours: the `{exp_root}/{nite}/{E}/dp{S}` trees of exposures S.E whose DAGMaker autoproc
    ran (its attempt directories in the work directory say so: DAGMaker creates the tree),
    then the forced-photometry `dp{S}` and the season database's entry, which the grid jobs
    of those DAGs write. A dp{S} of any other exposure, or a reserved number, is foreign.
    """
    cfg = config.desgw
    made = set(dags_made(config, number))

    def ours(use: season.SeasonUse) -> bool:
        if not made:
            return False
        if use.reason == "dp_dir":
            path = Path(use.detail)
            if cfg.forcephoto_root is not None and path == Path(cfg.forcephoto_root) / f"dp{number}":
                return True
            return path.parent.name.isdigit() and int(path.parent.name) in made
        return use.reason == "db"

    return ours


@action()
def write_dagmaker_rc(ctx: ActionContext) -> Outcome:
    """Set SEASON (and the season's other rc settings) in dagmaker.rc, by key."""
    cfg = ctx.config.desgw
    path = _rc_path(cfg)
    updates = {"SEASON": int(ctx.subject.key), **ctx.subject.data.get("rc", {})}
    try:
        edit = rc.edit_rc(path.read_text(), updates, str(path))
    except (DesgwInputError, ValueError) as err:
        raise Fail(str(err)) from None
    if edit.changed:
        postproc.atomic_write_text(path, edit.text)
    changes = [dataclasses.asdict(c) for c in edit.changes]
    said = ", ".join(f"{c.key} {c.how}" for c in edit.changes)
    return Outcome("configured", reason=f"{path}: {said}", evidence={"rc": str(path), "changes": changes},
                   data={"rc_path": str(path), "rc_changes": changes})


@action()
def read_exposure_lists(ctx: ActionContext) -> Outcome:
    """Take the expnums of the season's new `.list` files (parsed at intake)."""
    listed = list(ctx.subject.data.get("listed", []))
    new = [e for f in ctx.files for e in f["info"].get("expnums", []) if e not in listed]
    new = list(dict.fromkeys(new))
    return Outcome("listed", reason=f"{len(new)} new exposures from {len(ctx.files)} list files",
                   evidence={"files": [f["path"] for f in ctx.files], "new": new},
                   data={"listed": listed + new}, consume=[f["path"] for f in ctx.files])


# ---------------------------------------------------------------- season: post-processing

def _season_exposures(store: Store, number: int) -> list[Subject]:
    prefix = f"{number}."
    return [s for s in store.subjects("exposure") if s.key.startswith(prefix)]


def postproc_exposures(config: Config, number: int) -> list[Subject]:
    """The season's exposures a run covers (ready ones and those done in earlier runs).

    Read from the store here because the engine hands an action only its own subject.
    """
    store = Store(config.db, readonly=True)
    try:
        return sorted((s for s in _season_exposures(store, number) if s.state in POSTPROCESSABLE),
                      key=lambda s: split_exposure_key(s.key)[1])
    finally:
        store.close()


def resume_point(outdir: Path, number: int, cwd: Path, expnums: Iterable[int],
                 plusname: str = "truthplus.tab", since: float | None = None) -> postproc.SkiptoDecision:
    """`derive_skipto`, trusted only for the outputs of a step 0 over these same exposures.

    SKIPTO > 0 reuses step 0's exposure list, so a run with other exposures starts at 0;
    later outputs older than that step 0 come from a run on another list and do not count.
    A step 0 older than `since` (an operator's rerun) is set aside: start at 0.
    """
    decision = postproc.derive_skipto(outdir, number, cwd, plusname=plusname)
    if decision.skipto == 0:
        return decision
    step0 = outdir / "checkoutputs" / "step0_expnums.txt"
    if since is not None and step0.stat().st_mtime < since:
        return postproc.SkiptoDecision(0, "the outputs predate the operator's rerun: run from scratch",
                                       decision.evidence)
    listed = sorted(int(x) for x in step0.read_text().split())
    if listed != sorted(expnums):
        return postproc.SkiptoDecision(
            0, f"step 0 ran on other exposures ({len(listed)} listed): run from scratch", decision.evidence)
    t0 = step0.stat().st_mtime
    skipto = decision.skipto
    if skipto >= 5 and (outdir / f"truthtable{number}" / plusname).stat().st_mtime < t0:
        skipto = 1
    elif skipto == 6 and (outdir / "mastertableinfo.npy").stat().st_mtime < t0:
        skipto = 5
    if skipto == decision.skipto:
        return decision
    return postproc.SkiptoDecision(skipto, f"outputs past step {skipto} predate step 0: resume at {skipto}",
                                   decision.evidence)


def _run_finished(cfg: DesgwConfig, number: int, outdir: Path, expnums: list[int],
                  since: float | None = None) -> postproc.PostProcStatus | None:
    """The status, when a run over exactly `expnums` completed (status and step-7 pages),
    after `since` (an operator's rerun) when given."""
    status = postproc.read_postproc_status(postproc_dir(cfg), number)
    step0 = outdir / "checkoutputs" / "step0_expnums.txt"
    if status is None or not status.complete or not postproc.step7_outputs_exist(outdir) or not step0.exists():
        return None
    if since is not None and step0.stat().st_mtime < since:
        return None
    return status if sorted(int(x) for x in step0.read_text().split()) == sorted(expnums) else None


def _status_flags(status: postproc.PostProcStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    return {"state": status.state, "env": status.env_ok, "step1": status.step1_ok, "hostmatch": status.hostmatch_ok,
            "truthtable": status.truthtable_ok, "datafiles": status.datafiles_ok, "html": status.html_ok}


def _finished_outcome(ctx: ActionContext, run: dict[str, Any], expnums: list[int], outdir: Path,
                      reason: str) -> Outcome:
    runs = list(ctx.subject.data.get("postproc_runs", []))
    return Outcome("postprocessed", reason=reason, evidence=run,
                   data={"postprocessed": expnums, "outdir": str(outdir), "postproc_runs": runs + [run]})


@action()
def run_postprocessing(ctx: ActionContext) -> Outcome:
    """One supervised post-processing run over the season's ready exposures.

    Writes the exposure list and `postproc_{S}.ini`, derives SKIPTO from what earlier
    tries left, and starts the launch script (diffimg_setup.sh sourced in its shell,
    update_forcephoto_links.sh, run_postproc.py). Done = status `complete` + step-7 pages;
    anything short of that is retried, resuming where the outputs allow.
    """
    cfg: DesgwConfig = ctx.config.desgw
    number = int(ctx.subject.key)
    data = ctx.subject.data
    pp = postproc_dir(cfg)
    outdir = season_outdir(cfg, number, data)
    subjects = postproc_exposures(ctx.config, number)
    if not subjects:
        raise Fail("no ready exposures to post-process")
    expnums = [split_exposure_key(s.key)[1] for s in subjects]
    known = any(sorted(r.get("expnums", [])) == sorted(expnums) for r in data.get("postproc_runs") or [])
    finished = None if known else _run_finished(cfg, number, outdir, expnums)
    if finished is not None:
        # A completed run over exactly these exposures that the store does not know of (it
        # was restored from an older backup): taken as done, never launched again (DESIGN rule 1).
        return _finished_outcome(ctx, {"expnums": expnums, "recovered": True, "status": _status_flags(finished)},
                                 expnums, outdir, f"found a completed post-processing run over {len(expnums)} "
                                 "exposures that the store did not know of")
    template = cfg.template_ini or pp / "template_postproc.ini"
    list_name = postproc.exposure_list_name(number)
    extra = {("general", "rootdir"): str(cfg.exp_root.parent)}
    extra.update({tuple(k.split(".", 1)): v for k, v in cfg.postproc_settings.items()})  # type: ignore[misc]
    try:
        ini = postproc.render_postproc_ini(
            template.read_text(), season=number, exposures_listfile=list_name,
            bands=data.get("bands") or sorted({s.data["band"] for s in subjects}), outdir=outdir,
            propid=data.get("propid"), ligoid=data.get("ligoid"), triggerid=data.get("triggerid"),
            triggermjd=data.get("trigger_mjd"), extra=extra, source=str(template))
    except (OSError, DesgwInputError, ValueError) as err:
        raise Fail(f"cannot render postproc_{number}.ini: {err}") from None
    plusname = postproc.parse_ini(ini, "ini").get("truthtable", "plusname")
    decision = resume_point(outdir, number, pp, expnums, plusname, since=data.get(OUTPUTS_SINCE))
    postproc.stage_postproc_inputs(pp, number, ini, expnums, list_name)
    earlier = set(data.get("postprocessed", []))
    new_nites = {s.data["nite"] for s in subjects if split_exposure_key(s.key)[1] not in earlier}
    launch = postproc.build_postproc_launch(
        pp, outdir, number, decision.skipto, update_links=cfg.postproc_update_links,
        nite=new_nites.pop() if len(new_nites) == 1 else None, python=cfg.postproc_python)
    # Where this launch starts: after a crash, `find_postprocessing_result` compares it with
    # where the outputs now say to resume, to tell the engine whether the run got anywhere.
    process.write_private(ctx.workdir / "launch.json", json.dumps({"skipto": decision.skipto, "plusname": plusname}))
    result = ctx.run(launch.argv, name="postproc", cwd=launch.cwd)
    status = postproc.read_postproc_status(pp, number)
    run = {"expnums": expnums, "skipto": decision.skipto, "skipto_reason": decision.reason,
           "exit": result.returncode, "status": _status_flags(status), "log": str(result.log),
           "outdir": str(outdir), "try": ctx.try_number}
    if result.returncode in postproc.LAUNCH_EXIT_CODES:
        why = f"launch script: {postproc.LAUNCH_EXIT_CODES[result.returncode]}: {result.tail(2)}"
        if result.returncode in (90, 91):  # the configured directory is wrong: retrying will not help
            raise Fail(why, evidence=run)
        raise Retry(why, evidence=run)
    if _run_finished(cfg, number, outdir, expnums, since=data.get(OUTPUTS_SINCE)):
        return _finished_outcome(ctx, run, expnums, outdir,
                                 f"post-processing complete for {len(expnums)} exposures (SKIPTO {decision.skipto})")
    if result.returncode == 0:
        raise Fail(f"run_postproc.py ended without completing: {result.tail(3)}", evidence=run)
    raise Retry(f"run_postproc.py exited {result.returncode}; the next try resumes from its outputs: "
                f"{result.tail(3)}", evidence=run)


def _report_postproc_progress(ctx: ActionContext, outdir: Path, number: int, expnums: list[int]) -> None:
    """Tell the engine when the interrupted run finished steps (its SKIPTO moves on)."""
    where = _interrupted_attempt_dir(ctx)
    try:
        launch = json.loads((where / "launch.json").read_text()) if where else None
    except (OSError, ValueError):
        launch = None
    if not launch:
        return
    now = resume_point(outdir, number, postproc_dir(ctx.config.desgw), expnums, launch["plusname"],
                       since=ctx.subject.data.get(OUTPUTS_SINCE)).skipto
    if now > launch["skipto"]:
        ctx.progress(f"post-processing got from step {launch['skipto']} to {now} before it was interrupted")


@action()
def find_postprocessing_result(ctx: ActionContext) -> Outcome:
    """After a crash: a run over these exposures that completed is taken as done; otherwise
    the step runs again (the daemon killed what was left, and SKIPTO resumes it)."""
    cfg = ctx.config.desgw
    number = int(ctx.subject.key)
    outdir = season_outdir(cfg, number, ctx.subject.data)
    expnums = [split_exposure_key(s.key)[1] for s in postproc_exposures(ctx.config, number)]
    status = _run_finished(cfg, number, outdir, expnums, since=ctx.subject.data.get(OUTPUTS_SINCE))
    if status is None:
        _report_postproc_progress(ctx, outdir, number, expnums)
        raise Retry("the interrupted post-processing run did not complete: run it again")
    return _finished_outcome(ctx, {"expnums": expnums, "recovered": True, "status": _status_flags(status)},
                             expnums, outdir, "the interrupted post-processing run had completed")


# ---------------------------------------------------------------- conditions

@condition()
def season_configured(subject: Subject, env: Env) -> bool:
    """The exposure's season has written dagmaker.rc, and the rc still names it."""
    number, _ = split_exposure_key(subject.key)
    parent = env.store.find_subject("season", str(number))
    return parent is not None and parent.state in CONFIGURED and _rc_season(env.config.desgw) == number


@condition()
def gw_workflow_free(subject: Subject, env: Env) -> bool:
    """No other season is writing dagmaker.rc or still needs it for DAGMaker (one rc, one season at a time)."""
    if any(s.state == "configuring" for s in env.store.subjects("season") if s.key != subject.key):
        return False
    prefix = f"{subject.key}."
    return not any(s.state in NEEDS_RC for s in env.store.subjects("exposure") if not s.key.startswith(prefix))


@condition()
def has_exposure_lists(subject: Subject, env: Env) -> bool:
    return bool(env.store.files(subject_id=subject.id, status="ready"))


@condition()
def postprocessing_due(subject: Subject, env: Env) -> bool:
    """Some exposure is ready and not yet post-processed, and none is still on its way."""
    mine = _season_exposures(env.store, int(subject.key))
    if any(s.state in ACTIVE for s in mine):
        return False
    done = set(subject.data.get("postprocessed", []))
    return any(s.state == "ready" and split_exposure_key(s.key)[1] not in done for s in mine)


@condition()
def postprocessed(subject: Subject, env: Env) -> bool:
    """A completed post-processing run of the season covered this exposure."""
    number, expnum = split_exposure_key(subject.key)
    parent = env.store.find_subject("season", str(number))
    return parent is not None and expnum in parent.data.get("postprocessed", [])


# ---------------------------------------------------------------- callbacks

@callback()
def poke_season(change: dict, env: Env) -> None:
    """An exposure settled: its season may post-process now."""
    env.poke("season", str(split_exposure_key(change["key"])[0]))


@callback()
def poke_exposures(change: dict, env: Env) -> None:
    """The season moved (rc written, a run finished): its exposures look again."""
    for s in _season_exposures(env.store, int(change["key"])):
        env.poke("exposure", s.key)


@callback()
def add_listed_exposures(change: dict, env: Env) -> None:
    """Create the exposure subjects a season's list files named."""
    number = int(change["key"])
    for expnum in change["data"].get("listed", []):
        env.create("exposure", exposure_key(number, expnum), reason=f"listed for season {number}")


@callback()
def report_exposure_problem(change: dict, env: Env) -> None:
    """Put an exposure that needs a person among the problems `autoproc status` lists."""
    env.problem(f"{change['kind']}/{change['key']}", f"{change['to']}: {change['reason']}")
