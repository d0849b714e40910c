"""Batch ingest of DECam raws into ``DECam/raw/all``, plus a cheap per-file header validator.

Two backends:

``headers`` (the default; works with the PyPI middleware alone)
    Reads the FITS headers with astropy, builds the dimension records itself (``day_obs``, ``group``,
    ``exposure`` and, for science exposures, one-to-one visits with ``visit_definition``,
    ``visit_system(_membership)`` and ``visit_detector_region``), inserts them idempotently
    (``syncDimensionData``) and calls ``Butler.ingest`` once for the whole batch. The translation follows
    astro_metadata_translator's ``DecamTranslator``: ``OBSTYPE`` ``object`` → ``science``, others as they
    are; ``physical_filter`` is ``FILTER`` stripped, except that a zero gets ``solid plate 0.0 0.0``
    (its ``fix_header``); exposure id = ``EXPNUM``; ``obs_id`` = ``OBSID``; detector = ``CCDNUM``.

``obs_base``
    ``lsst.obs.base.RawIngestTask`` + ``DefineVisitsTask``, for sites where obs_base/obs_decam are
    installed (they are not on PyPI). Selected explicitly; it raises ``ImportError`` otherwise.

The night (``day_obs``):

- With an ``exposures.ecsv`` manifest, the manifest's ``night`` column (NOIRLab ``caldat``) is used, and
  a file is ingestible only if its md5 equals the manifest's ``md5sum`` (a partial download never gets in).
- Otherwise from ``DATE-OBS`` by ``day_obs_rule``:
  ``"night"`` (default) = TAI date of (start − 12 h), the Rubin/Cerro Pachón convention
  (``_observing_day_offset = 12 h`` in the Rubin translators); for CTIO (UTC−4/−3) it equals the local
  night's calendar date (NOIRLab ``caldat``) for anything taken between 08:00 and 08:00 local, so
  afternoon calibrations and the following night's science share one ``day_obs``.
  ``"obs_decam"`` = TAI date of the start with no offset: what obs_decam ingest gives, because
  ``DecamTranslator`` defines no observing-day offset and the base ``to_observing_day`` then uses the
  TAI date of ``datetime_begin``. With that rule science taken after 20:00/21:00 local lands on the
  next ``day_obs``, which is why it is not the default.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.time import Time, TimeDelta

from autoproc.deep import instrument as inst
from autoproc.deep.decam import CCDNUM_OF_DETPOS, DETECTORS, FILTERS, OPAQUE_FILTER

log = logging.getLogger(__name__)

__all__ = [
    "RAW_RUN",
    "Completeness",
    "IngestResult",
    "IngestedFile",
    "Manifest",
    "ManifestRow",
    "RawFileError",
    "RawInfo",
    "define_visits",
    "completeness",
    "expected_detectors",
    "ingest_raws",
    "load_manifest",
    "manifest_row",
    "observing_night",
    "read_raw_header",
    "register_raw_type",
]

RAW_RUN = "DECam/raw/all"
INSTRUMENT = "DECam"
REQUIRED_KEYS = ("EXPNUM", "DATE-OBS", "OBSTYPE", "EXPTIME")
OBSTYPE_TO_BUTLER = {"object": "science"}
VISIT_SYSTEMS = {0: "one-to-one"}
_MD5_PREFIX = re.compile(r"^[0-9a-f]{32}_")


class RawFileError(ValueError):
    """A raw that cannot be ingested; ``reason`` says why in one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def observing_night(t: Time, rule: str = "night") -> int:
    """YYYYMMDD ``day_obs`` of an exposure starting at ``t`` (see the module docstring for the rules)."""
    tai = t.tai
    if rule == "night":
        tai = tai - TimeDelta(12 * 3600, format="sec", scale="tai")
    elif rule != "obs_decam":
        raise ValueError(f"unknown day_obs rule {rule!r} (expected 'night' or 'obs_decam')")
    return int(tai.strftime("%Y%m%d"))


def day_obs_timespan(day_obs: int, rule: str = "night") -> Any:
    from lsst.daf.butler import Timespan

    s = f"{day_obs:08d}"
    start = Time(f"{s[:4]}-{s[4:6]}-{s[6:]}T00:00:00", scale="tai")
    if rule == "night":
        start = start + TimeDelta(12 * 3600, format="sec", scale="tai")
    return Timespan(start, start + TimeDelta(86400, format="sec", scale="tai"))


def _sexagesimal(value: Any, hours: bool) -> float | None:
    from astropy.coordinates import Angle

    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Angle(str(value).strip(), unit="hourangle" if hours else "deg").deg)
    except Exception:
        return None


