"""Idempotent Butler repo set-up for DEEP: repo, instrument, skymap, defects, fakes, refcats.

Every function can be run again at any time: each one checks what is there, logs what it did or that it
was already done, and returns a short message. `init_repo` runs them in order.

What is simulated (afw, obs_decam, lsst.skymap and source_injection are not on PyPI):

- ``defects`` / ``suspectMask`` are stored as astropy tables (storage class ``ArrowAstropy``) of 1×1-pixel
  boxes (columns x0, y0, width, height), not afw ``Defects``; the bad/suspect rule is DEEP's defects.py
  (DES BPM: bad = value ≠ 0 and ≠ 512, suspect = 512; CP BPM: bad = value ≠ 0).
- The skymap is a hand-made grid of tracts (square RA/Dec cells, ``tract_size_deg``) split into
  ``patches_per_side``² patches, registered as dimension records plus a ``skyMap`` dataset
  (StructuredDataDict describing the grid) in the ``skymaps`` RUN; no lsst.skymap object.
- Fakes go in as ``injection_catalog`` (dimensions htm7, band; ArrowAstropy) in ``DEEP/fakes``, split by
  htm7 pixel like ``lsst.source.injection.ingest_injection_catalog``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoproc.deep.registry import create_error, registry_config

log = logging.getLogger(__name__)

__all__ = [
    "CALIB_BAD_RUN",
    "CALIB_COLLECTION",
    "CALIB_SUSPECT_RUN",
    "FAKES_COLLECTION",
    "REFCATS_COLLECTION",
    "SKYMAPS_COLLECTION",
    "RepoSetup",
    "create_repo",
    "ingest_defects",
    "ingest_fakes",
    "ingest_refcats",
    "init_repo",
    "register_instrument",
    "register_skymap",
    "skymap_tracts_for",
    "write_bpm_files",
    "write_fakes_table",
]

INSTRUMENT = "DECam"
# obs_decam's class; the simulator's is set explicitly by the demo and the tests (docs/DEEP.md#instrument-class).
DEFAULT_INSTRUMENT_CLASS = "lsst.obs.decam.DarkEnergyCamera"
CALIB_COLLECTION = "DEEP/calib"
CALIB_BAD_RUN = "DEEP/calib/bad"
CALIB_SUSPECT_RUN = "DEEP/calib/suspect"
FAKES_COLLECTION = "DEEP/fakes"
REFCATS_COLLECTION = "refcats"
SKYMAPS_COLLECTION = "skymaps"
DEFAULT_SKYMAP = "discrete"
SUSPECT_VALUE = 512
CERTIFY_BEGIN = "1970-01-01T00:00:00"
CERTIFY_END = "2100-01-01T00:00:00"
_KEEP_META = {"strip_astropy_meta_yaml": False}  # ArrowAstropy drops table.meta on read by default
_DES_BPM = re.compile(r"_c(\d{2})_.*bpm\.fits$")
_CP_BPM = re.compile(r"_cd_(\d{2})\.fits$")


def _butler(repo: Any, writeable: bool = True) -> Any:
    from lsst.daf.butler import Butler

    if isinstance(repo, Butler):
        return repo
    return Butler.from_config(str(repo), writeable=writeable)


# ---------------------------------------------------------------------------------------------------------
# repo + instrument


def create_repo(root: str | os.PathLike[str], *, registry_db: str | None = None,
                registry_namespace: str | None = None) -> str:
    """Create the repo unless ``root/butler.yaml`` exists. A PostgreSQL registry needs the
    server up, the database made and its ``btree_gist`` extension created; when any is
    missing this raises `RegistryError` saying which, and leaves nothing behind, so the
    next try works once the cause is fixed."""
    from lsst.daf.butler import Butler, Config

    root = Path(root)
    if (root / "butler.yaml").exists():
        msg = f"repo {root}: already exists"
    else:
        cfg = registry_config(registry_db, registry_namespace)
        existing = root
        while not existing.exists():
            existing = existing.parent
        root.mkdir(parents=True, exist_ok=True)
        try:
            Butler.makeRepo(str(root), config=Config(cfg) if cfg else None)
        except Exception as err:
            _remove_made(root, existing)
            if registry_db:
                raise create_error(err, registry_db) from err
            raise
        msg = f"repo {root}: created ({'SQLite' if not registry_db else registry_db.split(':', 1)[0]})"
    log.info(msg)
    return msg


def _remove_made(root: Path, existed: Path) -> None:
    """Undo a failed `makeRepo`: its butler.yaml, and the (empty) directories below
    `existed` that were made for it."""
    (root / "butler.yaml").unlink(missing_ok=True)
    for level in [root, *root.parents]:
        if level == existed:
            return
        try:
            level.rmdir()
        except OSError:
            return


def register_instrument(repo: Any, instrument_class: str = DEFAULT_INSTRUMENT_CLASS, *,
                        raw_run: str = "DECam/raw/all") -> str:
    """Register the instrument (records are synced, so a re-run is a no-op), the ``raw`` dataset type,
    the raw RUN and an (empty) ``DECam/calib`` CALIBRATION collection."""
    from lsst.daf.butler import CollectionType

    from autoproc.deep.ingest import register_raw_type
    from autoproc.deep.instrument import instrument_type

    cls = instrument_type(instrument_class)
    butler = _butler(repo)
    before = {r.name for r in butler.query_dimension_records("instrument", explain=False)}
    inst = cls()
    inst.register(butler.registry)
    register_raw_type(butler, raw_run)
    butler.registry.registerCollection(inst.makeCalibrationCollectionName(), CollectionType.CALIBRATION)
    name = inst.getName()
    msg = (f"instrument {name}: already registered" if name in before
           else f"instrument {name}: registered ({instrument_class})")
    log.info(msg)
    return msg


# ---------------------------------------------------------------------------------------------------------
# skymap


def _box(ra0: float, dec0: float, ra1: float, dec1: float) -> Any:
    from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d

    return ConvexPolygon([UnitVector3d(LonLat.fromDegrees(r, d))
                          for r, d in ((ra0, dec0), (ra1, dec0), (ra1, dec1), (ra0, dec1))])


def _tract_bounds(tract: int, size: float) -> tuple[float, float, float, float]:
    n_ra = int(round(360.0 / size))
    j, i = divmod(tract, n_ra)
    dec0 = -90.0 + j * size
    return i * size, dec0, (i + 1) * size, min(dec0 + size, 90.0)


def skymap_tracts_for(fields: Iterable[tuple[float, float]], *, tract_size_deg: float = 3.0,
                      radius_deg: float = 1.2) -> list[int]:
    """Tract ids of the grid that a circle of ``radius_deg`` around each field touches."""
    n_ra = int(round(360.0 / tract_size_deg))
    tracts: set[int] = set()
    for ra, dec in fields:
        dec_lo, dec_hi = max(dec - radius_deg, -89.99), min(dec + radius_deg, 89.99)
        cosd = max(math.cos(math.radians(max(abs(dec_lo), abs(dec_hi)))), 0.05)
        ra_lo, ra_hi = ra - radius_deg / cosd, ra + radius_deg / cosd
        for j in range(int((dec_lo + 90) // tract_size_deg), int((dec_hi + 90) // tract_size_deg) + 1):
            for ii in range(int(math.floor(ra_lo / tract_size_deg)), int(math.floor(ra_hi / tract_size_deg)) + 1):
                tracts.add(j * n_ra + (ii % n_ra))
    return sorted(tracts)


def register_skymap(repo: Any, fields: Iterable[tuple[float, float]], *, name: str = DEFAULT_SKYMAP,
                    tract_size_deg: float = 3.0, patches_per_side: int = 6, radius_deg: float = 1.2,
                    collection: str = SKYMAPS_COLLECTION) -> str:
    """Register skymap/tract/patch records (by hand, no lsst.skymap) for the tracts around ``fields``.

    The grid is fixed by (name, tract_size_deg, patches_per_side), so tract and patch ids never change
    when more fields are added later: new fields only add tracts.
    """
    from lsst.daf.butler import CollectionType, DatasetType

    butler = _butler(repo)
    params = {"name": name, "tract_size_deg": tract_size_deg, "patches_per_side": patches_per_side,
              "kind": "autoproc simulated RA/Dec grid"}
    digest = hashlib.sha1(repr(sorted(params.items())).encode()).digest()
    n_tracts = int(round(360.0 / tract_size_deg)) * int(math.ceil(180.0 / tract_size_deg))
    registry = butler.registry
    registry.syncDimensionData("skymap", {"name": name, "hash": digest, "tract_max": n_tracts,
                                          "patch_nx_max": patches_per_side, "patch_ny_max": patches_per_side})
    have = {r.id for r in butler.query_dimension_records("tract", where="skymap = s", bind={"s": name}, explain=False)}
    want = skymap_tracts_for(fields, tract_size_deg=tract_size_deg, radius_deg=radius_deg)
    new = [t for t in want if t not in have]
    with registry.transaction():
        for t in new:
            ra0, dec0, ra1, dec1 = _tract_bounds(t, tract_size_deg)
            registry.syncDimensionData("tract", {"skymap": name, "id": t, "region": _box(ra0, dec0, ra1, dec1)})
            w, h = (ra1 - ra0) / patches_per_side, (dec1 - dec0) / patches_per_side
            for y in range(patches_per_side):
                for x in range(patches_per_side):
                    registry.syncDimensionData("patch", {
                        "skymap": name, "tract": t, "id": y * patches_per_side + x, "cell_x": x, "cell_y": y,
                        "region": _box(ra0 + x * w, dec0 + y * h, ra0 + (x + 1) * w, dec0 + (y + 1) * h)})
    registry.registerCollection(collection, CollectionType.RUN)
    dt = DatasetType("skyMap", ("skymap",), "StructuredDataDict", universe=butler.dimensions)
    registry.registerDatasetType(dt)
    if not butler.query_datasets("skyMap", collections=collection, where="skymap = s", bind={"s": name},
                                 explain=False):
        butler.put(dict(params), dt, {"skymap": name}, run=collection)
    msg = (f"skymap {name}: {len(new)} tract(s) registered {new}, {len(want) - len(new)} already there"
           if new else f"skymap {name}: already covers the fields ({len(want)} tract(s))")
    log.info(msg)
    return msg


# ---------------------------------------------------------------------------------------------------------
# defects (DEEP bin/defects.py, simulated storage)


def _bpm_files(bpm_dir: Path) -> dict[int, dict[str, Path]]:
    found: dict[int, dict[str, Path]] = {}
    for p in sorted(bpm_dir.rglob("*.fits")):
        m = _DES_BPM.search(p.name)
        if m:
            found.setdefault(int(m.group(1)), {})["des"] = p
            continue
        m = _CP_BPM.search(p.name)
        if m:
            found.setdefault(int(m.group(1)), {})["cp"] = p
    return found


def _pixel_table(mask: Any, meta: dict[str, Any]) -> Any:
    import numpy as np
    from astropy.table import Table

    y, x = np.nonzero(mask)
    t = Table({"x0": x.astype(np.int32), "y0": y.astype(np.int32), "width": np.ones(len(x), np.int32),
               "height": np.ones(len(x), np.int32)})
    t.meta.update(meta)
    return t


def ingest_defects(repo: Any, bpm_dir: str | os.PathLike[str], *, calib_collection: str = CALIB_COLLECTION,
                   bad_run: str = CALIB_BAD_RUN, suspect_run: str = CALIB_SUSPECT_RUN,
                   bad_dataset: str = "defects", suspect_dataset: str = "suspectMask") -> str:
    """Bad-pixel and suspect masks from BPM FITS files into ``bad_run`` / ``suspect_run``, certified into
    ``calib_collection`` over 1970→2100 TAI (after decertifying what was there).

    BPM files (searched recursively): DES ``*_c{NN}_*bpm.fits`` and CP ``*_cd_{NN}.fits``, NN = CCDNUM.
    Skipped (with "already done") when the stored tables were made from the same files (md5 recorded in
    the table metadata) and are certified.
    """
    import numpy as np
    from astropy.io import fits
    from astropy.time import Time
    from lsst.daf.butler import CollectionType, DatasetType, Timespan

    butler = _butler(repo)
    bpm_dir = Path(bpm_dir)
    files = _bpm_files(bpm_dir)
    if not files:
        msg = f"defects: no BPM files under {bpm_dir}; nothing done"
        log.warning(msg)
        return msg
    digests = {det: hashlib.md5(b"".join(p.read_bytes() for _, p in sorted(f.items())),
                                usedforsecurity=False).hexdigest() for det, f in files.items()}
    reg = butler.registry
    reg.registerCollection(calib_collection, CollectionType.CALIBRATION)
    for run in (bad_run, suspect_run):
        reg.registerCollection(run, CollectionType.RUN)
    types = {}
    for name in (bad_dataset, suspect_dataset):
        dt = DatasetType(name, ("instrument", "detector"), "ArrowAstropy", universe=butler.dimensions,
                         isCalibration=True)
        reg.registerDatasetType(dt)
        types[name] = dt
    existing = butler.query_datasets(bad_dataset, collections=bad_run, explain=False, limit=None)
    certified = butler.query_datasets(bad_dataset, collections=calib_collection, explain=False, limit=None,
                                      find_first=False) if existing else []
    if existing and len(certified) >= len(files):
        stored = {}
        for ref in existing:
            try:
                stored[int(ref.dataId["detector"])] = butler.get(ref, parameters=_KEEP_META).meta.get("bpm_md5")
            except Exception:  # unreadable: rebuild
                stored = {}
                break
        if stored == digests:
            msg = f"defects: already done ({len(files)} detector(s) from {bpm_dir}, certified in {calib_collection})"
            log.info(msg)
            return msg
    # DEEP prunes whatever is in the two runs, then puts afresh
    for name, run in ((bad_dataset, bad_run), (suspect_dataset, suspect_run)):
        old = butler.query_datasets(name, collections=run, explain=False, limit=None)
        if old:
            butler.pruneDatasets(old, disassociate=True, unstore=True, purge=True)
    refs: dict[str, list[Any]] = {bad_dataset: [], suspect_dataset: []}
    n_bad = n_suspect = 0
    for det, f in sorted(files.items()):
        bad = suspect = None
        if "des" in f:
            des = np.asarray(fits.getdata(f["des"]))
            bad = (des != 0) & (des != SUSPECT_VALUE)
            suspect = des == SUSPECT_VALUE
        if "cp" in f:
            cp = np.asarray(fits.getdata(f["cp"])) != 0
            bad = cp if bad is None else (bad | cp)
        assert bad is not None  # every entry of _bpm_files has a "des" or a "cp" file
        if suspect is None:
            suspect = np.zeros_like(bad, dtype=bool)
        meta = {"detector": det, "bpm_md5": digests[det], "sources": [str(p) for p in f.values()],
                "SIMULATED": "astropy table of 1x1 bad-pixel boxes standing in for afw Defects"}
        refs[bad_dataset].append(butler.put(_pixel_table(bad, {**meta, "BADPIX_VALUE": 1}), types[bad_dataset],
                                            {"instrument": INSTRUMENT, "detector": det}, run=bad_run))
        refs[suspect_dataset].append(butler.put(_pixel_table(suspect, {**meta, "SUSPECTPIX_VALUE": 7}),
                                                types[suspect_dataset],
                                                {"instrument": INSTRUMENT, "detector": det}, run=suspect_run))
        n_bad += int(bad.sum())
        n_suspect += int(suspect.sum())
    span = Timespan(Time(CERTIFY_BEGIN, scale="tai"), Time(CERTIFY_END, scale="tai"))
    for name in (bad_dataset, suspect_dataset):
        _decertify(butler, calib_collection, name, span)
        reg.certify(calib_collection, refs[name], span)
    msg = (f"defects: SIMULATED defects ({n_bad} bad px) and suspect masks ({n_suspect} px) for "
           f"{len(files)} detector(s) from {bpm_dir} into {bad_run}, {suspect_run}; certified in "
           f"{calib_collection} {CERTIFY_BEGIN}..{CERTIFY_END} TAI")
    log.info(msg)
    return msg


def _decertify(butler: Any, calib_collection: str, dataset_type: str, span: Any) -> None:
    """``Registry.decertify`` trips an internal AssertionError ("Calibration primary key for internal use
    only") when the CALIBRATION collection has never held that dataset type, so only call it when there
    is something certified."""
    if butler.query_datasets(dataset_type, collections=calib_collection, find_first=False, explain=False,
                             limit=1):
        butler.registry.decertify(calib_collection, dataset_type, span)


def write_bpm_files(directory: str | os.PathLike[str], detectors: Sequence[int] = (1, 3), *,
                    shape: tuple[int, int] = (16, 16), n_bad: int = 3, n_suspect: int = 2,
                    with_cp: bool = True, seed: int = 0) -> list[Path]:
    """Write DES (and CP) style BPM files for the simulator: DES values 1 (bad) and 512 (suspect)."""
    import numpy as np
    from astropy.io import fits

    directory = Path(directory)
    (directory / "des").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for det in detectors:
        des = np.zeros(shape, np.int32)
        flat = rng.choice(des.size, n_bad + n_suspect, replace=False)
        des.flat[flat[:n_bad]] = 1
        des.flat[flat[n_bad:]] = SUSPECT_VALUE
        p = directory / "des" / f"D_n20150105t0115_c{det:02d}_r2134p01_bpm.fits"
        fits.PrimaryHDU(des).writeto(p, overwrite=True)
        out.append(p)
        if with_cp:
            (directory / "cp").mkdir(exist_ok=True)
            cp = np.zeros(shape, np.int16)
            cp[0, det % shape[1]] = 1
            p = directory / "cp" / f"DECam_Master_20140209v2_cd_{det:02d}.fits"
            fits.PrimaryHDU(cp).writeto(p, overwrite=True)
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------------------------
# fakes (DEEP bin/fakes.py)


def _read_fakes(path: Path) -> Any:
    from astropy.table import Table

    fmt = "ascii.ecsv" if path.suffix == ".ecsv" else None
    t = Table.read(path, format=fmt) if fmt else Table.read(path)
    renames = {"RA": "ra", "DEC": "dec", "MAG": "mag", "BAND": "band"}
    for old, new in renames.items():
        if old in t.colnames and new not in t.colnames:
            t.rename_column(old, new)
    missing = [c for c in ("ra", "dec", "mag", "EXPNUM") if c not in t.colnames]
    if missing:
        raise ValueError(f"fakes table {path}: missing column(s) {', '.join(missing)} (EXPNUM is required)")
    if "band" not in t.colnames:
        t["band"] = "VR"
    t["band"] = [("y" if str(b) == "Y" else str(b)) for b in t["band"]]
    t["source_type"] = "DeltaFunction"
    return t


def ingest_fakes(repo: Any, table_path: str | os.PathLike[str], *, collection: str = FAKES_COLLECTION,
                 dataset_type: str = "injection_catalog") -> str:
    """Fake-source injection catalog into ``collection`` as ``injection_catalog`` (htm7, band).

    Columns RA/DEC/MAG/BAND are renamed ra/dec/mag/band (band defaults to VR, Y → y), ``source_type`` is
    DeltaFunction, ``EXPNUM`` is required (the DRP injection selects rows by visit). Re-running with the
    same file is a no-op; a changed file replaces the catalogs.
    """
    import numpy as np
    from astropy.table import vstack
    from lsst.daf.butler import CollectionType, DatasetType
    from lsst.sphgeom import HtmPixelization, LonLat, UnitVector3d

    butler = _butler(repo)
    path = Path(table_path)
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    butler.registry.registerCollection(collection, CollectionType.RUN)
    dt = DatasetType(dataset_type, ("htm7", "band"), "ArrowAstropy", universe=butler.dimensions)
    butler.registry.registerDatasetType(dt)
    old = butler.query_datasets(dataset_type, collections=collection, explain=False, limit=None)
    if old:
        try:
            same = all(butler.get(r, parameters=_KEEP_META).meta.get("source_md5") == digest for r in old[:1])
        except Exception:
            same = False
        if same:
            msg = f"fakes: already done ({len(old)} catalog(s) from {path.name} in {collection})"
            log.info(msg)
            return msg
        butler.pruneDatasets(old, disassociate=True, unstore=True, purge=True)
    table = _read_fakes(path)
    htm = HtmPixelization(7)
    table["htm7"] = np.array([htm.index(UnitVector3d(LonLat.fromDegrees(float(r), float(d))))
                              for r, d in zip(table["ra"], table["dec"], strict=True)], dtype=np.int64)
    n = 0
    for band in sorted(set(table["band"])):
        sub = table[table["band"] == band]
        for pix in sorted(set(int(p) for p in sub["htm7"])):
            chunk = vstack([sub[sub["htm7"] == pix]])
            chunk.remove_column("htm7")
            chunk.meta.update({"source_md5": digest, "source": str(path), "band": band})
            butler.put(chunk, dt, {"htm7": pix, "band": band}, run=collection)
            n += 1
    msg = f"fakes: {len(table)} source(s) from {path.name} into {collection} as {n} {dataset_type} dataset(s)"
    log.info(msg)
    return msg


def write_fakes_table(path: str | os.PathLike[str], pointings: Iterable[tuple[int, float, float]], *,
                      per_exposure: int = 5, band: str | None = "VR", radius_deg: float = 0.5,
                      seed: int = 0) -> Path:
    """A DEEP-style fakes table (RA, DEC, MAG, BAND, EXPNUM) for (expnum, ra, dec) pointings."""
    import numpy as np
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {"RA": [], "DEC": [], "MAG": [], "EXPNUM": []}
    for expnum, ra, dec in pointings:
        for _ in range(per_exposure):
            rows["RA"].append(ra + rng.uniform(-radius_deg, radius_deg))
            rows["DEC"].append(dec + rng.uniform(-radius_deg, radius_deg))
            rows["MAG"].append(rng.uniform(20, 25))
            rows["EXPNUM"].append(int(expnum))
    t = Table(rows)
    if band:
        t["BAND"] = band
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    t.write(path, overwrite=True, format="ascii.ecsv" if path.suffix == ".ecsv" else None)
    return path


# ---------------------------------------------------------------------------------------------------------
# refcats


def ingest_refcats(repo_root: str | os.PathLike[str], command: Sequence[str] | None, *, collection: str = REFCATS_COLLECTION,
                   cwd: str | os.PathLike[str] | None = None, force: bool = False,
                   timeout: float | None = None) -> str:
    """Run the configured refcat ingest command (an argv list; ``{repo}`` is replaced by the repo root).

    Skipped when no command is configured, or when ``collection`` already holds datasets (unless
    ``force``). Raises `RuntimeError` with the tail of the output when the command fails.
    """
    if not command:
        msg = "refcats: no ingest command configured; skipped"
        log.info(msg)
        return msg
    root = str(repo_root)
    if not force:
        from lsst.daf.butler import MissingCollectionError

        butler = _butler(root, writeable=False)
        try:
            n = sum(1 for _ in butler.registry.queryDatasets(..., collections=collection))
        except MissingCollectionError:
            n = 0
        finally:
            butler.close()
        if n:
            msg = f"refcats: already done ({n} dataset(s) in {collection})"
            log.info(msg)
            return msg
    argv = [str(a).replace("{repo}", root) for a in command]
    log.info("refcats: running %s", argv)
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)  # noqa: S603
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
        raise RuntimeError(f"refcat ingest failed (rc={proc.returncode}): {argv}\n{tail}")
    msg = f"refcats: ingest command succeeded: {' '.join(argv)}"
    log.info(msg)
    return msg


# ---------------------------------------------------------------------------------------------------------
# all of it


@dataclass
class RepoSetup:
    """What `init_repo` sets up; everything optional except the root."""

    root: Path
    registry_db: str | None = None
    registry_namespace: str | None = None
    instrument_class: str = DEFAULT_INSTRUMENT_CLASS
    skymap_name: str = DEFAULT_SKYMAP
    fields: list[tuple[float, float]] = field(default_factory=list)
    tract_size_deg: float = 3.0
    patches_per_side: int = 6
    bpm_dir: Path | None = None
    fakes_table: Path | None = None
    refcat_command: list[str] | None = None


def init_repo(setup: RepoSetup) -> list[str]:
    """create → instrument → skymap → defects → fakes → refcats; returns one message per step."""
    from autoproc.deep.instrument import instrument_type

    instrument_type(setup.instrument_class)  # a class that cannot be loaded is refused before the repo is made
    msgs = [create_repo(setup.root, registry_db=setup.registry_db, registry_namespace=setup.registry_namespace)]
    butler = _butler(setup.root)
    try:
        msgs.append(register_instrument(butler, setup.instrument_class))
        if setup.fields:
            msgs.append(register_skymap(butler, setup.fields, name=setup.skymap_name,
                                        tract_size_deg=setup.tract_size_deg,
                                        patches_per_side=setup.patches_per_side))
        else:
            msgs.append("skymap: no fields configured; skipped")
        msgs.append(ingest_defects(butler, setup.bpm_dir) if setup.bpm_dir else
                    "defects: no BPM directory configured; skipped")
        msgs.append(ingest_fakes(butler, setup.fakes_table) if setup.fakes_table else
                    "fakes: no fakes table configured; skipped")
        msgs.append(ingest_refcats(setup.root, setup.refcat_command))
    finally:
        butler.close()
    return msgs
