"""bps for the mock DEEP pipelines: their clusters and `render_submit`, which fills autoproc's
submit template (`autoproc.deep.bps_site`) for a test that runs `bps submit` by hand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from autoproc.deep.bps_site import SUBMIT_TEMPLATE

__all__ = ["DEFAULT_CLUSTERS", "cluster_settings", "pipeline_labels", "render_submit"]

# name -> (labels, dimensions, equalDimensions); only clusters with labels in the submitted pipeline
# are written, restricted to those labels.
DEFAULT_CLUSTERS: dict[str, tuple[list[str], str, str | None]] = {
    "exposureCluster": (["cpBiasIsr", "overscan", "cpFlatIsr", "cpFlatMeasure", "isrForCrosstalkSources"],
                        "exposure", None),
    "visitCluster": (["isr", "applySuspect", "characterizeImage", "calibrate", "writePreSourceTable",
                      "transformPreSourceTable", "inject_exposure", "injected_characterizeImage",
                      "injected_calibrate", "writeRecalibratedSourceTable", "transformSourceTable",
                      "getTemplate", "subtractImages", "detectAndMeasureDiaSources", "transformDiaSourceCat",
                      "forcedPhotDiffim", "forcedPhotCcd"], "visit", "visit:exposure"),
}


def cluster_settings() -> dict[str, dict[str, str]]:
    """`DEFAULT_CLUSTERS` as `deep.clusters` entries ({name: {pipetasks, dimensions, equalDimensions}})."""
    return {name: {"pipetasks": ",".join(tasks), "dimensions": dims, **({"equalDimensions": equal} if equal else {})}
            for name, (tasks, dims, equal) in DEFAULT_CLUSTERS.items()}


def pipeline_labels(pipeline: str) -> list[str]:
    """Task labels of ``file.yaml#subset`` (or ``#label``, or the whole file), read from the YAML."""
    path, _, frag = pipeline.partition("#")
    doc = yaml.safe_load(Path(path).read_text())
    tasks = list((doc.get("tasks") or {}).keys())
    if not frag:
        return tasks
    out: list[str] = []
    for part in frag.split(","):
        sub = (doc.get("subsets") or {}).get(part)
        if sub is not None:
            out += list(sub["subset"] if isinstance(sub, dict) else sub)
        elif part in tasks:
            out.append(part)
        else:
            raise ValueError(f"{pipeline}: {part!r} is neither a subset nor a task label")
    return list(dict.fromkeys(out))


def _quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def render_submit(
    out: str | os.PathLike[str],
    *,
    repo: str | os.PathLike[str],
    pipeline: str,
    inputs: Sequence[str] | str,
    output_run: str,
    data_query: str = "",
    output_chain: str | None = None,
    submit_path: str | os.PathLike[str] | None = None,
    qgraph_file: str | os.PathLike[str] | None = None,
    skip_existing_in: Sequence[str] = (),
    extra_qgraph_options: str = "",
    cores: int = 2,
    monitor: bool = False,
    clusters: Mapping[str, tuple[list[str], str, str | None]] | None = None,
    campaign: str = "autoproc",
    payload_name: str | None = None,
    template: str | os.PathLike[str] = SUBMIT_TEMPLATE,
) -> Path:
    """Write a concrete bps submit YAML from the template.

    ``qgraph_file``: submit a graph built beforehand (DEEP's execute.py does ``pipetask qgraph`` then
    ``bps submit --qgraph``); then ``data_query``/``skip_existing_in`` only matter for the graph build.
    ``submit_path`` defaults to ``<dir of out>/submit``. ``clusters=None`` uses `DEFAULT_CLUSTERS`;
    ``{}`` means one job per quantum.
    """
    labels = set(pipeline_labels(pipeline))
    chosen = DEFAULT_CLUSTERS if clusters is None else clusters
    lines = []
    for name, (cl_labels, dims, equal) in chosen.items():
        used = [lab for lab in cl_labels if lab in labels]
        if not used:
            continue
        lines.append(f"  {name}:\n    pipetasks: {', '.join(used)}\n    dimensions: {dims}")
        if equal:
            lines.append(f"    equalDimensions: {equal}")
    qopts = extra_qgraph_options
    if skip_existing_in:
        qopts = f"{qopts} --skip-existing-in {','.join(skip_existing_in)}".strip()
    out = Path(out)
    values = {
        "PIPELINE": pipeline, "CAMPAIGN": campaign, "PAYLOAD": payload_name or re.sub(r"\W+", "_", output_run),
        "REPO": str(repo), "INPUTS": inputs if isinstance(inputs, str) else ",".join(inputs),
        "QUERY": _quote(data_query), "OUTPUT": output_chain or output_run, "OUTPUT_RUN": output_run,
        "PIPETASK_OUTPUT": "-o {output}" if output_chain else "",
        "UPDATE_OUTPUT_CHAIN": "--update-output-chain" if output_chain else "",
        "EXTRA_QGRAPH_OPTIONS": _quote(qopts), "SUBMIT_PATH": str(submit_path or out.parent / "submit"),
        "CORES": str(int(cores)), "MONITOR": "true" if monitor else "false",
        "QGRAPH_FILE": f'qgraphFile: "{qgraph_file}"' if qgraph_file else "",
        "CLUSTERS": "\n".join(lines) if lines else "  {}",
        "AGGREGATE_OPTIONS": "--mock-storage-classes -o {submitPath}/provenance.qg",
    }
    text = Path(template).read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    if "cluster:\n  {}" in text:
        text = text.replace("cluster:\n  {}", "cluster: {}")
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise ValueError(f"unfilled template tokens: {leftover}")
    yaml.safe_load(text)  # must parse
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
