"""Fixtures for the step tests (runner, quanta, collections, calibs): a small DEEP repo
built in-process with the simulated DECam (deep-sim's instrument, raws and ingest).

Pipelines: deep-sim's `src/autoproc/sim/deep/pipelines/DEEP-bias.yaml` when it exists;
until then a two-task mock bias pipeline with the same labels and steps is written here.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import autoproc.sim.deep as simdeep

SIM_DIR = Path(simdeep.__file__).resolve().parent
PIPELINES = SIM_DIR / "pipelines"
NIGHT = 20240601
BIAS_PARENT = f"DEEP/{NIGHT}/bias"  # the bias chain of NIGHT

_FALLBACK_BIAS = """\
description: minimal mock cpBias (test fallback until the sim pipelines exist)
instrument: autoproc.sim.deep.instrument.SimDECam
tasks:
  cpBiasIsr:
    class: lsst.pipe.base.tests.mocks.DynamicTestPipelineTask
    config:
      python: |
        from lsst.pipe.base.tests.mocks import DynamicConnectionConfig as C
        E = ["instrument", "exposure", "detector"]
        config.dimensions = E
        c = C(); c.dataset_type_name = "raw"; c.dimensions = E; c.storage_class = "Exposure"
        c.mock_storage_class = False
        config.inputs["ccdExposure"] = c
        o = C(); o.dataset_type_name = "cpBiasIsrExp"; o.dimensions = E; o.storage_class = "Exposure"
        config.outputs["outputExposure"] = o
  cpBiasCombine:
    class: lsst.pipe.base.tests.mocks.DynamicTestPipelineTask
    config:
      python: |
        from lsst.pipe.base.tests.mocks import DynamicConnectionConfig as C
        E = ["instrument", "exposure", "detector"]; D = ["instrument", "detector"]
        config.dimensions = D
        c = C(); c.dataset_type_name = "cpBiasIsrExp"; c.dimensions = E; c.storage_class = "Exposure"
        c.multiple = True
        config.inputs["inputExpHandles"] = c
        o = C(); o.dataset_type_name = "bias"; o.dimensions = D; o.storage_class = "Exposure"
        o.is_calibration = True
        config.outputs["outputData"] = o
subsets:
  step1: [cpBiasIsr]
  step2: [cpBiasCombine]
"""


def bias_pipeline(tmp: Path) -> Path:
    p = PIPELINES / "DEEP-bias.yaml"
    if p.exists():
        return p
    out = tmp / "DEEP-bias.yaml"
    out.write_text(_FALLBACK_BIAS)
    return out


def make_repo(root: Path, nights=(NIGHT,), n_bias: int = 3, detectors=(1, 3), science=(("VR", 2),),
              flats_per_band: int = 2):
    """A repo with the sim DECam registered and `nights` of raws ingested (headers backend)."""
    from lsst.daf.butler import Butler

    from autoproc.deep.ingest import ingest_raws
    from autoproc.sim.deep.instrument import SimDECam
    from autoproc.sim.deep.raws import plan_night, write_night

    t0 = time.perf_counter()
    repo = root / "repo"
    Butler.makeRepo(str(repo))
    butler = Butler.from_config(str(repo), writeable=True)
    SimDECam().register(butler.registry)
    paths = []
    for n in nights:
        exps = plan_night(n, n_bias=n_bias, flats_per_band=flats_per_band, science=science, detectors=detectors)
        paths += write_night(exps, root / "raw" / str(n))
    res = ingest_raws(butler, paths)
    assert not res.bad, res.bad
    butler.registry.refresh()
    return butler, repo, time.perf_counter() - t0


def fail_config(tmp: Path, condition: str, exception: str = "builtins.RuntimeError", name: str = "fail.py"
                ) -> Path:
    p = tmp / name
    p.write_text(f"config.fail_condition = {condition!r}\nconfig.fail_exception = {exception!r}\n")
    return p


def bps_site(tmp: Path) -> tuple[str, dict[str, str]]:
    """(site class, extra env): autoproc's LocalThreads site, which needs nothing on the path."""
    return "autoproc.deep.bps_site.LocalThreads", {}


def submit_template(tmp: Path) -> Path | None:
    from autoproc.deep.bps_site import SUBMIT_TEMPLATE

    return SUBMIT_TEMPLATE


def outputs_twice(repo: str) -> dict[str, int]:
    """Quantum outputs (logs aside) written more than once into one chain's attempt RUNs
    (`{chain}/{pipeline}/{step}/{stamp}`): a retry redoing what a killed attempt kept.
    Init-outputs (configs, schemas: no dimensions) are written once per RUN by design."""
    from lsst.daf.butler import Butler, CollectionType

    butler = Butler.from_config(repo, writeable=False)
    try:
        runs: dict[str, list[str]] = {}
        for run in butler.collections.query("DEEP/*", collection_types={CollectionType.RUN}):
            runs.setdefault(run.rsplit("/", 3)[0], []).append(run)
        seen: Counter[tuple[str, str, str]] = Counter()
        for chain, members in runs.items():
            for ref in butler.query_all_datasets(members, find_first=False, limit=None):
                if ref.datasetType.dimensions and not ref.datasetType.name.endswith(("_log", "_log_retry")):
                    seen[(chain, ref.datasetType.name, str(ref.dataId.required))] += 1
        return {" ".join(k): n for k, n in seen.items() if n > 1}
    finally:
        butler.close()


def run_bias_step(b, repo: str, pipe, tmp_path: Path, step: str = "step1", **kw):
    """One step of the bias pipeline into BIAS_PARENT (`runner.run_step`), attempts under tmp_path."""
    from autoproc.deep import collections as C
    from autoproc.deep import runner as R

    return R.run_step(b, repo, pipe, step, BIAS_PARENT, tmp_path / "attempts",
                      fixed_inputs=C.DEFAULT_NAMES.fixed_inputs("bias", NIGHT), **kw)
