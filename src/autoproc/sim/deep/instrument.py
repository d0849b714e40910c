"""`SimDECam`: a DECam-like `lsst.pipe.base.Instrument` that needs no obs_decam and no afw.

The instrument is named ``DECam`` so every collection name matches the real one (``DECam/raw/all``,
``DECam/calib``). Detector ids and CCD names are the real ones: ``id = CCDNUM`` and the name is the DECam
``DETPOS``, as in astro_metadata_translator ``translators/decam.py`` (``detector_names``: 1 S29, 2 S30,
3 S31, 4 S25, 5 S26, ... 35 N4, ... 62 N31) and obs_decam (whose camera also has 61 N30, the dead CCD).
Physical filters and bands are the real obs_decam ``DECAM_FILTER_DEFINITIONS``, including the
``solid plate 0.0 0.0`` → ``opaque`` filter that obs_decam's header fix-up gives every zero (bias).

What is simulated: the focal-plane geometry (`detector_offset`) is a simple 12-row layout of
0.30° × 0.15° CCDs with the real row order (S29–S31 at the south edge, N29–N31 at the north edge), no
gaps, no rotation; it is only used to give visits and detectors plausible sky regions.
"""

from __future__ import annotations

import math
from typing import Any

from lsst.daf.butler import FormatterV2
from lsst.pipe.base import Instrument

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

INSTRUMENT = "DECam"
INSTRUMENT_CLASS = "autoproc.sim.deep.instrument.SimDECam"

# CCDNUM -> DETPOS, the real DECam science CCDs (61 = N30 is dead on sky but exists in the camera).
_S_ROWS = [["S1", "S2", "S3", "S4", "S5", "S6", "S7"], ["S8", "S9", "S10", "S11", "S12", "S13"],
           ["S14", "S15", "S16", "S17", "S18", "S19"], ["S20", "S21", "S22", "S23", "S24"],
           ["S25", "S26", "S27", "S28"], ["S29", "S30", "S31"]]
_N_ROWS = [[n.replace("S", "N") for n in row] for row in _S_ROWS]
_CCD_ORDER = (_S_ROWS[5] + _S_ROWS[4] + _S_ROWS[3] + _S_ROWS[2] + _S_ROWS[1] + _S_ROWS[0]
              + _N_ROWS[0] + _N_ROWS[1] + _N_ROWS[2] + _N_ROWS[3] + _N_ROWS[4] + _N_ROWS[5])
DETECTORS: dict[int, str] = {i + 1: name for i, name in enumerate(_CCD_ORDER)}
assert DETECTORS[1] == "S29" and DETECTORS[4] == "S25" and DETECTORS[35] == "N4" and DETECTORS[62] == "N31"

OPAQUE_FILTER = "solid plate 0.0 0.0"
# physical_filter -> band (obs_decam DECAM_FILTER_DEFINITIONS)
FILTERS: dict[str, str] = {
    "u DECam c0006 3500.0 1000.0": "u",
    "g DECam SDSS c0001 4720.0 1520.0": "g",
    "r DECam SDSS c0002 6415.0 1480.0": "r",
    "i DECam SDSS c0003 7835.0 1470.0": "i",
    "z DECam SDSS c0004 9260.0 1520.0": "z",
    "Y DECam c0005 10095.0 1130.0": "y",
    "VR DECam c0007 6300.0 2600.0": "VR",
    "N964 DECam c0008 9645.0 94.0": "N964",
    OPAQUE_FILTER: "opaque",
    "N708 DECam c0012 7080.0 400.0": "N708",
    "N540 DECam c0014 5403.2 210.0": "N540",
    "N419 DECam c0013 4194.0 75.0": "N419",
}
BAND_TO_FILTER: dict[str, str] = {band: pf for pf, band in FILTERS.items()}
BAND_TO_FILTER["Y"] = BAND_TO_FILTER["y"]  # obs_decam alias

CCD_WIDTH_DEG = 4096 * 0.263 / 3600.0  # long axis, along RA
CCD_HEIGHT_DEG = 2048 * 0.263 / 3600.0  # short axis, along Dec


def detector_offset(detector: int) -> tuple[float, float]:
    """Simulated focal-plane centre of a CCD, (east, north) offsets in degrees from the boresight."""
    name = DETECTORS[detector]
    rows = _S_ROWS if name[0] == "S" else _N_ROWS
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
