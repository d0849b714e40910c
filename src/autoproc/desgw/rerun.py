"""What `autoproc rerun-from` sets aside for a DESGW exposure or season (README "Stepping in").

Nothing on disk is deleted. The verdicts and records of the states that run again (the
DAG, the job id, the CCD table, the forcefile count, the season's post-processed list) are
cleared from the subject's data, their old values journaled with the override. When the
grid runs again (a rerun from DAGMaker or the submission) the CCD and forcefile outputs
written before the rerun are set aside: the sweeps no longer look at files older than
`data["outputs_since"]`, so the old run's tarballs cannot pass the new one. A season
rerun from its post-processing starts from step 0: outputs older than the rerun are not
resumed from.
"""

from __future__ import annotations

import time

from autoproc.actions import RerunPlan, rerun_hook
from autoproc.config import Config
from autoproc.store import Subject

OUTPUTS_SINCE = "outputs_since"

# Data each exposure state records; a rerun from a state clears what it and later ones wrote.
EXPOSURE_RECORDS: dict[str, tuple[str, ...]] = {
    "dagmaker": ("dag", "submit_argv"),
    "submitting": ("job_id", "submitted"),
    "ccd_check": ("ccds", "ccd_table"),
    "forcefile_check": ("forcefiles",),
}
# States after which the grid runs again, so its earlier outputs are set aside.
GRID_RERUN = ("dagmaker", "submitting")
SEASON_RECORDS: dict[str, tuple[str, ...]] = {
    "configuring": ("rc_path", "rc_changes"),
    "postprocessing": ("postprocessed",),
}


def _clear(subject: Subject, redo: list[str], records: dict[str, tuple[str, ...]]) -> tuple[dict, dict]:
    """(data that clears the records of the states in `redo`, their old values)."""
    keys = [k for state in redo for k in records.get(state, ())]
    old = {k: subject.data[k] for k in keys if subject.data.get(k) not in (None, [], {})}
    # Cleared to an empty value of the same shape, so readers of the data need no new case.
    return {k: type(v)() if isinstance(v, list | dict) else None for k, v in old.items()}, old


def _lines(old: dict) -> list[str]:
    return [f"data {k}: {str(v)[:120]}" for k, v in old.items()]


@rerun_hook("exposure")
def plan_exposure_rerun(subject: Subject, state: str, redo: list[str], config: Config | None) -> RerunPlan:
    """The exposure's records of the states that run again; the grid outputs written
    before now, when the DAG is made or submitted again."""
    data, old = _clear(subject, redo, EXPOSURE_RECORDS)
    lines = _lines(old)
    notes = []
    if any(s in redo for s in GRID_RERUN):
        now = time.time()
        data[OUTPUTS_SINCE] = now
        lines.append(f"CCD and forcefile outputs written before {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}"
                     " (left on dCache, no longer counted)")
    if subject.data.get("season") is not None:
        notes.append("if its season already post-processed it, the season does not redo that by itself: "
                     f"`autoproc rerun-from season {subject.data['season']} postprocessing`")
    return RerunPlan(set_aside=lines, data=data, evidence={"cleared": old}, notes=notes)


@rerun_hook("season")
def plan_season_rerun(subject: Subject, state: str, redo: list[str], config: Config | None) -> RerunPlan:
    """The season's records of the states that run again; post-processing from step 0."""
    data, old = _clear(subject, redo, SEASON_RECORDS)
    lines = _lines(old)
    if "postprocessing" in redo:
        now = time.time()
        data[OUTPUTS_SINCE] = now
        lines.append("post-processing outputs written before now (kept; the run starts at step 0)")
    return RerunPlan(set_aside=lines, data=data, evidence={"cleared": old},
                     notes=["its exposures are not rerun: `autoproc rerun-from exposure KEY STATE` for those"])
