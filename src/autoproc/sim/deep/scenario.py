"""Ready-made simulated DEEP repos and an in-process step runner, for tests and the demo.

`build_night_repo` makes a repo with everything repo-init does (instrument, skymap, simulated defects and
fakes) and one ingested night of raws, in about a second. `run_step_inprocess` runs a pipeline step
with `SeparablePipelineExecutor` (no `pipetask` start-up cost) into a RUN and optionally a CHAINED
output collection, like ``pipetask run -o``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoproc.deep.quanta import join_pipeline

from .raws import DEFAULT_FIELD, SimExposure, plan_night, write_exposures_ecsv, write_night

__all__ = ["PIPELINES", "PIPELINES_DIR", "SimNight", "build_night_repo", "certify", "deep_settings", "pipeline_path",
           "run_step_inprocess"]

PIPELINES_DIR = Path(__file__).resolve().parent / "pipelines"
# The mock pipeline of each proc type; coadds run DEEP-template.yaml#assembleCoadd, as DEEP's
# coadd.py and nightly.sh did (docs/DEEP.md#pipelines).
PIPELINES = {"bias": "DEEP-bias", "flat": "DEEP-flat", "drp": "DEEP-DRP", "coadd": "DEEP-template",
             "diff_drp": "DEEP-DRP", "template": "DEEP-template"}


def pipeline_path(name: str, step: str | None = None) -> str:
    """Absolute URI of a shipped pipeline: ``pipeline_path("DEEP-DRP", "step1")``."""
    base = name if name.endswith(".yaml") else f"{name}.yaml"
    return join_pipeline(str(PIPELINES_DIR / base), step)


def deep_settings() -> dict[str, Any]:
    """The `deep:` settings that run autoproc on the simulator: its instrument class, the mock
    pipelines and their bps clusters. The demo's configuration and the tests' take them from here;
    a site's own keys are merged over them."""
    from .bps_site import cluster_settings
    from .instrument import INSTRUMENT_CLASS

    return {"instrument_class": INSTRUMENT_CLASS,
            "pipelines": {proc: pipeline_path(name) for proc, name in PIPELINES.items()},
            "clusters": cluster_settings()}


@dataclass
class SimNight:
    repo: Path
    raw_dir: Path
    manifest: Path
    exposures: list[SimExposure]
    paths: list[Path]
    ingest: Any = None
    messages: list[str] = field(default_factory=list)

    @property
    def night(self) -> int:
        return self.exposures[0].night


def build_night_repo(
    root: str | os.PathLike[str],
    night: int = 20240601,
    *,
    n_bias: int = 2,
    flats_per_band: int | dict[str, int] = 2,
    science: Sequence[tuple[str, int]] = (("VR", 3),),
    detectors: Sequence[int] = (1, 3),
    field_center: tuple[float, float] = DEFAULT_FIELD,
    ingest: bool = True,
    defects: bool = True,
    fakes: bool = True,
    missing_flat_bands: Sequence[str] = (),
) -> SimNight:
    """``root/repo`` + ``root/raw/<night>`` (md5-named files) + ``root/exposures.ecsv``."""
    from autoproc.deep import repo as deep_repo
    from autoproc.deep.ingest import ingest_raws

    from .instrument import INSTRUMENT_CLASS

    root = Path(root)
    exps = plan_night(night, n_bias, flats_per_band, science, field_center, detectors=detectors,
                      missing_flat_bands=missing_flat_bands)
    raw_dir = root / "raw" / str(night)
    paths = write_night(exps, raw_dir, md5_names=True)
    manifest = write_exposures_ecsv(zip(exps, paths, strict=True), root / "exposures.ecsv")
    setup = deep_repo.RepoSetup(root=root / "repo", instrument_class=INSTRUMENT_CLASS, fields=[field_center])
    if defects:
        deep_repo.write_bpm_files(root / "bpm", detectors)
        setup.bpm_dir = root / "bpm"
    if fakes:
        pointings = [(e.expnum, e.ra, e.dec) for e in exps if e.obs_type == "object"]
        setup.fakes_table = deep_repo.write_fakes_table(root / "fakes.ecsv", pointings, per_exposure=3)
    msgs = deep_repo.init_repo(setup)
    sim = SimNight(root / "repo", raw_dir, manifest, exps, paths, messages=msgs)
    if ingest:
        sim.ingest = ingest_raws(str(root / "repo"), paths, manifest=manifest)
    return sim


def certify(repo: Any, input_collections: Sequence[str] | str, calib_collection: str, dataset_type: str,
            begin: str = "2000-01-01T00:00:00", end: str = "2050-01-01T00:00:00") -> int:
    """Like ``butler certify-calibrations --search-all-inputs``: certify the find-first datasets."""
    from astropy.time import Time
    from lsst.daf.butler import Butler, CollectionType, Timespan

    butler = repo if isinstance(repo, Butler) else Butler.from_config(str(repo), writeable=True)
    butler.registry.registerCollection(calib_collection, CollectionType.CALIBRATION)
    refs = butler.query_datasets(dataset_type, collections=input_collections, find_first=True, explain=False,
                                 limit=None)
    span = Timespan(Time(begin, scale="tai"), Time(end, scale="tai"))
    butler.registry.certify(calib_collection, refs, span)
    return len(refs)


def run_step_inprocess(repo: str | os.PathLike[str], pipeline_uri: str, inputs: Sequence[str], output_run: str,
                       where: str = "", *, output_chain: str | None = None, skip_existing_in: Sequence[str] = (),
                       data_id: dict[str, Any] | None = None) -> Any:
    """Build and run a quantum graph in this process; returns the graph (empty graph → raises
    ``RuntimeError('empty')``). With ``output_chain`` the run is prepended to that CHAINED collection,
    whose other children are ``inputs`` (flattened like ``pipetask -o``)."""
    import lsst.pipe.base.tests.mocks  # noqa: F401  (registers the _mock_* storage classes)
    from lsst.daf.butler import Butler, CollectionType
    from lsst.pipe.base import Pipeline
    from lsst.pipe.base.separable_pipeline_executor import SeparablePipelineExecutor

    butler = Butler.from_config(str(repo), writeable=True, collections=list(inputs), run=output_run)
    try:
        ex = SeparablePipelineExecutor(butler, skip_existing_in=list(skip_existing_in) or None)
        qg = ex.make_quantum_graph(Pipeline.from_uri(pipeline_uri), where=where)
        if len(qg) == 0:
            raise RuntimeError(f"empty quantum graph for {pipeline_uri} where {where!r}")
        ex.pre_execute_qgraph(qg, register_dataset_types=True)
        ex.run_pipeline(qg)
        if output_chain:
            butler.registry.registerCollection(output_chain, CollectionType.CHAINED)
            old = [c for c in butler.registry.getCollectionChain(output_chain) if c != output_run]
            children = [output_run, *(old or list(inputs))]
            butler.registry.setCollectionChain(output_chain, list(dict.fromkeys(children)), flatten=True)
        return qg
    finally:
        butler.close()
