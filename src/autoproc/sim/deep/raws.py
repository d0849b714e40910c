"""Simulated DECam raws: a night plan, the FITS writer and the ``exposures.ecsv`` manifest.

File layout (as real DECam raws): one multi-extension FITS file per exposure, an image-less primary HDU
with the exposure header, then one 16×16 int16 image HDU per CCD with ``CCDNUM``, ``DETPOS`` and
``EXTNAME = DETPOS``. The name is the archive one, ``c4d_YYMMDD_HHMMSS_ori.fits`` (UTC of DATE-OBS; the
real archive files are ``.fits.fz``, we do not tile-compress). With ``md5_names=True`` the file is named
like the DEEP downloader's ``<md5>_<basename>`` (docs/DEEP.md#exposures-manifest).

Primary header keys: ``INSTRUME='DECam'``, ``TELESCOP``, ``OBSID`` (``ct4m<utc>``), ``EXPNUM``,
``DATE-OBS`` (UTC isot), ``MJD-OBS``, ``TIME-OBS``, ``OBSTYPE`` (``zero`` / ``dome flat`` / ``object``),
``FILTER`` (full physical filter string), ``EXPTIME``, ``DARKTIME``, ``PROPID``, ``OBJECT``, ``RA``/``DEC``
and ``TELRA``/``TELDEC`` (sexagesimal, RA in hours), ``RA_DEG``/``DEC_DEG``, ``AIRMASS``, ``ZD``, ``AZ``,
``CALDAT`` (the local night, YYYY-MM-DD). Zeros carry the filter that happened to be in the beam, like
real DECam zeros; ingest applies obs_decam's fix-up (zero → ``solid plate 0.0 0.0``).

Times: CTIO local time is taken as UTC−4 (Chilean standard time; daylight saving ignored). Calibrations
are taken in the afternoon of the night's date (16:00 local onwards), science from 20:00 local, so
everything of night N has ``DATE-OBS`` in [N 20:00 UTC, N+1 10:00 UTC).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time, TimeDelta

from .instrument import BAND_TO_FILTER, FILTERS

__all__ = [
    "DEFAULT_DETECTORS",
    "DEFAULT_FIELD",
    "SimExposure",
    "md5sum",
    "night_date",
    "plan_night",
    "write_exposures_ecsv",
    "write_night",
    "write_raw",
]

DEFAULT_DETECTORS = (1, 3)  # S29, S31 (real DECam CCDNUMs)
DEFAULT_FIELD = (150.0, 2.0)  # (ra, dec) degrees
CTIO_UTC_OFFSET_HOURS = -4.0
RAW_SHAPE = (16, 16)
MANIFEST_COLUMNS = [
    "obs_type", "caldat", "exposure", "md5sum", "proc_type", "prod_type", "archive_filename", "dateobs_min",
    "DEC", "OBJECT", "EXPNUM", "FILTER", "RA", "PROPID", "AIRMASS", "dateobs_midpoint", "mjd", "mjd_midpoint",
    "night", "RA(deg)", "DEC(deg)", "band",
]


def night_date(night: int) -> str:
    """20240601 -> '2024-06-01'."""
    s = f"{int(night):08d}"
    return f"{s[:4]}-{s[4:6]}-{s[6:]}"


@dataclass
class SimExposure:
    """One planned exposure; `write_raw` turns it into a file."""

    expnum: int
    obs_type: str  # DECam OBSTYPE: "zero", "dome flat", "object"
    physical_filter: str
    date_obs: Time  # UTC start
    exptime: float
    night: int  # YYYYMMDD, the CTIO local night (NOIRLab caldat)
    ra: float = DEFAULT_FIELD[0]
    dec: float = DEFAULT_FIELD[1]
    object: str = ""
    propid: str = "2024A-0001"
    detectors: tuple[int, ...] = DEFAULT_DETECTORS
    airmass: float = 1.2
    nextend: bool = True  # False: no NEXTEND card, as many archive files

    @property
    def band(self) -> str:
        return FILTERS.get(self.physical_filter, self.physical_filter.split()[0])

    @property
    def basename(self) -> str:
        return f"c4d_{self.date_obs.utc.strftime('%y%m%d_%H%M%S')}_ori.fits"

    @property
    def caldat(self) -> str:
        return night_date(self.night)

    @property
    def date_obs_isot(self) -> str:
        return self.date_obs.utc.isot

    def primary_header(self) -> fits.Header:
        t = self.date_obs.utc
        ra_s = Angle(self.ra, unit="deg").to_string(unit="hourangle", sep=":", precision=2, pad=True)
        dec_s = Angle(self.dec, unit="deg").to_string(unit="deg", sep=":", precision=1, alwayssign=True, pad=True)
        zd = math.degrees(math.acos(min(1.0, 1.0 / self.airmass)))
        h = fits.Header()
        cards = [
            ("INSTRUME", "DECam", "Instrument used to obtain these data"),
            ("TELESCOP", "CTIO 4.0-m telescope", ""),
            ("OBSERVAT", "CTIO", ""),
            ("OBSID", f"ct4m{t.strftime('%Y%m%dt%H%M%S')}", "Unique observation identifier"),
            ("EXPNUM", int(self.expnum), "DECam exposure number"),
            ("DATE-OBS", t.isot, "UTC date of exposure start"),
            ("TIME-OBS", t.strftime("%H:%M:%S.%f"), "UTC time of exposure start"),
            ("MJD-OBS", float(t.mjd), "MJD of exposure start"),
            ("CALDAT", self.caldat, "Local date at start of night (simulated)"),
            ("OBSTYPE", self.obs_type, "Observation type"),
            ("FILTER", self.physical_filter, "Unique filter identifier"),
            ("EXPTIME", float(self.exptime), "[s] Exposure duration"),
            ("DARKTIME", float(self.exptime) + 1.0, "[s] Dark time"),
            ("PROPID", self.propid, "Proposal identifier"),
            ("OBJECT", self.object, "Object name"),
            ("RA", ra_s, "[HH:MM:SS] Target RA"),
            ("DEC", dec_s, "[DD:MM:SS] Target Dec"),
            ("TELRA", ra_s, "[HH:MM:SS] Telescope RA"),
            ("TELDEC", dec_s, "[DD:MM:SS] Telescope Dec"),
            ("RA_DEG", float(self.ra), "[deg] Target RA (simulator convenience)"),
            ("DEC_DEG", float(self.dec), "[deg] Target Dec (simulator convenience)"),
            ("RADESYS", "ICRS", ""),
            ("AIRMASS", float(self.airmass), ""),
            ("ZD", round(zd, 3), "[deg] Zenith distance"),
            ("AZ", 0.0, "[deg] Azimuth"),
            ("SIMULATD", True, "autoproc simulated raw"),
        ]
        for key, value, comment in cards:
            h[key] = (value, comment)
        return h

    def hdulist(self) -> fits.HDUList:
        from .instrument import DETECTORS

        primary = fits.PrimaryHDU(header=self.primary_header())
        if self.nextend:
            primary.header["NEXTEND"] = (len(self.detectors), "Number of extensions")
        hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [primary]
        rng = np.random.default_rng(self.expnum)
        level = {"zero": 1000, "dome flat": 20000}.get(self.obs_type, 3000)
        for det in self.detectors:
            data = (level + rng.normal(0, 5, RAW_SHAPE)).astype(np.int16)
            hdu = fits.ImageHDU(data=data, name=DETECTORS[det])
            hdu.header["CCDNUM"] = (det, "CCD number")
            hdu.header["DETPOS"] = (DETECTORS[det], "detector position")
            hdu.header["INHERIT"] = True
            hdus.append(hdu)
        return fits.HDUList(hdus)


def md5sum(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_raw(exp: SimExposure, directory: str | os.PathLike[str], *, md5_names: bool = False,
              atomic: bool = True, stall_seconds: float = 0.0, stall_after: int = 1) -> Path:
    """Write one raw; returns its final path.

    ``atomic``: write a hidden temporary file in the same directory, then rename (a watcher never sees a
    partial file under the final name). Otherwise write the final name directly and close it (inotify
    sees the close). With ``md5_names`` the final name is ``<md5>_<basename>``.

    ``stall_seconds``: a network copy that stalls, under the final name: the primary HDU and the first
    ``stall_after`` CCD HDUs are written and flushed (the file then ends on an HDU boundary, a valid FITS
    file), the writer sleeps, then appends the rest and closes the file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hdul = exp.hdulist()
    if stall_seconds > 0:
        if atomic or md5_names:
            raise ValueError("a stalled copy writes under the final name (atomic=False, md5_names=False)")
        return _write_stalled(hdul, directory / exp.basename, stall_seconds, stall_after)
    if atomic or md5_names:
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            hdul.writeto(tmp, overwrite=True)
            name = f"{md5sum(tmp)}_{exp.basename}" if md5_names else exp.basename
            final = directory / name
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return final
    final = directory / exp.basename
    hdul.writeto(final, overwrite=True)
    return final


