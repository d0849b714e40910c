"""Actions run through Parsl: threads by default, a HighThroughputExecutor from config."""

import itertools
import json
import os
import signal
import threading
from pathlib import Path

import pytest

from autoproc import actions, process
from autoproc.config import Config, ExecutorConfig
from autoproc.engine import Engine
from autoproc.executor import Executor, build_parsl_config
from autoproc.store import Store, Subject
from conftest import TESTS, ancestors, argv_of, group_gone, wait_for

pytestmark = pytest.mark.middleware


def test_threads_by_default(tmp_path):
    cfg = build_parsl_config(ExecutorConfig(), tmp_path)
    (executor,) = cfg.executors
    assert type(executor).__name__ == "ThreadPoolExecutor" and executor.max_threads == 4


_calls = itertools.count()


def _count_call(ctx) -> actions.Outcome:
    return actions.Outcome("counted", evidence={"call": next(_calls)})


def test_the_same_action_submitted_twice_runs_twice(tmp_path):
    """Parsl's app cache is off with either parsl API (the memoizer since 2025.12.8,
    `app_cache` before): an action for the same context must run again, not be replayed."""
    subject = Subject(id=1, kind="widget", key="a", state="working", version=1, data={}, held=None, entry=1,
                      entered=0.0, created=0.0, updated=0.0)
    ctx = actions.ActionContext(subject=subject, stage="work", attempt_id=1, try_number=1, workdir=tmp_path,
                                config=Config(root=tmp_path / "root"))
    executor = Executor(ExecutorConfig(), tmp_path / "parsl")
    try:
        results = [executor.submit(_count_call, ctx).result(timeout=30) for _ in range(2)]
    finally:
        executor.shutdown()
    assert [r.evidence["call"] for r in results] == [0, 1]


def test_htex_on_slurm_is_built_from_config(tmp_path):
    cfg = build_parsl_config(ExecutorConfig.model_validate({
        "kind": "htex", "max_workers": 8,
        "provider": {"kind": "slurm", "partition": "compute-bigmem", "account": "astro", "max_blocks": 4,
                     "walltime": "04:00:00", "worker_init": "source /opt/setup.sh"}}), tmp_path)
    (executor,) = cfg.executors
    assert type(executor).__name__ == "HighThroughputExecutor"
    assert (executor.heartbeat_period, executor.heartbeat_threshold) == (30, 120)
    provider = executor.provider
    assert type(provider).__name__ == "SlurmProvider"
    assert (provider.partition, provider.account, provider.max_blocks, provider.walltime) == (
        "compute-bigmem", "astro", 4, "04:00:00")
    assert provider.worker_init.strip() == "source /opt/setup.sh"
    assert type(provider.launcher).__name__ == "SingleNodeLauncher" and cfg.strategy_period == 5


def test_every_slurm_site_setting_reaches_the_provider(tmp_path):
    cfg = build_parsl_config(ExecutorConfig.model_validate({
        "kind": "htex", "address": "10.1.2.3", "strategy_period": 1,
        "provider": {"kind": "slurm", "partition": "compute", "account": "astro", "qos": "long",
                     "constraint": "haswell", "nodes_per_block": 2, "cores_per_node": 16, "mem_per_node": 60,
                     "exclusive": False, "walltime": "1-00:00:00", "init_blocks": 1, "min_blocks": 1,
                     "max_blocks": 3, "launcher": "srun", "scheduler_options": ["#SBATCH --mail-type=FAIL"]}}),
        tmp_path, slurm_comment="autoproc-abc:htex")
    (executor,) = cfg.executors
    assert executor.address == "10.1.2.3" and cfg.strategy_period == 1
    p = executor.provider
    assert (p.nodes_per_block, p.cores_per_node, p.mem_per_node, p.exclusive, p.walltime) == (
        2, 16, 60, False, "1-00:00:00")
    assert (p.init_blocks, p.min_blocks, p.max_blocks, type(p.launcher).__name__) == (1, 1, 3, "SrunLauncher")
    lines = p.scheduler_options.splitlines()
    for line in ("#SBATCH --partition=compute", "#SBATCH --account=astro", "#SBATCH --qos=long",
                 "#SBATCH --constraint=haswell", "#SBATCH --mail-type=FAIL", "#SBATCH --comment=autoproc-abc:htex"):
        assert line in lines, lines
    assert "#SBATCH --exclusive" not in lines


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
        pids = {a.pid for a in view.attempts() if a.pid}
        assert pids  # read from the child.json files the HTEX worker wrote
    finally:
        engine.stop()
        thread.join(10)
        engine.shutdown()


