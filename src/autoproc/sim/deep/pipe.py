"""Helpers for the mock DEEP pipelines' ``python:`` config blocks (docs/DEEP.md#pipelines).

Nested dicts in a pipeline YAML ``config:`` cannot fill `DynamicTestPipelineTask`'s ``inputs`` /
``outputs`` (they need `DynamicConnectionConfig` items), so every task's config is a ``python:`` block
calling `setup` with `conn` items. Dimension tuples for the usual quanta are named here to keep the YAML
short.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from lsst.pipe.base.tests.mocks import DynamicConnectionConfig

__all__ = ["D", "E", "F", "FLAKY_TASK", "I", "P", "PB", "PF", "PV", "T", "V", "VI", "VT", "conn", "setup"]

E = ("instrument", "exposure", "detector")  # one CCD of one exposure
D = ("instrument", "detector")  # calibration products per CCD (bias, defects)
F = ("instrument", "detector", "physical_filter")  # flats
PF = ("instrument", "physical_filter")
V = ("instrument", "visit", "detector")  # one CCD of one visit
VI = ("instrument", "visit")
I = ("instrument",)  # noqa: E741
P = ("skymap", "tract", "patch")
PB = ("skymap", "tract", "patch", "band")
PV = ("skymap", "tract", "patch", "instrument", "visit")  # warps
T = ("skymap", "tract")
VT = ("instrument", "visit", "detector", "skymap", "tract")
FLAKY_TASK = "autoproc.sim.deep.flaky.FlakyTestPipelineTask"


def conn(name: str, dims: Iterable[str], storage_class: str = "Exposure", *, mock: bool = True,
         multiple: bool = False, calib: bool = False, minimum: int = 1) -> DynamicConnectionConfig:
    """One connection. ``mock=False`` for datasets made outside the mock pipelines (raw, defects,
    refcats, injection catalogs): the mock task then never reads them, it records their ref."""
    c = DynamicConnectionConfig()
    c.dataset_type_name = name
    c.dimensions = list(dims)
    c.storage_class = storage_class
    c.mock_storage_class = mock
    c.multiple = multiple
    c.is_calibration = calib
    c.minimum = minimum
    return c


def setup(config: Any, dims: Iterable[str], inputs: Mapping[str, DynamicConnectionConfig] | None = None,
          outputs: Mapping[str, DynamicConnectionConfig] | None = None,
          prereqs: Mapping[str, DynamicConnectionConfig] | None = None) -> None:
    config.dimensions = list(dims)
    for k, v in (inputs or {}).items():
        config.inputs[k] = v
    for k, v in (outputs or {}).items():
        config.outputs[k] = v
    for k, v in (prereqs or {}).items():
        config.prerequisite_inputs[k] = v
