"""The DESGW chain's control-socket requests (`autoproc desgw season|add-exposure|report`),
registered like the core's in autoproc.requests: the CLI carries them out itself, or the daemon
does for it."""

from __future__ import annotations

from autoproc.requests import verb, who


@verb("desgw-season", writes=True, required={"reason": str},
      optional={"number": int, "operator": str, "trigger_mjd": (float, int), "propid": str, "ligoid": str,
                 "triggerid": str, "bands": str, "outdir": str, "rc": dict})
def _desgw_season(store, machines, config, r, user):
    from autoproc.desgw.script import DesgwRequestError, create_season, season_settings

    rc_values = r.get("rc") or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in rc_values.items()):
        raise DesgwRequestError("rc: KEY=VALUE strings")
    settings = season_settings(
        trigger_mjd=r.get("trigger_mjd"), propid=r.get("propid"), ligoid=r.get("ligoid"),
        triggerid=r.get("triggerid"), bands=[b for b in (r.get("bands") or "").split(",") if b],
        outdir=r.get("outdir"), rc_values=rc_values)
    subject = create_season(store, machines, config, r.get("number"), settings=settings, reason=r["reason"],
                            **who(r, user))
    return {"lines": [f"created {subject.ref} in {subject.state}"]}


@verb("desgw-add-exposure", writes=True, required={"number": int, "expnums": list, "reason": str},
      optional={"operator": str})
def _desgw_add_exposure(store, machines, config, r, user):
    from autoproc.desgw.script import add_exposures

    added = add_exposures(store, machines, r["number"], r["expnums"], reason=r["reason"], **who(r, user))
    return {"lines": [f"added {s.ref} in {s.state}" for s in added]}


@verb("desgw-report", writes=False, required={"number": int})
def _desgw_report(store, machines, config, r, user):
    from autoproc.desgw.script import season_report

    return {"data": season_report(store, r["number"])}
