"""Headers ingest of simulated DECam raws: records, visits, idempotency, bad files, manifest md5."""

from __future__ import annotations

import shutil

import pytest
from astropy.io import fits
from astropy.time import Time

from autoproc.deep.ingest import (
    RawFileError,
    ingest_raws,
    load_manifest,
    observing_night,
    read_raw_header,
)
from autoproc.sim.deep.instrument import SimDECam
from autoproc.sim.deep.raws import plan_night, write_exposures_ecsv, write_night

pytestmark = pytest.mark.middleware

pytest.importorskip("lsst.daf.butler")


@pytest.fixture
def butler(tmp_path):
    from lsst.daf.butler import Butler

    Butler.makeRepo(str(tmp_path / "repo"))
    b = Butler.from_config(str(tmp_path / "repo"), writeable=True)
    SimDECam().register(b.registry)
    yield b
    b.close()


@pytest.fixture
def night(tmp_path):
    exps = plan_night(20240601, n_bias=2, flats_per_band=1, science=[("VR", 2), ("g", 1)], detectors=(1, 3))
    paths = write_night(exps, tmp_path / "raw", md5_names=True)
    manifest = write_exposures_ecsv(zip(exps, paths, strict=True), tmp_path / "exposures.ecsv")
    return exps, paths, manifest


def test_records_visits_and_skip_existing(butler, night):
    exps, paths, _ = night
    r = ingest_raws(butler, paths)
    assert r.bad == {} and len(r.ingested) == len(exps) and r.nights == {20240601}
    types = {f.exposure: f.observation_type for f in r.ingested}
    assert sorted(set(types.values())) == ["dome flat", "science", "zero"]
    assert len(butler.query_datasets("raw", collections="DECam/raw/all")) == 2 * len(exps)
    zero = next(f for f in r.ingested if f.observation_type == "zero")
    assert zero.physical_filter == "solid plate 0.0 0.0"  # obs_decam's fix-up for zeros
    science = [e.expnum for e in exps if e.obs_type == "object"]
    assert sorted(r.visits) == science
    rows = butler.query_dimension_records("visit_detector_region", where="instrument = 'DECam' AND visit = v", bind={"v": science[0]})
    assert sorted(rec.detector for rec in rows) == [1, 3]
    vd = butler.query_dimension_records("visit_definition")
    assert sorted(rec.exposure for rec in vd) == science

    again = ingest_raws(butler, paths)
    assert again.ingested == [] and again.bad == {} and set(again.skipped) == set(paths)
    assert len(butler.query_datasets("raw", collections="DECam/raw/all")) == 2 * len(exps)


def test_bad_files_reported_rest_proceeds(butler, night, tmp_path):
    exps, paths, _ = night
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    truncated = bad_dir / "c4d_truncated_ori.fits"
    data = paths[0].read_bytes()
    truncated.write_bytes(data[: len(data) - 3000])
    not_fits = bad_dir / "c4d_notfits_ori.fits"
    not_fits.write_text("hello, I am not a FITS file\n" * 100)
    nokey = bad_dir / "c4d_nokey_ori.fits"
    shutil.copy(paths[1], nokey)
    with fits.open(nokey, mode="update") as h:
        del h[0].header["EXPNUM"]
    badfilt = bad_dir / "c4d_badfilter_ori.fits"
    shutil.copy(paths[-1], badfilt)
    with fits.open(badfilt, mode="update") as h:
        h[0].header["FILTER"] = "q DECam c9999 1.0 1.0"
        h[0].header["EXPNUM"] = 99
    r = ingest_raws(butler, [truncated, not_fits, nokey, badfilt, *paths[2:]])
    assert set(r.bad) == {truncated, not_fits, nokey, badfilt}
    assert "truncated" in r.bad[truncated]
    assert "not a FITS file" in r.bad[not_fits]
    assert "EXPNUM" in r.bad[nokey]
    assert "unknown physical filter" in r.bad[badfilt]
    assert len(r.ingested) == len(paths) - 2
    for p in (truncated, not_fits, nokey, badfilt):
        with pytest.raises(ValueError):
            read_raw_header(p)
    with pytest.raises(RawFileError, match="no such file"):
        read_raw_header(tmp_path / "nope.fits")


def test_manifest_md5_gate(butler, night, tmp_path):
    exps, paths, manifest = night
    m = load_manifest(manifest)
    assert m.lookup(paths[0]).expnum == exps[0].expnum and m.lookup(paths[0]).night == 20240601
    partial = tmp_path / "partial" / paths[-1].name  # same name, different bytes: a half download
    partial.parent.mkdir()
    partial.write_bytes(paths[-1].read_bytes()[:-2880] + b"\0" * 2880)
    unknown = tmp_path / "partial" / "c4d_990101_000000_ori.fits"
    shutil.copy(paths[0], unknown)
    r = ingest_raws(butler, [*paths[:-1], partial, unknown], manifest=manifest)
    assert "md5 mismatch" in r.bad[partial]
    assert "not listed in manifest" in r.bad[unknown]
    assert len(r.ingested) == len(paths) - 1
    r2 = ingest_raws(butler, [paths[-1]], manifest=m)
    assert [f.exposure for f in r2.ingested] == [exps[-1].expnum]


def test_day_obs_rules():
    # science at 01:00 UTC belongs to the previous local night at CTIO
    t = Time("2024-06-02T01:00:00", scale="utc")
    assert observing_night(t) == 20240601
    assert observing_night(t, "obs_decam") == 20240602
    assert observing_night(Time("2024-06-01T20:00:00", scale="utc")) == 20240601


def test_read_raw_header(night):
    exps, paths, _ = night
    info = read_raw_header(paths[-1])
    assert info.expnum == exps[-1].expnum and info.observation_type == "science"
    assert info.detectors == (1, 3) and info.day_obs == 20240601
    assert info.physical_filter == "g DECam SDSS c0001 4720.0 1520.0"
    assert abs(info.ra - exps[-1].ra) < 1e-6 and abs(info.dec - exps[-1].dec) < 1e-6


def test_obs_base_backend(butler, night):
    pytest.importorskip("lsst.obs.base", reason="lsst.obs.base (and obs_decam) are not on PyPI")
    pytest.importorskip("lsst.obs.decam", reason="obs_decam is not on PyPI")
    _, paths, _ = night
    r = ingest_raws(butler, paths, backend="obs_base")
    assert r.ingested
