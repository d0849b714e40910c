"""The in-process "anything left to do?" check, and the graph the runner executes.

Both build the quantum graph for `pipeline#step` with inputs = the chain and
skip-existing-in = the chain, with the skip-failures rule: a quantum whose `<task>_log`
exists without `<task>_metadata` counts as *failed*, not as work to redo (the DEEP
scripts' SkipFailuresQuantumGraphBuilder). pipe_base has no public hook for that rule,
so the builder overrides the private per-quantum skip hook, whichever of its two
generations the installed pipe_base has (`skip_rule_api`), and refuses to run if it
finds neither: silently running without the rule would redo every failed quantum.

Graphs are built with the builder's public `finish()`; the check asks for no datastore
records, so it costs a few hundred milliseconds in a process that has the middleware
imported, against 2-3 s for a `pipetask qgraph` child.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autoproc.deep.collections import check_collection
from autoproc.deep.collections import check_step as _check_step_name


class StepCheckError(RuntimeError):
    """The graph could not be built: typically a missing input or prerequisite
    (a calibration not certified yet). The daemon waits on these; `kind` says which."""

    def __init__(self, message: str, kind: str = "error"):
        super().__init__(message)
        self.kind = kind  # "missing_input" | "error"


@dataclass
class StepStatus:
    """What the Butler says about one step of one chain."""

    pipeline: str
    step: str | None
    chain: str
    where: str
    to_run: dict[str, int] = field(default_factory=dict)  # task -> quanta left to run
    succeeded: dict[str, int] = field(default_factory=dict)  # task -> quanta with _metadata
    failed: dict[str, list[dict]] = field(default_factory=dict)  # task -> data IDs with _log, no _metadata
    blocked: dict[str, int] = field(default_factory=dict)  # task -> quanta dropped for lack of inputs
    skip_failures: bool = True
    seconds: float = 0.0
    mock_storage_classes: bool = False  # outputs use `_mock_*` storage classes (mock pipelines)

    @property
    def n_to_run(self) -> int:
        return sum(self.to_run.values())

    @property
    def n_succeeded(self) -> int:
        return sum(self.succeeded.values())

    @property
    def n_failed(self) -> int:
        return sum(len(v) for v in self.failed.values())

    @property
    def n_blocked(self) -> int:
        return sum(self.blocked.values())

    @property
    def empty(self) -> bool:
        """Nothing left to run: the step is done (possibly with failures, see n_failed)."""
        return self.n_to_run == 0

    @property
    def no_data(self) -> bool:
        """The data query matched nothing at all (no quantum ever existed)."""
        return self.n_to_run == 0 and self.n_succeeded == 0 and self.n_failed == 0 and self.n_blocked == 0

    def to_json(self) -> dict:
        return {
            "pipeline": self.pipeline, "step": self.step, "chain": self.chain, "where": self.where,
            "to_run": dict(self.to_run), "succeeded": dict(self.succeeded),
            "failed": {k: list(v) for k, v in self.failed.items()}, "blocked": dict(self.blocked),
            "empty": self.empty, "no_data": self.no_data, "skip_failures": self.skip_failures,
            "seconds": round(self.seconds, 3),
        }


def _ensure_mocks() -> None:
    # Mock pipelines register `_mock_*` storage classes; resolving their dataset types
    # needs the factory patch this import installs. Harmless for real pipelines.
    try:
        import lsst.pipe.base.tests.mocks  # noqa: F401
    except ImportError:  # pragma: no cover
        pass


class SkipRuleUnavailable(RuntimeError):
    """The installed pipe_base offers neither hook the skip-failures rule needs.

    Running without the rule would silently re-run every failed quantum, so autoproc
    refuses to start instead (the daemon and `config check` report this)."""


def _skip_hook_api(builder_base: type) -> str:
    """Which per-quantum skip hook `builder_base` has: pipe_base split the old single
    hook in two (w.2026.26); both are private, so we detect rather than assume."""
    if hasattr(builder_base, "_compute_skip_decision") and hasattr(builder_base, "_apply_skip_decision"):
        return "decision"
    if hasattr(builder_base, "_skip_quantum_if_metadata_exists"):
        return "single"
    import lsst.pipe.base

    raise SkipRuleUnavailable(
        f"lsst.pipe.base {getattr(lsst.pipe.base, '__version__', '?')} has neither "
        "_compute_skip_decision/_apply_skip_decision nor _skip_quantum_if_metadata_exists on "
        f"{builder_base.__name__}: autoproc cannot apply its skip-failures rule (a quantum with a log and "
        "no metadata is failed, not work to redo) and will not run without it. Install a supported "
        "lsst-pipe-base (see README, 'Supported environments').")


def skip_rule_api() -> str:
    """The skip hook in force with the installed middleware; raises SkipRuleUnavailable."""
    from lsst.pipe.base.all_dimensions_quantum_graph_builder import AllDimensionsQuantumGraphBuilder

    return _skip_hook_api(AllDimensionsQuantumGraphBuilder)


def _builder_class():
    from lsst.pipe.base.all_dimensions_quantum_graph_builder import AllDimensionsQuantumGraphBuilder
    from lsst.pipe.base.quantum_graph_skeleton import DatasetKey

    api = _skip_hook_api(AllDimensionsQuantumGraphBuilder)

    # pipe_base marks the builder final; its skip hooks are what this subclass exists for (see
    # `_skip_hook_api`: which hook the installed version has is checked, not assumed).
    class SkipFailuresQuantumGraphBuilder(AllDimensionsQuantumGraphBuilder):  # type: ignore[misc]
        """Skip quanta whose metadata exists (base rule) and, with skip_failures, also
        those whose log exists (they were tried and failed). Records both per task."""

        def __init__(self, *args: Any, skip_failures: bool = True, **kwargs: Any):
            self.skip_failures = skip_failures
            self.initial: dict[str, int] = defaultdict(int)
            self.prev_succeeded: dict[str, int] = defaultdict(int)
            self.prev_failed: dict[str, list[dict]] = defaultdict(list)
            super().__init__(*args, **kwargs)

        def process_subgraph(self, subgraph):
            skeleton = super().process_subgraph(subgraph)
            for label in subgraph.tasks:
                try:
                    self.initial[label] += len(skeleton.get_quanta(label))
                except KeyError:
                    pass
            return skeleton

        def _failed_log(self, task_node, quantum_key, skeleton):
            """The log of an earlier failed try of this quantum, if the rule applies."""
            if not self.skip_failures:
                return None
            log_key = DatasetKey(task_node.log_output.parent_dataset_type_name, quantum_key.data_id_values)
            return skeleton.get_output_for_skip(log_key)

        def _record_skip(self, task_node, quantum_key, skeleton, succeeded: bool) -> None:
            if succeeded:
                self.prev_succeeded[task_node.label] += 1
                return
            log_ref = self._failed_log(task_node, quantum_key, skeleton)
            data_id = skeleton[quantum_key]["data_id"]
            self.prev_failed[task_node.label].append(
                {"data_id": dict(data_id.required.items()), "log_run": log_ref.run, "log_id": str(log_ref.id)})

        if api == "decision":
            def _compute_skip_decision(self, task_node, quantum_key, skeleton) -> bool:
                done = super()._compute_skip_decision(  # type: ignore[misc, unused-ignore]
                    task_node, quantum_key, skeleton)
                return done or self._failed_log(task_node, quantum_key, skeleton) is not None

            def _apply_skip_decision(self, task_node, quantum_key, skeleton) -> None:
                # Recorded here, not in the decision: decisions may be revised before
                # they are applied (retained-output "unskipping").
                succeeded = super()._compute_skip_decision(  # type: ignore[misc, unused-ignore]
                    task_node, quantum_key, skeleton)
                self._record_skip(task_node, quantum_key, skeleton, succeeded)
                super()._apply_skip_decision(task_node, quantum_key, skeleton)  # type: ignore[misc, unused-ignore]
        else:
            def _skip_quantum_if_metadata_exists(self, task_node, quantum_key, skeleton) -> bool:
                # Each hook exists in one pipe_base generation; mypy checks against both (make test).
                if super()._skip_quantum_if_metadata_exists(  # type: ignore[misc, unused-ignore]
                        task_node, quantum_key, skeleton):
                    self._record_skip(task_node, quantum_key, skeleton, succeeded=True)
                    return True
                if self._failed_log(task_node, quantum_key, skeleton) is None:
                    return False
                self._record_skip(task_node, quantum_key, skeleton, succeeded=False)
                # What the base class does for a quantum it skips, keyed on the log.
                for output_key in list(skeleton.iter_outputs_of(quantum_key)):
                    skeleton.discard_output_in_the_way(output_key)
                    if (output_ref := skeleton.get_output_for_skip(output_key)) is not None:
                        skeleton.set_dataset_ref(output_ref, output_key)
                    else:
                        skeleton.remove_dataset_nodes([output_key])
                return True

    return SkipFailuresQuantumGraphBuilder


def load_pipeline_graph(pipeline: str | Path, step: str | None = None,
                        config_files: Mapping[str, Sequence[str] | str] | None = None):
    """The pipeline graph of `pipeline[#step]` (a `#fragment` in `pipeline` wins), with
    per-task config override files (`pipetask -C label:file`) applied."""
    from lsst.pipe.base import Pipeline

    pipe = Pipeline.from_uri(join_pipeline(*split_pipeline(pipeline, step)))
    for label, files in (config_files or {}).items():
        for f in [files] if isinstance(files, str | Path) else files:
            pipe.addConfigFile(label, str(f))
    return pipe.to_graph()


def split_pipeline(pipeline: str | Path, step: str | None) -> tuple[str, str | None]:
    """(pipeline file, step): a `#fragment` in `pipeline` wins over `step`; the step's name checked."""
    path, _, frag = str(pipeline).partition("#")
    step = frag or step
    if step:
        _check_step_name(step)
    return path, step


