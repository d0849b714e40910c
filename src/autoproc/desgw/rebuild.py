"""How `autoproc store rebuild` finds DESGW seasons and exposures again (autoproc.rebuild).

Evidence, all outside the state database: the season's `.list` files in the watched roots;
the attempt directories the engine left in the work directory (DAGMaker's and jobsub's
output per exposure); `dagmaker.rc` (which season it names); the `dp{S}` output trees; and
in the Post-Processing directory the season's `postproc_{S}.ini`, status file and outputs.

- A season is one that has list files or attempt directories. It is `waiting` (its
  dagmaker.rc was written) when the rc names it or DAGMaker ran for one of its exposures,
  else `validating` (its validation knows its own trees, `stages.own_season_use`). A
  completed post-processing run (status, step-7 pages, step 0's exposure list) is recorded
  as its own, so it is never launched again; its settings come back from postproc_{S}.ini.
- An exposure is one listed for the season, one with attempt directories, or one a
  post-processing run covered. With a job id in a jobsub output or grid outputs under its
  dp{S} it is `ccd_check` (submitted: never submitted again, DESIGN rule 1; the sweeps then
  find where it is); when DAGMaker last found no templates, `no_templates`; else `new`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from autoproc.actions import Rebuilt, rebuild_hook
from autoproc.config import Config

_SEASON_KEY = re.compile(r"^[1-9][0-9]{0,5}$")
_EXPOSURE_KEY = re.compile(r"^[1-9][0-9]{0,5}\.[1-9][0-9]{0,8}$")
# Season data a settings ini key comes back to (`autoproc desgw season` sets them).
_INI_SETTINGS = {"propid": "propid", "ligoid": "ligoid", "triggerid": "triggerid", "triggermjd": "trigger_mjd",
                 "outdir": "outdir"}


def _listed(config: Config) -> dict[int, list[int]]:
    """Season -> expnums, from the `.list` files in the watched roots of their kind."""
    from autoproc.desgw.stages import exposure_list_file

    found: dict[int, list[int]] = {}
    for root in config.watch:
        if root.kind != "desgw_exposure_list" or not Path(root.path).is_dir():
            continue
        for path in sorted(Path(root.path).rglob("*.list")):
            try:
                info = exposure_list_file(path, config)
            except (ValueError, OSError):
                continue  # a bad file is judged (and listed) by the daemon's intake, not here
            listed = found.setdefault(int(info.subject[1]), [])
            listed += [e for e in info.info["expnums"] if e not in listed]
    return found


def _worked_on(config: Config, kind: str) -> list[str]:
    """The keys of `kind` with attempt directories (anything else there is not ours)."""
    key = _SEASON_KEY if kind == "season" else _EXPOSURE_KEY
    base = config.work_dir / kind
    return sorted(d.name for d in base.iterdir() if d.is_dir() and key.match(d.name)) if base.is_dir() else []


def _seasons(config: Config) -> set[int]:
    seasons = set(_listed(config))
    seasons |= {int(k) for k in _worked_on(config, "season")}
    seasons |= {int(k.partition(".")[0]) for k in _worked_on(config, "exposure")}
    return seasons


def _postprocessed(config: Config, number: int, outdir: Path) -> list[int] | None:
    """The expnums of a completed post-processing run of the season, or None."""
    from autoproc.desgw.stages import _run_finished

    step0 = outdir / "checkoutputs" / "step0_expnums.txt"
    try:
        expnums = sorted(int(x) for x in step0.read_text().split())
    except (OSError, ValueError):
        return None
    return expnums if _run_finished(config.desgw, number, outdir, expnums) is not None else None


def _settings(config: Config, number: int) -> dict[str, Any]:
    """The season's settings from the postproc_{S}.ini autoproc staged, if there is one."""
    from autoproc.desgw import postproc
    from autoproc.desgw.errors import DesgwInputError
    from autoproc.desgw.stages import postproc_dir

    path = postproc_dir(config.desgw) / f"postproc_{number}.ini"
    try:
        ini = postproc.parse_ini(path.read_text(), str(path))
    except (OSError, DesgwInputError):
        return {}
    out: dict[str, Any] = {}
    for key, name in _INI_SETTINGS.items():
        value = ini.get("general", key, fallback=None)
        if value:
            out[name] = float(value) if name == "trigger_mjd" else value
    bands = ini.get("general", "bands", fallback="")
    if bands:
        out["bands"] = bands.split(",")
    return out


