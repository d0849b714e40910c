"""Certification (decertify then certify, in-process) and the missing-calibration rule
(docs/DEEP.md#missing-calibrations): nearest night, previous first, then next; flats by band."""

from __future__ import annotations

import pytest

pytest.importorskip("lsst.daf.butler")

from steps_support import make_repo  # noqa: E402

from autoproc.deep import calibs as K  # noqa: E402
from autoproc.deep import collections as C  # noqa: E402

pytestmark = pytest.mark.middleware

VR = "VR DECam c0007 6300.0 2600.0"
G = "g DECam SDSS c0001 4720.0 1520.0"


@pytest.fixture
def repo(tmp_path):
    # Nights 0601 (normal), 0602 (no VR flat: only g flats), 0603 (normal); science VR + g.
    from lsst.daf.butler import Butler

    from autoproc.deep.ingest import ingest_raws
    from autoproc.sim.deep.instrument import SimDECam
    from autoproc.sim.deep.raws import plan_night, write_night

    Butler.makeRepo(str(tmp_path / "repo"))
    b = Butler.from_config(str(tmp_path / "repo"), writeable=True)
    SimDECam().register(b.registry)
    paths = []
    for n, kw in ((20240601, {}), (20240602, {"missing_flat_bands": ["VR"]}), (20240603, {"n_bias": 0})):
        exps = plan_night(n, n_bias=kw.get("n_bias", 1), flats_per_band=1, science=[("VR", 1), ("g", 1)],
                          detectors=(1,), missing_flat_bands=kw.get("missing_flat_bands", ()))
        paths += write_night(exps, tmp_path / "raw" / str(n))
    assert not ingest_raws(b, paths).bad
    yield b
    b.close()


def _product(b, night: int, kind: str, filters=(), stamp="20240701T000000Z"):
    """Put a fake bias/flat product into a dated run under DEEP/{night}/{kind} and chain it."""
    from lsst.daf.butler import CollectionType, DatasetType

    dims = ["instrument", "detector"] + (["physical_filter"] if kind == "flat" else [])
    dt = DatasetType(kind, dims, "StructuredDataDict", universe=b.dimensions, isCalibration=True)
    b.registry.registerDatasetType(dt)
    run = f"DEEP/{night}/{kind}/DEEP-{kind}/step2/{stamp}"
    b.collections.register(run, CollectionType.RUN)
    refs = []
    for pf in (filters or [None]):
        data_id = {"instrument": "DECam", "detector": 1}
        if pf:
            data_id["physical_filter"] = pf
        refs.append(b.put({"night": night, "pf": pf}, dt, data_id, run=run))
    C.ensure_chain(b, kind, night)
    return refs


def test_certify_decertifies_then_certifies(repo):
    b = repo
    old = _product(b, 20240601, "bias", stamp="20240701T000000Z")
    res = K.certify(b, "DEEP/20240601/bias", "DEEP/20240601/calib/bias", "bias")
    assert res.count == 1 and res.datasets[0]["id"] == str(old[0].id)
    new = _product(b, 20240601, "bias", stamp="20240702T000000Z")  # a newer attempt
    res2 = K.certify(b, "DEEP/20240601/bias", "DEEP/20240601/calib/bias", "bias")
    held = K.certified(b, "DEEP/20240601/calib/bias", "bias")
    assert [h["id"] for h in held] == [str(new[0].id)] and res2.decertified
    assert held[0]["begin"].startswith("2000-01-01") and held[0]["end"].startswith("2050-01-01")
    # the product is findable as a calibration for a time in range
    import astropy.time
    from lsst.daf.butler import Timespan

    t = astropy.time.Time("2024-06-02T00:00:00", scale="tai")
    ref = b.find_dataset("bias", {"instrument": "DECam", "detector": 1}, collections="DEEP/20240601/calib/bias",
                         timespan=Timespan(t, t + astropy.time.TimeDelta(1, format="sec")))
    assert ref.id == new[0].id
    with pytest.raises(LookupError):
        K.certify(b, "DEEP/20240603/bias", "DEEP/20240603/calib/bias", "bias")


def test_find_missing(repo):
    m = K.find_missing_calibs(repo)
    assert m.bias_nights == [20240603]
    assert m.flat == [(20240602, "VR")]
    assert K.find_missing_calibs(repo, nights=[20240601]).to_json() == {"bias": [], "flat": []}


def test_borrow_prefers_previous_then_next(repo):
    b = repo
    # 0603 lacks bias: nobody has one yet -> None (the daemon waits)
    assert K.borrow_calibration(b, 20240603, "bias") is None
    _product(b, 20240604, "bias")
    s = K.borrow_calibration(b, 20240603, "bias")
    assert (s.source_night, s.distance) == (20240604, 1)  # only the next night has one
    _product(b, 20240602, "bias")
    s = K.borrow_calibration(b, 20240603, "bias")
    assert (s.source_night, s.distance, s.calib_collection) == (20240602, -1, "DEEP/20240603/calib/bias")
    held = K.certified(b, "DEEP/20240603/calib/bias", "bias")
    assert len(held) == 1 and held[0]["run"].startswith("DEEP/20240602/bias/")  # re-borrow replaced it
    assert s.to_json()["datasets"][0]["data_id"] == {"instrument": "DECam", "detector": 1}
    # beyond max_days: nothing
    assert K.borrow_calibration(b, 20240610, "bias", max_days=3) is None


def test_borrow_flat_by_band_keeps_own_bands(repo):
    b = repo
    _product(b, 20240602, "flat", filters=[G])  # the night's own g flat
    K.certify(b, "DEEP/20240602/flat", "DEEP/20240602/calib/flat", "flat")
    _product(b, 20240601, "flat", filters=[G])  # previous night: no VR
    _product(b, 20240603, "flat", filters=[VR, G])  # next night: VR and g
    with pytest.raises(ValueError):
        K.borrow_calibration(b, 20240602, "flat")  # band required
    s = K.borrow_calibration(b, 20240602, "flat", band="VR")
    assert s.source_night == 20240603 and s.band == "VR" and len(s.datasets) == 1
    assert s.datasets[0]["data_id"]["physical_filter"] == VR
    held = {h["data_id"]["physical_filter"]: h["run"] for h in K.certified(b, "DEEP/20240602/calib/flat", "flat")}
    assert held[G].startswith("DEEP/20240602/") and held[VR].startswith("DEEP/20240603/")
    # idempotent: again, same result, still one per filter
    K.borrow_calibration(b, 20240602, "flat", band="VR")
    assert len(K.certified(b, "DEEP/20240602/calib/flat", "flat")) == 2


def test_neighbour_order():
    assert K.neighbour_nights(20240301, 2) == [(20240229, -1), (20240302, 1), (20240228, -2), (20240303, 2)]


def test_make_repo_helper_is_cheap(tmp_path):
    _, _, seconds = make_repo(tmp_path)
    assert seconds < 10
