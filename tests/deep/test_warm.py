"""The warm step executor (deep/warm.py): a step forked from the warm server gives the same
outputs and the same judging as a fresh `autoproc-step` or `pipetask` child, lives in its own session, and a
grandchild (or the server) killed with SIGKILL mid-step is judged and recovered like a
killed child. Real middleware, real processes and signals."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

pytest.importorskip("lsst.daf.butler")

from steps_support import BIAS_PARENT, fail_config, run_bias_step  # noqa: E402

from autoproc import process  # noqa: E402
from autoproc.config import Config, parse_config  # noqa: E402
from autoproc.deep import quanta as Q  # noqa: E402
from autoproc.deep import runner as R  # noqa: E402
from autoproc.deep import stages, warm  # noqa: E402
from autoproc.sim.deep.flaky import DIE_AFTER_OUTPUTS, FAIL_DIR_ENV, set_failure  # noqa: E402

pytestmark = pytest.mark.middleware

PARENT = BIAS_PARENT


@pytest.fixture(scope="module")
def executor():
    ex = warm.WarmExecutor(R.venv_env())
    yield ex
    ex.close()


def _metadata(b, dtype="cpBiasIsr_metadata"):
    return b.query_datasets(dtype, collections=PARENT, find_first=False, explain=False)


@pytest.mark.parametrize(("quantum_backed", "says"), [(True, "Running 6 quanta"),
                                                      (False, "QuantumGraph contains 6 quanta")])
def test_warm_step_gives_the_outcome_of_a_fresh_child(bias_repo, tmp_path, executor, quantum_backed, says):
    b, repo, pipe = bias_repo
    bad = sorted(r.id for r in b.query_dimension_records(
        "exposure", where="exposure.observation_type='zero'", explain=False))[1]
    cfg = fail_config(tmp_path, f"detector = 3 AND exposure = {bad}")
    children: list[process.Child] = []
    out = run_bias_step(b, repo, pipe, tmp_path, config_files={"cpBiasIsr": [str(cfg)]}, run_child=executor.run,
                        on_start=children.append, quantum_backed=quantum_backed)
    # The judging of test_steps' pipetask attempt: same counts, same failure, same exit status.
    assert out.status == "failed" and out.returncodes == [1]
    assert out.succeeded == {"cpBiasIsr": 5} and out.failed == {"cpBiasIsr": 1}
    (f,) = out.failures
    assert f.data_id == {"instrument": "DECam", "detector": 3, "exposure": bad}
    assert f.exception_type == "RuntimeError" and "Simulated failure" in f.message and not f.retryable
    (child,) = children
    assert child.pid == child.pgid and child.pid != executor.server_pid  # a grandchild, its own group
    assert process.recorded_exit(child.status_file) == 1
    log = (tmp_path / "attempts" / out.run.replace("/", "_") / "step.log").read_text()
    assert "Simulated failure" in log and says in log
    # The same graph through a fresh process, after the release: the rest of the step.
    assert R.release_failures(b, PARENT, pipeline=pipe, step="step1") == 1
    fixed = run_bias_step(b, repo, pipe, tmp_path, run_child=process.run, quantum_backed=quantum_backed)
    assert fixed.status == "succeeded" and fixed.succeeded == {"cpBiasIsr": 1}
    s2 = run_bias_step(b, repo, pipe, tmp_path, step="step2", run_child=executor.run, quantum_backed=quantum_backed)
    assert s2.status == "succeeded" and s2.succeeded == {"cpBiasCombine": 2}
    md = _metadata(b)
    assert len(md) == 6 and len({r.dataId for r in md}) == 6
    assert executor.starts == 1  # one server for all of it (and for both parametrizations)


def test_warm_quantum_killed_after_its_outputs_is_pruned_and_redone(bias_repo, tmp_path, executor):
    b, repo, pipe = bias_repo
    switch = set_failure(tmp_path / "fail", "cpBiasIsr", "detector = 3", DIE_AFTER_OUTPUTS)
    out = run_bias_step(b, repo, pipe, tmp_path, env={FAIL_DIR_ENV: str(tmp_path / "fail")}, run_child=executor.run)
    assert out.status == "incomplete" and out.returncodes[0] != 0 and not out.failures
    assert out.evidence["pruned_unfinished_outputs"] == 1
    switch.unlink()
    nxt = run_bias_step(b, repo, pipe, tmp_path, run_child=executor.run)
    assert nxt.status == "succeeded" and nxt.succeeded == {"cpBiasIsr": 6 - out.succeeded["cpBiasIsr"]}
    for dtype in ("cpBiasIsr_metadata", "cpBiasIsrExp"):
        refs = _metadata(b, dtype)
        assert len(refs) == 6 and len({r.dataId for r in refs}) == 6, dtype


def _kill_after(tmp_path, n_done: int, target) -> threading.Thread:
    """SIGKILL `target()` (a pid or a group, negative) once `n_done` quanta have finished."""
    def watch() -> None:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            logs = list((tmp_path / "attempts").glob("*/step.log"))
            if logs and logs[0].read_text().count("took ") >= n_done:
                ident = target()
                (os.killpg if ident < 0 else os.kill)(abs(ident), signal.SIGKILL)
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("victim", ["grandchild", "server"])
def test_warm_step_killed_with_sigkill_is_judged_then_recovered(bias_repo, tmp_path, victim):
    b, repo, pipe = bias_repo
    slow = tmp_path / "slow.py"
    slow.write_text("config.sleep = 1.0\n")
    ex = warm.WarmExecutor(R.venv_env())
    children: list[process.Child] = []
    try:
        ex.start()
        server = ex.server_pid
        assert server is not None
        killer = _kill_after(tmp_path, 2, (lambda: -children[0].pgid) if victim == "grandchild" else (lambda: server))
        out = run_bias_step(b, repo, pipe, tmp_path, config_files={"cpBiasIsr": [str(slow)]}, run_child=ex.run,
                   on_start=children.append)
        killer.join(5)
        if victim == "grandchild":
            # Judged like a killed child: incomplete, what finished is kept (registered by
            # `autoproc-step register` at once), the dead quantum's outputs pruned.
            assert out.killed and out.status == "incomplete" and out.returncodes == [-signal.SIGKILL, 0]
            assert out.recovered and out.commands[-1][1] == "register"
            assert 2 <= out.succeeded["cpBiasIsr"] < 6
            assert process.recorded_exit(children[0].status_file) == 128 + signal.SIGKILL
        else:
            # The server died; the step's grandchild, in its own session, finished the step anyway.
            assert ex.server_pid is None
            assert out.status == "succeeded" and out.succeeded == {"cpBiasIsr": 6}
        assert not process.group_alive(children[0].pgid)
        nxt = run_bias_step(b, repo, pipe, tmp_path, run_child=ex.run)
        if victim == "grandchild":
            assert nxt.status == "succeeded" and nxt.succeeded["cpBiasIsr"] == 6 - out.succeeded["cpBiasIsr"]
        else:
            assert nxt.status == "nothing_to_do"
            ex.start()  # the next step gets a new server
            assert ex.starts == 2 and ex.server_pid not in (None, server)
        md = _metadata(b)
        assert len(md) == 6 and len({r.dataId for r in md}) == 6
        assert Q.check_step(b, pipe, "step1", PARENT).empty
    finally:
        ex.close()


def test_the_config_picks_the_executor(tmp_path):
    def cfg(**deep) -> Config:
        return parse_config({"root": str(tmp_path), "deep": deep})

    assert stages._run_child(cfg(mode="bps")) is process.run  # bps untouched
    assert stages._run_child(cfg(mode="pipetask", warm=False)) is process.run  # the fallback
    fn = stages._run_child(cfg(mode="pipetask"))
    assert getattr(fn, "__self__", None) is stages._run_child(cfg(mode="pipetask")).__self__  # one server
    assert isinstance(fn.__self__, warm.WarmExecutor)


def test_a_command_the_server_does_not_run_goes_through_process_run(tmp_path, executor):
    res = executor.run(["/bin/sh", "-c", "echo hello; exit 3"], cwd=tmp_path, log=tmp_path / "x.log")
    assert res.returncode == 3 and "hello" in res.tail()
    assert executor.server_pid is None or executor.starts <= 1  # no server needed for it


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for init to reap it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("when", ["ready", "during_preload"])
def test_the_server_goes_when_its_client_is_killed(tmp_path, when):
    """A daemon killed with -9 leaves no warm server behind (and no socket directory), even
    when it died while the server was still importing the middleware."""
    import subprocess
    import sys

    start = ("ex.start()\nprint(ex.server_pid, ex.socket, flush=True)\n" if when == "ready" else
             # the server's own command line, as WarmExecutor starts it, killed before it is ready
             "import os, subprocess, tempfile\n"
             "sock = os.path.join(tempfile.mkdtemp(prefix='autoproc-warm-'), 'sock')\n"
             "srv = subprocess.Popen([sys.executable, '-m', 'autoproc.deep.warm', sock, str(os.getpid())])\n"
             "print(srv.pid, sock, flush=True)\n")
    code = ("import sys, time\nfrom autoproc.deep import runner, warm\n"
            "ex = warm.WarmExecutor(runner.venv_env())\n" + start + "time.sleep(600)\n")
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)  # noqa: S603
    try:
        pid, sock = client.stdout.readline().split()
        assert _running(int(pid))
        client.kill()
        client.wait()
        end = time.monotonic() + 60
        while _running(int(pid)) and time.monotonic() < end:
            time.sleep(0.1)
        assert not _running(int(pid))
        assert not os.path.exists(os.path.dirname(sock))
    finally:
        client.kill()
        client.wait()


def test_a_server_that_cannot_start_costs_the_warm_start_not_the_step(tmp_path, monkeypatch):
    ex = warm.WarmExecutor(R.venv_env(), log=tmp_path / "warm.log")
    monkeypatch.setattr(warm.sys, "executable", "/bin/false")  # the server's interpreter: exits 1 at once
    try:
        res = ex.run([R._tool("butler"), "--help"], cwd=tmp_path, log=tmp_path / "b.log")
        assert res.returncode == 0 and "Usage" in res.tail(100) and ex.server_pid is None
    finally:
        ex.close()