@rebuild_hook("season")
def rebuild_seasons(config: Config) -> list[Rebuilt]:
    from autoproc.desgw.stages import _rc_season, dags_made, season_outdir

    if config.desgw.gw_workflow is None or config.desgw.postproc_dir is None:
        return []
    listed = _listed(config)
    rc_season = _rc_season(config.desgw)
    out = []
    for number in sorted(_seasons(config)):
        data = _settings(config, number)
        sources = [f"settings from postproc_{number}.ini" if data else "no postproc ini: its settings are lost"]
        if listed.get(number):
            data["listed"] = listed[number]
            sources.append(f"{len(listed[number])} exposures in its list files")
        made = dags_made(config, number)
        configured = rc_season == number or bool(made)
        if configured:
            data["rc_path"] = str(config.desgw.gw_workflow / "dagmaker.rc")
            sources.append("dagmaker.rc names it" if rc_season == number else f"DAGMaker ran for {len(made)} of its "
                           "exposures")
        outdir = season_outdir(config.desgw, number, data)
        done = _postprocessed(config, number, outdir)
        if done is not None:
            data.update({"postprocessed": done, "outdir": str(outdir),
                         "postproc_runs": [{"expnums": done, "recovered": True, "rebuilt": True}]})
            sources.append(f"a completed post-processing run over {len(done)} exposures in {outdir}")
        out.append(Rebuilt(str(number), "waiting" if configured else "validating", "; ".join(sources), data=data))
    return out


@rebuild_hook("exposure")
def rebuild_exposures(config: Config) -> list[Rebuilt]:
    from autoproc.desgw import dagmaker, exposures
    from autoproc.desgw.stages import (
        attempt_logs,
        earlier_submission,
        exposure_data,
        exposure_key,
        exposures_list_path,
        season_outdir,
        split_exposure_key,
    )

    if config.desgw.gw_workflow is None or config.desgw.postproc_dir is None:
        return []
    keys = set(_worked_on(config, "exposure"))
    for number, expnums in _listed(config).items():
        keys |= {exposure_key(number, e) for e in expnums}
    for number in _seasons(config):
        keys |= {exposure_key(number, e) for e in _postprocessed(
            config, number, season_outdir(config.desgw, number, _settings(config, number))) or ()}
    try:
        rows = {row.expnum: row for row in exposures.read_exposures_list(exposures_list_path(config.desgw))}
    except (OSError, ValueError):
        rows = {}
    out = []
    for key in sorted(keys, key=split_exposure_key):
        number, expnum = split_exposure_key(key)
        row = rows.get(expnum)
        if row is None:
            out.append(Rebuilt(key, "new", "listed or worked on; not in exposures.list (yet): it is looked up"))
            continue
        data = exposure_data(number, row)
        submitted = earlier_submission(config, key, data)
        if submitted is not None:
            out.append(Rebuilt(key, "ccd_check", f"submitted: {submitted.reason}; the sweeps find where it is",
                               data={**data, **submitted.data}, evidence=submitted.evidence))
            continue
        logs = attempt_logs(config, key, "dagmaker.log")
        if logs and dagmaker.NO_TEMPLATES_MARKER in logs[0].read_text(errors="replace"):
            out.append(Rebuilt(key, "no_templates", f"DAGMaker found no template images ({logs[0]})", data=data,
                               evidence={"log": str(logs[0])}))
            continue
        out.append(Rebuilt(key, "new", "listed; no DAG submitted (DAGMaker runs again)"))
    return out
