"""Per-CCD status of a search exposure from its dCache output tree (docs/DESGW.md#ccd-status), stale FAILs ignored.

Layout: `{exp_root}/{nite}/{expnum}/dp{S}/{band}_{CC}/` holding the outputs tarball
`outputs_dp{S}_{nite}_{exp}_{band}_{CC}.tar.gz`, `RUNnn_<step>.FAIL` files, and for a CCD
without overlapping templates `NOOVERLAPS.FAIL`. SEdiff's copyback writes the tarball even
when a step failed and copies the FAILs beside it in the same step, so a FAIL and its
tarball land seconds apart, in either order of mtimes: only a FAIL that is older than a
success marker (`RUN28_combined_prepForcePhoto.LOG`) or older than the tarball by more than
one copyback (`copyback_slack`) is left from an earlier run.

The sweep costs one `scandir` of `dp{S}`, one `scandir` per chip directory, and a `stat`
only where a FAIL coexists with the tarball or the success marker.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

# Post-Processing/steplist.txt, in order: the position is the step number r.
STEP_NAMES: tuple[str, ...] = (
    "RUN01_expose_prepData", "RUN02_expose_makeStarCat", "RUN03_expose_mkWStemplate",
    "RUN04_expose_stripPV", "RUN05_expose_makeWeight", "RUN06_expose_sex1",
    "RUN07_combined_astromScamp", "RUN08_combined_astromHeaders", "RUN09_expose_sex2",
    "RUN10_expose_psfex1", "RUN11_combined+expose_doFake", "RUN12_combined_swarpSEARCH",
    "RUN13_combined_sexCoadd", "RUN14_combined_psfexCoadd", "RUN15_combined_ingest",
    "RUN16_combined+expose_distorTEMPLATES", "RUN17_combined+expose_sexDistorTEMPLATES",
    "RUN18_combined+expose_hotpants", "RUN19_combined_coaddWSdiff", "RUN20_combined_sexDiffim",
    "RUN21_combined_mergeDiffim", "RUN22_combined+expose_filterObj", "RUN23_combined_makeStamps",
    "RUN24_combined_autoScan", "RUN25_combined_makeCand", "RUN26_combined_fakeForcePhoto",
    "RUN27_combined_fakeMatch", "RUN28_combined_prepForcePhoto",
)
RUN01_NAME = STEP_NAMES[0]
# The RUN01 step has started: its script (what checkoutputs looks for) or its log.
RUN01_FILES = (RUN01_NAME, RUN01_NAME + ".LOG")
RUN28_LOG = STEP_NAMES[27] + ".LOG"
RUN28_FAIL = STEP_NAMES[27] + ".FAIL"
NOOVERLAPS_FAIL = "NOOVERLAPS.FAIL"

# DECam has 62 CCDs; the search DAG skips 2, 31 and 61 (docs/DESGW.md#dagmaker).
ALL_CHIPS: tuple[int, ...] = tuple(range(1, 63))
SEARCH_CHIPS: tuple[int, ...] = tuple(c for c in ALL_CHIPS if c not in (2, 31, 61))

# Codes of postproc.checkoutputs, plus two of ours for what it could not express.
CODE_DONE = 0
CODE_NEVER_STARTED = -1
CODE_INCOMPLETE = -9
CODE_NO_OVERLAPS = -2
CODE_MISSING = -3

Status = Literal["done", "failed", "no_overlaps", "never_started", "incomplete", "missing"]

# One copyback (tarball, then every FAIL, through dCache) is well within this; an earlier
# run's FAIL is older by at least one SEdiff job, which takes hours.
COPYBACK_SLACK_SECONDS = 30 * 60.0

_RUN_FAIL = re.compile(r"^RUN(\d\d)_.+\.FAIL$")


@dataclass
class FsCounter:
    """Counts the filesystem calls a sweep makes (for benchmarks and to keep sweeps honest)."""

    calls: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def scandir(self, path: str | os.PathLike[str]) -> list[os.DirEntry[str]] | None:
        """Entries of `path`, or None if it does not exist (one `scandir` call)."""
        self.calls["scandir"] += 1
        try:
            with os.scandir(path) as it:
                return list(it)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def mtime(self, entry: os.DirEntry[str]) -> float:
        """mtime of a directory entry (one `stat`; DirEntry caches it)."""
        self.calls["stat"] += 1
        return entry.stat().st_mtime

    def is_dir(self, entry: os.DirEntry[str]) -> bool:
        # d_type comes with the scandir result on Linux: usually no extra syscall.
        return entry.is_dir()

    def since(self, entries: Iterable[os.DirEntry[str]], not_before: float | None) -> list[os.DirEntry[str]]:
        """The entries, without the files older than `not_before` (set aside by a rerun);
        a `stat` per entry only when there is such a time."""
        if not_before is None:
            return list(entries)
        return [e for e in entries if self.is_dir(e) or self.mtime(e) >= not_before]


@dataclass(frozen=True)
class ChipStatus:
    """One CCD: its checkoutputs-style code, the FAIL that decided it, and FAILs ignored as stale."""

    chip: int
    code: int
    status: Status
    fail_file: str | None = None
    stale_fails: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.status == "failed":
            return f"RUN{self.code:02d}"
        return self.status


@dataclass(frozen=True)
class ExposureCcdReport:
    """The sweep of one exposure's `dp{S}` directory."""

    expnum: int
    nite: str
    band: str
    season: int
    dp_dir: Path
    dp_dir_exists: bool
    input_files: bool
    chips: tuple[ChipStatus, ...]
    extra_dirs: tuple[str, ...] = ()

    def _count(self, *statuses: str) -> int:
        return sum(1 for c in self.chips if c.status in statuses)

    @property
    def complete(self) -> int:
        return self._count("done")

    @property
    def failed(self) -> int:
        return self._count("failed", "no_overlaps")

    @property
    def incomplete(self) -> int:
        return self._count("never_started", "incomplete")

    @property
    def missing(self) -> int:
        return self._count("missing")

    @property
    def stale(self) -> int:
        return sum(len(c.stale_fails) for c in self.chips)

    @property
    def complete_chips(self) -> tuple[int, ...]:
        return tuple(c.chip for c in self.chips if c.status == "done")

    @property
    def failures_by_step(self) -> dict[str, int]:
        """e.g. {'RUN05': 3, 'NOOVERLAPS': 1}, in step order."""
        counts: Counter[str] = Counter()
        for c in self.chips:
            if c.status == "failed":
                counts[f"RUN{c.code:02d}"] += 1
            elif c.status == "no_overlaps":
                counts["NOOVERLAPS"] += 1
        return dict(sorted(counts.items()))

    @property
    def codes(self) -> dict[int, int]:
        return {c.chip: c.code for c in self.chips}

    def summary(self) -> dict[str, object]:
        """Counts as plain data, for the attempt's evidence."""
        return {
            "expnum": self.expnum, "nite": self.nite, "band": self.band, "season": self.season,
            "chips": len(self.chips), "complete": self.complete, "failed": self.failed,
            "incomplete": self.incomplete, "missing": self.missing, "stale_fails": self.stale,
            "failures_by_step": self.failures_by_step, "dp_dir_exists": self.dp_dir_exists,
        }


