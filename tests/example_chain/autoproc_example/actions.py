"""The example chain's file kind and action (registered by name, autoproc.actions)."""

from __future__ import annotations

from pathlib import Path

from autoproc.actions import ActionContext, FileInfo, Outcome, action, file_kind
from autoproc.config import Config


@file_kind("stamp_file")
def stamp_file(path: Path, config: Config) -> FileInfo:
    """`<key>.stamp` announces the stamp subject `<key>`."""
    return FileInfo(subject=("stamp", path.name.removesuffix(".stamp")))


@action("stamp")
def stamp(ctx: ActionContext) -> Outcome:
    """Write the greeting into the attempt's directory; its path is the evidence."""
    out = ctx.workdir / "stamp.txt"
    out.write_text(f"{ctx.config.example.greeting} {ctx.subject.key}\n")
    return Outcome("stamped", evidence={"stamp": str(out)}, consume=[f["path"] for f in ctx.files])
