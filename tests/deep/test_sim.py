"""The simulated DECam: instrument records, night plans, raw files, the exposures.ecsv manifest."""

from __future__ import annotations

from astropy.io import fits
from astropy.table import Table

from autoproc.sim.deep.instrument import BAND_TO_FILTER, DETECTORS, FILTERS, SimDECam, detector_offset
from autoproc.sim.deep.raws import md5sum, plan_night, write_exposures_ecsv, write_night


def test_instrument_names():
    assert SimDECam.getName() == "DECam"
    inst = SimDECam()
    assert inst.makeDefaultRawIngestRunName() == "DECam/raw/all"
    assert inst.makeCalibrationCollectionName() == "DECam/calib"
    assert (DETECTORS[1], DETECTORS[3], DETECTORS[4], DETECTORS[5], DETECTORS[31], DETECTORS[61]) == (
        "S29", "S31", "S25", "S26", "S7", "N30")
    assert FILTERS["VR DECam c0007 6300.0 2600.0"] == "VR" and BAND_TO_FILTER["g"].startswith("g DECam SDSS")
    assert detector_offset(1)[1] < 0 < detector_offset(62)[1]


def test_plan_night_times_and_missing_flats():
    exps = plan_night(20240601, n_bias=3, flats_per_band=2, science=[("VR", 4), ("r", 2)],
                      missing_flat_bands=["r"])
    kinds = [e.obs_type for e in exps]
    assert kinds == ["zero"] * 3 + ["dome flat"] * 2 + ["object"] * 6
    assert {e.band for e in exps if e.obs_type == "dome flat"} == {"VR"}
    assert len({e.expnum for e in exps}) == len(exps)
    assert [e.expnum for e in exps] == sorted(e.expnum for e in exps)
    for e in exps:  # inside the CTIO night of 2024-06-01 (UTC-4): 16:00 local .. 10:00 next day
        assert "2024-06-01T20:00" <= e.date_obs_isot < "2024-06-02T14:00"
    other = plan_night(20240602, n_bias=1, flats_per_band=0, science=[("VR", 1)])
    assert other[0].expnum > exps[-1].expnum


def test_raw_files_and_manifest(tmp_path):
    exps = plan_night(20240601, n_bias=1, flats_per_band=1, science=[("VR", 1)], detectors=(1, 3, 4))
    paths = write_night(exps, tmp_path, md5_names=True)
    assert not list(tmp_path.glob(".*"))  # no temporaries left
    for e, p in zip(exps, paths, strict=True):
        assert p.name == f"{md5sum(p)}_{e.basename}"
        with fits.open(p) as h:
            assert h[0].header["EXPNUM"] == e.expnum and h[0].header["OBSTYPE"] == e.obs_type
            assert [x.header["CCDNUM"] for x in h[1:]] == [1, 3, 4]
            assert [x.header["DETPOS"] for x in h[1:]] == ["S29", "S31", "S25"]
    m = write_exposures_ecsv(zip(exps, paths, strict=True), tmp_path / "exposures.ecsv")
    t = Table.read(m, format="ascii.ecsv")
    assert list(t["obs_type"]) == ["zero", "dome flat", "object"]
    assert set(t["night"]) == {20240601} and set(t["caldat"]) == {"2024-06-01"}
    assert [f"{r['md5sum']}_{r['archive_filename'].rsplit('/', 1)[1]}" for r in t] == [p.name for p in paths]
    assert t["band"][2] == "VR" and t["FILTER"][2] == "VR DECam c0007 6300.0 2600.0"
    # a row whose file is not written yet still gets the md5 it will have
    m2 = write_exposures_ecsv([(exps[0], None)], tmp_path / "pending.ecsv")
    assert Table.read(m2)["md5sum"][0] == md5sum(paths[0])
