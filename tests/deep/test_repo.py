"""deep.repo: idempotent repo set-up (instrument, skymap, simulated defects, fakes, refcats)."""

from __future__ import annotations

import sys

import pytest
from astropy.table import Table

from autoproc.deep import repo as R
from autoproc.sim.deep.instrument import INSTRUMENT_CLASS
from autoproc.sim.deep.raws import plan_night, write_night

pytestmark = pytest.mark.middleware


@pytest.fixture
def setup(tmp_path):
    R.write_bpm_files(tmp_path / "bpm", (1, 3), n_bad=3, n_suspect=2)
    Table({"RA": [150.0, 150.1, 150.2], "DEC": [2.0, 2.1, 2.2], "MAG": [21.0, 22.0, 23.0],
           "BAND": ["VR", "Y", "g"], "EXPNUM": [1, 2, 3]}).write(tmp_path / "fakes.ecsv")
    return R.RepoSetup(root=tmp_path / "repo", instrument_class=INSTRUMENT_CLASS, fields=[(150.0, 2.0)],
                       bpm_dir=tmp_path / "bpm", fakes_table=tmp_path / "fakes.ecsv")


def test_init_repo_refuses_an_instrument_class_it_cannot_load(setup):
    from autoproc.deep.instrument import InstrumentError

    for name, why in (("lsst.obs.decam.DarkEnergyCamera", "cannot import 'lsst.obs.decam.DarkEnergyCamera'"),
                      ("autoproc.deep.repo.RepoSetup", "is not an lsst.pipe.base.Instrument")):
        setup.instrument_class = name
        with pytest.raises(InstrumentError, match=f"deep.instrument_class: .*{why}"):
            R.init_repo(setup)
        assert not setup.root.exists()  # refused before the repository was made
    assert R.RepoSetup(root=setup.root).instrument_class == "lsst.obs.decam.DarkEnergyCamera"


def test_init_repo_is_idempotent(setup):
    from lsst.daf.butler import Butler

    first = R.init_repo(setup)
    assert "created" in first[0] and "registered" in first[1] and "SIMULATED" in first[3]
    second = R.init_repo(setup)
    assert all(("already" in m) or ("skipped" in m) for m in second), second
    b = Butler.from_config(str(setup.root))
    assert b.registry.getCollectionType("DEEP/calib").name == "CALIBRATION"
    assert b.registry.getCollectionType("DECam/calib").name == "CALIBRATION"
    bad = b.query_datasets("defects", collections="DEEP/calib", find_first=False)
    sus = b.query_datasets("suspectMask", collections="DEEP/calib/suspect")
    assert sorted(r.dataId["detector"] for r in bad) == [1, 3] and len(sus) == 2
    t = b.get(bad[0])
    # 3 DES bad pixels (1) + 1 CP bad pixel (possibly the same one), suspect (512) kept apart
    assert 3 <= len(t) <= 4 and list(t.colnames) == ["x0", "y0", "width", "height"]
    assert len(b.get(sus[0])) == 2
    assoc = list(b.registry.queryDatasetAssociations("defects", collections="DEEP/calib"))
    # 1970-01-01 and 2100-01-01 TAI lie outside the butler's time range: it stores (-inf, +inf)
    assert all(a.timespan.begin is None and a.timespan.end is None for a in assoc) and len(assoc) == 2
    b.close()


def test_defects_rebuilt_when_bpm_changes(setup, tmp_path):
    from lsst.daf.butler import Butler

    R.init_repo(setup)
    R.write_bpm_files(tmp_path / "bpm", (1, 3), n_bad=5, n_suspect=0, with_cp=False, seed=1)
    for p in (tmp_path / "bpm" / "cp").glob("*.fits"):
        p.unlink()
    msg = R.ingest_defects(setup.root, setup.bpm_dir)
    assert "SIMULATED" in msg and "(10 bad px)" in msg
    b = Butler.from_config(str(setup.root))
    assert len(b.query_datasets("defects", collections="DEEP/calib", find_first=False)) == 2
    b.close()


def test_fakes_columns(setup):
    from lsst.daf.butler import Butler

    R.init_repo(setup)
    b = Butler.from_config(str(setup.root))
    refs = b.query_datasets("injection_catalog", collections="DEEP/fakes")
    assert sorted({r.dataId["band"] for r in refs}) == ["VR", "g", "y"]
    t = b.get(refs[0])
    assert {"ra", "dec", "mag", "band", "EXPNUM", "source_type"} <= set(t.colnames)
    assert set(t["source_type"]) == {"DeltaFunction"}
    b.close()


