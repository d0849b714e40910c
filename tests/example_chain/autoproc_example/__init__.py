"""The smallest working chain (docs/CHAINS.md): a `stamp` subject is announced by a `*.stamp`
file, then stamped (one action, which writes the configured greeting into its working
directory) and done. It has a config section (`example:`), a CLI group (`autoproc example
greet`), one machine (stamp.yaml) and one report view. tests/test_chains.py installs it
through a real `autoproc.chains` entry point (a dist-info directory on sys.path)."""

from __future__ import annotations

from pathlib import Path

import click
from pydantic import Field

from autoproc.chain import Chain, KindView
from autoproc.config import Section

HERE = Path(__file__).resolve().parent


class ExampleConfig(Section):
    """The example chain's section: what a stamp says."""

    greeting: str = Field(default="hello", min_length=1, description="Written into every stamp.")


@click.group("example")
def example() -> None:
    """The example chain's tools."""


@example.command("greet")
@click.pass_obj
def greet(obj) -> None:
    """Print the configured greeting."""
    click.echo(obj.config.example.greeting)


chain = Chain(
    name="example",
    description="The example chain of docs/CHAINS.md.",
    config=ExampleConfig,
    cli="autoproc_example:example",
    machines=(HERE / "stamp.yaml",),
    plugins=("autoproc_example.actions",),
    views={"stamp": KindView("Stamps × stages", order=0)},
)
