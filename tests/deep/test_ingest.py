"""Headers ingest of simulated DECam raws: records, visits, idempotency, bad files, manifest md5,
the completeness rule (NEXTEND, detector list, md5), DETPOS vs CCDNUM, and replacing a changed file."""

from __future__ import annotations

import dataclasses
import io
import shutil
from pathlib import Path

import pytest
from astropy.io import fits
from astropy.time import Time

from autoproc.deep.ingest import (
    RawFileError,
    completeness,
    ingest_raws,
    load_manifest,
    manifest_row,
    observing_night,
    read_raw_header,
)
from autoproc.sim.deep.instrument import FitsRawFormatter, SimDECam
from autoproc.sim.deep.raws import plan_night, write_exposures_ecsv, write_night, write_raw
from autoproc.sim.deep.scenario import deep_settings

ROOT = Path(__file__).resolve().parents[2]

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


class HeaderFormatter(FitsRawFormatter):
    """A raw formatter of this test's own, to tell whose formatter ingest used."""


class NoGeometryDECam(SimDECam):
    """An instrument that, like obs_decam's, has no `detector_corners` for the headers backend."""

    detector_corners = None  # type: ignore[assignment]

    def getRawFormatter(self, dataId):
        return HeaderFormatter


def _registered_as(butler, class_name: str) -> None:
    butler.registry.syncDimensionData("instrument", {
        "name": "DECam", "detector_max": 100, "visit_max": 2**25, "exposure_max": 2**25, "visit_system": 0,
        "class_name": class_name}, update=True)


def test_raw_formatter_and_regions_come_from_the_registered_instrument(butler, night, tmp_path):
    import sqlite3

    from autoproc.deep.instrument import InstrumentError

    _, paths, _ = night
    _registered_as(butler, "test_ingest.NoGeometryDECam")
    with pytest.raises(InstrumentError, match=r"test_ingest.NoGeometryDECam has no detector_corners.*"
                                              r"deep.ingest_backend: obs_base"):
        ingest_raws(butler, paths)
    assert butler.query_datasets("raw", collections="DECam/raw/all", explain=False) == []
    # Without visits nothing needs the geometry; the raws are stored with the instrument's formatter.
    r = ingest_raws(butler, paths, define_visits=False)
    assert r.bad == {} and r.visits == [] and len(r.ingested) == len(paths)
    with sqlite3.connect(tmp_path / "repo" / "gen3.sqlite3") as db:
        formatters = {f for (f,) in db.execute("SELECT DISTINCT formatter FROM file_datastore_records")}
    assert formatters == {"test_ingest.HeaderFormatter"}
    # The simulator's class gives the geometry: the skipped science raws get their visits now.
    _registered_as(butler, "autoproc.sim.deep.instrument.SimDECam")
    assert sorted(ingest_raws(butler, paths).visits) == sorted(
        {f.exposure for f in r.ingested if f.observation_type == "science"})


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


# --- completeness: a raw is ingested only when it has every HDU it should ------------------------------


def _science(tmp_path, detectors=(1, 3, 4, 5), *, nextend=True):
    exp = plan_night(20240601, n_bias=0, flats_per_band=0, science=[("g", 1)], detectors=detectors)[0]
    return dataclasses.replace(exp, nextend=nextend)


def _cut(exp, path, n_ccds):
    """The file as a stalled copy leaves it: the primary and the first `n_ccds` CCD HDUs (valid FITS)."""
    whole, head = io.BytesIO(), io.BytesIO()
    hdul = exp.hdulist()
    hdul.writeto(whole)
    fits.HDUList(hdul[: 1 + n_ccds]).writeto(head)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(whole.getvalue()[: len(head.getvalue())])
    return path