@dataclass(frozen=True)
class RawInfo:
    """What ingest needs from one raw file (one exposure, one or more CCDs)."""

    path: Path
    expnum: int
    obstype: str  # DECam OBSTYPE, lower case: "zero", "dome flat", "object", ...
    observation_type: str  # butler value: "science" for "object"
    physical_filter: str
    date_obs: Time  # UTC start
    exptime: float
    darktime: float
    detectors: tuple[int, ...]
    day_obs: int
    obs_id: str = ""
    propid: str = ""
    object: str = ""
    ra: float | None = None
    dec: float | None = None
    zenith_angle: float | None = None
    azimuth: float | None = None
    nextend: int | None = None  # the primary's NEXTEND, when it has one
    n_extensions: int = 0  # extensions actually in the file

    @property
    def is_science(self) -> bool:
        return self.observation_type == "science"

    @property
    def date_end(self) -> Time:
        return self.date_obs + TimeDelta(self.exptime, format="sec")

    @property
    def group(self) -> str:
        return str(self.expnum)


def _check_intact(path: Path, hdul: Any) -> None:
    """Every HDU's data lies inside the file. A file that ends on an HDU boundary passes: whether
    HDUs are missing after it is `completeness`'s question, not damage."""
    size = path.stat().st_size
    if size % 2880:
        raise RawFileError(path, f"truncated FITS file: {size} bytes is not a multiple of 2880")
    for i in range(len(hdul)):
        info = hdul.fileinfo(i)
        if info is None:
            continue
        end = info["datLoc"] + info["datSpan"]
        if end > size:
            raise RawFileError(path, f"truncated FITS file: HDU {i} needs {end} bytes, file has {size}")


def read_raw_header(path: str | os.PathLike[str], *, day_obs_rule: str = "night",
                    known_filters: Iterable[str] | None = None) -> RawInfo:
    """Open a raw's headers and check it is ingestible; raises `RawFileError` (a `ValueError`) if not.

    Checks: a readable, intact FITS file (every HDU's data fits in the file), ``INSTRUME`` is DECam when
    present, the required keys ``EXPNUM``, ``DATE-OBS``, ``OBSTYPE``, ``EXPTIME`` (and ``FILTER`` unless a
    zero), a known physical filter, at least one image extension with ``CCDNUM``, each CCDNUM once, and
    each HDU's ``DETPOS`` (when present) the DECam name of its ``CCDNUM``. Whether the file has all the
    HDUs it should is `completeness`.
    """
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    path = Path(path)
    filters = set(known_filters) if known_filters is not None else set(FILTERS)
    if not path.is_file():
        raise RawFileError(path, "no such file")
    try:
        with open(path, "rb") as f:
            magic = f.read(30)
    except OSError as err:
        raise RawFileError(path, f"cannot read: {err.strerror}") from None
    if not magic.startswith(b"SIMPLE  ="):
        raise RawFileError(path, "not a FITS file (no SIMPLE card at the start)")
    size = path.stat().st_size
    if size % 2880:
        raise RawFileError(path, f"truncated FITS file: {size} bytes is not a multiple of 2880")
    try:
        with warnings.catch_warnings():
            # astropy only warns about a damaged HDU and drops it; treat that as an error.
            warnings.simplefilter("error", VerifyWarning)
            hdul = fits.open(path, memmap=False, lazy_load_hdus=False, ignore_missing_end=False)
        with hdul:
            _check_intact(path, hdul)
            n_extensions = len(hdul) - 1
            primary = hdul[0].header
            ext = [(i, h.header) for i, h in enumerate(hdul) if i > 0 and "CCDNUM" in h.header]
            if not ext and "CCDNUM" in primary:
                ext = [(0, primary)]
    except RawFileError:
        raise
    except Exception as err:  # astropy raises OSError, ValueError, VerifyError...
        msg = " ".join(str(err).split())
        raise RawFileError(path, f"unreadable FITS: {type(err).__name__}: {msg}") from None

    missing = [k for k in REQUIRED_KEYS if k not in primary or primary[k] in (None, "")]
    if missing:
        raise RawFileError(path, f"missing header key(s): {', '.join(missing)}")
    instrume = str(primary.get("INSTRUME", "DECam")).strip()
    if instrume.lower() != "decam":
        raise RawFileError(path, f"INSTRUME is {instrume!r}, not DECam")
    obstype = str(primary["OBSTYPE"]).strip().lower()
    if obstype == "zero":
        physical_filter = OPAQUE_FILTER  # astro_metadata_translator DecamTranslator.fix_header
    else:
        if "FILTER" not in primary or not str(primary["FILTER"]).strip():
            raise RawFileError(path, "missing header key(s): FILTER")
        physical_filter = str(primary["FILTER"]).strip()
    if physical_filter not in filters:
        raise RawFileError(path, f"unknown physical filter {physical_filter!r}")
    try:
        expnum = int(primary["EXPNUM"])
        date_obs = Time(str(primary["DATE-OBS"]).strip(), format="isot", scale="utc")
        exptime = float(primary["EXPTIME"])
        darktime = float(primary.get("DARKTIME", exptime))
    except (TypeError, ValueError) as err:
        raise RawFileError(path, f"bad header value: {err}") from None
    if not ext:
        raise RawFileError(path, "no image extension with CCDNUM")
    detectors: dict[int, int] = {}  # CCDNUM -> HDU
    for i, h in ext:
        try:
            ccd = int(h["CCDNUM"])
        except (TypeError, ValueError):
            raise RawFileError(path, f"HDU {i}: bad CCDNUM {h.get('CCDNUM')!r}") from None
        if ccd not in DETECTORS:
            raise RawFileError(path, f"HDU {i}: unknown CCDNUM {ccd}")
        if ccd in detectors:
            raise RawFileError(path, f"CCDNUM {ccd} twice, in HDUs {detectors[ccd]} and {i}")
        _check_detpos(path, i, ccd, h.get("DETPOS"))
        detectors[ccd] = i
    nextend = primary.get("NEXTEND")
    ra = primary.get("RA_DEG")
    dec = primary.get("DEC_DEG")
    if ra is None or dec is None:
        ra = _sexagesimal(primary.get("TELRA", primary.get("RA")), hours=True)
        dec = _sexagesimal(primary.get("TELDEC", primary.get("DEC")), hours=False)
    return RawInfo(
        path=path, expnum=expnum, obstype=obstype,
        observation_type=OBSTYPE_TO_BUTLER.get(obstype, obstype),
        physical_filter=physical_filter, date_obs=date_obs, exptime=exptime, darktime=darktime,
        detectors=tuple(sorted(detectors)), day_obs=observing_night(date_obs, day_obs_rule),
        obs_id=str(primary.get("OBSID", f"DECam_{expnum:08d}")).strip(),
        propid=str(primary.get("PROPID", "")).strip(), object=str(primary.get("OBJECT", "")).strip(),
        ra=None if ra is None else float(ra), dec=None if dec is None else float(dec),
        zenith_angle=float(primary["ZD"]) if "ZD" in primary else None,
        azimuth=float(primary["AZ"]) if "AZ" in primary else None,
        nextend=nextend if isinstance(nextend, int) and not isinstance(nextend, bool) else None,
        n_extensions=n_extensions,
    )