def tarball_name(season: int, nite: str, expnum: int, band: str, chip: int) -> str:
    """`outputs_dp{S}_{nite}_{exp}_{band}_{CC}.tar.gz` (CC zero-padded)."""
    return f"outputs_dp{season}_{nite}_{expnum}_{band}_{chip:02d}.tar.gz"


def chip_dir_name(band: str, chip: int) -> str:
    """`{band}_{CC}`."""
    return f"{band}_{chip:02d}"


def dp_dir(exp_root: Path, nite: str, expnum: int, season: int) -> Path:
    """`{exp_root}/{nite}/{expnum}/dp{S}`."""
    return Path(exp_root) / str(nite) / str(expnum) / f"dp{season}"


def classify_chip(
    chip: int,
    entries: Iterable[os.DirEntry[str]],
    tarball: str,
    fs: FsCounter,
    copyback_slack: float = COPYBACK_SLACK_SECONDS,
    not_before: float | None = None,
) -> ChipStatus:
    """Code of one chip directory from its entries (docs/DESGW.md#ccd-status, with the stale-FAIL rule).

    A FAIL is stale (from an earlier run, ignored) when it is older than the success marker
    `RUN28_combined_prepForcePhoto.LOG` (a run that failed earlier never writes it; the RUN28
    FAIL itself comes after its own log), or older than the tarball by more than
    `copyback_slack` seconds. A FAIL from the same copyback as the tarball, older or newer,
    is a failure of that run. Files older than `not_before` (the outputs of the runs before
    an operator's rerun) are not looked at.
    """
    by_name = {e.name: e for e in fs.since(entries, not_before)}
    tar_entry = by_name.get(tarball)
    marker = by_name.get(RUN28_LOG)
    fails: list[tuple[int, str]] = []
    for name in by_name:
        m = _RUN_FAIL.match(name)
        if m:
            fails.append((int(m.group(1)), name))
        elif name == NOOVERLAPS_FAIL:
            fails.append((99, name))  # sorts after every RUN step
    fails.sort()
    stale: list[tuple[int, str]] = []
    live: list[tuple[int, str]] = []
    tar_mtime = fs.mtime(tar_entry) if fails and tar_entry is not None else None
    marker_mtime = fs.mtime(marker) if marker is not None and any(n != RUN28_FAIL for _, n in fails) else None
    for step, name in fails:
        fail_mtime = fs.mtime(by_name[name]) if tar_mtime is not None or marker_mtime is not None else None
        older_than_marker = (marker_mtime is not None and fail_mtime is not None and name != RUN28_FAIL
                             and fail_mtime < marker_mtime)
        older_than_tar = tar_mtime is not None and fail_mtime is not None and fail_mtime < tar_mtime - copyback_slack
        (stale if older_than_marker or older_than_tar else live).append((step, name))
    stale_t = tuple(name for _, name in stale)
    if live:
        step, name = live[0]
        if name == NOOVERLAPS_FAIL:
            return ChipStatus(chip, CODE_NO_OVERLAPS, "no_overlaps", name, stale_t)
        return ChipStatus(chip, step, "failed", name, stale_t)
    has_tar = tar_entry is not None
    if not has_tar and not any(name in by_name for name in RUN01_FILES):
        return ChipStatus(chip, CODE_NEVER_STARTED, "never_started", None, stale_t)
    if not has_tar and marker is None:
        return ChipStatus(chip, CODE_INCOMPLETE, "incomplete", None, stale_t)
    return ChipStatus(chip, CODE_DONE, "done", None, stale_t)


