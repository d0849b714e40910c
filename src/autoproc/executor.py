"""Where actions run: a Parsl DataFlowKernel built from the `executor` config section.

Threads in the daemon by default (actions mostly wait on child processes); a
HighThroughputExecutor on a LocalProvider or SlurmProvider when a site outgrows one
machine. Every action is wrapped so that its future never raises: the result is a plain,
picklable description of what happened, which the engine records.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future
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


def _unexpected(ctx: actions.ActionContext, err: Exception) -> actions.ActionResult:
    tb = traceback.format_exc(limit=8)
    return actions.ActionResult(actions.ResultKind.FAIL, _with_timeouts(ctx, f"{type(err).__name__}: {err}"),
                                {"traceback": tb})


def ran_on() -> dict[str, str]:
    """Where this process runs: the host, and the Slurm job when inside one (an HTEX block)."""
    where = {"host": socket.gethostname()}
    if os.environ.get("SLURM_JOB_ID"):
        where["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    return where


def perform(fn: Callable[[actions.ActionContext], actions.Outcome],
            ctx: actions.ActionContext) -> actions.ActionResult:
    """Run one action and describe its result as data (the engine's only input from it),
    with where it ran (`ran_on`)."""
    return dataclasses.replace(_perform(fn, ctx), ran_on=ran_on())


def _perform(fn: Callable[[actions.ActionContext], actions.Outcome],
             ctx: actions.ActionContext) -> actions.ActionResult:
    try:
        with logs.attempt_log(ctx.workdir / "action.log"):
            outcome = fn(ctx)
    except (actions.Retry, actions.Fail) as err:
        return actions.ActionResult.of_error(err, _with_timeouts(ctx, err.reason))
    except (actions.Wait, actions.Hold) as err:
        return actions.ActionResult.of_error(err)
    except OSError as err:
        if err.errno in process.NO_SPACE_ERRNOS:
            # The disk is full (or a file-size limit was hit): the environment's fault, not
            # the step's. Wait for space (no retry budget spent); the engine records a problem.
            return actions.ActionResult(actions.ResultKind.WAIT, _with_timeouts(ctx, f"no space: {err}"),
                                        problem="no_space", retry_after=ctx.config.space_retry_seconds)
        return _unexpected(ctx, err)
    except Exception as err:  # an action's bug or an unforeseen failure: needs a person
        return _unexpected(ctx, err)
    if not isinstance(outcome, actions.Outcome):
        return actions.ActionResult(actions.ResultKind.FAIL,
                                    f"action returned {type(outcome).__name__}, not an Outcome")
    return actions.ActionResult.of_outcome(outcome)


def _provider(cfg: ExecutorConfig, slurm_comment: str | None):
    p = cfg.provider
    if p.kind == "slurm":
        from parsl.launchers import SingleNodeLauncher, SrunLauncher
        from parsl.providers import SlurmProvider

        # The comment marks the daemon's blocks as its own: a restart after kill -9 finds and
        # cancels them (autoproc.slurm), and never touches anyone else's jobs.
        options = [*p.scheduler_options, *([f"#SBATCH --comment={slurm_comment}"] if slurm_comment else [])]
        return SlurmProvider(
            partition=p.partition, account=p.account, qos=p.qos, constraint=p.constraint,
            nodes_per_block=p.nodes_per_block, cores_per_node=p.cores_per_node, mem_per_node=p.mem_per_node,
            exclusive=p.exclusive, walltime=p.walltime, init_blocks=p.init_blocks, min_blocks=p.min_blocks,
            max_blocks=p.max_blocks, worker_init=p.worker_init, scheduler_options="\n".join(options),
            launcher=SrunLauncher() if p.launcher == "srun" else SingleNodeLauncher())
    from parsl.providers import LocalProvider

    return LocalProvider(init_blocks=p.init_blocks or 1, min_blocks=p.min_blocks,
                         max_blocks=p.max_blocks, worker_init=p.worker_init)


def build_parsl_config(cfg: ExecutorConfig, run_dir: Path, *, slurm_comment: str | None = None):
    """The Parsl Config for `cfg` (building it starts nothing). `slurm_comment` tags the
    Slurm blocks (`--comment`) so they can be found again."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor, ThreadPoolExecutor
    from parsl.executors.base import ParslExecutor

    executor: ParslExecutor
    if cfg.kind == "threads":
        executor = ThreadPoolExecutor(label="actions", max_threads=cfg.max_workers)
    else:
        executor = HighThroughputExecutor(label="actions", provider=_provider(cfg, slurm_comment),
                                          max_workers_per_node=cfg.max_workers,
                                          heartbeat_period=cfg.heartbeat_seconds,
                                          heartbeat_threshold=4 * cfg.heartbeat_seconds,
                                          address=cfg.address or None)
    return Config(executors=[executor], run_dir=str(run_dir), retries=0,
                  strategy="none" if cfg.kind == "threads" else "simple", strategy_period=cfg.strategy_period,
                  initialize_logging=False, **no_memoization())


def no_memoization() -> dict[str, Any]:
    """Config arguments that turn Parsl's app cache off, for the installed parsl: an action
    must run every time it is submitted. parsl 2025.12.8 replaced `Config(app_cache=…)` by
    a pluggable memoizer."""
    import inspect

    from parsl.config import Config

    if "memoizer" in inspect.signature(Config).parameters:
        from parsl.dataflow.memoization import BasicMemoizer  # type: ignore[attr-defined, unused-ignore]

        return {"memoizer": BasicMemoizer(memoize=False)}
    return {"app_cache": False}


def _venv_bin_on_path() -> None:
    """Parsl starts `interchange.py` and `process_worker_pool.py` by name, and stages start
    `pipetask`/`bps`: all live beside our interpreter, which systemd may not have on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if bin_dir not in path:
        os.environ["PATH"] = os.pathsep.join([bin_dir, *path])


def stale_interchanges(run_dir: Path) -> list[int]:
    """HTEX interchanges of an earlier daemon of this store: a driver killed without
    `dfk.cleanup()` leaves its interchange running under init, still holding its log under
    `run_dir` open (only one daemon runs per store: the store's lock)."""
    root = str(run_dir.resolve()) + os.sep
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"parsl: HTEX interchange"):
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith(root) for fd in fds):
                found.append(int(pid))
        except OSError:
            continue  # gone, or not ours to look at
    return found


def _stop_pid(pid: int, grace: float = 2.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while time.monotonic() < end:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
            if state == "Z":  # exited; init reaps it
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError):
        pass  # already gone


class Executor:
    """A started Parsl DataFlowKernel running `perform` for the engine."""

    def __init__(self, cfg: ExecutorConfig, run_dir: Path, *, slurm_comment: str | None = None):
        from parsl.app.app import python_app
        from parsl.dataflow.dflow import DataFlowKernel

        run_dir.mkdir(parents=True, exist_ok=True)
        _venv_bin_on_path()
        if cfg.kind == "htex":
            # Workers of a killed daemon's blocks would still connect to it; none of it may live on.
            for pid in stale_interchanges(run_dir):
                _stop_pid(pid)
        self.dfk = DataFlowKernel(build_parsl_config(cfg, run_dir, slurm_comment=slurm_comment))
        self._app = python_app(perform, data_flow_kernel=self.dfk, executors=["actions"])

    def submit(self, fn: Callable[[actions.ActionContext], actions.Outcome],
               ctx: actions.ActionContext) -> Future[actions.ActionResult]:
        return self._app(fn, ctx)

    def shutdown(self) -> None:
        self.dfk.cleanup()