def _check_detpos(path: Path, hdu: int, ccd: int, detpos: Any) -> None:
    """A CCD's DETPOS must be DECam's name for its CCDNUM: a mislabelled file is bad, never ingested."""
    if detpos is None or str(detpos).strip() == "":
        return
    name = str(detpos).strip()
    if name != DETECTORS[ccd]:
        other = CCDNUM_OF_DETPOS.get(name)
        where = f"DECam's {name} is CCDNUM {other}" if other is not None else f"{name!r} is no DECam CCD"
        raise RawFileError(path, f"HDU {hdu}: CCDNUM {ccd} but DETPOS {name!r} (DECam's CCDNUM {ccd} is "
                                 f"{DETECTORS[ccd]}; {where})")


def expected_detectors(obstype: str, configured: Mapping[str, Sequence[int]] | None = None) -> tuple[int, ...]:
    """The CCDNUMs a complete raw of this OBSTYPE carries: the configured list for it (or for ``*``),
    else every DECam science CCD."""
    configured = configured or {}
    dets = configured.get(obstype, configured.get("*"))
    return tuple(sorted(int(d) for d in dets)) if dets is not None else tuple(DETECTORS)


@dataclass(frozen=True)
class Completeness:
    """Whether a raw has every HDU it should (README, "When a raw is ingested").

    ``rule``: what decided (``manifest md5``, ``NEXTEND`` or ``detector list``); ``reason``: why it is
    not complete, empty when it is; ``missing``: the CCDNUMs known to be absent (from the detector
    list; a file short of its NEXTEND says how many HDUs, not which)."""

    rule: str
    reason: str = ""
    missing: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.reason


def _ranges(numbers: Iterable[int]) -> str:
    """1, 2, 3, 5, 7, 8 -> '1-3, 5, 7-8'."""
    runs: list[list[int]] = []
    for n in sorted(numbers):
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def completeness(info: RawInfo, expected: Mapping[str, Sequence[int]] | None = None,
                 row: ManifestRow | None = None) -> Completeness:
    """Complete = the manifest's md5 when the file has a manifest row, else ``NEXTEND`` extensions when
    the primary says how many, else every CCD of `expected_detectors` for its OBSTYPE."""
    if row is not None:
        md5 = _md5(info.path)
        if md5 != row.md5sum:
            return Completeness("manifest md5", f"md5 mismatch: file {md5}, manifest {row.md5sum} "
                                                "(partial or corrupt download)")
        return Completeness("manifest md5")
    want = expected_detectors(info.obstype, expected)
    missing = tuple(d for d in want if d not in info.detectors)
    if info.nextend is not None:
        if info.n_extensions < info.nextend:
            # Which CCDs are absent is known only from a list the site configured for this kind.
            listed = expected is not None and (info.obstype in expected or "*" in expected)
            return Completeness("NEXTEND", f"{info.n_extensions} of NEXTEND={info.nextend} extensions "
                                           f"(CCDs present: {_ranges(info.detectors)})", missing if listed else ())
        return Completeness("NEXTEND")
    if missing:
        return Completeness("detector list", f"{len(want) - len(missing)} of the {len(want)} CCDs of an OBSTYPE "
                                             f"{info.obstype!r} raw (no NEXTEND); missing CCDNUM {_ranges(missing)}",
                            missing)
    return Completeness("detector list")


