"""What is true of DECam itself, as ingest needs it: its CCDs and its physical filters
(docs/DEEP.md#decam).

CCDs: ``CCDNUM`` 1–62 and their ``DETPOS`` names, as in astro_metadata_translator's
``translators/decam.py`` (``detector_names``: 1 S29, 2 S30, 3 S31, 4 S25, 5 S26, … 35 N4, … 62 N31)
and obs_decam, whose camera also has 61 N30 (dead on the sky since 2012, but its HDU is still
written). Filters: obs_decam's ``DECAM_FILTER_DEFINITIONS``, physical filter → band, including
``solid plate 0.0 0.0`` → ``opaque``, the filter obs_decam's header fix-up gives every zero.

The simulator (`autoproc.sim.deep`) takes these tables from here.
"""

from __future__ import annotations

__all__ = ["BAND_TO_FILTER", "CCDNUM_OF_DETPOS", "CCD_PIXELS", "DETECTORS", "FILTERS", "INSTRUMENT", "OPAQUE_FILTER",
           "PIXEL_SCALE_ARCSEC", "ROWS"]

INSTRUMENT = "DECam"
CCD_PIXELS = (2048, 4096)  # (short, long) axis of a science CCD
PIXEL_SCALE_ARCSEC = 0.263

# The focal plane by rows, south (S) half from the centre out; the north half mirrors it.
_S_ROWS = [["S1", "S2", "S3", "S4", "S5", "S6", "S7"], ["S8", "S9", "S10", "S11", "S12", "S13"],
           ["S14", "S15", "S16", "S17", "S18", "S19"], ["S20", "S21", "S22", "S23", "S24"],
           ["S25", "S26", "S27", "S28"], ["S29", "S30", "S31"]]
_N_ROWS = [[n.replace("S", "N") for n in row] for row in _S_ROWS]
# CCDNUM order: the south half from its edge inwards, then the north half from the centre out.
_CCD_ORDER = (_S_ROWS[5] + _S_ROWS[4] + _S_ROWS[3] + _S_ROWS[2] + _S_ROWS[1] + _S_ROWS[0]
              + _N_ROWS[0] + _N_ROWS[1] + _N_ROWS[2] + _N_ROWS[3] + _N_ROWS[4] + _N_ROWS[5])
# CCDNUM -> DETPOS of the science CCDs.
DETECTORS: dict[int, str] = {i + 1: name for i, name in enumerate(_CCD_ORDER)}
CCDNUM_OF_DETPOS: dict[str, int] = {name: ccd for ccd, name in DETECTORS.items()}
ROWS: dict[str, list[list[str]]] = {"S": _S_ROWS, "N": _N_ROWS}
assert DETECTORS[1] == "S29" and DETECTORS[4] == "S25" and DETECTORS[35] == "N4" and DETECTORS[62] == "N31"

OPAQUE_FILTER = "solid plate 0.0 0.0"
# physical_filter -> band
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
