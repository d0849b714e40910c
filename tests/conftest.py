"""Shared fixtures: real config files, real state databases, real daemon processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from autoproc.config import Config, load_config
from autoproc.store import Store

# Servers the tests start themselves: the session's own Slurm cluster (fixtures
# `slurm_cluster`, `slurm`) and PostgreSQL server (`postgres`, `pg_namespace`).
pytest_plugins = ["slurm_cluster", "postgres_server"]

TESTS = Path(__file__).resolve().parent
MACHINES = TESTS / "machines"


def wait_for(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = ""):
    """Poll `condition` until it returns something true; fail the test after `timeout`."""
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (a reparented orphan not reaped yet is no longer running)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def argv_of(pid: int | str) -> list[str]:
    """A process's argv ([] if gone or unreadable)."""
    try:
        return psutil.Process(int(pid)).cmdline()
    except psutil.Error:
        return []


def ancestors(pid: int) -> list[int]:
    """`pid`, its parent, its parent's parent, … up to (not including) init."""
    try:
        proc = psutil.Process(pid)
        return [p.pid for p in [proc, *proc.parents()] if p.pid > 1]
    except psutil.Error:
        return []


def pid_gone(pid: int) -> bool:
    """Dead or a zombie (a reparented orphan not reaped yet is no longer running)."""
    try:
        return not _running(psutil.Process(pid))
    except psutil.Error:
        return True


def pgid_of(proc: psutil.Process) -> int | None:
    """A process's group (psutil has no field for it), or None if it is gone."""
    try:
        return os.getpgid(proc.pid)
    except OSError:
        return None


def group_gone(pgid: int) -> bool:
    """No running process left in the process group."""
    return not any(pgid_of(p) == pgid and _running(p) for p in psutil.process_iter())


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., tuple[Config, Path]]:
    """Write an autoproc.yaml for the test machines under tmp_path; returns (config, path)."""

    def write(**overrides) -> tuple[Config, Path]:
        data = {"root": str(tmp_path / "root"), "machines_dir": str(MACHINES), "poll_seconds": 0.2,
                "retry": {"backoff_seconds": 0.05}, **overrides}
        if "deep" in overrides:  # a DEEP test runs on the simulator; its own keys win
            from autoproc.sim.deep.scenario import deep_settings

            data["deep"] = {**deep_settings(), **overrides["deep"]}
        path = tmp_path / "autoproc.yaml"
        path.write_text(yaml.safe_dump(data))
        return load_config(path), path

    return write


class Daemon:
    """`autoproc daemon` as a real child process."""

    def __init__(self, config_path: Path, log: Path, options: tuple[str, ...] = ()):
        self.config_path = config_path
        self.log = log
        self.options = options  # global options, before the command (e.g. --log-level)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        out = open(self.log, "a")
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "autoproc.cli", "-c", str(self.config_path), *self.options, "daemon"],
            stdout=out, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True)
        out.close()
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def daemon_factory(tmp_path: Path):
    started: list[Daemon] = []

    def make(config_path: Path, *options: str) -> Daemon:
        d = Daemon(config_path, tmp_path / f"daemon-{len(started)}.log", options)
        started.append(d)
        return d

    yield make
    for d in started:
        d.stop()


def open_store(config: Config) -> Store:
    return Store(config.db)


def states(config: Config, kind: str = "widget") -> dict[str, str]:
    store = Store(config.db)
    try:
        return {s.key: s.state for s in store.subjects(kind)}
    finally:
        store.close()


def journal_consistent(store: Store) -> None:
    """The journal has no gaps or reordering: ids strictly increasing, each subject's chain
    starts from nothing, every row leaves from the state the previous one reached, versions
    increase, and the subject is in the state its last row names."""
    rows = store.journal()
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    by_subject: dict[int, list[dict]] = {}
    for r in rows:
        by_subject.setdefault(r["subject_id"], []).append(r)
    for subject_id, chain in by_subject.items():
        assert chain[0]["from_state"] is None
        for before, after in zip(chain, chain[1:], strict=False):
            assert after["from_state"] == before["to_state"], (before, after)
            assert after["version"] > before["version"]
        assert store.subject_by_id(subject_id).state == chain[-1]["to_state"]