# ---------------------------------------------------------------------------------------------------------
# exposures.ecsv manifest


@dataclass(frozen=True)
class ManifestRow:
    md5sum: str
    basename: str
    expnum: int
    night: int
    obs_type: str
    proc_type: str
    band: str
    filter: str


@dataclass
class Manifest:
    """``exposures.ecsv`` rows by archive basename (docs/DEEP.md#exposures-manifest); ``night`` is the caldat night."""

    path: Path
    by_basename: dict[str, ManifestRow]

    def lookup(self, path: str | os.PathLike[str]) -> ManifestRow | None:
        name = Path(path).name
        return self.by_basename.get(_MD5_PREFIX.sub("", name)) or self.by_basename.get(name)


class ManifestError(ValueError):
    """An ``exposures.ecsv`` that cannot be used; the message names the file and what is wrong."""


MANIFEST_COLUMNS = ("archive_filename", "md5sum", "EXPNUM", "obs_type")


def load_manifest(path: str | os.PathLike[str], *, proc_type: str = "raw") -> Manifest:
    """Read an ``exposures.ecsv``; a malformed one raises `ManifestError` (a ValueError), never
    astropy's or a KeyError, so intake records it as the file's reason and the action says why."""
    path = Path(path)
    try:
        return _load_manifest(path, proc_type)
    except OSError:
        raise
    except Exception as err:  # astropy: InconsistentTableError, ValueError, yaml errors; KeyError, TypeError
        what = f"missing column {err}" if isinstance(err, KeyError) else " ".join(str(err).split())
        raise ManifestError(f"manifest {path}: not a usable exposures.ecsv: {type(err).__name__}: {what}") from None


def _load_manifest(path: Path, proc_type: str) -> Manifest:
    from astropy.table import Table

    table = Table.read(path, format="ascii.ecsv")
    missing = [c for c in MANIFEST_COLUMNS if c not in table.colnames]
    if "night" not in table.colnames and "caldat" not in table.colnames:
        missing.append("night or caldat")
    if missing:
        raise ValueError(f"missing column(s): {', '.join(missing)}")
    rows: dict[str, ManifestRow] = {}
    for r in table:
        if "proc_type" in table.colnames and str(r["proc_type"]) != proc_type:
            continue
        base = os.path.basename(str(r["archive_filename"]))
        night = int(r["night"]) if "night" in table.colnames else int(str(r["caldat"]).replace("-", ""))
        filt = str(r["FILTER"]) if "FILTER" in table.colnames else ""
        rows[base] = ManifestRow(
            md5sum=str(r["md5sum"]).strip().lower(), basename=base, expnum=int(r["EXPNUM"]), night=night,
            obs_type=str(r["obs_type"]), proc_type=str(r["proc_type"]) if "proc_type" in table.colnames else "",
            band=str(r["band"]) if "band" in table.colnames else filt.split(" ")[0], filter=filt,
        )
    return Manifest(path, rows)


def manifest_row(manifest: Manifest, path: str | os.PathLike[str], info: RawInfo | None = None) -> ManifestRow:
    """The manifest's row for a raw; `RawFileError` when it has none, or lists another EXPNUM."""
    row = manifest.lookup(path)
    if row is None:
        raise RawFileError(path, f"not listed in manifest {manifest.path.name}")
    if info is not None and row.expnum != info.expnum:
        raise RawFileError(path, f"EXPNUM {info.expnum} but manifest says {row.expnum}")
    return row


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class IngestedFile:
    path: Path
    exposure: int
    detectors: tuple[int, ...]
    day_obs: int
    observation_type: str
    physical_filter: str
    missing: tuple[int, ...] = ()  # CCDs a complete file would have (ingested without them)
    incomplete: str = ""  # why the file was short of HDUs when it was ingested

    @property
    def data_ids(self) -> list[dict[str, Any]]:
        return [{"instrument": INSTRUMENT, "exposure": self.exposure, "detector": d} for d in self.detectors]


