"""Run one attempt of one DEEP step, and judge it from the Butler (docs/DEEP.md#skip-rules; DEEP's execute.py).

One attempt:

1. `rebuild_chain(parent)` (collection.py) so the chain holds every earlier RUN.
2. A new RUN `{parent}/{pipeline}/{step}/{UTC stamp}` (never reused: a second in the same
   second is bumped).
3. The graph is built in-process with skip-existing-in = chain and the skip-failures
   rule, and written to `<attempt>/<run>.qg`. An empty graph means "nothing to do":
   no RUN is made, no child is started.
4. The work runs as a child started through `run_child` (default `process.run`: own
   session, log, exit-status file): `bps submit` with the Parsl plugin in the attempt
   directory, or `autoproc-step run REPO <qg>` (execute.py: one quantum-backed Butler,
   one registration at the end; `quantum_backed=False`: `pipetask run -j 1 -g <qg>`).
   The daemon passes warm.py's executor for the latter two, which forks them from a
   server with the middleware imported: same command line, same session, log and exit
   file, no interpreter start-up.
5. The outcome comes from the Butler, never from the exit code: per task, succeeded =
   `<task>_metadata` in the RUN, failed = `<task>_log` without metadata (exception type
   and message read from the log records). What a child wrote but did not register is
   registered first: if the bps final job did not ingest, with `butler aggregate-graph`
   (docs/DEEP.md#bps-submission); if `autoproc-step run` was killed or could not
   register, with `autoproc-step register`.
6. Failures whose logs match the memory regexes (retries.py) are *retryable*: their
   `<task>_log` is copied to `<task>_log_retry` and purged, so the next check sees them
   as never run. Anything else is fatal and stays visible (skip-failures).
7. Outputs of quanta that did not finish (no `_metadata`: killed mid-write, or failed
   after writing some) are removed from the RUN; their `_log` stays. The next attempt
   writes them again, so the chain never holds two copies.
8. `fixup_chain(parent)`: the new RUN becomes the newest child.

`attempt.json` in the attempt directory is the step's RUN record: which RUN, graph and
quanta it was for, written before the child starts and with its outcome after, so the
Butler-side work a killed attempt leaves (ingest, judge, rename, chain) is finished by
`recover_attempt()` before the next attempt of the step. It is not a ledger of attempts or
processes: the engine's attempts are (docs/STAGES.md, "One attempt ledger"). The runner
never kills a process group; it refuses to run or recover beside a live child of an
earlier attempt (RunnerError), which the engine kills.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoproc import process
from autoproc.deep import collections as colls
from autoproc.deep import quanta, registry

_LOG = logging.getLogger(__name__)

# retries.py (docs/DEEP.md#memory-failures): a quantum whose log matches one of these failed for memory.
MEMORY_PATTERNS = (
    r".*MemoryError: std::bad_alloc.*",
    r".*ValueError: Failure from formatter.*std::bad_alloc.*",
    r".*MemoryError: Unable to allocate.*",
    r".*MemoryError.*",
    r".*RuntimeError: Failed to serialize dataset.*",
)
_MEMORY_RX = [re.compile(p, re.DOTALL) for p in MEMORY_PATTERNS]
_EXC_RX = re.compile(r"failed\. Exception ([\w.]+): ?(.*)", re.DOTALL)
# Characters allowed in a data query that reaches a command line (quotes and the usual
# operators; no backslash, no backtick, no newline).
_WHERE_RX = re.compile(r"^[A-Za-z0-9_ .,:'=<>!()+\-*/]*$")

RunChild = Callable[..., process.ChildResult]


class RunnerError(RuntimeError):
    pass


def check_where(where: str) -> str:
    if where and not _WHERE_RX.match(where):
        raise RunnerError(f"unsafe characters in data query: {where!r}")
    return where or ""


def venv_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for bps/pipetask/butler children: os.environ updated with `base`
    (overrides), then CTRL_MPEXEC_DIR and DAF_BUTLER_DIR = the interpreter's prefix unless
    set (bps runs `${CTRL_MPEXEC_DIR}/bin/pipetask`, docs/DEEP.md#bps-submission), the
    venv's bin first on PATH, and the BLAS thread counts at 1 unless set."""
    env = dict(os.environ)
    env.update(base or {})
    prefix = sys.prefix
    env.setdefault("CTRL_MPEXEC_DIR", prefix)
    env.setdefault("DAF_BUTLER_DIR", prefix)
    bindir = str(Path(prefix) / "bin")
    if not env.get("PATH", "").startswith(bindir + os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def _tool(name: str) -> str:
    cand = Path(sys.prefix) / "bin" / name
    if cand.exists():
        return str(cand)
    found = shutil.which(name)
    if not found:
        raise RunnerError(f"{name} not found in {cand.parent} or on PATH")
    return found


# --- outcome ----------------------------------------------------------------------------


@dataclass
class FailedQuantum:
    task: str
    data_id: dict
    exception_type: str
    message: str
    retryable: bool
    log_id: str
    run: str
    no_space: bool = False  # a full disk or a file-size limit: runs again once there is space
    registry_lost: bool = False  # the registry database went away under it: runs again when it is back

    def to_json(self) -> dict:
        return {"task": self.task, "data_id": dict(self.data_id), "exception_type": self.exception_type,
                "message": self.message, "retryable": self.retryable, "log_id": self.log_id, "run": self.run,
                "no_space": self.no_space, "registry_lost": self.registry_lost}


@dataclass
class StepOutcome:
    """The result of one attempt. `status`:

    - ``nothing_to_do``: the graph was empty (step already done); no RUN was made;
    - ``succeeded``: every quantum of the graph has its metadata in the RUN;
    - ``failed``: some quanta failed (see `failures`; `retryable` says whether any can
      run again after their logs were renamed);
    - ``incomplete``: quanta neither succeeded nor failed (killed, timed out, or the
      bps final job never ingested and recovery failed) — check again and retry;
    - ``error``: the graph could not be built or the command could not start
      (`error_kind` "missing_input" means: wait for inputs).
    """

    status: str
    parent: str
    pipeline: str
    step: str | None
    mode: str
    run: str | None = None
    attempt_dir: str | None = None
    expected: dict[str, int] = field(default_factory=dict)
    succeeded: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    blocked: dict[str, int] = field(default_factory=dict)
    failures: list[FailedQuantum] = field(default_factory=list)
    retryable: bool = False
    renamed_logs: int = 0
    commands: list[list[str]] = field(default_factory=list)
    returncodes: list[int] = field(default_factory=list)
    killed: bool = False
    final_job_ok: bool | None = None
    recovered: bool = False
    error: str | None = None
    error_kind: str | None = None
    seconds: float = 0.0
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def fatal_failures(self) -> list[FailedQuantum]:
        return [f for f in self.failures if not f.retryable]

    def no_space(self) -> OSError | None:
        """The full disk or file-size limit this attempt ran into, if it shows: in failed
        quanta's exceptions, or the child's exit status and last log lines."""
        if self.status not in ("failed", "incomplete"):
            return None
        full = [f for f in self.failures if f.no_space]
        if full:
            code = process.no_space_errno(full[0].message) or errno.ENOSPC  # the message may be cut short
            return OSError(code, f"{len(full)} quanta failed with \"{os.strerror(code)}\", e.g. {full[0].task} "
                           f"{full[0].data_id}")
        log = self.evidence.get("log", "")
        tail = "\n".join(str(self.evidence.get("log_tail", "")).splitlines()[-5:])
        return next((e for rc in self.returncodes if (e := process.no_space(Path(log).stem, rc, tail, log))), None)

    def registry_lost(self) -> str | None:
        """Why this attempt looks like a victim of a lost registry connection (quanta that
        failed on it, or a child whose last log lines say so), else None."""
        if self.status not in ("failed", "incomplete"):
            return None
        lost = [f for f in self.failures if f.registry_lost]
        if lost:
            return f"{len(lost)} quanta lost the registry connection, e.g. {lost[0].task}: {lost[0].message[:300]}"
        tail = str(self.evidence.get("log_tail", ""))
        if any(rc != 0 for rc in self.returncodes) and registry.lost_connection(tail):
            line = next(ln for ln in reversed(tail.splitlines()) if registry.lost_connection(ln))
            return f"{Path(str(self.evidence.get('log', ''))).name}: {line.strip()[:300]}"
        return None

    def to_json(self) -> dict:
        return {
            "status": self.status, "parent": self.parent, "pipeline": self.pipeline, "step": self.step,
            "mode": self.mode, "run": self.run, "attempt_dir": self.attempt_dir,
            "expected": dict(self.expected), "succeeded": dict(self.succeeded), "failed": dict(self.failed),
            "blocked": dict(self.blocked), "failures": [f.to_json() for f in self.failures],
            "retryable": self.retryable, "renamed_logs": self.renamed_logs,
            "commands": [list(c) for c in self.commands], "returncodes": list(self.returncodes),
            "killed": self.killed, "final_job_ok": self.final_job_ok, "recovered": self.recovered,
            "error": self.error, "error_kind": self.error_kind, "seconds": round(self.seconds, 3),
            "evidence": self.evidence,
        }


def is_memory_failure(messages: Sequence[str]) -> bool:
    return any(rx.match(m) for m in messages for rx in _MEMORY_RX)


def _log_messages(butler, ref) -> list[str]:
    try:
        records = butler.get(ref)
    except Exception as err:  # an unreadable log is evidence too
        return [f"<log unreadable: {type(err).__name__}: {err}>"]
    return [str(r.message) for r in records]


def _parse_exception(messages: Sequence[str]) -> tuple[str, str]:
    for m in reversed(messages):
        mt = _EXC_RX.search(m)
        if mt:
            return mt.group(1), mt.group(2).strip()
    for m in reversed(messages):
        if "Error" in m or "Exception" in m:
            return "unknown", m.strip()
    return "unknown", (messages[-1].strip() if messages else "")


def judge_run(butler, run: str, tasks: Sequence[str], expected: Mapping[str, int] | None = None
              ) -> tuple[dict, dict, dict, list[FailedQuantum]]:
    """(succeeded, failed, blocked, failures) per task from the RUN's `_metadata` and `_log`."""
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

    _import_mocks()
    succeeded, failed, blocked = {}, {}, {}
    failures: list[FailedQuantum] = []
    for task in tasks:
        try:
            md = {r.dataId.required_values for r in butler.query_datasets(
                f"{task}_metadata", collections=run, find_first=False, explain=False)}
        except (MissingDatasetTypeError, MissingCollectionError):
            md = set()
        try:
            logs = list(butler.query_datasets(f"{task}_log", collections=run, find_first=False, explain=False))
        except (MissingDatasetTypeError, MissingCollectionError):
            logs = []
        nfail = 0
        for ref in sorted(logs, key=lambda r: r.dataId.required_values):
            if ref.dataId.required_values in md:
                continue
            nfail += 1
            msgs = _log_messages(butler, ref)
            etype, emsg = _parse_exception(msgs)
            full = process.no_space_errno(emsg) is not None
            lost = registry.lost_connection(emsg)
            failures.append(FailedQuantum(task=task, data_id=dict(ref.dataId.required), exception_type=etype,
                                          message=emsg[:2000], retryable=is_memory_failure(msgs) or full or lost,
                                          log_id=str(ref.id), run=run, no_space=full, registry_lost=lost))
        succeeded[task] = len(md)
        failed[task] = nfail
        if expected is not None:
            blocked[task] = max(0, int(expected.get(task, 0)) - len(md) - nfail)
    return succeeded, failed, blocked, failures


def prune_unfinished_outputs(butler, qgraph: Path | str, run: str) -> int:
    """Remove from `run` what quanta of the graph `qgraph` wrote without finishing (no
    `<task>_metadata`), except their `<task>_log`; returns how many datasets went. Dataset
    ids are fixed in the graph, so a quantum's outputs are known without guessing."""
    from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

    _import_mocks()
    with PredictedQuantumGraph.open(str(qgraph)) as reader:
        reader.read_thin_graph()
        reader.read_quantum_datasets()
        graph = reader.finish()
    xgraph = graph.bipartite_xgraph
    unfinished = []
    for quantum in graph:
        label = xgraph.nodes[quantum]["task_label"]
        outputs = [(xgraph.nodes[d]["dataset_type_name"], d) for d in xgraph.successors(quantum)]
        metadata = [d for name, d in outputs if name == f"{label}_metadata"]
        if not metadata or butler.get_dataset(metadata[0]) is not None:
            continue
        for name, dataset_id in outputs:
            ref = butler.get_dataset(dataset_id) if name != f"{label}_log" else None
            if ref is not None and ref.run == run:
                unfinished.append(ref)
    if unfinished:
        butler.pruneDatasets(unfinished, disassociate=True, unstore=True, purge=True)
    return len(unfinished)


def rename_retry_logs(butler, failures: Sequence[FailedQuantum]) -> int:
    """retries.py: for each retryable failure copy `<task>_log` to `<task>_log_retry`
    (registered if needed; kept if already there) and purge the original. Returns the
    number of logs purged."""
    from lsst.daf.butler import DatasetType

    _import_mocks()
    n = 0
    for f in failures:
        if not f.retryable:
            continue
        (ref,) = [r for r in butler.query_datasets(f"{f.task}_log", collections=f.run, data_id=f.data_id,
                                                   find_first=False, explain=False) if str(r.id) == f.log_id]
        rtype = DatasetType(f"{f.task}_log_retry", ref.datasetType.dimensions, ref.datasetType.storageClass_name)
        butler.registry.registerDatasetType(rtype)
        existing = butler.query_datasets(rtype, collections=f.run, data_id=ref.dataId, find_first=False,
                                         explain=False) if _has_type(butler, rtype.name) else []
        if not existing:
            butler.put(butler.get(ref), rtype, ref.dataId, run=ref.run)
        butler.pruneDatasets([ref], disassociate=True, unstore=True, purge=True)
        n += 1
    return n


def release_failures(butler, chain: str, task: str | None = None, data_ids: Sequence[Mapping] | None = None,
                     pipeline: str | Path | None = None, step: str | None = None, where: str = "") -> int:
    """Operator override ("retry these"): apply the retries.py rename to failed quanta
    found through `chain` (optionally one task / some data IDs), so the next check
    schedules them again. Returns how many logs were renamed."""
    if pipeline is None:
        raise ValueError("pipeline (and step) are needed to find the failed quanta")
    st = quanta.check_step(butler, pipeline, step, chain, where=where)
    picks = []
    for label, items in st.failed.items():
        if task and label != task:
            continue
        for it in items:
            if data_ids is not None and not any(all(it["data_id"].get(k) == v for k, v in d.items())
                                                for d in data_ids):
                continue
            picks.append(FailedQuantum(task=label, data_id=it["data_id"], exception_type="", message="",
                                       retryable=True, log_id=it["log_id"], run=it["log_run"]))
    return rename_retry_logs(butler, picks)


def _has_type(butler, name: str) -> bool:
    from lsst.daf.butler import MissingDatasetTypeError

    try:
        butler.get_dataset_type(name)
        return True
    except MissingDatasetTypeError:
        return False


def _import_mocks() -> None:
    try:
        import lsst.pipe.base.tests.mocks  # noqa: F401
    except ImportError:  # pragma: no cover
        pass


# --- bps submit config ----------------------------------------------------------------


def _deep_merge(base: dict, over: Mapping) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


DEFAULT_SUBMIT: dict[str, Any] = {
    "operator": "autoproc",
    "project": "autoproc",
    "campaign": "DEEP",
    "wmsServiceClass": "lsst.ctrl.bps.parsl.ParslService",
    "computeSite": "local",
    "site": {"local": {"class": "lsst.ctrl.bps.parsl.sites.Local", "cores": 2, "retries": 0}},
    "finalJob": {"requestCpus": 2},
}


_TOKEN_RX = re.compile(r"@([A-Z_]+)@")


def _fill_tokens(text: str, cores: int | None) -> str:
    """A template with `@NAME@` tokens (the sim package's `bps/submit.yaml`) becomes
    parseable YAML: every token gets a neutral value here, and the values this attempt
    fixes are then merged over the parsed document."""
    if not _TOKEN_RX.search(text):
        return text
    neutral = {"CORES": str(int(cores or os.environ.get("J") or 2)), "MONITOR": "false", "QGRAPH_FILE": "",
               "CLUSTERS": "  {}"}
    text = _TOKEN_RX.sub(lambda m: neutral.get(m.group(1), ""), text)
    return text.replace("cluster:\n  {}", "cluster: {}")


def write_submit_yaml(attempt_dir: Path, template: Path | str | None, *, repo: str, pipeline_uri: str,
                      qgraph_file: Path, inputs: Sequence[str], output_run: str, parent: str, where: str,
                      mock_storage_classes: bool, request_memory: int | None,
                      extra: Mapping[str, Any] | None = None, cores: int | None = None,
                      clusters: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """The submit yaml of one attempt: the template (sim package or user config; its
    relative `includeConfigs` made absolute) + what this attempt fixes."""
    data: dict[str, Any] = dict(DEFAULT_SUBMIT)
    if template is not None:
        tpath = Path(template)
        tdata = yaml.safe_load(_fill_tokens(tpath.read_text(), cores)) or {}
        inc = tdata.get("includeConfigs")
        if inc:
            tdata["includeConfigs"] = [str((tpath.parent / p).resolve()) if not os.path.isabs(str(p)) else p
                                       for p in ([inc] if isinstance(inc, str) else inc)]
        data = _deep_merge(data, tdata)
    agg = "--mock-storage-classes " if mock_storage_classes else ""
    agg += "-o {submitPath}/provenance.qg"
    over: dict[str, Any] = {
        "pipelineYaml": pipeline_uri,
        "qgraphFile": str(qgraph_file),
        "payload": {
            "payloadName": colls.pipeline_name_of(pipeline_uri),
            "butlerConfig": repo,
            "inCollection": ",".join(inputs),
            "dataQuery": where,
            "output": parent,
            "outputRun": output_run,
        },
        "submitPath": str(attempt_dir / "submit"),
        "extraAggregateOptions": agg,
    }
    if not data.get("campaign"):
        over["campaign"] = "DEEP"
    if request_memory:
        over["requestMemory"] = int(request_memory)
    if cores:
        over["site"] = {data.get("computeSite", "local"): {"cores": int(cores)}}
    if clusters is not None:
        over["cluster"] = {k: dict(v) for k, v in clusters.items()}
        if clusters:
            over["clusterAlgorithm"] = "lsst.ctrl.bps.quantum_clustering_funcs.dimension_clustering"
    data = _deep_merge(data, over)
    if extra:
        data = _deep_merge(data, extra)
    out = attempt_dir / "submit.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


# --- the attempt ------------------------------------------------------------------------


def _unique_run(butler, parent: str, pipeline_name: str, step: str | None, now: dt.datetime | None,
                attempt_root: Path) -> str:
    """A RUN name that neither exists nor has an attempt directory (an attempt killed
    before its child registered anything has a directory but no RUN yet)."""
    from lsst.daf.butler import MissingCollectionError

    t = now or dt.datetime.now(dt.UTC)
    for _ in range(3600):
        run = colls.new_run_name(parent, pipeline_name, step, t)
        try:
            butler.collections.get_info(run)
        except MissingCollectionError:
            if not (attempt_root / run.replace("/", "_")).exists():
                return run
        t = t + dt.timedelta(seconds=1)
    raise RunnerError(f"no free run name under {parent}")


def step_clusters(clusters: Mapping[str, Mapping[str, Any]] | None, labels: Sequence[str]
                  ) -> dict[str, dict[str, Any]] | None:
    """The bps clusters of one step: each entry cut to the step's task labels, entries with
    none of them left out; None (unset) stays None (the submit template's own)."""
    if clusters is None:
        return None
    out = {}
    for name, spec in clusters.items():
        used = [t.strip() for t in str(spec.get("pipetasks", "")).split(",") if t.strip() in labels]
        if used:
            out[name] = {**spec, "pipetasks": ",".join(used)}
    return out


def _write_json(path: Path, data: Mapping) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    tmp.replace(path)


def _check_mode(mode: str) -> str:
    if mode not in ("bps", "pipetask"):
        raise RunnerError(f"mode must be bps or pipetask, got {mode!r}")
    return mode


@dataclass
class StepPlan:
    """One step's graph for a new RUN, built in-process: what is left to do (`status`: the
    "anything left?" check) and, when there is work, the graph file the child runs, in the
    new attempt's directory. One build serves both (`plan_step`)."""

    parent: str
    pipeline: str  # the pipeline file (no #fragment)
    step: str | None
    run: str
    attempt_dir: Path
    qgraph: Path
    where: str
    inputs: list[str] | None
    status: quanta.StepStatus

    @property
    def pipeline_uri(self) -> str:
        return quanta.join_pipeline(self.pipeline, self.step)


def plan_step(butler, pipeline: str | Path, step: str | None, parent: str, attempt_root: Path | str, *,
              where: str = "", inputs: Sequence[str] | None = None, skip_failures: bool = True,
              config_files: Mapping[str, Sequence[str] | str] | None = None,
              now: dt.datetime | None = None) -> StepPlan:
    """Build `pipeline#step`'s graph over the chain `parent` for a new RUN (skip-existing-in
    the chain, the skip-failures rule; `inputs` default to the chain). The graph file and its
    attempt directory (`attempt_root/<run with / as _>`) are written only when the graph has
    work: a step found done leaves nothing behind. Raises quanta.StepCheckError when the
    graph cannot be built (`kind` "missing_input": the daemon waits)."""
    colls.check_collection(parent)
    where = check_where(where)
    ppath, step = quanta.split_pipeline(pipeline, step)
    run = _unique_run(butler, parent, colls.pipeline_name_of(ppath), step, now, Path(attempt_root))
    attempt_dir = Path(attempt_root) / run.replace("/", "_")
    qg = attempt_dir / f"{run.replace('/', '_')}.qg"
    listed = list(inputs) if inputs else None
    st = quanta.build_graph_file(butler, ppath, step, parent, run, qg, where=where, skip_failures=skip_failures,
                                 inputs=listed, config_files=config_files)
    return StepPlan(parent=parent, pipeline=ppath, step=step, run=run, attempt_dir=attempt_dir, qgraph=qg,
                    where=where, inputs=listed, status=st)


def run_step(
    butler,
    repo: str,
    pipeline: str | Path,
    step: str | None,
    parent: str,
    attempt_root: Path | str,
    *,
    fixed_inputs: Sequence[str] | None = None,
    inputs: Sequence[str] | None = None,
    where: str = "",
    skip_failures: bool = True,
    config_files: Mapping[str, Sequence[str] | str] | None = None,
    rename_retryable: bool = True,
    run_child: RunChild = process.run,
    env: Mapping[str, str] | None = None,
    on_progress: Callable[[str], None] | None = None,
    now: dt.datetime | None = None,
    recover_pending: bool = True,
    **execution: Any,
) -> StepOutcome:
    """Run one attempt of `pipeline#step` over the chain `parent` (see the module doc):
    recover what earlier attempts left, rebuild the chain, `plan_step`, `execute_plan`.

    `fixed_inputs`: when given, the chain is first rebuilt (collection.py) with them.
    `recover_pending`: first finish (`recover_attempt`) every earlier attempt of this
    parent under `attempt_root` that was left running or killed (raises RunnerError if
    its child group is still alive on this host), so no finished quantum is redone;
    `on_progress` hears how many finished quanta that kept. `execution`: the keywords of
    `execute_plan` (mode, timeout, on_start, should_stop, ...); the rest as `plan_step`.
    """
    t0 = time.perf_counter()
    mode = _check_mode(execution.get("mode", "pipetask"))
    evidence: dict[str, Any] = {}
    if recover_pending and (recovered := recover_pending_attempts(
            butler, attempt_root, parent, run_child=run_child, env=env, rename_retryable=rename_retryable,
            on_progress=on_progress)):
        evidence["recovered_attempts"] = recovered
    if fixed_inputs is not None:
        evidence["chain_before"] = colls.rebuild_chain(butler, parent, fixed_inputs).to_json()
    try:
        plan = plan_step(butler, pipeline, step, parent, attempt_root, where=where, inputs=inputs,
                         skip_failures=skip_failures, config_files=config_files, now=now)
    except quanta.StepCheckError as err:
        ppath, step = quanta.split_pipeline(pipeline, step)
        outcome = StepOutcome(status="error", parent=parent, pipeline=quanta.join_pipeline(ppath, step),
                              step=step, mode=mode, error=str(err), error_kind=err.kind)
    else:
        outcome = execute_plan(butler, repo, plan, rename_retryable=rename_retryable, run_child=run_child,
                               env=env, **execution)
    outcome.evidence.update(evidence)
    outcome.seconds = time.perf_counter() - t0
    return outcome


def execute_plan(
    butler,
    repo: str,
    plan: StepPlan,
    *,
    mode: str = "pipetask",
    quantum_backed: bool = True,
    submit_template: Path | str | None = None,
    submit_extra: Mapping[str, Any] | None = None,
    request_memory: int | None = None,
    cores: int | None = None,
    clusters: Mapping[str, Mapping[str, Any]] | None = None,
    rename_retryable: bool = True,
    mock_storage_classes: bool | None = None,
    run_child: RunChild = process.run,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_start: Callable[[process.Child], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> StepOutcome:
    """Run a planned step's graph in a child and judge it; "nothing_to_do" when the plan has
    no work. The caller recovered earlier attempts of the chain first (`run_step` does).
    The outcome's `seconds` count the plan's graph build too.

    `mode`: "bps" (bps submit + Parsl, in `<attempt>/`) or "pipetask" (`autoproc-step run`,
    or `pipetask run -j 1` when not `quantum_backed`).
    `cores`: the bps site's cores. `clusters`: bps `cluster:` entries ({name: {pipetasks,
    dimensions, equalDimensions}}) with dimension clustering, each cut to the step's own
    tasks (an entry with none of them is left out); {} = one job per quantum; None keeps
    the template's.
    `request_memory` (MB) goes to bps `requestMemory`; raise it for a retry after a
    memory failure.
    """
    _check_mode(mode)
    st, run, attempt_dir, qg, parent = plan.status, plan.run, plan.attempt_dir, plan.qgraph, plan.parent
    t0 = time.perf_counter() - st.seconds  # the attempt's seconds start with its graph build
    outcome = StepOutcome(status="error", parent=parent, pipeline=plan.pipeline_uri, step=plan.step, mode=mode)
    outcome.evidence["graph"] = st.to_json()
    outcome.expected = dict(st.to_run)
    if st.empty:
        outcome.status = "nothing_to_do"
        outcome.seconds = time.perf_counter() - t0
        return outcome
    outcome.run, outcome.attempt_dir = run, str(attempt_dir)
    if mock_storage_classes is None:
        mock_storage_classes = st.mock_storage_classes
    child_env = venv_env(env)
    if mode == "bps":
        submit = write_submit_yaml(attempt_dir, submit_template, repo=repo, pipeline_uri=plan.pipeline_uri,
                                   qgraph_file=qg, inputs=list(plan.inputs or [parent]), output_run=run,
                                   parent=parent, where=plan.where, mock_storage_classes=mock_storage_classes,
                                   request_memory=request_memory, extra=submit_extra, cores=cores,
                                   clusters=step_clusters(clusters, list(st.to_run)))
        argv = [_tool("bps"), "submit", str(submit)]
        log = attempt_dir / "bps.log"
    elif quantum_backed:
        argv = [_tool("autoproc-step"), "run", repo, str(qg), "--summary", str(attempt_dir / "summary.json")]
        log = attempt_dir / "step.log"
    else:
        argv = [_tool("pipetask"), "run", "-b", repo, "-g", str(qg), "--register-dataset-types",
                "-j", "1", "--no-versions", "--summary", str(attempt_dir / "summary.json")]
        log = attempt_dir / "step.log"
    quantum_backed = mode == "pipetask" and quantum_backed
    record = {"state": "running", "run": run, "parent": parent, "pipeline": plan.pipeline_uri, "step": plan.step,
              "mode": mode, "quantum_backed": quantum_backed, "repo": repo, "qgraph": str(qg), "argv": argv,
              "log": str(log), "expected": outcome.expected, "mock_storage_classes": mock_storage_classes,
              "submit_path": str(attempt_dir / "submit") if mode == "bps" else None,
              "started": dt.datetime.now(dt.UTC).isoformat()}
    _write_json(attempt_dir / "attempt.json", record)
    outcome.commands.append(list(argv))

    def _started(child: process.Child) -> None:
        _write_json(attempt_dir / "attempt.json", {**record, "child": child.to_json()})
        if on_start is not None:
            on_start(child)

    try:
        res = run_child(argv, cwd=attempt_dir, log=log, env=child_env, timeout=timeout, on_start=_started,
                        should_stop=should_stop)
    except OSError as err:
        outcome.error, outcome.error_kind = f"could not start {argv[0]}: {err}", "error"
        outcome.seconds = time.perf_counter() - t0
        return outcome
    outcome.returncodes.append(res.returncode)
    stopping = should_stop is not None and should_stop()
    outcome.killed = bool(res.timed_out or res.returncode < 0 or res.returncode in (137, 143) or stopping)
    outcome.evidence["log_tail"] = res.tail(15)
    # What a killed `autoproc-step` wrote is registered now, unless the daemon is stopping
    # (then the next attempt's recovery does it); a killed bps attempt is always left to it.
    _finish(butler, outcome, record, run_child=run_child, env=child_env, rename_retryable=rename_retryable,
            recover=not outcome.killed or (quantum_backed and not stopping))
    outcome.seconds = time.perf_counter() - t0
    _write_json(attempt_dir / "attempt.json", {**record, "state": "done", "outcome": outcome.to_json()})
    return outcome


def _final_job_ok(submit_path: Path) -> bool | None:
    f = submit_path / "logs" / "finalJob" / "finalJob.stderr"
    if not f.exists():
        return None
    return "All aggregation tasks complete" in process.log_tail(f, 5)


def jobs_graph(record: Mapping) -> str:
    """The graph whose dataset ids the attempt's quanta wrote. bps copies the saved graph into
    its submit directory and, as a final job is configured, gives the outputs new ids there
    (`pipetask update-graph-run`, keeping the original as `*_orig.qg`); aggregation and pruning
    must use that copy. Other modes run the saved graph itself."""
    saved = record["qgraph"]
    if record.get("mode") == "bps":
        copy = Path(record["submit_path"]) / Path(saved).name
        if copy.exists():
            return str(copy)
    return saved


def aggregate(repo: str, qgraph: str, attempt_dir: Path, *, mock_storage_classes: bool, run_child: RunChild,
              env: Mapping[str, str], provenance: str | None = None) -> tuple[list[str], int]:
    """`butler aggregate-graph QG REPO -j 1 --register-dataset-types [--mock-storage-classes]`:
    ingest what the jobs of a graph wrote (the bps final job, by hand)."""
    argv = [_tool("butler"), "aggregate-graph", qgraph, repo, "-j", "1", "--register-dataset-types"]
    if mock_storage_classes:
        argv.append("--mock-storage-classes")
    if provenance:
        argv += ["-o", provenance]
    res = run_child(argv, cwd=attempt_dir, log=attempt_dir / "aggregate.log", env=env)
    return argv, res.returncode


def _register(outcome: StepOutcome, record: Mapping, attempt_dir: Path, *, run_child: RunChild,
              env: Mapping[str, str]) -> None:
    """`autoproc-step register REPO QG`: what a killed `autoproc-step run`, or one that could
    not register (exit `execute.NOT_REGISTERED`), left in the datastore only. If this fails
    too, the attempt stays pending (`pending_attempts`) and the next one tries again first."""
    argv = [_tool("autoproc-step"), "register", record["repo"], record["qgraph"]]
    res = run_child(argv, cwd=attempt_dir, log=attempt_dir / "register.log", env=env)
    outcome.commands.append(argv)
    outcome.returncodes.append(res.returncode)
    outcome.recovered = res.returncode == 0
    if not outcome.recovered:
        outcome.evidence["unregistered"] = True


def _finish(butler, outcome: StepOutcome, record: Mapping, *, run_child: RunChild, env: Mapping[str, str],
            rename_retryable: bool, recover: bool) -> None:
    """Judge, recover the bps final job when needed, rename retryable logs, fix the chain."""
    where = record.get("attempt_dir", outcome.attempt_dir)
    if where is None:
        raise RunnerError(f"the record of RUN {record.get('run')} names no attempt directory")
    attempt_dir = Path(where)
    run, parent = record["run"], record["parent"]
    tasks = list(record["expected"].keys())
    if record["mode"] == "bps":
        submit_path = Path(record["submit_path"])
        outcome.final_job_ok = _final_job_ok(submit_path)
        outcome.evidence["submit_path"] = str(submit_path)
        prov = submit_path / "provenance.qg"
        if prov.exists():
            outcome.evidence["provenance_qg"] = str(prov)
        if not outcome.final_job_ok and recover and submit_path.exists():
            qg = jobs_graph(record)
            prov_out = None if prov.exists() else str(attempt_dir / "provenance.qg")
            argv, rc = aggregate(record["repo"], qg, attempt_dir, mock_storage_classes=record.get(
                "mock_storage_classes", True), run_child=run_child, env=env, provenance=prov_out)
            outcome.commands.append(argv)
            outcome.returncodes.append(rc)
            outcome.recovered = rc == 0
            if prov_out and Path(prov_out).exists():
                outcome.evidence["provenance_qg"] = prov_out
    else:
        # autoproc-step exits 0 or 1 only once it has registered (execute.py); anything else, or
        # no exit seen (a recovery), leaves that to `autoproc-step register`.
        registered = bool(outcome.returncodes) and outcome.returncodes[-1] in (0, 1)
        if record.get("quantum_backed") and recover and not registered:
            _register(outcome, record, attempt_dir, run_child=run_child, env=env)
        summary = attempt_dir / "summary.json"
        if summary.exists():
            outcome.evidence["summary_json"] = str(summary)
            try:
                s = json.loads(summary.read_text())
                outcome.evidence["summary_status"] = s.get("status")
            except (OSError, ValueError):
                pass
    butler.registry.refresh()
    from lsst.daf.butler import MissingCollectionError

    try:
        butler.collections.get_info(run)
        run_exists = True
    except MissingCollectionError:
        run_exists = False
    if run_exists:
        outcome.succeeded, outcome.failed, outcome.blocked, outcome.failures = judge_run(
            butler, run, tasks, record["expected"])
    else:
        outcome.succeeded = {t: 0 for t in tasks}
        outcome.failed = {t: 0 for t in tasks}
        outcome.blocked = dict(record["expected"])
    n_exp = sum(record["expected"].values())
    n_ok = sum(outcome.succeeded.values())
    n_fail = sum(outcome.failed.values())
    retryable = [f for f in outcome.failures if f.retryable]
    outcome.retryable = bool(retryable)
    if retryable and rename_retryable:
        outcome.renamed_logs = rename_retry_logs(butler, retryable)
    if run_exists and n_ok < n_exp:
        outcome.evidence["pruned_unfinished_outputs"] = prune_unfinished_outputs(butler, jobs_graph(record), run)
    if n_ok >= n_exp:
        outcome.status = "succeeded"
    elif n_fail:
        outcome.status = "failed"
    else:
        outcome.status = "incomplete"
    if run_exists:
        outcome.evidence["chain_after"] = colls.fixup_chain(butler, parent).to_json()
    outcome.evidence.update({
        "run": run, "attempt_dir": str(attempt_dir), "mode": record["mode"], "qgraph": record["qgraph"],
        "log": record["log"], "returncodes": list(outcome.returncodes), "final_job_ok": outcome.final_job_ok,
        "recovered": outcome.recovered, "counts": {"expected": record["expected"],
                                                   "succeeded": outcome.succeeded, "failed": outcome.failed,
                                                   "blocked": outcome.blocked},
    })


def _record(attempt_dir: Path) -> dict:
    try:
        return json.loads((Path(attempt_dir) / "attempt.json").read_text())
    except (OSError, ValueError):
        return {}


def pending_attempts(attempt_root: Path | str, parent: str) -> list[Path]:
    """Attempt directories of `parent` whose outcome is not final: still marked running
    (the daemon died or was killed), or killed and not recovered yet."""
    root = Path(attempt_root)
    if not root.is_dir():
        return []
    prefix = parent.replace("/", "_") + "_"
    out = []
    for d in sorted(root.iterdir()):
        if not d.name.startswith(prefix):
            continue
        rec = _record(d)
        if rec.get("parent") != parent or not rec.get("run"):
            continue
        oc = rec.get("outcome") or {}
        evidence = oc.get("evidence", {})
        if rec.get("state") == "running" or evidence.get("unregistered") or (
                oc.get("killed") and not oc.get("recovered") and not evidence.get("recovery")):
            out.append(d)
    return out


def recover_pending_attempts(butler, attempt_root: Path | str, parent: str, *, run_child: RunChild = process.run,
                             env: Mapping[str, str] | None = None, rename_retryable: bool = True,
                             on_progress: Callable[[str], None] | None = None) -> list[dict]:
    """`recover_attempt` for every pending attempt of `parent` (`pending_attempts`); what each
    kept. `on_progress` hears how many finished quanta an interrupted attempt kept."""
    recovered = []
    for prev in pending_attempts(attempt_root, parent):
        rec = recover_attempt(butler, prev, run_child=run_child, env=env, rename_retryable=rename_retryable)
        recovered.append({"attempt_dir": str(prev), "run": rec.run, "status": rec.status,
                          "recovered": rec.recovered, "succeeded": rec.succeeded})
        kept = sum(rec.succeeded.values())
        if kept and on_progress is not None:
            on_progress(f"{kept} quanta finished by the interrupted {rec.run} were kept")
    return recovered


def _refuse_beside_child(attempt_dir: Path, record: Mapping) -> None:
    """RunnerError when the attempt's child is still running on this host: nothing may
    run or be judged beside it. Killing it is the engine's job (its attempts know every
    child: ActionContext.record_child)."""
    child = record.get("child") or {}
    if child.get("host") == socket.gethostname() and process.group_alive(int(child.get("pgid", 0) or 0)):
        raise RunnerError(f"{attempt_dir}: its child (pgid {child['pgid']}) is still running; "
                          "kill it or wait before a new attempt")


def recover_attempt(butler, attempt_dir: Path | str, *, run_child: RunChild = process.run,
                    env: Mapping[str, str] | None = None, rename_retryable: bool = True) -> StepOutcome:
    """Finish an attempt whose child was killed (or whose daemon died): for bps, ingest
    whatever its jobs wrote (`butler aggregate-graph`) unless the final job did it; then
    judge, rename retryable logs and put the RUN in the chain. Safe to call twice.
    Call it before starting the next attempt of the same step, so no finished quantum is
    computed twice and no output is left unregistered. Raises RunnerError while the
    attempt's child still runs on this host."""
    attempt_dir = Path(attempt_dir)
    record = json.loads((attempt_dir / "attempt.json").read_text())
    prev = record.get("outcome")
    if record.get("state") == "done" and prev:
        evidence = prev.get("evidence") or {}
        if not evidence.get("unregistered") and (evidence.get("recovery") or (
                not prev.get("killed") and prev.get("status") != "incomplete")):
            return _outcome_from_json(prev)  # already final
    if "run" not in record or record.get("run") is None:
        return _outcome_from_json(record.get("outcome", {}))
    _refuse_beside_child(attempt_dir, record)
    record = {**record, "attempt_dir": str(attempt_dir)}
    outcome = StepOutcome(status="incomplete", parent=record["parent"], pipeline=record["pipeline"],
                          step=record.get("step"), mode=record["mode"], run=record["run"],
                          attempt_dir=str(attempt_dir), expected=dict(record["expected"]))
    t0 = time.perf_counter()
    _finish(butler, outcome, record, run_child=run_child, env=venv_env(env), rename_retryable=rename_retryable,
            recover=True)
    outcome.evidence["recovery"] = True
    outcome.seconds = time.perf_counter() - t0
    _write_json(attempt_dir / "attempt.json", {**record, "state": "done", "outcome": outcome.to_json()})
    return outcome


def _outcome_from_json(d: Mapping) -> StepOutcome:
    fields = {k: d[k] for k in ("status", "parent", "pipeline", "step", "mode") if k in d}
    out = StepOutcome(**{"status": "error", "parent": "", "pipeline": "", "step": None, "mode": "", **fields})
    for k in ("run", "attempt_dir", "expected", "succeeded", "failed", "blocked", "retryable", "renamed_logs",
              "commands", "returncodes", "killed", "final_job_ok", "recovered", "error", "error_kind",
              "seconds", "evidence"):
        if k in d:
            setattr(out, k, d[k])
    out.failures = [FailedQuantum(**f) for f in d.get("failures", [])]
    return out