def join_pipeline(path: str, step: str | None) -> str:
    """`path#step` (the pipeline URI pipetask and bps take), or `path` for the whole pipeline."""
    return f"{path}#{step}" if step else path


def make_builder(butler, pipeline: str | Path, step: str | None, chain: str, *, output_run: str,
                 where: str = "", inputs: list[str] | None = None, skip_failures: bool = True,
                 config_files: Mapping[str, Sequence[str] | str] | None = None):
    """A SkipFailuresQuantumGraphBuilder for `pipeline#step` over `chain`."""
    from lsst.daf.butler import MissingCollectionError

    _ensure_mocks()
    check_collection(chain)
    path, step = split_pipeline(pipeline, step)
    graph = load_pipeline_graph(path, step, config_files)
    cls = _builder_class()
    try:
        return cls(graph, butler, where=where or "", input_collections=list(inputs or [chain]),
                   output_run=output_run, skip_existing_in=[chain], skip_failures=skip_failures)
    except MissingCollectionError as err:
        raise StepCheckError(str(err), "missing_input") from err


def _status_from(builder, components, pipeline, step, chain, where, skip_failures, t0) -> StepStatus:
    remaining: dict[str, int] = defaultdict(int)
    for quantum in components.quantum_datasets.values():
        remaining[quantum.task_label] += 1
    pipeline_graph = components.pipeline_graph
    st = StepStatus(pipeline=str(pipeline), step=step, chain=chain, where=where, skip_failures=skip_failures)
    for label in pipeline_graph.tasks:
        st.to_run[label] = remaining.get(label, 0)
        st.succeeded[label] = builder.prev_succeeded.get(label, 0)
        st.failed[label] = list(builder.prev_failed.get(label, []))
        st.blocked[label] = max(0, builder.initial.get(label, 0) - st.to_run[label] - st.succeeded[label]
                                - len(st.failed[label]))
    st.mock_storage_classes = any(
        (getattr(node, "storage_class_name", None) or "").startswith("_mock_")
        for node in pipeline_graph.dataset_types.values()
    )
    st.seconds = time.perf_counter() - t0
    return st