@dataclass
class IngestResult:
    """Per-file outcome of one batch; ``bad`` maps path → reason, ``skipped`` path → reason,
    ``incomplete`` path → why it was short of HDUs (ingested as it is), ``replaced`` path → the
    exposure and the detectors it had before and has now."""

    run: str
    ingested: list[IngestedFile] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    bad: dict[Path, str] = field(default_factory=dict)
    visits: list[int] = field(default_factory=list)
    incomplete: dict[Path, Completeness] = field(default_factory=dict)
    replaced: dict[Path, dict[str, Any]] = field(default_factory=dict)

    @property
    def nights(self) -> set[int]:
        return {f.day_obs for f in self.ingested}

    def summary(self) -> str:
        extra = "".join(f", {len(v)} {k}" for k, v in (("incomplete", self.incomplete),
                                                        ("replaced", self.replaced)) if v)
        return (f"{len(self.ingested)} ingested, {len(self.skipped)} skipped, {len(self.bad)} bad{extra}, "
                f"{len(self.visits)} visits defined into {self.run}")


# ---------------------------------------------------------------------------------------------------------
# the headers backend


def register_raw_type(butler: Any, run: str = RAW_RUN) -> Any:
    from lsst.daf.butler import CollectionType, DatasetType

    raw = DatasetType("raw", ("instrument", "exposure", "detector"), "Exposure", universe=butler.dimensions)
    butler.registry.registerDatasetType(raw)
    butler.registry.registerCollection(run, CollectionType.RUN)
    return raw


def _exposure_record(info: RawInfo) -> dict[str, Any]:
    from lsst.daf.butler import Timespan

    science = info.is_science
    return dict(
        instrument=INSTRUMENT, id=info.expnum, obs_id=info.obs_id, physical_filter=info.physical_filter,
        group=info.group, day_obs=info.day_obs, exposure_time=info.exptime, dark_time=info.darktime,
        observation_type=info.observation_type,
        observation_reason="science" if science else info.observation_type,
        seq_num=info.expnum, seq_start=info.expnum, seq_end=info.expnum,
        target_name=info.object or "UNKNOWN", science_program=info.propid,
        tracking_ra=info.ra if science else None, tracking_dec=info.dec if science else None,
        sky_angle=90.0, azimuth=info.azimuth, zenith_angle=info.zenith_angle,
        has_simulated=True, can_see_sky=science, timespan=Timespan(info.date_obs, info.date_end),
    )


def _box(corners: Sequence[tuple[float, float]]) -> Any:
    from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

    return ConvexPolygon([UnitVector3d(LonLat.fromDegrees(r, d)) for r, d in corners])


def define_visits(butler: Any, infos: Iterable[RawInfo], instrument: Any = None) -> list[int]:
    """One-to-one visits for science exposures (visit id = exposure id); idempotent. The records
    follow the file: a visit defined from an earlier state of it (fewer CCDs) gets the file's region
    now, and a region for each of its CCDs (a CCD the file no longer has keeps its old region: the
    registry cannot delete dimension records, and no raw refers to it). The regions come from the
    registered instrument's `detector_corners` (docs/DEEP.md#instrument-class)."""
    from lsst.daf.butler import Timespan

    geometry = inst.sky_geometry(instrument if instrument is not None else inst.registered_instrument(butler, INSTRUMENT))
    visits = []
    registry = butler.registry
    for sid, name in VISIT_SYSTEMS.items():
        registry.syncDimensionData("visit_system", {"instrument": INSTRUMENT, "id": sid, "name": name})
    for info in infos:
        if not info.is_science:
            continue
        if info.ra is None or info.dec is None:
            raise RawFileError(info.path, "science exposure without a pointing (TELRA/TELDEC)")
        det_corners = {d: geometry.detector_corners(info.ra, info.dec, d) for d in info.detectors}
        allc = [c for cs in det_corners.values() for c in cs]
        ras, decs = [c[0] for c in allc], [c[1] for c in allc]
        region = _box([(min(ras), min(decs)), (max(ras), min(decs)), (max(ras), max(decs)), (min(ras), max(decs))])
        with registry.transaction():
            registry.syncDimensionData("visit", dict(
                instrument=INSTRUMENT, id=info.expnum, day_obs=info.day_obs,
                physical_filter=info.physical_filter, name=info.obs_id, seq_num=info.expnum,
                exposure_time=info.exptime, target_name=info.object or "UNKNOWN", observation_reason="science",
                science_program=info.propid, azimuth=info.azimuth, zenith_angle=info.zenith_angle,
                region=region, timespan=Timespan(info.date_obs, info.date_end)), update=True)
            registry.syncDimensionData("visit_definition",
                                       {"instrument": INSTRUMENT, "exposure": info.expnum, "visit": info.expnum})
            for sid in VISIT_SYSTEMS:
                registry.syncDimensionData("visit_system_membership",
                                           {"instrument": INSTRUMENT, "visit_system": sid, "visit": info.expnum})
            for det, corners in det_corners.items():
                registry.syncDimensionData("visit_detector_region", {
                    "instrument": INSTRUMENT, "detector": det, "visit": info.expnum, "region": _box(corners)},
                    update=True)
        visits.append(info.expnum)
    return visits