# A machine of its own for the lost-worker test: HTEX notices a dead worker only at its
# watchdog's next tick (executor.heartbeat_seconds), so the first try's child must outlive
# that, while the retry is quick. The child (not the action) appends to the ledger when it finishes.
ORPHAN_MACHINE = """
kind: orphan
plugins: [htex_orphan_plugin]
initial: working
states:
  working:
    action: htex_orphan_work
    step: work
    retry: {max_tries: 3, backoff_seconds: 0.05}
  done: {terminal: true}
  failed: {terminal: true, attention: true}
transitions:
  - {trigger: worked, source: working, dest: done}
  - {trigger: fail, source: working, dest: failed}
"""
ORPHAN_PLUGIN = """
import sys
from pathlib import Path
from autoproc.actions import Outcome, Retry, action

CHILD = "import sys, time; time.sleep(float(sys.argv[1])); open(sys.argv[2], 'a').write(sys.argv[3] + chr(10))"

@action()
def htex_orphan_work(ctx):
    seconds = 90 if ctx.try_number == 1 else 0.5
    ledger = Path(ctx.config.root) / "ledger.txt"
    result = ctx.run([sys.executable, "-c", CHILD, str(seconds), str(ledger), f"work try={ctx.try_number}"],
                     name="work")
    if not result.ok:
        raise Retry(f"work child exited {result.returncode}")
    return Outcome("worked")
"""


@pytest.mark.slow
def test_htex_worker_killed_under_an_action_retries_without_its_orphan(write_config, tmp_path, monkeypatch):
    """The HTEX worker running an action is SIGKILLed (as the OOM killer would) while the
    action's child runs: the attempt's future fails (WorkerLost), the subject is retried and
    done, and the child group the dead worker started is killed before the attempt is
    recorded, so it never runs beside the retry."""
    plugins = tmp_path / "plugins"
    machines = tmp_path / "machines"
    plugins.mkdir()
    machines.mkdir()
    (plugins / "htex_orphan_plugin.py").write_text(ORPHAN_PLUGIN)
    (machines / "orphan.yaml").write_text(ORPHAN_MACHINE)
    monkeypatch.syspath_prepend(str(plugins))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(plugins), os.environ.get("PYTHONPATH", "")]))
    config, _ = write_config(machines_dir=str(machines),
                             executor={"kind": "htex", "max_workers": 2, "provider": {"kind": "local"},
                                       "heartbeat_seconds": 2})
    engine = Engine(config)
    engine.start()
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    view = Store(config.db)  # the test thread's own connection
    child: dict = {}
    try:
        subject, _ = view.ensure_subject("orphan", "o", "working", actor="test")
        engine.events.put(lambda e: e.evaluate(subject.id))

        def first_child() -> tuple[dict, dict] | None:
            for a in view.attempts(subject.id):
                path = Path(a.cwd or "/nonexistent") / "work.child.json"
                if path.exists():
                    return a, json.loads(path.read_text())
            return None

        first, child = wait_for(first_child, timeout=120, what="the work child started on an HTEX worker")
        worker = ancestors(child["pid"])[1]
        assert any("process_worker_pool" in " ".join(argv_of(p)) for p in ancestors(worker)), argv_of(worker)
        assert not group_gone(child["pgid"])
        os.kill(worker, signal.SIGKILL)

        ended = wait_for(lambda: (a := view.attempt(first.id)).status != "running" and a,
                         timeout=60, interval=0.02, what="the lost attempt recorded")
        assert ended.status == "failed" and ended.result["kind"] == "retry", ended
        assert "WorkerLost" in ended.result["reason"], ended
        # Recorded (and so retried) only once the dead worker's child group is gone.
        assert group_gone(child["pgid"]), f"the dead worker's child group {child['pgid']} is still running"
        wait_for(lambda: view.subject("orphan", "o").state == "done", timeout=60, what="done after the retry")
        assert [(a.try_number, a.status) for a in view.attempts(subject.id)] == [
            (1, "failed"), (2, "succeeded")]
        assert (config.root / "ledger.txt").read_text().splitlines() == ["work try=2"]
        assert not Path(child["status_file"]).exists()  # the first child never finished
    finally:
        view.close()
        engine.stop()
        thread.join(10)
        engine.shutdown()
        if child:  # whatever happened, no orphan outlives the test
            process.kill_group(child["pgid"], grace=0.5)
