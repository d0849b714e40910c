"""Forced-photometry input check (docs/DESGW.md#thresholds): one `.fits` and one `.psf` per complete CCD."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoproc.desgw.ccd import FsCounter

Verdict = Literal["pass", "short", "too_many"]


@dataclass(frozen=True)
class ForcefileReport:
    """Counts and verdict for one exposure's `forcephoto/images/dp{S}/{nite}/{exp}/` directory."""

    expnum: int
    band: str
    directory: Path
    directory_exists: bool
    count: int
    expected: int
    verdict: Verdict
    missing_fits: tuple[int, ...]
    missing_psf: tuple[int, ...]

    @property
    def sufficient(self) -> bool:
        """More than half of the expected files and no more than expected."""
        return self.verdict == "pass"

    @property
    def all_present(self) -> bool:
        return self.verdict == "pass" and self.count == self.expected

    def summary(self) -> dict[str, object]:
        return {
            "expnum": self.expnum, "band": self.band, "count": self.count, "expected": self.expected,
            "verdict": self.verdict, "missing_fits": list(self.missing_fits),
            "missing_psf": list(self.missing_psf),
        }


def forcephoto_dir(forcephoto_root: Path, season: int, nite: str, expnum: int) -> Path:
    """`{forcephoto_root}/dp{S}/{nite}/{exp}` (forcephoto_root is `…/gw/forcephoto/images`)."""
    return Path(forcephoto_root) / f"dp{season}" / str(nite) / str(expnum)


def verdict_for(count: int, expected: int) -> Verdict:
    """pass when expected/2 < count <= expected; short when count <= expected/2; too_many above."""
    if count > expected:
        return "too_many"
    if 2 * count <= expected:
        return "short"
    return "pass"


def check_forcefiles(
    forcephoto_root: Path,
    season: int,
    nite: str,
    expnum: int,
    band: str,
    complete_chips: Iterable[int],
    fs: FsCounter | None = None,
    not_before: float | None = None,
) -> ForcefileReport:
    """Count files matching `*_{band}_*` (as the original glob, dotfiles excluded) and judge them.

    The missing lists name complete CCDs without a `.fits` / without a `.psf` whose name
    carries `_{band}_{CC}`; they are filled whatever the verdict, for the report. Files older
    than `not_before` (written before an operator's rerun) are not counted.
    """
    fs = fs or FsCounter()
    chips = sorted(set(complete_chips))
    expected = 2 * len(chips)
    directory = forcephoto_dir(forcephoto_root, season, nite, expnum)
    entries = fs.scandir(directory)
    names = [e.name for e in fs.since(entries or (), not_before) if not e.name.startswith(".")]
    marker = f"_{band}_"
    matching = [n for n in names if marker in n]
    chip_re = re.compile(rf"_{re.escape(band)}_(\d\d)(?=[_.+-]|$)")
    fits: set[int] = set()
    psf: set[int] = set()
    for name in matching:
        m = chip_re.search(name)
        if not m:
            continue
        chip = int(m.group(1))
        if name.endswith(".fits"):
            fits.add(chip)
        elif name.endswith(".psf"):
            psf.add(chip)
    count = len(matching)
    return ForcefileReport(
        expnum=expnum,
        band=band,
        directory=directory,
        directory_exists=entries is not None,
        count=count,
        expected=expected,
        verdict=verdict_for(count, expected),
        missing_fits=tuple(c for c in chips if c not in fits),
        missing_psf=tuple(c for c in chips if c not in psf),
    )
