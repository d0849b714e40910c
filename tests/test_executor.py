"""Actions run through Parsl: threads by default, a HighThroughputExecutor from config."""

import os
import threading

import pytest

from autoproc.config import ExecutorConfig
from autoproc.engine import Engine
from autoproc.executor import build_parsl_config
from autoproc.store import Store
from conftest import TESTS, wait_for


def test_threads_by_default(tmp_path):
    cfg = build_parsl_config(ExecutorConfig(), tmp_path)
    (executor,) = cfg.executors
    assert type(executor).__name__ == "ThreadPoolExecutor" and executor.max_threads == 4


def test_htex_on_slurm_is_built_from_config(tmp_path):
    cfg = build_parsl_config(ExecutorConfig.model_validate({
        "kind": "htex", "max_workers": 8,
        "provider": {"kind": "slurm", "partition": "compute-bigmem", "account": "astro", "max_blocks": 4,
                     "walltime": "04:00:00", "worker_init": "source /opt/setup.sh"}}), tmp_path)
    (executor,) = cfg.executors
    assert type(executor).__name__ == "HighThroughputExecutor"
    provider = executor.provider
    assert type(provider).__name__ == "SlurmProvider"
    assert (provider.partition, provider.account, provider.max_blocks, provider.walltime) == (
        "compute-bigmem", "astro", 4, "04:00:00")
    assert provider.worker_init.strip() == "source /opt/setup.sh"


@pytest.mark.slow
def test_actions_run_on_a_local_htex(write_config, tmp_path, monkeypatch):
    # HTEX workers are separate processes: they import the test plugin from PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config, _ = write_config(
        executor={"kind": "htex", "max_workers": 2, "provider": {"kind": "local"}},
        watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "mode": "inotify", "quiet_seconds": 0.2}])
    engine = Engine(config)
    engine.start()
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    try:
        (inbox / "a-1.w").write_text("ok")
        (inbox / "b-1.w").write_text("flaky")
        view = Store(config.db)  # the test thread's own connection
        wait_for(lambda: {s.key: s.state for s in view.subjects("widget")} == {"a": "done", "b": "done"},
                 timeout=120, what="widgets done on HTEX")
        pids = {a["pid"] for a in view.attempts() if a["pid"]}
        assert pids  # read from the child.json files the HTEX worker wrote
    finally:
        engine.stop()
        thread.join(10)
        engine.shutdown()
