"""`autoproc desgw …`: seasons and exposures (thin commands over `autoproc.desgw.script`)."""

from __future__ import annotations

from pathlib import Path

import click

import autoproc.desgw.requests  # noqa: F401 - registers the requests these commands send
from autoproc.cli.commands import Context, _change, _print_json, _view, pass_ctx


@click.group("desgw")
def desgw() -> None:
    """DESGW seasons and exposures."""


@desgw.command("season")
@click.argument("number", metavar="SEASON|auto")
@click.option("--trigger-mjd", type=float, help="MJD of the trigger (ini triggermjd).")
@click.option("--propid", help="Proposal id, e.g. 2019B-0372.")
@click.option("--ligoid", help="LIGO event id, e.g. S190814bv.")
@click.option("--triggerid", help="Trigger id, e.g. G298048.")
@click.option("--bands", default="", help="Comma list, e.g. i,z (default: the bands of its exposures).")
@click.option("--outdir", type=click.Path(path_type=Path), help="Post-processing outdir (default from config).")
@click.option("--rc", "rc_items", multiple=True, metavar="KEY=VALUE", help="A dagmaker.rc setting (repeatable).")
@click.option("--reason", default="new season", show_default=True, help="Why (journaled).")
@click.option("--operator", help="On whose behalf (a note journaled beside your own user name).")
@pass_ctx
def season(obj: Context, number: str, trigger_mjd, propid, ligoid, triggerid, bands, outdir, rc_items, reason,
           operator) -> None:
    """Create a season: SEASON if it is free (else why not), or `auto` for the lowest free one."""
    from autoproc.desgw.script import DesgwRequestError, parse_rc_assignments

    if number != "auto" and not number.isdigit():
        raise DesgwRequestError(f"SEASON must be a number or 'auto', not {number!r}")
    _change(obj, "desgw-season", number=None if number == "auto" else int(number), trigger_mjd=trigger_mjd,
            propid=propid, ligoid=ligoid, triggerid=triggerid, bands=bands or None,
            outdir=str(outdir.resolve()) if outdir else None, rc=parse_rc_assignments(rc_items) or None,
            reason=reason, operator=operator)


@desgw.command("add-exposure")
@click.argument("number", metavar="SEASON", type=int)
@click.argument("expnums", metavar="EXPNUM...", type=int, nargs=-1, required=True)
@click.option("--reason", default="added by hand", show_default=True, help="Why (journaled).")
@click.option("--operator", help="On whose behalf (a note journaled beside your own user name).")
@pass_ctx
def add_exposure(obj: Context, number: int, expnums: tuple[int, ...], reason: str, operator: str | None) -> None:
    """Add exposures to a season (its list file does the same)."""
    _change(obj, "desgw-add-exposure", number=number, expnums=list(expnums), reason=reason, operator=operator)


@desgw.command("report")
@click.argument("number", metavar="SEASON", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def report(obj: Context, number: int, as_json: bool) -> None:
    """A season's exposures: state, CCDs, forcefiles, job id; and its post-processing runs."""
    info = _view(obj, "desgw-report", number=number)
    if as_json:
        _print_json(info)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"season {number}: {info['state']}" + (f" (held: {info['held']})" if info["held"] else ""))
    for col in ("expnum", "band", "nite", "state", "CCDs ok/failed", "forcefiles", "job"):
        table.add_column(col)
    for r in info["exposures"]:
        ccds = "" if r["ccds_complete"] is None else f"{r['ccds_complete']}/{r['ccds_failed']}"
        ff = "" if r["forcefiles"] is None else f"{r['forcefiles']}/{r['forcefiles_expected']}"
        table.add_row(str(r["expnum"]), r["band"] or "", r["nite"] or "", r["state"] + (" (held)" if r["held"] else ""),
                      ccds, ff, r["job_id"] or "")
    console = Console()
    console.print(table)
    for run in info["data"].get("postproc_runs", []):
        console.print(f"post-processing: {len(run['expnums'])} exposures, SKIPTO {run.get('skipto')}, "
                      f"status {(run.get('status') or {}).get('state')}, outdir {run.get('outdir')}")
