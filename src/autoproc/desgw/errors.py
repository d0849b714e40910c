"""Errors raised by the DESGW domain layer."""

from __future__ import annotations

from pathlib import Path


class DesgwError(Exception):
    """Base class of every DESGW domain error."""


class DesgwInputError(DesgwError, ValueError):
    """A malformed input file or value; the message names the file, the line and what was wrong."""

    def __init__(self, source: str | Path, line: int | None, problem: str) -> None:
        self.source = str(source)
        self.line = line
        self.problem = problem
        where = f"{self.source}:{line}" if line is not None else self.source
        super().__init__(f"{where}: {problem}")