def _existing(butler: Any, run: str, expnums: Sequence[int]) -> dict[int, dict[int, Any]]:
    """exposure → detector → ref of the raws already in ``run``."""
    out: dict[int, dict[int, Any]] = {}
    if not expnums:
        return out
    for chunk_start in range(0, len(expnums), 500):
        chunk = expnums[chunk_start:chunk_start + 500]
        where = f"instrument='{INSTRUMENT}' AND exposure IN ({', '.join(str(int(e)) for e in chunk)})"
        refs = butler.query_datasets("raw", collections=run, where=where, find_first=False, explain=False,
                                     limit=None)
        for ref in refs:
            out.setdefault(int(ref.dataId["exposure"]), {})[int(ref.dataId["detector"])] = ref
    return out


def _same_file(butler: Any, have: Mapping[int, Any], path: Path) -> bool:
    """Whether the raws in `have` were ingested from `path` (their datastore URI is it, or links to it)."""
    try:
        uri = butler.getURI(next(iter(have.values())))
        return Path(uri.ospath).resolve() == path.resolve()
    except Exception:  # not a local file (e.g. a remote datastore): cannot tell, so not the same
        return False


def _read_batch(paths: list[Path], result: IngestResult, *, manifest: Manifest | None, day_obs_rule: str,
                expected: Mapping[str, Sequence[int]] | None) -> list[RawInfo]:
    """Headers of a batch; damaged files, md5 mismatches and EXPNUMs twice in it go to ``result.bad``,
    files short of HDUs to ``result.incomplete`` (they are still ingested: the caller decides when)."""
    infos: list[RawInfo] = []
    seen: dict[int, Path] = {}
    for path in paths:
        try:
            info = read_raw_header(path, day_obs_rule=day_obs_rule)
            row = manifest_row(manifest, path, info) if manifest is not None else None
            done = completeness(info, expected, row)
            if row is not None:
                if not done.complete:
                    raise RawFileError(path, done.reason)
                info = _replace_day_obs(info, row.night)
            elif not done.complete:
                result.incomplete[path] = done
            if info.expnum in seen:
                raise RawFileError(path, f"EXPNUM {info.expnum} also in {seen[info.expnum]} in this batch")
            seen[info.expnum] = path
            infos.append(info)
        except RawFileError as err:
            result.bad[path] = err.reason
            log.warning("ingest: bad raw %s: %s", path, err.reason)
    return infos


