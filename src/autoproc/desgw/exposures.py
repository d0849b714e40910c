"""gw_workflow `exposures.list` (DataFrame.to_string output) and plain `.list` files of exposure numbers."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autoproc.desgw.errors import DesgwInputError

# Column order of getExposureInfo.py's query (docs/DESGW.md#exposures-list); awk positions $1..$11.
COLUMNS = (
    "expnum", "nite", "mjd_obs", "radeg", "decdeg", "band",
    "exptime", "propid", "obstype", "teff", "object",
)
BANDS = frozenset({"u", "g", "r", "i", "z", "Y", "VR"})

# Ten whitespace-separated fields, then the free-text OBJECT (may hold spaces, or be empty).
_ROW = re.compile(r"^\s*" + r"(\S+)\s+" * 9 + r"(\S+)(?:\s+(.*?))?\s*$")
_NITE = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class Exposure:
    """One row of `exposures.list`."""

    expnum: int
    nite: str
    mjd_obs: float
    radeg: float
    decdeg: float
    band: str
    exptime: float
    propid: str
    obstype: str
    teff: float | None
    object: str
    line: int


def _float(value: str, column: str, source: str, lineno: int, *, allow_nan: bool = False) -> float | None:
    if allow_nan and value in ("NaN", "nan", "None", "NULL"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise DesgwInputError(source, lineno, f"column {column}: {value!r} is not a number") from None
    if math.isnan(number):
        if allow_nan:
            return None
        raise DesgwInputError(source, lineno, f"column {column}: NaN is not allowed")
    return number


def parse_exposures_list(text: str, source: str = "exposures.list") -> list[Exposure]:
    """Parse `exposures.list`: a header line, then one exposure per line (blank lines ignored).

    Raises DesgwInputError naming the line for a missing header, short rows, non-numeric
    numbers, a bad nite or band, and duplicated exposure numbers.
    """
    lines = text.splitlines()
    header_no = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_no is None:
        raise DesgwInputError(source, None, "empty file: expected a header line starting with 'expnum'")
    header = lines[header_no].split()
    if [h.lower() for h in header[:10]] != list(COLUMNS[:10]):
        raise DesgwInputError(
            source, header_no + 1,
            f"header must start with {' '.join(COLUMNS[:10])} (got {' '.join(header[:10]) or 'nothing'})",
        )
    rows: list[Exposure] = []
    seen: dict[int, int] = {}
    for index in range(header_no + 1, len(lines)):
        raw = lines[index]
        lineno = index + 1
        if not raw.strip():
            continue
        m = _ROW.match(raw)
        if m is None:
            raise DesgwInputError(source, lineno, f"expected at least 10 columns, got {len(raw.split())}")
        f = m.groups()
        if not f[0].isdigit():
            raise DesgwInputError(source, lineno, f"column expnum: {f[0]!r} is not a positive integer")
        expnum = int(f[0])
        if not _NITE.match(f[1]):
            raise DesgwInputError(source, lineno, f"column nite: {f[1]!r} is not YYYYMMDD")
        if f[5] not in BANDS:
            raise DesgwInputError(source, lineno, f"column band: {f[5]!r} is not one of {sorted(BANDS)}")
        if expnum in seen:
            raise DesgwInputError(source, lineno, f"expnum {expnum} already listed on line {seen[expnum]}")
        seen[expnum] = lineno
        rows.append(Exposure(
            expnum=expnum,
            nite=f[1],
            mjd_obs=_float(f[2], "mjd_obs", source, lineno),  # type: ignore[arg-type]
            radeg=_float(f[3], "radeg", source, lineno),  # type: ignore[arg-type]
            decdeg=_float(f[4], "decdeg", source, lineno),  # type: ignore[arg-type]
            band=f[5],
            exptime=_float(f[6], "exptime", source, lineno),  # type: ignore[arg-type]
            propid=f[7],
            obstype=f[8],
            teff=_float(f[9], "teff", source, lineno, allow_nan=True),
            object=f[10] or "",
            line=lineno,
        ))
    return rows


def read_exposures_list(path: str | os.PathLike[str]) -> list[Exposure]:
    """Read and parse an `exposures.list` file."""
    path = Path(path)
    return parse_exposures_list(path.read_text(), str(path))


def find_exposure(exposures: Iterable[Exposure], expnum: int) -> Exposure | None:
    """The row whose expnum equals `expnum` exactly (the original matched substrings of the line)."""
    for exp in exposures:
        if exp.expnum == expnum:
            return exp
    return None


def index_exposures(exposures: Iterable[Exposure]) -> dict[int, Exposure]:
    """Rows keyed by exact exposure number."""
    return {exp.expnum: exp for exp in exposures}


def parse_expnum_list(text: str, source: str = "exposures list") -> list[int]:
    """Parse a `.list` of exposure numbers: one integer per line; blanks and `#` comments ignored.

    Order is kept and duplicates are an error (they would be processed twice).
    """
    expnums: list[int] = []
    seen: dict[int, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not line.isdigit() or not line.isascii():
            raise DesgwInputError(source, lineno, f"{line!r} is not an exposure number (one integer per line)")
        expnum = int(line)
        if expnum in seen:
            raise DesgwInputError(source, lineno, f"expnum {expnum} already listed on line {seen[expnum]}")
        seen[expnum] = lineno
        expnums.append(expnum)
    return expnums


def read_expnum_list(path: str | os.PathLike[str]) -> list[int]:
    """Read and parse a `.list` file of exposure numbers."""
    path = Path(path)
    return parse_expnum_list(path.read_text(), str(path))


def format_expnum_list(expnums: Sequence[int]) -> str:
    """The text of a `.list` file as run_postproc reads it: one integer per line, nothing else."""
    for e in expnums:
        if isinstance(e, bool) or not isinstance(e, int) or e <= 0:
            raise ValueError(f"not an exposure number: {e!r}")
    return "".join(f"{e}\n" for e in expnums)