def _write_stalled(hdul: fits.HDUList, final: Path, stall_seconds: float, stall_after: int) -> Path:
    import io
    import time

    whole, head = io.BytesIO(), io.BytesIO()
    hdul.writeto(whole)
    fits.HDUList(hdul[: 1 + stall_after]).writeto(head)  # the same bytes as the start of `whole`
    data, cut = whole.getvalue(), len(head.getvalue())
    if data[:cut] != head.getvalue():
        raise AssertionError("the first HDUs do not serialize as the start of the file")
    with open(final, "wb") as f:
        f.write(data[:cut])
        f.flush()
        os.fsync(f.fileno())
        time.sleep(stall_seconds)
        f.write(data[cut:])
    return final


def _filter_for(band_or_filter: str) -> str:
    if band_or_filter in FILTERS:
        return band_or_filter
    try:
        return BAND_TO_FILTER[band_or_filter]
    except KeyError:
        raise ValueError(f"unknown DECam band or filter {band_or_filter!r}") from None


def plan_night(
    night: int,
    n_bias: int = 5,
    flats_per_band: int | Mapping[str, int] = 5,
    science: Sequence[tuple[str, int]] = (("VR", 5),),
    field_center: tuple[float, float] = DEFAULT_FIELD,
    start_expnum: int | None = None,
    propid: str = "2024A-0001",
    *,
    detectors: Sequence[int] = DEFAULT_DETECTORS,
    missing_flat_bands: Iterable[str] = (),
    science_exptime: float = 120.0,
    flat_exptime: float = 10.0,
    dither_deg: float = 0.05,
    object_name: str = "DEEP_A0",
) -> list[SimExposure]:
    """A night of DECam exposures in observing order: zeros, dome flats per band, then science.

    ``flats_per_band``: an int (that many flats for every band observed in ``science``) or a mapping
    band → count. ``missing_flat_bands`` drops those bands' flats (the "missing data" case of docs/DEEP.md#missing-calibrations).
    Exposure numbers are consecutive from ``start_expnum`` (default: derived from the night so that
    different nights never collide). Science pointings dither around ``field_center`` in a small
    square pattern.
    """
    night = int(night)
    date = night_date(night)
    if start_expnum is None:
        # Unique per night and below the instrument's exposure_max (2**25).
        start_expnum = 1_000_000 + (int(Time(date, scale="utc").mjd) - 58000) * 500
    sci_bands = [b for b, _ in science]
    if isinstance(flats_per_band, int):
        flats = {b: flats_per_band for b in dict.fromkeys(sci_bands)}
    else:
        flats = dict(flats_per_band)
    for b in missing_flat_bands:
        flats.pop(b, None)
    dets = tuple(int(d) for d in detectors)
    local_noon = Time(f"{date}T12:00:00", scale="utc") - TimeDelta(CTIO_UTC_OFFSET_HOURS * 3600, format="sec")
    out: list[SimExposure] = []
    expnum = int(start_expnum)
    first_filter = _filter_for(sci_bands[0]) if sci_bands else _filter_for("g")
    t = local_noon + TimeDelta(4 * 3600, format="sec")  # 16:00 local
    for _ in range(n_bias):
        out.append(SimExposure(expnum, "zero", first_filter, t, 0.0, night, *field_center, "zero", propid, dets,
                               airmass=1.0))
        expnum += 1
        t = t + TimeDelta(30, format="sec")
    for band, n in flats.items():
        pf = _filter_for(band)
        for _ in range(n):
            out.append(SimExposure(expnum, "dome flat", pf, t, flat_exptime, night, *field_center,
                                   "dome flat", propid, dets, airmass=1.0))
            expnum += 1
            t = t + TimeDelta(flat_exptime + 30, format="sec")
    t = local_noon + TimeDelta(8 * 3600, format="sec")  # 20:00 local
    pattern = [(0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]
    i = 0
    for band, n in science:
        pf = _filter_for(band)
        for _ in range(n):
            dx, dy = pattern[i % len(pattern)]
            ra = field_center[0] + dx * dither_deg / max(math.cos(math.radians(field_center[1])), 1e-3)
            dec = field_center[1] + dy * dither_deg
            out.append(SimExposure(expnum, "object", pf, t, science_exptime, night, ra, dec, object_name, propid,
                                   dets, airmass=1.1 + 0.02 * (i % 10)))
            expnum += 1
            i += 1
            t = t + TimeDelta(science_exptime + 30, format="sec")
    end = local_noon + TimeDelta(22 * 3600, format="sec")  # 10:00 local next morning
    if out and out[-1].date_obs > end:
        raise ValueError(f"night {night}: {len(out)} exposures do not fit in the night")
    return out


def write_night(exposures: Iterable[SimExposure], directory: str | os.PathLike[str], *,
                md5_names: bool = False) -> list[Path]:
    return [write_raw(e, directory, md5_names=md5_names) for e in exposures]


def write_exposures_ecsv(
    rows: Iterable[tuple[SimExposure, str | os.PathLike[str] | None]],
    path: str | os.PathLike[str],
    *,
    archive_root: str = "/net/archive/pipe",
) -> Path:
    """Write a DEEP ``exposures.ecsv`` (docs/DEEP.md#exposures-manifest) for (exposure, written file or None) pairs.

    ``md5sum`` is the md5 of the written file (a row whose file is not written yet gets the md5 it
    will have: the file is rendered in memory). ``archive_filename`` is archive-style
    ``{root}/{night}/ct4m/{propid}/{basename}`` (without the real ``.fz``), so the downloaded name is ``<md5>_<basename(archive_filename)>``. ``obs_type`` is the archive value (``zero``,
    ``dome flat``, ``object``), ``proc_type`` is ``raw``, ``night`` is YYYYMMDD.
    """
    import io

    from astropy.table import Table

    data: dict[str, list] = {c: [] for c in MANIFEST_COLUMNS}
    for exp, written in rows:
        if written is not None and Path(written).exists():
            md5 = md5sum(written)
        else:
            buf = io.BytesIO()
            exp.hdulist().writeto(buf)
            md5 = hashlib.md5(buf.getvalue(), usedforsecurity=False).hexdigest()
        t0 = exp.date_obs.utc
        mid = t0 + TimeDelta(exp.exptime / 2 + 0.5, format="sec")
        ra_s = Angle(exp.ra, unit="deg").to_string(unit="hourangle", sep=":", precision=3, pad=True)
        dec_s = Angle(exp.dec, unit="deg").to_string(unit="deg", sep=":", precision=2, alwayssign=True, pad=True)
        values = {
            "obs_type": exp.obs_type, "caldat": exp.caldat, "exposure": float(exp.exptime), "md5sum": md5,
            "proc_type": "raw", "prod_type": "image",
            "archive_filename": f"{archive_root}/{exp.night}/ct4m/{exp.propid}/{exp.basename}",
            "dateobs_min": t0.isot, "DEC": dec_s, "OBJECT": exp.object, "EXPNUM": int(exp.expnum),
            "FILTER": exp.physical_filter, "RA": ra_s, "PROPID": exp.propid, "AIRMASS": float(exp.airmass),
            "dateobs_midpoint": mid.isot, "mjd": float(t0.mjd), "mjd_midpoint": float(mid.mjd),
            "night": int(exp.night), "RA(deg)": float(exp.ra), "DEC(deg)": float(exp.dec),
            "band": exp.physical_filter.split()[0],
        }
        for c in MANIFEST_COLUMNS:
            data[c].append(values[c])
    table = Table(data)
    table["RA(deg)"].unit = "deg"
    table["DEC(deg)"].unit = "deg"
    if len(table):
        table["dateobs_min"] = Time(list(table["dateobs_min"]), format="isot", scale="utc")
        table["dateobs_midpoint"] = Time(list(table["dateobs_midpoint"]), format="isot", scale="utc")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    table.write(tmp, format="ascii.ecsv", overwrite=True)
    os.replace(tmp, path)
    return path

