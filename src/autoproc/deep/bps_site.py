"""How autoproc drives `bps submit` with ctrl_bps_parsl: the shipped submit templates and the
`LocalThreads` site of the local one (docs/DEEP.md#bps-submission).

`LocalThreads` is a Parsl ThreadPool site: every bps job is already a ``pipetask run-qbb``
subprocess, so threads are enough, start in about a second, and leave no interchange or worker
pool behind when ``bps submit`` is killed (kill its process group).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["SLURM_SUBMIT_TEMPLATE", "SUBMIT_TEMPLATE", "SUBMIT_TEMPLATES", "LocalThreads"]

SUBMIT_TEMPLATE = Path(__file__).resolve().parent / "bps" / "submit.yaml"
# The same for ctrl_bps_parsl's Slurm site (`deep.bps_site: slurm`).
SLURM_SUBMIT_TEMPLATE = SUBMIT_TEMPLATE.with_name("submit-slurm.yaml")
# `deep.bps_site` -> the template used when `deep.submit_template` is unset.
SUBMIT_TEMPLATES: dict[str, Path] = {"local": SUBMIT_TEMPLATE, "slurm": SLURM_SUBMIT_TEMPLATE}


def _site_classes() -> Any:
    from lsst.ctrl.bps.parsl.site import SiteConfig

    return SiteConfig


class LocalThreads(_site_classes()):  # type: ignore[misc]
    """A ThreadPoolExecutor site; ``cores`` from the site config (``$J`` overrides, as in DEEP)."""

    def get_executors(self) -> list[Any]:
        from lsst.ctrl.bps.parsl.configuration import get_bps_config_value
        from parsl.executors import ThreadPoolExecutor

        cores = int(os.environ.get("J") or get_bps_config_value(self.site, "cores", int, required=True))
        return [ThreadPoolExecutor(label="local", max_threads=cores)]

    def select_executor(self, job: Any) -> str:
        return "local"
