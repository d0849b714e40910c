"""The `autoproc` command line: thin click commands over `autoproc.script`."""

from autoproc.cli.commands import main

__all__ = ["main"]
