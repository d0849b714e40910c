"""Run one DEEP step's saved quantum graph in one process: `autoproc-step run REPO GRAPH`.

The step's outputs are written through one quantum-backed Butler that serves every quantum
of the graph, and registered in one bulk transfer when the graph is done
(docs/DEEP.md#step-execution). The two CLI ways cost more per quantum: `pipetask run`
writes each dataset through a full Butler (a registry transaction, an fsync, SQL compiled
per put), and `pipetask run-qbb` makes a new quantum-backed Butler per quantum (the
repository's configuration read again, a datastore built). Both are measured in
benchmarks/README.md.

Until the registration, the outputs are files in the datastore that the registry does not
know. A step killed before it ends leaves them so; `autoproc-step register REPO GRAPH`
(the runner's recovery of a killed attempt) registers whatever the graph's quanta wrote.
It can run any number of times: what the registry has already is skipped.

Exit status: 0 when every quantum ran and everything is registered; 1 when a quantum
failed (the outputs of the others, and the failed quanta's logs, are registered first);
`NOT_REGISTERED` (3) when the registration itself failed (the registry unreachable, say):
the outputs are in the datastore and `register` must run before the step is judged; 2 for
bad arguments. The runner judges the step from the Butler, never from this status.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import ButlerConfig, DatasetRef, LimitedButler, Quantum, QuantumBackedButler
from lsst.daf.butler.datastore.record_data import DatastoreRecordData

_LOG = logging.getLogger("autoproc.step")
NOT_REGISTERED = 3


class NotRegistered(RuntimeError):
    """The quanta ran (or some did), but what they wrote could not be registered."""


class _StepButler(QuantumBackedButler):
    """One quantum-backed Butler for every quantum of a graph. The executor closes the
    Butler its factory gives after each quantum; this one stays open (its datastore
    records, in memory, are how later quanta find what earlier ones wrote) until `dispose`."""

    def close(self) -> None:
        pass

    def dispose(self) -> None:
        super().close()


def _step_butler(repo: ButlerConfig, graph: Any, quanta: Sequence[Quantum]) -> _StepButler:
    """The Butler for the whole graph: every quantum's inputs and outputs predicted, the
    datastore records of every input (as the graph's `make_init_qbb` does for init-outputs)."""
    inputs: set[uuid.UUID] = set()
    outputs: set[uuid.UUID] = set()
    for quantum in quanta:
        inputs.update(ref.id for refs in quantum.inputs.values() for ref in refs)
        inputs.update(ref.id for ref in quantum.initInputs.values())
        outputs.update(ref.id for refs in quantum.outputs.values() for ref in refs)
    outputs.update(ref.id for ref in _init_outputs(graph))
    butler = _StepButler.from_predicted(
        config=repo, predicted_inputs=inputs, predicted_outputs=outputs, dimensions=graph.pipeline_graph.universe,
        datastore_records=DatastoreRecordData.merge_mappings(*(q.datastore_records for q in quanta)),
        dataset_types={d.name: d.dataset_type for d in graph.pipeline_graph.dataset_types.values()})
    assert isinstance(butler, _StepButler)  # from_predicted builds `cls`
    return butler


def _init_outputs(graph: Any) -> list[DatasetRef]:
    return [ref for label in graph.pipeline_graph.tasks for ref in graph.get_init_outputs(label).values()]


def _read(graph_file: str) -> tuple[Any, list[Quantum]]:
    from lsst.pipe.base.quantum_graph import PredictedQuantumGraph

    graph = PredictedQuantumGraph.read_execution_quanta(graph_file)
    return graph, list(graph.build_execution_quanta().values())


def run(repo: str, graph_file: str, summary: str | None = None) -> None:
    """Write the graph's init-outputs (configs; no package versions, as `pipetask run
    --no-versions`), execute its quanta in this process, then register everything they
    wrote, also when a quantum failed. Raises what the executor raises for a failed quantum."""
    from lsst.pipe.base.mp_graph_executor import MPGraphExecutor
    from lsst.pipe.base.single_quantum_executor import SingleQuantumExecutor

    graph, quanta = _read(graph_file)
    _LOG.info("Running %d quanta of %s in RUN %s.", len(quanta), graph_file, graph.header.output_run)
    config = ButlerConfig(repo)  # read once, for the quanta's Butler and the registration's
    butler = _step_butler(config, graph, quanta)
    # Every attempt writes a new RUN (runner.py), so no output can exist before it: no
    # per-quantum existence probes.
    executor = MPGraphExecutor(num_proc=1, timeout=sys.maxsize, quantum_executor=SingleQuantumExecutor(
        limited_butler_factory=lambda quantum: butler, assume_no_existing_outputs=True))
    try:
        graph.write_configs(butler)
        graph.write_init_outputs(butler)
        executor.execute(graph)
    finally:
        if summary and (report := executor.getReport()) is not None:
            Path(summary).write_text(report.model_dump_json(exclude_none=True, indent=2))
        try:
            register(config, graph, quanta, butler)
        except Exception as err:
            raise NotRegistered(f"{type(err).__name__}: {err}") from err
        finally:
            butler.dispose()


def register(repo: ButlerConfig, graph: Any, quanta: Sequence[Quantum], butler: LimitedButler) -> int:
    """Register, in one transaction, every output of the graph's quanta (and init-output)
    that `butler` holds and the repository does not (dataset types and the RUN with them);
    the number registered."""
    from lsst.daf.butler import Butler
    from lsst.pipe.base.script.utils import filter_by_existence

    refs = [ref for q in quanta for refs in q.outputs.values() for ref in refs] + _init_outputs(graph)
    with Butler.from_config(repo, writeable=True) as dest:
        todo = filter_by_existence(dest, refs)
        count = len(dest.transfer_from(butler, todo, transfer="auto", register_dataset_types=True)) if todo else 0
    _LOG.info("Registered %d dataset(s) written by %d quanta.", count, len(quanta))
    return count


def register_graph(repo: str, graph_file: str) -> int:
    """`register` for a graph whose run was killed: what its quanta wrote, found in the datastore."""
    graph, quanta = _read(graph_file)
    config = ButlerConfig(repo)
    butler = _step_butler(config, graph, quanta)
    try:
        return register(config, graph, quanta, butler)
    finally:
        butler.dispose()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="autoproc-step", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name, what in (("run", "execute the graph, then register its outputs"),
                       ("register", "register what the graph's quanta wrote (after a killed run)")):
        p = sub.add_parser(name, help=what)
        p.add_argument("repo")
        p.add_argument("graph")
        if name == "run":
            p.add_argument("--summary", help="write the execution report (JSON) here")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from lsst.daf.butler.cli.cliLog import CliLog

    CliLog.initLog(longlog=False)  # the same log lines as `pipetask run` (the runner shows its tail)
    _LOG.setLevel(logging.INFO)
    try:
        if args.command == "run":
            run(args.repo, args.graph, args.summary)
        else:
            register_graph(args.repo, args.graph)
    except NotRegistered as err:
        _LOG.error("%s %s: its outputs are not registered: %s", args.command, args.graph, err)
        return NOT_REGISTERED
    except Exception as err:  # noqa: BLE001 - a console script's last word: what failed, exit 1
        _LOG.exception("%s %s: %s: %s", args.command, args.graph, type(err).__name__, err)
        return NOT_REGISTERED if args.command == "register" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
