"""Where actions run: a Parsl DataFlowKernel built from the `executor` config section.

Threads in the daemon by default (actions mostly wait on child processes); a
HighThroughputExecutor on a LocalProvider or SlurmProvider when a site outgrows one
machine. Every action is wrapped so that its future never raises: the result is a plain,
picklable description of what happened, which the engine records.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any

from autoproc import actions, logs, process
from autoproc.config import ExecutorConfig


def _with_timeouts(ctx: actions.ActionContext, reason: str) -> str:
    """A failure after a child hit its deadline says so, whatever the action made of it
    (it may only have seen a non-zero exit status)."""
    if ctx.timed_out and "timed out" not in reason:
        return f"{reason} ({'; '.join(ctx.timed_out)})"
    return reason


def _unexpected(ctx: actions.ActionContext, err: Exception) -> dict[str, Any]:
    tb = traceback.format_exc(limit=8)
    return {"kind": "fail", "reason": _with_timeouts(ctx, f"{type(err).__name__}: {err}"),
            "evidence": {"traceback": tb}}


def perform(fn: Callable[[actions.ActionContext], actions.Outcome], ctx: actions.ActionContext) -> dict[str, Any]:
    """Run one action and describe its result as data (the engine's only input from it)."""
    try:
        with logs.attempt_log(ctx.workdir / "action.log"):
            outcome = fn(ctx)
    except actions.Retry as err:
        return {"kind": "retry", "reason": _with_timeouts(ctx, err.reason), "evidence": err.evidence,
                "adjust": err.adjust}
    except actions.Wait as err:
        return {"kind": "wait", "reason": err.reason, "evidence": err.evidence, "retry_after": err.retry_after,
                "problem": err.problem}
    except actions.Hold as err:
        return {"kind": "hold", "reason": err.reason, "evidence": err.evidence}
    except actions.Fail as err:
        return {"kind": "fail", "reason": _with_timeouts(ctx, err.reason), "evidence": err.evidence}
    except OSError as err:
        if err.errno in process.NO_SPACE_ERRNOS:
            # The disk is full (or a file-size limit was hit): the environment's fault, not
            # the step's. Wait for space (no retry budget spent); the engine records a problem.
            return {"kind": "wait", "problem": "no_space", "retry_after": ctx.config.space_retry_seconds,
                    "reason": _with_timeouts(ctx, f"no space: {err}"), "evidence": {}}
        return _unexpected(ctx, err)
    except Exception as err:  # an action's bug or an unforeseen failure: needs a person
        return _unexpected(ctx, err)
    if not isinstance(outcome, actions.Outcome):
        return {"kind": "fail", "reason": f"action returned {type(outcome).__name__}, not an Outcome", "evidence": {}}
    return {"kind": "outcome", **asdict(outcome)}


def build_parsl_config(cfg: ExecutorConfig, run_dir: Path):
    """The Parsl Config for `cfg` (building it starts nothing)."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor

    if cfg.kind == "threads":
        executor = ThreadPoolExecutor(label="actions", max_threads=cfg.max_workers)
    else:
        p = cfg.provider
        if p.kind == "slurm":
            from parsl.providers import SlurmProvider

            provider = SlurmProvider(
                partition=p.partition, account=p.account, nodes_per_block=p.nodes_per_block,
                cores_per_node=p.cores_per_node, mem_per_node=p.mem_per_node, walltime=p.walltime,
                init_blocks=p.init_blocks, min_blocks=p.min_blocks, max_blocks=p.max_blocks,
                worker_init=p.worker_init)
        else:
            from parsl.providers import LocalProvider

            provider = LocalProvider(init_blocks=p.init_blocks or 1, min_blocks=p.min_blocks,
                                     max_blocks=p.max_blocks, worker_init=p.worker_init)
        executor = HighThroughputExecutor(label="actions", provider=provider, max_workers_per_node=cfg.max_workers,
                                          heartbeat_period=cfg.heartbeat_seconds,
                                          heartbeat_threshold=4 * cfg.heartbeat_seconds)
    return Config(executors=[executor], run_dir=str(run_dir), retries=0,
                  strategy="none" if cfg.kind == "threads" else "simple", initialize_logging=False,
                  **no_memoization())


def no_memoization() -> dict[str, Any]:
    """Config arguments that turn Parsl's app cache off, for the installed parsl: an action
    must run every time it is submitted. parsl 2025.12.8 replaced `Config(app_cache=…)` by
    a pluggable memoizer."""
    import inspect

    from parsl.config import Config

    if "memoizer" in inspect.signature(Config).parameters:
        from parsl.dataflow.memoization import BasicMemoizer

        return {"memoizer": BasicMemoizer(memoize=False)}
    return {"app_cache": False}


def _venv_bin_on_path() -> None:
    """Parsl starts `interchange.py` and `process_worker_pool.py` by name, and stages start
    `pipetask`/`bps`: all live beside our interpreter, which systemd may not have on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if bin_dir not in path:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *path])


class Executor:
    """A started Parsl DataFlowKernel running `perform` for the engine."""

    def __init__(self, cfg: ExecutorConfig, run_dir: Path):
        from parsl.app.app import python_app
        from parsl.dataflow.dflow import DataFlowKernel

        run_dir.mkdir(parents=True, exist_ok=True)
        _venv_bin_on_path()
        self.dfk = DataFlowKernel(build_parsl_config(cfg, run_dir))
        self._app = python_app(perform, data_flow_kernel=self.dfk, executors=["actions"])

    def submit(self, fn: Callable[[actions.ActionContext], actions.Outcome], ctx: actions.ActionContext) -> Future:
        return self._app(fn, ctx)

    def shutdown(self) -> None:
        self.dfk.cleanup()
