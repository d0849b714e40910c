"""`SimDECam`: a DECam-like `lsst.pipe.base.Instrument` that needs no obs_decam and no afw.

The instrument is named ``DECam`` so every collection name matches the real one (``DECam/raw/all``,
``DECam/calib``). Detector ids and CCD names (``id = CCDNUM``, name = ``DETPOS``) and the physical filters
and bands are the real ones, from `autoproc.deep.decam`.

What is simulated: the focal-plane geometry (`detector_offset`) is a simple 12-row layout of
0.30° × 0.15° CCDs with the real row order (S29–S31 at the south edge, N29–N31 at the north edge), no
gaps, no rotation; `SimDECam.detector_corners` gives it to ingest, which writes visit regions from
it (docs/DEEP.md#instrument-class), so they are only plausible.
"""

from __future__ import annotations

import math
from typing import Any

from lsst.daf.butler import FormatterV2
from lsst.pipe.base import Instrument

from autoproc.deep.decam import (
    BAND_TO_FILTER,
    CCD_PIXELS,
    DETECTORS,
    FILTERS,
    INSTRUMENT,
    OPAQUE_FILTER,
    PIXEL_SCALE_ARCSEC,
    ROWS,
)

__all__ = [
    "BAND_TO_FILTER",
    "DETECTORS",
    "FILTERS",
    "INSTRUMENT",
    "INSTRUMENT_CLASS",
    "OPAQUE_FILTER",
    "FitsRawFormatter",
    "SimDECam",
    "detector_offset",
]

INSTRUMENT_CLASS = "autoproc.sim.deep.instrument.SimDECam"

CCD_WIDTH_DEG = CCD_PIXELS[1] * PIXEL_SCALE_ARCSEC / 3600.0  # long axis, along RA
CCD_HEIGHT_DEG = CCD_PIXELS[0] * PIXEL_SCALE_ARCSEC / 3600.0  # short axis, along Dec


def detector_offset(detector: int) -> tuple[float, float]:
    """Simulated focal-plane centre of a CCD, (east, north) offsets in degrees from the boresight."""
    name = DETECTORS[detector]
    rows = ROWS[name[0]]
    for r, row in enumerate(rows):
        if name in row:
            i = row.index(name)
            x = (i - (len(row) - 1) / 2.0) * CCD_WIDTH_DEG
            y = (r + 0.5) * CCD_HEIGHT_DEG * (-1 if name[0] == "S" else 1)
            return x, y
    raise KeyError(detector)


def detector_corners(ra: float, dec: float, detector: int) -> list[tuple[float, float]]:
    """(ra, dec) corners in degrees of a CCD for a pointing; a flat-sky approximation."""
    dx, dy = detector_offset(detector)
    cosd = max(math.cos(math.radians(dec + dy)), 1e-3)
    ra_c, dec_c = ra + dx / cosd, dec + dy
    hw, hh = CCD_WIDTH_DEG / 2 / cosd, CCD_HEIGHT_DEG / 2
    return [(ra_c - hw, dec_c - hh), (ra_c + hw, dec_c - hh), (ra_c + hw, dec_c + hh), (ra_c - hw, dec_c + hh)]


class FitsRawFormatter(FormatterV2):
    """Read a DECam-style multi-extension raw with astropy: the HDU whose CCDNUM is the detector.

    Only usable with a storage class whose pytype is ``astropy.io.fits.HDUList`` (the raws are
    registered as ``Exposure``, which cannot be read without afw; mocks never read raws).
    """

    default_extension = ".fits"
    supported_extensions = frozenset({".fits", ".fits.fz", ".fz"})
    can_read_from_local_file = True

    def read_from_local_file(self, path: str, component: str | None = None, expected_size: int = -1) -> Any:
        from astropy.io import fits

        detector = None
        try:
            detector = int(self.data_id["detector"])
        except (KeyError, TypeError, AttributeError):
            pass
        with fits.open(path, memmap=False) as hdul:
            hdul.readall()
            keep = [hdul[0].copy()]
            for hdu in hdul[1:]:
                if detector is None or hdu.header.get("CCDNUM") == detector:
                    keep.append(hdu.copy())
            return fits.HDUList(keep)

    def write_local_file(self, in_memory_dataset: Any, uri: Any) -> None:
        in_memory_dataset.writeto(uri.ospath, overwrite=True)


class SimDECam(Instrument):
    """DECam as far as the Butler and the mock pipelines need it (name ``DECam``)."""

    policyName = "decam"
    raw_definition = ("raw", ("instrument", "exposure", "detector"), "Exposure")

    def __init__(self, collection_prefix: str | None = None):
        super().__init__(collection_prefix=collection_prefix)

    @classmethod
    def getName(cls) -> str:
        return INSTRUMENT

    def getRawFormatter(self, dataId: Any) -> type[FitsRawFormatter]:
        return FitsRawFormatter

    def detector_corners(self, ra: float, dec: float, detector: int) -> list[tuple[float, float]]:
        """autoproc's sky-geometry hook (`autoproc.deep.instrument.SkyGeometry`): the simulated layout."""
        return detector_corners(ra, dec, detector)

    def register(self, registry: Any, *, update: bool = False) -> None:
        name = self.getName()
        with registry.transaction():
            registry.syncDimensionData(
                "instrument",
                {"name": name, "detector_max": 100, "visit_max": 2**25, "exposure_max": 2**25,
                 "visit_system": 0, "class_name": INSTRUMENT_CLASS},
                update=update,
            )
            for det_id, full in DETECTORS.items():
                registry.syncDimensionData(
                    "detector",
                    {"instrument": name, "id": det_id, "full_name": full, "name_in_raft": full[1:],
                     "raft": full[0], "purpose": "SCIENCE"},
                    update=update,
                )
            for pf, band in FILTERS.items():
                registry.syncDimensionData("physical_filter", {"instrument": name, "name": pf, "band": band},
                                           update=update)