def _wrap_build_errors(fn):
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError
    from lsst.pipe.base.quantum_graph_builder import (
        InitInputMissingError,
        PrerequisiteMissingError,
        QuantumGraphBuilderError,
    )

    try:
        return fn()
    except (PrerequisiteMissingError, InitInputMissingError, FileNotFoundError, MissingCollectionError,
            MissingDatasetTypeError) as err:
        raise StepCheckError(f"{type(err).__name__}: {err}", "missing_input") from err
    except QuantumGraphBuilderError as err:
        kind = "missing_input" if "No datasets for overall-input" in str(err) else "error"
        raise StepCheckError(f"{type(err).__name__}: {err}", kind) from err


def check_step(butler, pipeline: str | Path, step: str | None, chain: str, where: str = "",
               skip_failures: bool = True, inputs: list[str] | None = None,
               config_files: Mapping[str, Sequence[str] | str] | None = None) -> StepStatus:
    """Anything left to do for `pipeline#step` in `chain`? (qgraph.py --skip-existing-in
    chain [--skip-failures], in-process.) `StepStatus.empty` means the step is done."""
    t0 = time.perf_counter()
    path, step = split_pipeline(pipeline, step)
    dummy = f"{chain}/_autoproc_check"
    builder = make_builder(butler, path, step, chain, output_run=dummy, where=where, inputs=inputs,
                           skip_failures=skip_failures, config_files=config_files)
    components = _wrap_build_errors(lambda: builder.finish(attach_datastore_records=False))
    return _status_from(builder, components, path, step, chain, where, skip_failures, t0)


def build_graph_file(butler, pipeline: str | Path, step: str | None, chain: str, output_run: str,
                     path: Path | str, where: str = "", skip_failures: bool = True,
                     inputs: list[str] | None = None, metadata: dict | None = None,
                     config_files: Mapping[str, Sequence[str] | str] | None = None) -> StepStatus:
    """Build the execution graph for a new RUN (with datastore records, as bps and
    `pipetask run -g` need) and write it to `path` (`.qg`). Returns the status the
    build saw; when it is empty no file is written."""
    t0 = time.perf_counter()
    ppath, step = split_pipeline(pipeline, step)
    check_collection(output_run)
    builder = make_builder(butler, ppath, step, chain, output_run=output_run, where=where, inputs=inputs,
                           skip_failures=skip_failures, config_files=config_files)
    meta = {"input": list(inputs or [chain]), "output_run": output_run, "skip_existing_in": [chain],
            "data_query": where, "skip_failures": skip_failures, **(metadata or {})}
    components = _wrap_build_errors(
        lambda: builder.finish(output=None, metadata=meta, attach_datastore_records=True))
    st = _status_from(builder, components, ppath, step, chain, where, skip_failures, t0)
    if st.empty:
        return st
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    components.write(str(path))
    st.seconds = time.perf_counter() - t0
    return st
