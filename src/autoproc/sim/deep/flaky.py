"""`FlakyTestPipelineTask`: a `DynamicTestPipelineTask` whose failures can be switched on and off
without changing its config, so ``--extend-run`` and ``bps restart`` can recover (docs/DEEP.md#pipelines).

Every task of the mock DEEP pipelines uses this class; with nothing switched on it behaves exactly like
`DynamicTestPipelineTask`. Two switches:

1. ``config.fail_marker`` (a path): the configured ``fail_condition`` / ``fail_exception`` apply only
   while that file exists (needs a ``-C label:file.py`` config override).
2. Environment variable ``AUTOPROC_SIM_FAIL_DIR`` (no config change at all): while a file
   ``$AUTOPROC_SIM_FAIL_DIR/<task label>.fail`` exists, quanta of that task fail. Line 1 of the file is
   a Butler where-expression on the quantum data ID (empty = every quantum), line 2 an optional
   exception type (default ``builtins.RuntimeError``; ``builtins.MemoryError`` makes the failure look
   retryable to the DEEP retries.py regexes; ``autoproc.sim.deep.flaky.DiskFull`` is what a write to a
   full disk raises; ``die-after-outputs`` makes the process exit at once after the quantum wrote
   its outputs and before its metadata, as a kill at that moment would). The variable is inherited by ``pipetask`` and by bps job
   subprocesses, so a test can flip failures on and off between attempts.
   ``$AUTOPROC_SIM_FAIL_DIR/<task label>.sleep`` (a number of seconds) makes each quantum of that
   task sleep that long first: a slow quantum, so a test can act while a step runs (`slow_down`).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

from lsst.pex.config import Field
from lsst.pipe.base.tests.mocks import (
    DataIdMatch,
    DynamicTestPipelineTask,
    DynamicTestPipelineTaskConfig,
)
from lsst.utils import doImportType

__all__ = ["DIE_AFTER_OUTPUTS", "FAIL_DIR_ENV", "DiskFull", "FlakyTestPipelineTask", "FlakyTestPipelineTaskConfig", "set_failure",
           "slow_down"]

FAIL_DIR_ENV = "AUTOPROC_SIM_FAIL_DIR"
DIE_AFTER_OUTPUTS = "die-after-outputs"


class DiskFull(OSError):
    """What a quantum's write to a full disk raises: `[Errno 28] No space left on device: '<what>'`."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC), message)


class FlakyTestPipelineTaskConfig(DynamicTestPipelineTaskConfig):
    fail_marker = Field[str](doc="fail_condition applies only while this file exists ('' = always).",
                             dtype=str, default="")


class FlakyTestPipelineTask(DynamicTestPipelineTask):
    ConfigClass = FlakyTestPipelineTaskConfig
    config: FlakyTestPipelineTaskConfig
    _DefaultName = "flakyTest"

    def _env_switch(self, kind: str) -> str | None:
        """The text of ``$AUTOPROC_SIM_FAIL_DIR/<label>.<kind>``, None while it is not there."""
        fail_dir = os.environ.get(FAIL_DIR_ENV)
        if not fail_dir:
            return None
        try:
            return (Path(fail_dir) / f"{self.getName()}.{kind}").read_text()
        except OSError:
            return None

    def _env_failure(self, data_id: Any) -> type[BaseException] | str | None:
        if (text := self._env_switch("fail")) is None:
            return None
        lines = text.splitlines()
        expr = lines[0].strip() if lines else ""
        exc_name = lines[1].strip() if len(lines) > 1 and lines[1].strip() else "builtins.RuntimeError"
        if expr and not DataIdMatch(expr).match(data_id):
            return None
        return exc_name if exc_name == DIE_AFTER_OUTPUTS else doImportType(exc_name)

    def _env_sleep(self) -> float:
        try:
            return float(self._env_switch("sleep") or 0.0)
        except ValueError:
            return 0.0

    def runQuantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:
        if (seconds := self._env_sleep()) > 0:
            time.sleep(seconds)
        data_id = butlerQC.quantum.dataId
        exc = self._env_failure(data_id)
        if isinstance(exc, str):  # DIE_AFTER_OUTPUTS, the one name that is not an exception
            self._run_quantum(butlerQC, inputRefs, outputRefs)  # the outputs are written...
            os._exit(137)  # ...and the process dies before the task's metadata is
        if exc is not None:
            raise exc(f"Simulated failure: task={self.getName()} dataId={data_id} "
                      f"(switched on by ${FAIL_DIR_ENV}/{self.getName()}.fail)")
        return self._run_quantum(butlerQC, inputRefs, outputRefs)

    def _run_quantum(self, butlerQC: Any, inputRefs: Any, outputRefs: Any) -> None:
        if self.config.fail_marker and not os.path.exists(self.config.fail_marker):
            saved, self.data_id_match = self.data_id_match, None
            try:
                return super().runQuantum(butlerQC, inputRefs, outputRefs)
            finally:
                self.data_id_match = saved
        return super().runQuantum(butlerQC, inputRefs, outputRefs)


def _set_switch(fail_dir: str | os.PathLike[str], label: str, kind: str, text: str) -> Path:
    path = Path(fail_dir) / f"{label}.{kind}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def slow_down(fail_dir: str | os.PathLike[str], label: str, seconds: float) -> Path:
    """Make every quantum of ``label`` sleep ``seconds`` first; delete the file to stop."""
    return _set_switch(fail_dir, label, "sleep", f"{seconds}\n")


def set_failure(fail_dir: str | os.PathLike[str], label: str, condition: str = "",
                exception: str = "builtins.RuntimeError") -> Path:
    """Switch on failures of ``label`` (for quanta matching ``condition``); delete the file to stop."""
    return _set_switch(fail_dir, label, "fail", f"{condition}\n{exception}\n")
