"""Scale-out on the real Slurm cluster the session starts (tests/slurm_cluster.py): actions on
Parsl HTEX blocks that are Slurm jobs, DEEP steps through bps on ctrl_bps_parsl's Slurm site,
and what the daemon does about its jobs when it is killed, stopped, or a job is cancelled."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autoproc import slurm as autoproc_slurm
from autoproc.store import Store
from conftest import child_env, states, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def htex_on_slurm(cluster, **provider) -> dict:
    """executor settings for HTEX blocks on the test cluster (strategy_period 1: the first
    block is asked for about a second after start, CLUSTER.md)."""
    return {"kind": "htex", "max_workers": 4, "heartbeat_seconds": 2, "strategy_period": 1.0,
            "provider": {"kind": "slurm", "partition": cluster.partition, "walltime": "00:30:00",
                         "init_blocks": 1, "min_blocks": 0, "max_blocks": 1, **provider}}


def our_jobs(config) -> list[autoproc_slurm.Job]:
    return autoproc_slurm.jobs(autoproc_slurm.tag_of(config.db))


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), *args],  # noqa: S603
                          capture_output=True, text=True, env={**child_env(), "COLUMNS": "400"}, timeout=120)


def attempts_of(config) -> list[dict]:
    store = Store(config.db)
    try:
        return store.attempts()
    finally:
        store.close()


class JobWatch:
    """Samples `squeue` in the background: every job id and comment seen while a test runs."""

    def __init__(self, cluster):
        self.cluster, self.seen, self.stop = cluster, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for j in self.cluster.jobs():
                    self.seen.setdefault(j["id"], j)
            except RuntimeError:
                pass  # the controller is down (a test stops it on purpose)
            self.stop.wait(0.2)

    def __enter__(self) -> JobWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(5)


def assert_ran_in_our_blocks(config, path: Path, watch: JobWatch, kind: str, key: str) -> None:
    """Every action of the subject ran inside one of the daemon's Slurm blocks, and `show`
    and the report say which."""
    blocks = {i for i, j in watch.seen.items() if j["comment"] == autoproc_slurm.daemon_comment(config.db)}
    assert blocks, watch.seen
    store = Store(config.db)
    subject = store.subject(kind, key)
    ran = [a for a in store.attempts(subject.id) if a["status"] not in ("interrupted", "superseded")]
    store.close()
    assert ran
    for a in ran:
        where = a["result"].get("ran_on", {})
        assert where.get("slurm_job_id") in blocks, (a["id"], a["stage"], where, blocks)
        assert where.get("host") == a["host"]
    shown = cli(path, "show", kind, key)
    assert shown.returncode == 0, shown.stderr
    for a in ran:
        assert f"{a['host']}, Slurm job {a['result']['ran_on']['slurm_job_id']}" in shown.stdout, shown.stdout
    out = config.root / "report-test"
    rep = cli(path, "report", "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    html = (out / "index.html").read_text()
    for a in ran[-3:]:
        assert f"Slurm job {a['result']['ran_on']['slurm_job_id']}" in html


# --- actions on HTEX over Slurm ------------------------------------------------------------


def test_widgets_run_in_slurm_blocks_and_sigterm_cancels_them(write_config, tmp_path, daemon_factory, slurm):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config, path = write_config(
        executor=htex_on_slurm(slurm),
        watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "mode": "inotify", "quiet_seconds": 0.2}])
    with JobWatch(slurm) as watch:
        daemon = daemon_factory(path).start()
        (inbox / "a-1.w").write_text("ok")
        (inbox / "b-1.w").write_text("flaky")
        wait_for(lambda: states(config) == {"a": "done", "b": "done"}, timeout=180, interval=0.2,
                 what="widgets done on HTEX over Slurm")
        assert_ran_in_our_blocks(config, path, watch, "widget", "a")
        assert our_jobs(config), "the daemon's block is still queued while it runs"
        t0 = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(config.stop_timeout_seconds + 5) == 0
        # Cancelled by the daemon before it exited, not by the test's clean-up.
        assert not [j for j in our_jobs(config) if j.state not in ("COMPLETING", "CANCELLED")], our_jobs(config)
        wait_for(lambda: not slurm.jobs(), timeout=30, what="squeue empty after SIGTERM")
        assert time.monotonic() - t0 < config.stop_timeout_seconds + 30


def test_kill9_leaves_a_block_the_restart_cancels(write_config, tmp_path, daemon_factory, slurm):
    """A daemon killed with -9 cannot cancel its HTEX block (Slurm jobs outlive it): the next
    daemon finds it by its comment and cancels it before starting its own."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config, path = write_config(
        executor=htex_on_slurm(slurm),
        watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "mode": "inotify", "quiet_seconds": 0.2}])
    daemon = daemon_factory(path).start()
    (inbox / "a-1.w").write_text("ok")
    wait_for(lambda: states(config) == {"a": "done"}, timeout=180, interval=0.2, what="a done")
    (old,) = [j.id for j in our_jobs(config)]
    daemon.kill9()
    time.sleep(1.0)
    assert old in [j.id for j in our_jobs(config)], "the killed daemon's block should still be queued"
    daemon = daemon_factory(path).start()
    wait_for(lambda: old not in [j.id for j in our_jobs(config)], timeout=60, what="the old block cancelled")
    (inbox / "c-1.w").write_text("ok")
    wait_for(lambda: states(config).get("c") == "done", timeout=180, interval=0.2, what="c done on a new block")
    store = Store(config.db)
    ran_in = {a["result"].get("ran_on", {}).get("slurm_job_id") for a in store.attempts(store.subject("widget", "c").id)}
    store.close()
    (new,) = [j.id for j in our_jobs(config)]
    assert ran_in == {new} and new != old
    daemon.stop()
    wait_for(lambda: not our_jobs(config), timeout=30, what="no job left after the stop")
