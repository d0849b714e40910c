"""SEASON allocation: a season is free only if no reservation, record, output tree or database uses it."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from autoproc.desgw.errors import DesgwError

# docs/DESGW.md#seasons: below 100 is SN group and testing; 5000/6000 are the DES wide survey Y5/Y6.
RESERVED_SEASONS: frozenset[int] = frozenset(range(1, 100)) | {5000, 6000}
DEFAULT_RANGE = (100, 9999)

_DP = re.compile(r"^dp(\d+)$")

Reason = Literal["reserved", "known", "dp_dir", "db"]


class SeasonInUseError(DesgwError, ValueError):
    """The requested season is already used; `uses` says why."""

    def __init__(self, season: int, uses: Sequence[SeasonUse]) -> None:
        self.season = season
        self.uses = tuple(uses)
        why = "; ".join(u.describe() for u in uses)
        super().__init__(f"season {season} is already in use: {why}")


class SeasonQueryError(DesgwError, RuntimeError):
    """The season command failed, hung, or printed something that is not a season list."""


class NoFreeSeasonError(DesgwError, RuntimeError):
    """Every season in the policy range is used."""


@dataclass(frozen=True)
class SeasonUse:
    """One reason a season is taken."""

    season: int
    reason: Reason
    detail: str = ""

    def describe(self) -> str:
        if self.reason == "reserved":
            return "reserved (1-99, 5000, 6000)"
        if self.reason == "known":
            return f"known to autoproc{': ' + self.detail if self.detail else ''}"
        if self.reason == "dp_dir":
            return f"output directory exists: {self.detail}"
        return f"listed by the season database query{': ' + self.detail if self.detail else ''}"


@dataclass
class SeasonInventory:
    """Every used season with the reasons; built by `collect_used_seasons`."""

    uses: dict[int, list[SeasonUse]] = field(default_factory=dict)

    def add(self, use: SeasonUse) -> None:
        self.uses.setdefault(use.season, []).append(use)

    def is_used(self, season: int) -> bool:
        return season in self.uses

    def why(self, season: int) -> list[SeasonUse]:
        return list(self.uses.get(season, ()))

    @property
    def seasons(self) -> frozenset[int]:
        return frozenset(self.uses)


def _scandir_names(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def scan_dp_dirs(exp_root: Path | None, forcephoto_root: Path | None) -> dict[int, list[Path]]:
    """`dp{S}` directories under `{exp_root}/*/*/` (nite/expnum) and directly under `forcephoto_root`."""
    found: dict[int, list[Path]] = {}

    def note(entry: os.DirEntry[str]) -> None:
        m = _DP.match(entry.name)
        if m and entry.is_dir():
            found.setdefault(int(m.group(1)), []).append(Path(entry.path))

    if exp_root is not None:
        for nite in _scandir_names(Path(exp_root)):
            if not nite.is_dir():
                continue
            for exp in _scandir_names(Path(nite.path)):
                if not exp.is_dir():
                    continue
                for entry in _scandir_names(Path(exp.path)):
                    note(entry)
    if forcephoto_root is not None:
        for entry in _scandir_names(Path(forcephoto_root)):
            note(entry)
    return found


def parse_season_output(text: str, source: str = "season command") -> set[int]:
    """Integers printed one or more per line (comma or blank separated); a header word SEASON is allowed."""
    seasons: set[int] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        tokens = [t for t in re.split(r"[\s,]+", raw.strip()) if t]
        for token in tokens:
            if token.isdigit():
                seasons.add(int(token))
            elif token.lower() == "season":
                continue
            else:
                raise SeasonQueryError(f"{source}: line {lineno}: {token!r} is not a season number")
    return seasons


def query_command_seasons(argv: Sequence[str], timeout: float = 120.0) -> set[int]:
    """Run `argv` (no shell) and parse the seasons it prints; a failure or a timeout is an error."""
    if not argv:
        raise ValueError("season command argv is empty")
    name = " ".join(argv)
    try:
        proc = subprocess.run(  # noqa: S603 - argv list from config, no shell
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise SeasonQueryError(f"season command timed out after {timeout:g} s: {name}") from None
    except OSError as err:
        raise SeasonQueryError(f"season command could not start: {name}: {err.strerror}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SeasonQueryError(
            f"season command exited {proc.returncode}: {name}" + (f": {' | '.join(tail)}" if tail else "")
        )
    return parse_season_output(proc.stdout, name)


def collect_used_seasons(
    *,
    reserved: Iterable[int] = RESERVED_SEASONS,
    known: Iterable[int] = (),
    exp_root: Path | None = None,
    forcephoto_root: Path | None = None,
    command: Sequence[str] | None = None,
    command_timeout: float = 120.0,
) -> SeasonInventory:
    """Reserved ∪ known ∪ dp{S} directories on disk ∪ the command's seasons, each with its reason."""
    inv = SeasonInventory()
    for s in reserved:
        inv.add(SeasonUse(s, "reserved"))
    for s in known:
        inv.add(SeasonUse(s, "known"))
    for s, paths in sorted(scan_dp_dirs(exp_root, forcephoto_root).items()):
        for p in paths:
            inv.add(SeasonUse(s, "dp_dir", str(p)))
    if command:
        for s in sorted(query_command_seasons(command, command_timeout)):
            inv.add(SeasonUse(s, "db", " ".join(command)))
    return inv


def allocate_season(
    inventory: SeasonInventory,
    requested: int | None = None,
    season_range: tuple[int, int] = DEFAULT_RANGE,
) -> int:
    """The requested season if it is free (else SeasonInUseError), or the lowest free one in the range.

    A requested season outside the policy range is allowed when free: operators do pick
    seasons by convention (1XX per event); the range only bounds automatic choice.
    """
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or requested <= 0:
            raise ValueError(f"season must be a positive integer, got {requested!r}")
        if inventory.is_used(requested):
            raise SeasonInUseError(requested, inventory.why(requested))
        return requested
    low, high = season_range
    if low > high:
        raise ValueError(f"empty season range {low}..{high}")
    for s in range(low, high + 1):
        if not inventory.is_used(s):
            return s
    raise NoFreeSeasonError(f"no free season in {low}..{high}")
