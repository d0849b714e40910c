"""`autoproc deep …`: DEEP repository tools (thin commands over `autoproc.deep.script`)."""

from __future__ import annotations

import click

from autoproc.cli.commands import Context, pass_ctx


@click.group("deep")
def deep() -> None:
    """DEEP nights on the Rubin middleware."""


@deep.command("init")
@click.option("--operator", help="Who (journaled with the template subjects; default: $USER).")
@pass_ctx
def init(obj: Context, operator: str | None) -> None:
    """Set up the Butler repo once (idempotent): create, instrument, skymap, defects, fakes,
    refcats, and a subject per configured template coadd."""
    from autoproc.deep.script import init as deep_init
    from autoproc.script.override import operator_name

    for line in deep_init(obj.config, obj.store(), obj.machines(), operator=operator_name(operator)):
        click.echo(line)