def test_completeness_nextend(tmp_path):
    exp = _science(tmp_path)
    full = write_raw(exp, tmp_path / "full")
    done = completeness(read_raw_header(full))
    assert done.complete and done.rule == "NEXTEND"  # 4 of 4, though DECam has 62 CCDs
    part = read_raw_header(_cut(exp, tmp_path / "part" / exp.basename, 1))
    assert part.detectors == (1,) and part.nextend == 4 and part.n_extensions == 1
    short = completeness(part)
    assert not short.complete and short.rule == "NEXTEND"
    assert short.reason == "1 of NEXTEND=4 extensions (CCDs present: 1)" and short.missing == ()
    # Which CCDs are absent is known where the site lists them for the kind.
    assert completeness(part, {"object": [1, 3, 4, 5]}).missing == (3, 4, 5)


def test_completeness_detector_list_when_no_nextend(tmp_path):
    exp = _science(tmp_path, nextend=False)
    full = read_raw_header(write_raw(exp, tmp_path / "full"))
    assert full.nextend is None
    # No list configured: every DECam CCD, so a 4-CCD file is short of 58.
    default = completeness(full)
    assert not default.complete and default.rule == "detector list" and len(default.missing) == 58
    assert "4 of the 62 CCDs" in default.reason and "missing CCDNUM 2, 6-62" in default.reason
    # The site's list for this OBSTYPE (or for any, `*`), for files that legitimately carry fewer.
    assert completeness(full, {"object": [1, 3, 4, 5]}).complete
    assert completeness(full, {"*": [1, 3, 4, 5], "zero": [1]}).complete
    assert not completeness(full, {"object": [1, 2, 3, 4, 5]}).complete
    part = read_raw_header(_cut(exp, tmp_path / "part" / exp.basename, 1))
    short = completeness(part, {"object": [1, 3, 4, 5]})
    assert short.missing == (3, 4, 5)
    assert short.reason == "1 of the 4 CCDs of an OBSTYPE 'object' raw (no NEXTEND); missing CCDNUM 3-5"


def test_completeness_manifest_md5(tmp_path):
    exp = _science(tmp_path, nextend=False)
    full = write_raw(exp, tmp_path / "raw")
    manifest = load_manifest(write_exposures_ecsv([(exp, full)], tmp_path / "exposures.ecsv"))
    info = read_raw_header(full)
    # The md5 decides where a manifest is configured (whatever the detector list says).
    done = completeness(info, {"object": [1, 2]}, manifest_row(manifest, full, info))
    assert done.complete and done.rule == "manifest md5"
    part = _cut(exp, tmp_path / "part" / exp.basename, 2)
    short = completeness(read_raw_header(part), None, manifest_row(manifest, part))
    assert not short.complete and short.reason.startswith("md5 mismatch: file ")
    assert "partial or corrupt download" in short.reason


def test_detpos_must_match_ccdnum(butler, tmp_path):
    exp = _science(tmp_path)
    path = write_raw(exp, tmp_path / "raw")
    with fits.open(path, mode="update") as h:
        h[2].header["DETPOS"] = "N4"  # HDU 2 is CCDNUM 3 (S31); N4 is CCDNUM 35
    with pytest.raises(RawFileError) as err:
        read_raw_header(path)
    assert err.value.reason == ("HDU 2: CCDNUM 3 but DETPOS 'N4' (DECam's CCDNUM 3 is S31; "
                                "DECam's N4 is CCDNUM 35)")
    r = ingest_raws(butler, [path])
    assert "CCDNUM 3 but DETPOS 'N4'" in r.bad[path] and not r.ingested
    with fits.open(path, mode="update") as h:
        h[2].header["DETPOS"] = "X99"
    with pytest.raises(RawFileError, match="CCDNUM 3 but DETPOS 'X99' .*'X99' is no DECam CCD"):
        read_raw_header(path)


def _raws_and_regions(butler, expnum):
    raws = [int(r.dataId["detector"]) for r in butler.query_datasets(
        "raw", collections="DECam/raw/all", where=f"instrument = 'DECam' AND exposure = {expnum}")]
    regions = butler.query_dimension_records("visit_detector_region",
                                             where=f"instrument = 'DECam' AND visit = {expnum}")
    return sorted(raws), sorted(int(r.detector) for r in regions)


