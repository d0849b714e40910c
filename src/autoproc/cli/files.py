"""`autoproc files …`: intake files by status with their reasons; send bad ones back."""

from __future__ import annotations

import json
import os

import click

from autoproc.cli.commands import Context, fail, pass_ctx


@click.group("files", invoke_without_command=True)
@click.option("--status", help="Only this status (ready, consumed, bad, recheck).")
@click.option("--root", help="Only files of this watch root.")
@click.option("--limit", default=200, show_default=True, help="Files listed at most.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def files(obj: Context, status: str | None, root: str | None, limit: int, as_json: bool) -> None:
    """Intake files by status, with the reason and cause of each bad verdict."""
    if click.get_current_context().invoked_subcommand is not None:
        return
    rows = obj.store(readonly=True).files(status=status, root=root, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=1))
        return
    for row in rows:
        why = f"  [{row['cause']}] {row['reason']}" if row["status"] in ("bad", "recheck") else ""
        click.echo(f"{row['status']:9} {row['root']:12} {row['path']}{why}")


@files.command("retry")
@click.argument("paths", nargs=-1)
@click.option("--bad", "all_bad", is_flag=True, help="Every bad file (of --root, if given).")
@click.option("--root", help="With --bad: only this watch root's.")
@click.option("--reason", default="examine again", show_default=True, help="Why (journaled).")
@click.option("--operator", help="Who (default: $USER).")
@pass_ctx
def retry(obj: Context, paths: tuple[str, ...], all_bad: bool, root: str | None, reason: str,
          operator: str | None) -> None:
    """Have the daemon examine bad files again (PATH…, or --bad): now if it runs, else at its start."""
    from autoproc.script.override import operator_name

    if bool(paths) == all_bad:
        fail("name the files (PATH…) or give --bad, not both")
    if root and not all_bad:
        fail("--root goes with --bad")
    store = obj.store()
    if all_bad:
        wanted = [f["path"] for f in store.files(status="bad", root=root)]
    else:
        # As shown by `autoproc files` (absolute), or relative to here.
        wanted = [p if store.file(p) is not None else os.path.abspath(p) for p in paths]
        unknown = [p for p in wanted if store.file(p) is None]
        if unknown:
            fail(f"not intake files autoproc knows: {', '.join(unknown)} (see `autoproc files`)")
    marked = store.request_recheck(wanted, actor=operator_name(operator), reason=reason)
    for path in wanted:
        click.echo(f"{'sent back' if path in marked else 'not bad, left as it is'}: {path}")