def sweep_exposure(
    exp_root: Path,
    nite: str,
    expnum: int,
    season: int,
    band: str,
    chips: Iterable[int] = SEARCH_CHIPS,
    fs: FsCounter | None = None,
    copyback_slack: float = COPYBACK_SLACK_SECONDS,
    not_before: float | None = None,
) -> ExposureCcdReport:
    """Classify every chip of one exposure. A missing `dp{S}` or chip directory is `missing`;
    files older than `not_before` are left out (see `classify_chip`)."""
    fs = fs or FsCounter()
    chips = tuple(chips)
    top = dp_dir(exp_root, nite, expnum, season)
    entries = fs.scandir(top)
    if entries is None:
        return ExposureCcdReport(
            expnum, str(nite), band, season, top, False, False,
            tuple(ChipStatus(c, CODE_MISSING, "missing") for c in chips),
        )
    wanted = {chip_dir_name(band, c): c for c in chips}
    present: dict[int, os.DirEntry[str]] = {}
    extra: list[str] = []
    input_files = False
    for e in entries:
        if e.name == "input_files":
            input_files = True
        elif e.name in wanted and fs.is_dir(e):
            present[wanted[e.name]] = e
        elif e.name.startswith(f"{band}_") and not e.name.startswith("."):
            extra.append(e.name)
    results: list[ChipStatus] = []
    for c in chips:
        entry = present.get(c)
        listing = fs.scandir(entry.path) if entry is not None else None
        if listing is None:
            results.append(ChipStatus(c, CODE_MISSING, "missing"))
            continue
        results.append(classify_chip(c, listing, tarball_name(season, nite, expnum, band, c), fs,
                                     copyback_slack, not_before))
    return ExposureCcdReport(
        expnum, str(nite), band, season, top, True, input_files, tuple(results), tuple(sorted(extra))
    )


def sweep_exposures(
    exp_root: Path,
    season: int,
    exposures: Iterable[tuple[int, str, str]],
    chips: Iterable[int] = SEARCH_CHIPS,
    fs: FsCounter | None = None,
    copyback_slack: float = COPYBACK_SLACK_SECONDS,
) -> Iterator[ExposureCcdReport]:
    """`sweep_exposure` for each (expnum, nite, band)."""
    fs = fs or FsCounter()
    chips = tuple(chips)
    for expnum, nite, band in exposures:
        yield sweep_exposure(exp_root, nite, expnum, season, band, chips, fs, copyback_slack)


def checkoutputs_row(report: ExposureCcdReport) -> Mapping[str, object]:
    """A checkoutputs.csv-like row: per-chip codes, unfinished (not started, incomplete or missing),
    successes (code 0) and fraction = successes / chips."""
    row: dict[str, object] = {"expnum": report.expnum}
    for c in report.chips:
        row[f"ccd{c.chip:02d}"] = c.code
    successes = report.complete
    row["unfinished"] = report.incomplete + report.missing
    row["successes"] = successes
    row["fraction"] = successes / len(report.chips) if report.chips else 0.0
    return row
