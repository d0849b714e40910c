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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.time import Time, TimeDelta

log = logging.getLogger(__name__)

__all__ = [
    "RAW_RUN",
    "IngestResult",
    "IngestedFile",
    "Manifest",
    "ManifestRow",
    "RawFileError",
    "RawInfo",
    "define_visits",
    "ingest_raws",
    "load_manifest",
    "observing_night",
    "read_raw_header",
    "register_raw_type",
]

RAW_RUN = "DECam/raw/all"
INSTRUMENT = "DECam"
RAW_FORMATTER = "autoproc.sim.deep.instrument.FitsRawFormatter"
REQUIRED_KEYS = ("EXPNUM", "DATE-OBS", "OBSTYPE", "EXPTIME")
OBSTYPE_TO_BUTLER = {"object": "science"}
OPAQUE_FILTER = "solid plate 0.0 0.0"
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

    @property
    def is_science(self) -> bool:
        return self.observation_type == "science"

    @property
    def date_end(self) -> Time:
        return self.date_obs + TimeDelta(self.exptime, format="sec")

    @property
    def group(self) -> str:
        return str(self.expnum)


def _check_complete(path: Path, hdul: Any) -> None:
    size = path.stat().st_size
    if size % 2880:
        raise RawFileError(path, f"truncated FITS file: {size} bytes is not a multiple of 2880")
    nextend = hdul[0].header.get("NEXTEND")
    if isinstance(nextend, int) and len(hdul) - 1 < nextend:
        raise RawFileError(path, f"truncated FITS file: NEXTEND={nextend} but {len(hdul) - 1} extension(s)")
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

    Checks: a readable, complete FITS file (every HDU's data fits in the file), ``INSTRUME`` is DECam when
    present, the required keys ``EXPNUM``, ``DATE-OBS``, ``OBSTYPE``, ``EXPTIME`` (and ``FILTER`` unless a
    zero), a known physical filter, and at least one image extension with ``CCDNUM``.
    """
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyWarning

    from autoproc.sim.deep.instrument import DETECTORS, FILTERS

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
            _check_complete(path, hdul)
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
    detectors = []
    for _i, h in ext:
        try:
            ccd = int(h["CCDNUM"])
        except (TypeError, ValueError):
            raise RawFileError(path, f"bad CCDNUM {h.get('CCDNUM')!r}") from None
        if ccd not in DETECTORS:
            raise RawFileError(path, f"unknown CCDNUM {ccd}")
        detectors.append(ccd)
    ra = primary.get("RA_DEG")
    dec = primary.get("DEC_DEG")
    if ra is None or dec is None:
        ra = _sexagesimal(primary.get("TELRA", primary.get("RA")), hours=True)
        dec = _sexagesimal(primary.get("TELDEC", primary.get("DEC")), hours=False)
    return RawInfo(
        path=path, expnum=expnum, obstype=obstype,
        observation_type=OBSTYPE_TO_BUTLER.get(obstype, obstype),
        physical_filter=physical_filter, date_obs=date_obs, exptime=exptime, darktime=darktime,
        detectors=tuple(sorted(set(detectors))), day_obs=observing_night(date_obs, day_obs_rule),
        obs_id=str(primary.get("OBSID", f"DECam_{expnum:08d}")).strip(),
        propid=str(primary.get("PROPID", "")).strip(), object=str(primary.get("OBJECT", "")).strip(),
        ra=None if ra is None else float(ra), dec=None if dec is None else float(dec),
        zenith_angle=float(primary["ZD"]) if "ZD" in primary else None,
        azimuth=float(primary["AZ"]) if "AZ" in primary else None,
    )


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
    """``exposures.ecsv`` rows by archive basename (SPEC §A.2); ``night`` is the caldat night."""

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

    @property
    def data_ids(self) -> list[dict[str, Any]]:
        return [{"instrument": INSTRUMENT, "exposure": self.exposure, "detector": d} for d in self.detectors]


@dataclass
class IngestResult:
    """Per-file outcome of one batch; ``bad`` maps path → reason, ``skipped`` path → reason."""

    run: str
    ingested: list[IngestedFile] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)
    bad: dict[Path, str] = field(default_factory=dict)
    visits: list[int] = field(default_factory=list)

    @property
    def nights(self) -> set[int]:
        return {f.day_obs for f in self.ingested}

    def summary(self) -> str:
        return (f"{len(self.ingested)} ingested, {len(self.skipped)} skipped, {len(self.bad)} bad, "
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


def define_visits(butler: Any, infos: Iterable[RawInfo]) -> list[int]:
    """One-to-one visits for science exposures (visit id = exposure id); idempotent."""
    from lsst.daf.butler import Timespan

    from autoproc.sim.deep.instrument import detector_corners

    visits = []
    registry = butler.registry
    for sid, name in VISIT_SYSTEMS.items():
        registry.syncDimensionData("visit_system", {"instrument": INSTRUMENT, "id": sid, "name": name})
    for info in infos:
        if not info.is_science:
            continue
        if info.ra is None or info.dec is None:
            raise RawFileError(info.path, "science exposure without a pointing (TELRA/TELDEC)")
        det_corners = {d: detector_corners(info.ra, info.dec, d) for d in info.detectors}
        allc = [c for cs in det_corners.values() for c in cs]
        ras, decs = [c[0] for c in allc], [c[1] for c in allc]
        region = _box([(min(ras), min(decs)), (max(ras), min(decs)), (max(ras), max(decs)), (min(ras), max(decs))])
        with registry.transaction():
            registry.syncDimensionData("visit", dict(
                instrument=INSTRUMENT, id=info.expnum, day_obs=info.day_obs,
                physical_filter=info.physical_filter, name=info.obs_id, seq_num=info.expnum,
                exposure_time=info.exptime, target_name=info.object or "UNKNOWN", observation_reason="science",
                science_program=info.propid, azimuth=info.azimuth, zenith_angle=info.zenith_angle,
                region=region, timespan=Timespan(info.date_obs, info.date_end)))
            registry.syncDimensionData("visit_definition",
                                       {"instrument": INSTRUMENT, "exposure": info.expnum, "visit": info.expnum})
            for sid in VISIT_SYSTEMS:
                registry.syncDimensionData("visit_system_membership",
                                           {"instrument": INSTRUMENT, "visit_system": sid, "visit": info.expnum})
            for det, corners in det_corners.items():
                registry.syncDimensionData("visit_detector_region", {
                    "instrument": INSTRUMENT, "detector": det, "visit": info.expnum, "region": _box(corners)})
        visits.append(info.expnum)
    return visits


def _existing(butler: Any, run: str, expnums: Sequence[int]) -> dict[tuple[int, int], str]:
    """(exposure, detector) → URI of raws already in ``run``."""
    out: dict[tuple[int, int], str] = {}
    if not expnums:
        return out
    for chunk_start in range(0, len(expnums), 500):
        chunk = expnums[chunk_start:chunk_start + 500]
        where = f"instrument='{INSTRUMENT}' AND exposure IN ({', '.join(str(int(e)) for e in chunk)})"
        refs = butler.query_datasets("raw", collections=run, where=where, find_first=False, explain=False,
                                     limit=None)
        for ref in refs:
            out[(int(ref.dataId["exposure"]), int(ref.dataId["detector"]))] = str(ref.id)
    return out


def _ingest_headers(butler: Any, paths: list[Path], result: IngestResult, *, transfer: str | None,
                    manifest: Manifest | None, do_visits: bool, day_obs_rule: str) -> None:
    from lsst.daf.butler import DatasetRef, FileDataset
    from lsst.daf.butler.registry import ConflictingDefinitionError

    raw_type = register_raw_type(butler, result.run)
    infos: list[RawInfo] = []
    seen: dict[int, Path] = {}
    for path in paths:
        try:
            info = read_raw_header(path, day_obs_rule=day_obs_rule)
            if manifest is not None:
                row = manifest.lookup(path)
                if row is None:
                    raise RawFileError(path, f"not listed in manifest {manifest.path.name}")
                md5 = _md5(path)
                if md5 != row.md5sum:
                    raise RawFileError(path, f"md5 mismatch: file {md5}, manifest {row.md5sum} "
                                             "(partial or corrupt download)")
                if row.expnum != info.expnum:
                    raise RawFileError(path, f"EXPNUM {info.expnum} but manifest says {row.expnum}")
                info = _replace_day_obs(info, row.night)
            if info.expnum in seen:
                raise RawFileError(path, f"EXPNUM {info.expnum} also in {seen[info.expnum]} in this batch")
            seen[info.expnum] = path
            infos.append(info)
        except RawFileError as err:
            result.bad[path] = err.reason
            log.warning("ingest: bad raw %s: %s", path, err.reason)

    existing = _existing(butler, result.run, [i.expnum for i in infos])
    todo: list[tuple[RawInfo, tuple[int, ...]]] = []
    for info in infos:
        # Dimension records first, also for exposures already ingested: a later file with the same
        # EXPNUM but a different DATE-OBS, filter or type is a conflict (bad), not "already ingested".
        try:
            with butler.registry.transaction():
                butler.registry.syncDimensionData(
                    "day_obs", {"instrument": INSTRUMENT, "id": info.day_obs,
                                "timespan": day_obs_timespan(info.day_obs, day_obs_rule)})
                butler.registry.syncDimensionData("group", {"instrument": INSTRUMENT, "name": info.group})
                butler.registry.syncDimensionData("exposure", _exposure_record(info))
        except ConflictingDefinitionError as err:
            result.bad[info.path] = _conflict_reason(butler, info, err)
            log.warning("ingest: %s: %s", info.path, result.bad[info.path])
            continue
        missing = tuple(d for d in info.detectors if (info.expnum, d) not in existing)
        if not missing:
            result.skipped[info.path] = f"exposure {info.expnum} already ingested in {result.run}"
            continue
        todo.append((info, missing))

    def file_dataset(info: RawInfo, dets: tuple[int, ...]) -> FileDataset:
        refs = [DatasetRef(raw_type, {"instrument": INSTRUMENT, "exposure": info.expnum, "detector": d},
                           run=result.run) for d in dets]
        return FileDataset(path=str(info.path.resolve()), refs=refs, formatter=RAW_FORMATTER)

    done: list[tuple[RawInfo, tuple[int, ...]]] = []
    if todo:
        try:
            butler.ingest(*[file_dataset(i, d) for i, d in todo], transfer=transfer)
            done = todo
        except Exception as err:  # isolate the culprit(s): one file at a time
            log.warning("ingest: batch of %d failed (%s); retrying file by file", len(todo), err)
            for info, dets in todo:
                try:
                    butler.ingest(file_dataset(info, dets), transfer=transfer)
                    done.append((info, dets))
                except Exception as err1:
                    result.bad[info.path] = f"Butler.ingest failed: {type(err1).__name__}: {err1}"
    for info, dets in done:
        result.ingested.append(IngestedFile(info.path, info.expnum, dets, info.day_obs, info.observation_type,
                                            info.physical_filter))
    if do_visits:
        science = [i for i, _ in done if i.is_science]
        # Visits of previously skipped exposures are re-synced too (cheap, idempotent), so a crash between
        # ingest and visit definition heals on the next batch.
        science += [i for i in infos if i.is_science and i.path in result.skipped]
        for info in science:
            try:
                result.visits.extend(define_visits(butler, [info]))
            except (RawFileError, ConflictingDefinitionError) as err:
                result.bad[info.path] = f"visit definition failed: {err}"


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
) -> IngestResult:
    """Ingest a batch of raw files into ``run``; per-file problems go to ``result.bad`` (never raised).

    ``butler``: a writeable `lsst.daf.butler.Butler` or a repo path/URI. ``transfer``: ``direct``
    (default: the Butler points at the file where it is), ``symlink``, ``copy``, ``link``, ``move``...
    Already-ingested exposures (same exposure and detectors in ``run``) are skipped; exposure and visit
    records are synced, so a re-run after a crash completes what is missing. ``result.visits`` lists the
    science exposures whose one-to-one visits were defined or confirmed in this call.
    """
    from lsst.daf.butler import Butler

    own = not isinstance(butler, Butler)
    if own:
        butler = Butler.from_config(str(butler), writeable=True)
    try:
        return _ingest_raws(butler, paths, run=run, transfer=transfer, manifest=manifest, backend=backend,
                            define_visits=define_visits, day_obs_rule=day_obs_rule)
    finally:
        if own:
            butler.close()


def _ingest_raws(butler: Any, paths: Iterable[str | os.PathLike[str]], *, run: str, transfer: str | None,
                 manifest: Any, backend: str, define_visits: bool, day_obs_rule: str) -> IngestResult:
    if manifest is not None and not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest)
    unique = list(dict.fromkeys(Path(p) for p in paths))
    result = IngestResult(run=run)
    if backend == "headers":
        _ingest_headers(butler, unique, result, transfer=transfer, manifest=manifest, do_visits=define_visits,
                        day_obs_rule=day_obs_rule)
    elif backend == "obs_base":
        if manifest is not None:
            good = []
            for p in unique:
                row = manifest.lookup(p)
                if row is None:
                    result.bad[p] = f"not listed in manifest {manifest.path.name}"
                elif _md5(p) != row.md5sum:
                    result.bad[p] = "md5 mismatch (partial or corrupt download)"
                else:
                    good.append(p)
            unique = good
        _ingest_obs_base(butler, unique, result, transfer=transfer, do_visits=define_visits)
    else:
        raise ValueError(f"unknown ingest backend {backend!r} (expected 'headers' or 'obs_base')")
    log.info("ingest: %s", result.summary())
    return result