def _ingest_headers(butler: Any, paths: list[Path], result: IngestResult, *, transfer: str | None,
                    manifest: Manifest | None, do_visits: bool, day_obs_rule: str,
                    expected: Mapping[str, Sequence[int]] | None, replace: set[Path]) -> None:
    from lsst.daf.butler import DataCoordinate, DatasetRef, FileDataset
    from lsst.daf.butler.registry import ConflictingDefinitionError

    raw_type = register_raw_type(butler, result.run)
    instrument = inst.registered_instrument(butler, INSTRUMENT)
    if do_visits:
        inst.sky_geometry(instrument)  # before anything is ingested: no raws without their visits
    infos = _read_batch(paths, result, manifest=manifest, day_obs_rule=day_obs_rule, expected=expected)
    existing = _existing(butler, result.run, [i.expnum for i in infos])
    todo: list[RawInfo] = []
    renew: list[tuple[RawInfo, dict[int, Any]]] = []
    for info in infos:
        have = existing.get(info.expnum, {})
        # The file changed since its exposure was ingested from it (the caller says so, or its CCDs differ
        # from the raws in the run): everything ingested from it is replaced.
        changed = bool(have) and (info.path in replace or set(have) != set(info.detectors))
        if changed and info.path not in replace and not _same_file(butler, have, info.path):
            result.bad[info.path] = (f"exposure {info.expnum} is already ingested from another file with CCDs "
                                     f"{_ranges(have)}; this one has CCDs {_ranges(info.detectors)}")
            continue
        # Dimension records first, also for exposures already ingested: a later file with the same
        # EXPNUM but a different DATE-OBS, filter or type is a conflict (bad), not "already ingested".
        try:
            with butler.registry.transaction():
                butler.registry.syncDimensionData(
                    "day_obs", {"instrument": INSTRUMENT, "id": info.day_obs,
                                "timespan": day_obs_timespan(info.day_obs, day_obs_rule)})
                butler.registry.syncDimensionData("group", {"instrument": INSTRUMENT, "name": info.group})
                butler.registry.syncDimensionData("exposure", _exposure_record(info), update=info.path in replace)
        except ConflictingDefinitionError as err:
            result.bad[info.path] = _conflict_reason(butler, info, err)
            log.warning("ingest: %s: %s", info.path, result.bad[info.path])
            continue
        if changed:
            renew.append((info, have))
        elif have:
            result.skipped[info.path] = f"exposure {info.expnum} already ingested in {result.run}"
        else:
            todo.append(info)

    def file_dataset(info: RawInfo) -> FileDataset:
        refs = [DatasetRef(raw_type, DataCoordinate.standardize(
                    {"instrument": INSTRUMENT, "exposure": info.expnum, "detector": d}, dimensions=raw_type.dimensions),
                           run=result.run) for d in info.detectors]
        return FileDataset(path=str(info.path.resolve()), refs=refs,
                           formatter=inst.raw_formatter(instrument, {"instrument": INSTRUMENT, "exposure": info.expnum}))

    done: list[RawInfo] = []
    if todo:
        try:
            butler.ingest(*[file_dataset(i) for i in todo], transfer=transfer)
            done = todo
        except Exception as err:  # isolate the culprit(s): one file at a time
            log.warning("ingest: batch of %d failed (%s); retrying file by file", len(todo), err)
            for info in todo:
                try:
                    butler.ingest(file_dataset(info), transfer=transfer)
                    done.append(info)
                except Exception as err1:
                    result.bad[info.path] = f"Butler.ingest failed: {type(err1).__name__}: {err1}"
    for info, have in renew:
        # One transaction: the old raws go (from every collection; a `direct` file itself is never
        # deleted) and the file's raws come in, or neither.
        try:
            with butler.transaction():
                butler.pruneDatasets(list(have.values()), disassociate=True, unstore=True, purge=True)
                butler.ingest(file_dataset(info), transfer=transfer)
        except Exception as err:
            result.bad[info.path] = (f"could not replace exposure {info.expnum} (it keeps its earlier raws): "
                                     f"{type(err).__name__}: {err}")
            continue
        result.replaced[info.path] = {"exposure": info.expnum, "before": sorted(have),
                                      "after": list(info.detectors)}
        log.info("ingest: %s changed since it was ingested: exposure %d replaced (CCDs %s -> %s)",
                 info.path, info.expnum, _ranges(have), _ranges(info.detectors))
        done.append(info)
    for info in done:
        short = result.incomplete.get(info.path, Completeness(""))
        result.ingested.append(IngestedFile(info.path, info.expnum, info.detectors, info.day_obs,
                                            info.observation_type, info.physical_filter, short.missing,
                                            short.reason))
    if do_visits:
        science = [i for i in done if i.is_science]
        # Visits of previously skipped exposures are re-synced too (cheap, idempotent), so a crash between
        # ingest and visit definition heals on the next batch.
        science += [i for i in infos if i.is_science and i.path in result.skipped]
        for info in science:
            try:
                result.visits.extend(define_visits(butler, [info], instrument))
            except (RawFileError, ConflictingDefinitionError) as err:
                result.bad[info.path] = f"visit definition failed: {err}"
    for path in list(result.incomplete):
        if path in result.bad:
            del result.incomplete[path]


def _conflict_reason(butler: Any, info: RawInfo, err: Exception) -> str:
    """One readable line for a raw whose exposure cannot be registered: which fields disagree with the
    exposure already registered under its EXPNUM, or which other exposure holds its OBSID."""
    try:
        old = butler.registry.queryDimensionRecords("exposure", instrument=INSTRUMENT,
                                                    where=f"exposure = {int(info.expnum)}")
        old = next(iter(old), None)
    except Exception:  # the registry itself is the problem: say what it said
        old = None
    if old is not None:
        new = _exposure_record(info)
        differ = [f"{k} {getattr(old, k)!r} → {new[k]!r}" for k in ("obs_id", "observation_type", "physical_filter",
                                                                   "exposure_time", "day_obs")
                  if k in new and getattr(old, k, None) != new[k]]
        if old.timespan is not None and abs((old.timespan.begin - info.date_obs).sec) > 1e-3:
            differ.append(f"DATE-OBS {old.timespan.begin.utc.isot} → {info.date_obs.utc.isot}")
        return (f"exposure {info.expnum} already registered with different metadata "
                f"({'; '.join(differ) or 'see the registry'}): the same EXPNUM twice with different content")
    msg = " ".join(str(err).split())
    if "post-insert query" in msg:
        return (f"exposure {info.expnum}: OBSID {info.obs_id!r} already belongs to another exposure "
                "(two files with the same DATE-OBS/OBSID but different EXPNUM)")
    return f"exposure {info.expnum} could not be registered: {msg[:300]}"


def _replace_day_obs(info: RawInfo, day_obs: int) -> RawInfo:
    from dataclasses import replace

    return replace(info, day_obs=int(day_obs))


