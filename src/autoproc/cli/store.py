"""`autoproc store …`: check, back up, restore and rebuild the state database (see RELIABILITY.md)."""

from __future__ import annotations

from pathlib import Path

import click

from autoproc.cli.commands import Context, pass_ctx


@click.group("store")
def store() -> None:
    """The state database: integrity check, backups, restore, rebuild from the evidence."""


@store.command("check")
@pass_ctx
def check(obj: Context) -> None:
    """SQLite's full integrity check of the state database (exit 65 and what to do if damaged)."""
    from autoproc.backup import check_file

    check_file(obj.config.db, full=True)
    click.echo(f"{obj.config.db}: OK (integrity_check)")


@store.command("backup")
@pass_ctx
def backup(obj: Context) -> None:
    """Write a backup now (safe while the daemon runs), keeping the newest `backup.keep`."""
    from autoproc.backup import take_backup

    made = take_backup(obj.config, why="by hand")
    click.echo(f"wrote {made.path} ({made.size} bytes, {made.seconds:.1f} s)")


@store.command("restore")
@click.argument("backup_path", metavar="[BACKUP]", required=False, type=click.Path(path_type=Path))
@pass_ctx
def restore(obj: Context, backup_path: Path | None) -> None:
    """Put BACKUP (default: the newest good one) back; the daemon must be stopped."""
    from autoproc.backup import restore as do_restore

    chosen, aside, skipped = do_restore(obj.config, backup_path)
    for line in skipped:
        click.echo(f"skipped {line}", err=True)
    click.echo(f"restored {obj.config.db} from {chosen}" + (f"; the replaced file is kept as {aside}" if aside else ""))
    click.echo("start the daemon: it finds the work done since the backup from the evidence")


@store.command("list")
@pass_ctx
def list_(obj: Context) -> None:
    """The backups on disk, newest first."""
    from autoproc.backup import backups

    for p in backups(obj.config.backup.directory):
        click.echo(f"{p}  {p.stat().st_size} bytes")


@store.command("rebuild")
@click.option("--replace", is_flag=True, help="Replace an existing database (kept beside it, renamed).")
@click.option("--operator", default=None, help="Who rebuilds (journaled; default: the user running it).")
@pass_ctx
def rebuild(obj: Context, replace: bool, operator: str | None) -> None:
    """No backup at all: make the database again from the evidence (the daemon must be stopped)."""
    from autoproc.rebuild import rebuild as do_rebuild
    from autoproc.script.override import operator_name

    report = do_rebuild(obj.config, obj.machines(), replace=replace, operator=operator_name(operator))
    if report.aside is not None:
        click.echo(f"the replaced database is kept as {report.aside}")
    if report.backups:
        click.echo(f"note: {len(report.backups)} backups exist (newest {report.backups[0].name}); "
                   "`autoproc store restore` would have kept the journal up to it", err=True)
    for kind, key, state, source in report.created:
        click.echo(f"{kind} {key}: {state} (rebuilt from {source})")
    if report.kinds_without_hook:
        click.echo(f"no rebuild for kinds {', '.join(report.kinds_without_hook)} (their plugins provide none)")
    click.echo(f"rebuilt {obj.config.db}: {len(report.created)} subjects")
    click.echo(f"lost: {report.lost}")
    click.echo("start the daemon: its actions find the rest from the evidence, and submit nothing twice")
