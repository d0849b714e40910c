"""The mock DEEP pipelines through the real pipetask / bps, with provenance checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoproc.sim.deep.bps_site import pipeline_labels, render_submit
from autoproc.sim.deep.flaky import FAIL_DIR_ENV, set_failure
from autoproc.sim.deep.scenario import build_night_repo, certify, pipeline_path, run_step_inprocess

pytestmark = pytest.mark.middleware

VENV_BIN = Path(sys.executable).parent
PIPETASK = VENV_BIN / "pipetask"
BPS = VENV_BIN / "bps"
ZERO = "instrument='DECam' AND exposure.observation_type='zero'"
FLAT = "instrument='DECam' AND exposure.observation_type='dome flat'"
SCIENCE = "instrument='DECam' AND exposure.observation_type='science'"
DRP_STEPS = ["step0", "step1", "step1b", "step2a", "step2b", "step2c", "step2d", "step2e", "step2f", "step3a",
             "step3b", "step3c", "step3d", "step4a", "step4b", "step4c", "step4d", "step4e"]


def _mock_get(butler, ref):
    import lsst.pipe.base.tests.mocks  # noqa: F401

    return butler.get(ref)


def test_pipelines_load_with_real_labels():
    from lsst.pipe.base import Pipeline

    assert pipeline_labels(pipeline_path("DEEP-bias", "step1")) == ["cpBiasIsr"]
    assert pipeline_labels(pipeline_path("DEEP-flat", "step1")) == ["cpFlatIsr", "cpFlatMeasure"]
    assert pipeline_labels(pipeline_path("DEEP-DRP", "step4a")) == [
        "getTemplate", "subtractImages", "detectAndMeasureDiaSources"]
    drp = Pipeline.from_uri(pipeline_path("DEEP-DRP"))
    assert sorted(drp.subsets) == sorted(DRP_STEPS)
    g = drp.to_graph()
    outputs = {n for t in g.tasks.values() for n in t.outputs.keys()}
    assert outputs  # connection names exist
    names = {d for d in g.dataset_types}
    for n in ("postISRCCD", "calexp", "src", "injected_calexp", "deepCoadd_directWarp", "deepCoadd_psfMatchedWarp",
              "deepCoadd", "deepDiff_differenceExp", "deepDiff_diaSrcTable"):
        assert n in names, n
    for name in ("DEEP-template", "DEEP-min-template", "DEEP-median-template", "DEEP-mean-template",
                 "DEEP-meanclip-template"):
        assert pipeline_labels(pipeline_path(name, "assembleCoadd")) == ["assembleCoadd"]


def _pipetask(*args, cwd):
    cmd = [str(PIPETASK), "--no-log-tty", "run", "-j", "1", "--register-dataset-types", *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)  # noqa: S603
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_pipetask_bias_flat_step1_provenance(tmp_path):
    """bias → certify → flat → certify → DRP step1 through `pipetask run -j 1`."""
    from lsst.daf.butler import Butler

    sim = build_night_repo(tmp_path, n_bias=2, flats_per_band={"VR": 2, "g": 2},
                           science=[("VR", 2), ("g", 1)], detectors=(1, 3), fakes=False)
    assert not sim.ingest.bad
    repo = sim.repo
    n = sim.night
    _pipetask("-b", repo, "-i", "DECam/raw/all", "--output-run", f"DEEP/{n}/bias/run1",
              "-p", pipeline_path("DEEP-bias", "step1,step2"), "-d", ZERO, cwd=tmp_path)
    assert certify(repo, [f"DEEP/{n}/bias/run1"], f"DEEP/{n}/calib/bias", "bias") == 2
    _pipetask("-b", repo, "-i", f"DECam/raw/all,DEEP/{n}/calib/bias", "--output-run", f"DEEP/{n}/flat/run1",
              "-p", pipeline_path("DEEP-flat", "step0,step1,step2,step3"), "-d", FLAT, cwd=tmp_path)
    assert certify(repo, [f"DEEP/{n}/flat/run1"], f"DEEP/{n}/calib/flat", "flat") == 4
    _pipetask("-b", repo, "-i", f"DECam/raw/all,DEEP/{n}/calib/flat,DEEP/{n}/calib/bias,DEEP/calib",
              "--output-run", f"DEEP/{n}/drp/run1", "-p", pipeline_path("DEEP-DRP", "step1"), "-d", SCIENCE,
              cwd=tmp_path)

    b = Butler.from_config(str(repo))
    biases = {r.dataId["detector"]: r.id for r in b.query_datasets("bias", collections=f"DEEP/{n}/bias/run1")}
    flats = {(r.dataId["detector"], r.dataId["physical_filter"]): r.id
             for r in b.query_datasets("flat", collections=f"DEEP/{n}/flat/run1")}
    defects = {r.dataId["detector"]: r.id for r in b.query_datasets("defects", collections="DEEP/calib/bad")}
    post = b.query_datasets("postISRCCD", collections=f"DEEP/{n}/drp/run1")
    assert len(post) == 3 * 2
    for ref in post:
        q = _mock_get(b, ref).quantum
        assert q.task_label == "isr"
        det = ref.dataId["detector"]
        assert [d.dataset_id for d in q.inputs["bias"]] == [biases[det]]
        assert [d.dataset_id for d in q.inputs["flat"]] == [flats[(det, ref.dataId["physical_filter"])]]
        assert [d.dataset_id for d in q.inputs["defects"]] == [defects[det]]
        assert [d.data_id["exposure"] for d in q.inputs["ccdExposure"]] == [ref.dataId["exposure"]]
    # the flat's own isr used the certified bias
    cpflat = b.query_datasets("cpFlatIsrExp", collections=f"DEEP/{n}/flat/run1")
    for ref in cpflat:
        q = _mock_get(b, ref).quantum
        assert [d.dataset_id for d in q.inputs["bias"]] == [biases[ref.dataId["detector"]]]
    assert len(b.query_datasets("calexp", collections=f"DEEP/{n}/drp/run1")) == 6
    b.close()


def test_flaky_switch_and_recovery(tmp_path, monkeypatch):
    sim = build_night_repo(tmp_path, n_bias=2, flats_per_band=0, science=[], detectors=(1, 3),
                           defects=False, fakes=False)
    fail_dir = tmp_path / "fail"
    monkeypatch.setenv(FAIL_DIR_ENV, str(fail_dir))
    marker = set_failure(fail_dir, "cpBiasIsr", "detector = 3", "builtins.MemoryError")
    from lsst.daf.butler import Butler

    with pytest.raises(Exception, match="failed"):  # MPGraphExecutorError, like pipetask's rc=1
        run_step_inprocess(sim.repo, pipeline_path("DEEP-bias", "step1"), ["DECam/raw/all"], "b/1", ZERO)
    b = Butler.from_config(str(sim.repo))
    done = b.query_datasets("cpBiasIsr_metadata", collections="b/1", explain=False)
    logs = b.query_datasets("cpBiasIsr_log", collections="b/1", explain=False)
    assert sorted(r.dataId["detector"] for r in done) == [1, 1]
    assert len(logs) == 4  # failed quanta keep their log (DEEP's "failed" = log without metadata)
    failed = [r for r in logs if r.dataId["detector"] == 3]
    assert any("MemoryError" in rec.message for rec in b.get(failed[0]))
    b.close()
    marker.unlink()
    qg = run_step_inprocess(sim.repo, pipeline_path("DEEP-bias", "step1"), ["b/1", "DECam/raw/all"], "b/2",
                            ZERO, skip_existing_in=["b/1"])
    assert len(qg) == 2  # only the two failed quanta


@pytest.mark.slow
def test_drp_all_steps_inprocess(tmp_path):
    """Every DEEP-DRP step builds and runs on a tiny night; step4a differences against a template."""
    from lsst.daf.butler import Butler

    sim = build_night_repo(tmp_path, n_bias=1, flats_per_band=1, science=[("VR", 2)], detectors=(1,))
    R = sim.repo
    run_step_inprocess(R, pipeline_path("DEEP-bias", "step1,step2"), ["DECam/raw/all"], "b", ZERO)
    certify(R, ["b"], "cal/bias", "bias")
    run_step_inprocess(R, pipeline_path("DEEP-flat", "step0,step1,step2,step3"), ["DECam/raw/all", "cal/bias"],
                       "f", FLAT)
    certify(R, ["f"], "cal/flat", "flat")
    inputs = ["DEEP/fakes", "skymaps", "cal/flat", "cal/bias", "DEEP/calib", "DECam/calib", "DECam/raw/all"]
    done: list[str] = []
    counts = {}
    for step in [s for s in DRP_STEPS if s != "step1b"]:
        where = SCIENCE if step in ("step0", "step1") else "instrument='DECam' AND skymap='discrete'"
        qg = run_step_inprocess(R, pipeline_path("DEEP-DRP", step), [*done[::-1], *inputs], f"d/{step}", where)
        counts[step] = len(qg)
        done.append(f"d/{step}")
    assert counts["step1"] == 2 * 6
    b = Butler.from_config(str(R))
    diff = b.query_datasets("deepDiff_differenceExp", collections="d/step4a")
    assert len(diff) == 2
    warp = _mock_get(b, b.query_datasets("deepCoadd_directWarp", collections="d/step3a")[0])
    assert {d.dataset_type.name for d in warp.quantum.inputs["calexp_list"]} == {"injected_calexp"}
    tmpl = _mock_get(b, b.query_datasets("deepDiff_templateExp", collections="d/step4a")[0])
    assert tmpl.quantum.inputs["coaddExposures"]
    b.close()


@pytest.mark.slow
def test_bps_submit_local_threads(tmp_path):
    from lsst.daf.butler import Butler

    sim = build_night_repo(tmp_path, n_bias=2, flats_per_band=0, science=[], detectors=(1, 3),
                           defects=False, fakes=False)
    work = tmp_path / "bps1"
    run = "DEEP/20240601/bias/DEEP-bias/step1/20240601T000000Z"
    cfg = render_submit(work / "submit.yaml", repo=sim.repo, pipeline=pipeline_path("DEEP-bias", "step1"),
                        inputs=["DECam/raw/all"], output_run=run, data_query=ZERO)
    env = dict(os.environ, CTRL_MPEXEC_DIR=str(VENV_BIN.parent), DAF_BUTLER_DIR=str(VENV_BIN.parent),
               PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}")
    proc = subprocess.run([str(BPS), "submit", str(cfg)], cwd=work, env=env, capture_output=True,  # noqa: S603
                          text=True, check=False, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "All aggregation tasks complete" in (work / "submit/logs/finalJob/finalJob.stderr").read_text()
    assert (work / "submit/provenance.qg").exists() and (work / "runinfo").is_dir()
    b = Butler.from_config(str(sim.repo))
    assert len(b.query_datasets("cpBiasIsrExp", collections=run)) == 4
    b.close()
    shutil.rmtree(work / "runinfo", ignore_errors=True)