def _ingest_obs_base(butler: Any, paths: list[Path], result: IngestResult, *, transfer: str | None,
                     do_visits: bool) -> None:  # pragma: no cover - needs lsst.obs.base + obs_decam
    from lsst.obs.base import DefineVisitsConfig, DefineVisitsTask, RawIngestConfig, RawIngestTask

    def on_success(datasets: list[Any]) -> None:
        for fd in datasets:
            p = Path(fd.path.ospath if hasattr(fd.path, "ospath") else fd.path)
            d0 = fd.refs[0].dataId
            result.ingested.append(IngestedFile(
                p, int(d0["exposure"]), tuple(int(r.dataId["detector"]) for r in fd.refs), int(d0["day_obs"]),
                str(d0.records["exposure"].observation_type), str(d0["physical_filter"])))

    def on_metadata_failure(filename: Any, exc: Exception) -> None:
        result.bad[Path(str(getattr(filename, "ospath", filename)))] = f"metadata: {exc}"

    def on_ingest_failure(exposure: Any, exc: Exception) -> None:
        for f in exposure.files:
            result.bad[Path(str(getattr(f.filename, "ospath", f.filename)))] = f"ingest: {exc}"

    config = RawIngestConfig()
    config.transfer = transfer
    task = RawIngestTask(config=config, butler=butler, on_success=on_success,
                         on_metadata_failure=on_metadata_failure, on_ingest_failure=on_ingest_failure)
    try:
        task.run([str(p) for p in paths], run=result.run, skip_existing_exposures=True)
    except RuntimeError as err:  # raised after the callbacks reported each failure
        log.warning("RawIngestTask: %s", err)
    if do_visits and result.ingested:
        exposures = sorted({f.exposure for f in result.ingested if f.observation_type == "science"})
        if exposures:
            dv = DefineVisitsTask(config=DefineVisitsConfig(), butler=butler)
            where = f"instrument='{INSTRUMENT}' AND exposure IN ({', '.join(map(str, exposures))})"
            dv.run(butler.registry.queryDataIds(["exposure"], where=where).expanded())
            result.visits.extend(exposures)


def ingest_raws(
    butler: Any,
    paths: Iterable[str | os.PathLike[str]],
    *,
    run: str = RAW_RUN,
    transfer: str | None = "direct",
    manifest: Manifest | str | os.PathLike[str] | None = None,
    backend: str = "headers",
    define_visits: bool = True,
    day_obs_rule: str = "night",
    expected_detectors: Mapping[str, Sequence[int]] | None = None,
    replace: Iterable[str | os.PathLike[str]] = (),
) -> IngestResult:
    """Ingest a batch of raw files into ``run``; per-file problems go to ``result.bad`` (never raised).

    ``butler``: a writeable `lsst.daf.butler.Butler` or a repo path/URI. ``transfer``: ``direct``
    (default: the Butler points at the file where it is), ``symlink``, ``copy``, ``link``, ``move``...
    Already-ingested exposures (same exposure and detectors in ``run``) are skipped; exposure and visit
    records are synced, so a re-run after a crash completes what is missing. ``result.visits`` lists the
    science exposures whose one-to-one visits were defined or confirmed in this call.

    A file short of HDUs (`completeness`, with ``expected_detectors`` per OBSTYPE) is ingested as it is
    and listed in ``result.incomplete``: waiting for the rest is the caller's decision. An exposure whose
    file changed since it was ingested (listed in ``replace``, or carrying other CCDs than its raws in
    ``run``) is replaced whole: raws, exposure record, visit and regions (``result.replaced``).
    """
    from lsst.daf.butler import Butler

    own = not isinstance(butler, Butler)
    if own:
        butler = Butler.from_config(str(butler), writeable=True)
    try:
        return _ingest_raws(butler, paths, run=run, transfer=transfer, manifest=manifest, backend=backend,
                            define_visits=define_visits, day_obs_rule=day_obs_rule,
                            expected=expected_detectors, replace={Path(p) for p in replace})
    finally:
        if own:
            butler.close()


def _ingest_raws(butler: Any, paths: Iterable[str | os.PathLike[str]], *, run: str, transfer: str | None,
                 manifest: Any, backend: str, define_visits: bool, day_obs_rule: str,
                 expected: Mapping[str, Sequence[int]] | None, replace: set[Path]) -> IngestResult:
    if manifest is not None and not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    unique = list(dict.fromkeys(Path(p) for p in paths))
    result = IngestResult(run=run)
    if backend == "headers":
        _ingest_headers(butler, unique, result, transfer=transfer, manifest=manifest, do_visits=define_visits,
                        day_obs_rule=day_obs_rule, expected=expected, replace=replace)
    elif backend == "obs_base":
        if manifest is not None:
            good = []
            for p in unique:
                try:
                    info = read_raw_header(p, day_obs_rule=day_obs_rule)
                    done = completeness(info, expected, manifest_row(manifest, p, info))
                    if not done.complete:
                        raise RawFileError(p, done.reason)
                    good.append(p)
                except RawFileError as err:
                    result.bad[p] = err.reason
            unique = good
        _ingest_obs_base(butler, unique, result, transfer=transfer, do_visits=define_visits)
    else:
        raise ValueError(f"unknown ingest backend {backend!r} (expected 'headers' or 'obs_base')")
    log.info("ingest: %s", result.summary())
    return result
