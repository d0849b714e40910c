"""DESGW operator functions behind `autoproc desgw …`: create a season, add exposures, report."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from autoproc.config import Config
from autoproc.desgw import exposures, rc, season
from autoproc.desgw.stages import exposure_key, split_exposure_key
from autoproc.errors import AutoprocError
from autoproc.machines import StateMachine
from autoproc.script import override
from autoproc.store import Store, Subject


class DesgwRequestError(AutoprocError):
    """A season or exposure request that cannot be honoured (the message says why)."""


def season_settings(*, trigger_mjd: float | None = None, propid: str | None = None, ligoid: str | None = None,
                    triggerid: str | None = None, bands: Sequence[str] = (), outdir: str | None = None,
                    rc_values: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A season's data, checked now rather than when the daemon first needs it."""
    bad = [b for b in bands if b not in exposures.BANDS]
    if bad:
        raise DesgwRequestError(f"unknown bands {bad}; known: {sorted(exposures.BANDS)}")
    rc_values = dict(rc_values or {})
    if "SEASON" in rc_values:
        raise DesgwRequestError("SEASON is the season number itself; do not set it with --rc")
    try:
        rc.edit_rc("", rc_values)  # the same checks (key names, no newlines) the daemon's edit makes
    except ValueError as err:
        raise DesgwRequestError(str(err)) from None
    settings: dict[str, Any] = {"trigger_mjd": trigger_mjd, "propid": propid, "ligoid": ligoid,
                                "triggerid": triggerid, "bands": list(bands), "outdir": outdir, "rc": rc_values}
    return {k: v for k, v in settings.items() if v not in (None, [], {})}


def parse_rc_assignments(items: Iterable[str]) -> dict[str, str]:
    """`KEY=VALUE` strings (from `--rc`) as a mapping."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise DesgwRequestError(f"--rc {item!r}: expected KEY=VALUE")
        values[key] = value
    return values


def create_season(store: Store, machines: dict[str, StateMachine], config: Config, requested: int | None, *,
                  settings: Mapping[str, Any], reason: str, operator: str | None = None,
                  on_behalf_of: str | None = None) -> Subject:
    """Allocate (requested=None) or claim a season number and create its subject.

    Used = reserved ∪ seasons autoproc knows ∪ dp{S} directories on disk ∪ the season
    database command; a requested season that is used is refused with every reason.
    """
    cfg = config.desgw
    known = [int(s.key) for s in store.subjects("season")]
    try:
        used = season.collect_used_seasons(
            reserved=cfg.reserved, known=known, exp_root=cfg.exp_root, forcephoto_root=cfg.forcephoto_root,
            command=cfg.season_command or None, command_timeout=cfg.season_command_timeout)
        number = season.allocate_season(used, requested, cfg.season_range)
    except (season.SeasonInUseError, season.SeasonQueryError, season.NoFreeSeasonError, ValueError) as err:
        raise DesgwRequestError(str(err)) from None
    return override.add(store, machines, "season", str(number), reason=reason, data=dict(settings),
                        operator=operator, on_behalf_of=on_behalf_of)


def add_exposures(store: Store, machines: dict[str, StateMachine], number: int, expnums: Iterable[int], *,
                  reason: str, operator: str | None = None, on_behalf_of: str | None = None) -> list[Subject]:
    """Create `{season}.{expnum}` exposure subjects for a season autoproc knows."""
    if store.find_subject("season", str(number)) is None:
        raise DesgwRequestError(f"no season {number}; create it first with `autoproc desgw season {number} …`")
    return [override.add(store, machines, "exposure", exposure_key(number, e), reason=reason, operator=operator,
                         on_behalf_of=on_behalf_of) for e in expnums]


def season_report(store: Store, number: int) -> dict[str, Any]:
    """The season's settings and runs, and one row per exposure (state, CCDs, forcefiles, job)."""
    subject = store.subject("season", str(number))
    rows = []
    for s in store.subjects("exposure"):
        if not s.key.startswith(f"{number}."):
            continue
        ccds = s.data.get("ccds", {})
        ff = s.data.get("forcefiles", {})
        rows.append({"expnum": split_exposure_key(s.key)[1], "state": s.state, "held": s.held,
                     "band": s.data.get("band"), "nite": s.data.get("nite"), "job_id": s.data.get("job_id"),
                     "ccds_complete": ccds.get("complete"), "ccds_failed": ccds.get("failed"),
                     "failures": ccds.get("failures_by_step"), "forcefiles": ff.get("count"),
                     "forcefiles_expected": ff.get("expected")})
    rows.sort(key=lambda r: r["expnum"])
    return {"season": number, "state": subject.state, "held": subject.held, "data": subject.data, "exposures": rows}