def test_partial_ingested_then_replaced_whole(butler, tmp_path):
    """A file ingested short of CCDs that later gets the rest: everything from it is replaced, once."""
    from lsst.daf.butler import CollectionType

    exp = _science(tmp_path, nextend=False)
    path = _cut(exp, tmp_path / "raw" / exp.basename, 1)
    want = {"object": [1, 3, 4, 5]}
    first = ingest_raws(butler, [path], expected_detectors=want)
    assert first.incomplete[path].missing == (3, 4, 5) and first.ingested[0].missing == (3, 4, 5)
    assert _raws_and_regions(butler, exp.expnum) == ([1], [1])
    butler.registry.registerCollection("tagged", CollectionType.TAGGED)
    butler.registry.associate("tagged", list(butler.query_datasets("raw", collections="DECam/raw/all")))
    one_ccd = next(iter(butler.query_dimension_records("visit", where=f"instrument = 'DECam' AND visit = {exp.expnum}")))

    write_raw(exp, tmp_path / "raw", atomic=False)  # the copy completes (same name)
    second = ingest_raws(butler, [path], expected_detectors=want)
    assert not second.bad and not second.incomplete
    assert second.replaced == {path: {"exposure": exp.expnum, "before": [1], "after": [1, 3, 4, 5]}}
    assert _raws_and_regions(butler, exp.expnum) == ([1, 3, 4, 5], [1, 3, 4, 5])  # every CCD's raw once
    visit = next(iter(butler.query_dimension_records("visit", where=f"instrument = 'DECam' AND visit = {exp.expnum}")))
    assert visit.region != one_ccd.region  # the visit covers the whole file now
    # The old raws are gone from every collection (tag_raws tags the new ones); the file itself stays.
    assert list(butler.query_datasets("raw", collections="tagged", explain=False)) == []
    assert path.exists()
    # The same file again: nothing to replace. Told it changed (another mtime): replaced again, still once.
    assert set(ingest_raws(butler, [path], expected_detectors=want).skipped) == {path}
    again = ingest_raws(butler, [path], expected_detectors=want, replace=[path])
    assert set(again.replaced) == {path}
    assert _raws_and_regions(butler, exp.expnum) == ([1, 3, 4, 5], [1, 3, 4, 5])