def test_fakes_default_band_and_required_expnum(tmp_path):
    Table({"RA": [1.0], "DEC": [2.0], "MAG": [20.0], "EXPNUM": [5]}).write(tmp_path / "a.ecsv")
    t = R._read_fakes(tmp_path / "a.ecsv")
    assert list(t["band"]) == ["VR"]
    Table({"RA": [1.0], "DEC": [2.0], "MAG": [20.0]}).write(tmp_path / "b.ecsv")
    with pytest.raises(ValueError, match="EXPNUM"):
        R._read_fakes(tmp_path / "b.ecsv")


def test_refcats_command(setup, tmp_path):
    R.create_repo(setup.root)
    assert "skipped" in R.ingest_refcats(setup.root, None)
    marker = tmp_path / "ran.txt"
    cmd = [sys.executable, "-c", "import sys; open(sys.argv[1], 'w').write(sys.argv[2])", str(marker), "{repo}"]
    assert "succeeded" in R.ingest_refcats(setup.root, cmd)
    assert marker.read_text() == str(setup.root)
    with pytest.raises(RuntimeError, match="rc=3"):
        R.ingest_refcats(setup.root, [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"])


def test_registry_config():
    from autoproc.deep.registry import RegistryError, registry_config

    assert registry_config(None) == {}
    url = "postgresql://butler:lsst@localhost:5432/deep"
    assert registry_config(url) == {"registry": {"db": url}}
    assert registry_config(url, "deep_main") == {"registry": {"db": url, "namespace": "deep_main"}}
    with pytest.raises(RegistryError, match="unsupported registry database URL 'mysql://x:\\*\\*\\*@h/d'"):
        registry_config("mysql://x:secret@h/d")
    with pytest.raises(RegistryError, match="not a plain PostgreSQL schema name"):
        registry_config(url, "drop table; --")


def test_skymap_covers_visits(setup, tmp_path):
    from lsst.daf.butler import Butler

    from autoproc.deep.ingest import ingest_raws

    R.init_repo(setup)
    exps = plan_night(20240601, 0, 0, [("VR", 2)], detectors=(1, 3))
    ingest_raws(str(setup.root), write_night(exps, tmp_path / "raw"))
    b = Butler.from_config(str(setup.root), writeable=True)
    rows = b.query_data_ids(["visit", "detector", "patch"], where="skymap='discrete' AND instrument='DECam'",
                            limit=None)
    assert {r["visit"] for r in rows} == {e.expnum for e in exps}
    assert {r["detector"] for r in rows} == {1, 3}
    assert "already covers" in R.register_skymap(b, [(150.0, 2.0)])
    assert "registered" in R.register_skymap(b, [(30.0, -20.0)])
    b.close()


def test_production_defaults_name_no_simulator(tmp_path):
    """Unset, the instrument is obs_decam's, a proc type has no pipeline (its first step fails naming
    the key), bps gets autoproc's own submit template and no clusters (docs/DEEP.md#pipelines)."""
    from autoproc.actions import Fail
    from autoproc.config import parse_config
    from autoproc.deep.bps_site import SLURM_SUBMIT_TEMPLATE, SUBMIT_TEMPLATE
    from autoproc.deep.runner import step_clusters
    from autoproc.deep.stages import _submit_template, pipeline_of

    cfg = parse_config({"root": str(tmp_path)}).deep
    assert cfg.instrument_class == "lsst.obs.decam.DarkEnergyCamera"
    with pytest.raises(Fail, match=r"deep\.pipelines\.bias is not set: .* bias steps step1 step2$"):
        pipeline_of(cfg, "bias")
    assert step_clusters(cfg.clusters, ["isr"]) is None and _submit_template(cfg) == SUBMIT_TEMPLATE
    assert _submit_template(cfg.model_copy(update={"bps_site": "slurm"})) == SLURM_SUBMIT_TEMPLATE
    assert "autoproc.sim" not in SUBMIT_TEMPLATE.read_text() + SLURM_SUBMIT_TEMPLATE.read_text()
    # Set, they are used as given: the simulator's settings are nothing but configuration.
    from autoproc.sim.deep.scenario import deep_settings

    sim = parse_config({"root": str(tmp_path), "deep": deep_settings()}).deep
    assert pipeline_of(sim, "diff_drp").endswith("/DEEP-DRP.yaml")
    assert set(step_clusters(sim.clusters, ["isr", "cpBiasIsr"]) or {}) == {"exposureCluster", "visitCluster"}


def test_deep_init_without_obs_decam_says_so_and_makes_no_repo(tmp_path):
    """The default instrument class on a host without obs_decam: one clear line, exit 2, no repo."""
    import subprocess

    import yaml

    path = tmp_path / "autoproc.yaml"
    path.write_text(yaml.safe_dump({"root": str(tmp_path / "root"), "deep": {"repo": str(tmp_path / "repo")}}))
    proc = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "deep", "init"],  # noqa: S603
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "deep.instrument_class: cannot import 'lsst.obs.decam.DarkEnergyCamera'" in proc.stderr
    assert not (tmp_path / "repo").exists()