def test_night_waits_for_incomplete_raw_then_grace_then_replacement(tmp_path):
    """Through intake and the night's ingest action (real store, real Butler): a raw short of CCDs
    is `waiting` with its reason and holds the batch; after the grace it is ingested with its missing
    CCDs recorded; the completed file then replaces it and clears them."""
    from lsst.daf.butler import Butler

    from autoproc import intake
    from autoproc.actions import ActionContext
    from autoproc.config import parse_config
    from autoproc.deep.stages import ingest_night
    from autoproc.machines import load_machines
    from autoproc.store import Store

    root = tmp_path / "root"
    settings = {"root": str(root), "machines_dir": str(ROOT / "statemachines"), "kinds": ["night", "template"],
                "deep": {**deep_settings(), "ingest_quiet_seconds": 0, "expected_detectors": {"object": [1, 3, 4, 5]},
                         "incomplete_grace_seconds": 3600}}
    config = parse_config(settings)
    Butler.makeRepo(str(root / "repo"))
    with Butler.from_config(str(root / "repo"), writeable=True) as b:
        SimDECam().register(b.registry)
    machines = load_machines(config.machines_dir, config.kinds)
    store = Store(config.db)
    exp = _science(tmp_path, nextend=False)
    path = _cut(exp, tmp_path / "raws" / exp.basename, 1)

    def arrive():
        st = path.stat()
        return intake.accept(store, config, machines, intake.Arrival("raws", "raw", str(path), st.st_size,
                                                                      st.st_mtime))

    def run(cfg, subject):
        ctx = ActionContext(subject=subject, stage="ingesting", attempt_id=1, try_number=1, workdir=tmp_path,
                            config=cfg, files=store.files(subject_id=subject.id, status=("ready", "waiting")))
        return ingest_night(ctx)

    subject = arrive().subject
    (row,) = store.files(status="waiting")
    assert row["reason"] == "1 of the 4 CCDs of an OBSTYPE 'object' raw (no NEXTEND); missing CCDNUM 3-5"
    assert row["info"]["missing"] == [3, 4, 5]
    # What an operator sees: `status` (its JSON and its table) and the report list it with why.
    from rich.console import Console

    from autoproc.cli.render import status_view
    from autoproc.report import write_report
    from autoproc.script.inspect import status

    listed = status(store)["waiting_files"]
    assert [(f["path"], f["reason"]) for f in listed] == [(str(path), row["reason"])]
    console = Console(file=io.StringIO(), width=400)
    console.print(status_view(status(store)))
    shown = console.file.getvalue()
    assert "waiting files (incomplete)" in shown and row["reason"] in shown
    page = write_report(store, machines, config, tmp_path / "report").read_text()
    assert "Waiting files (incomplete)" in page and "missing CCDNUM 3-5" in page
    waited = run(config, subject)
    assert waited.trigger is None and 3590 < waited.retry_after <= 3600.05
    assert f"1 incomplete raw(s) wait up to 3600 s for the rest: {path.name}: 1 of the 4 CCDs" in waited.reason

    expired = parse_config({**settings, "deep": {**settings["deep"], "incomplete_grace_seconds": 0}})
    out = run(expired, subject)
    assert out.trigger == "ingested" and out.consume == [str(path)] and not out.bad
    assert out.data["missing_detectors"] == {str(exp.expnum): {
        "path": str(path), "missing": [3, 4, 5],
        "reason": "1 of the 4 CCDs of an OBSTYPE 'object' raw (no NEXTEND); missing CCDNUM 3-5"}}
    assert "missing CCDNUM 3-5" in out.evidence["incomplete"][str(path)]
    st = path.stat()
    assert out.data["ingested_files"] == {str(path): [st.st_size, st.st_mtime]}
    store.transition(subject, "bias", trigger="ingested", actor="test", data=out.data, consume_files=out.consume)
    subject = store.subject("night", subject.key)

    write_raw(exp, tmp_path / "raws", atomic=False)
    arrive()
    assert [f["status"] for f in store.files()] == ["ready"]
    out = run(config, subject)
    assert out.trigger == "ingested" and out.data["missing_detectors"] == {}
    assert out.evidence["replaced"] == {str(path): {"exposure": exp.expnum, "before": [1], "after": [1, 3, 4, 5]}}
    assert "1 replaced" in out.reason and out.data["raws"]["replaced"] == 1
    with Butler.from_config(str(root / "repo")) as b:
        assert _raws_and_regions(b, exp.expnum) == ([1, 3, 4, 5], [1, 3, 4, 5])
    store.close()


def test_other_file_with_other_ccds_of_an_ingested_exposure_is_bad(butler, tmp_path):
    """Only the file an exposure was ingested from replaces it: another file with the same EXPNUM and
    other CCDs is refused, naming both sets (the same CCDs: an ordinary skip)."""
    exp = _science(tmp_path)
    first = write_raw(exp, tmp_path / "a")
    assert not ingest_raws(butler, [first]).bad
    fewer = _cut(dataclasses.replace(exp, detectors=(1, 3)), tmp_path / "b" / exp.basename, 2)
    r = ingest_raws(butler, [fewer])
    assert r.bad[fewer] == (f"exposure {exp.expnum} is already ingested from another file with CCDs 1, 3-5; "
                            "this one has CCDs 1, 3")
    assert _raws_and_regions(butler, exp.expnum) == ([1, 3, 4, 5], [1, 3, 4, 5])
    copy = tmp_path / "c" / exp.basename
    copy.parent.mkdir()
    shutil.copy(first, copy)
    assert set(ingest_raws(butler, [copy]).skipped) == {copy}
