"""Faults survived: a real `autoproc daemon` (or, for the clock, an in-process engine) on
real directories and processes, each fault injected from outside while work arrives.
Each test proves the daemon stays up, records why, carries on once the fault is gone,
and loses nothing (every file that arrived reaches `done`, or the reason is recorded).

    .venv/bin/pytest tests/reliability/test_faults.py     # AUTOPROC_LOCK_SECONDS=30 (default)

SIGHUP with an invalid configuration (the seventh fault of issue 6) is tested in
tests/test_daemon.py::test_sighup_keeps_old_config_when_new_is_invalid.
"""

from __future__ import annotations

import calendar
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from autoproc.store import Store
from conftest import MACHINES, child_env, group_gone, pid_gone, states, wait_for

LOCK_SECONDS = float(os.environ.get("AUTOPROC_LOCK_SECONDS", "30"))


def inbox_config(write_config, tmp_path, *, mode="inotify", **extra):
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    config, path = write_config(watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "patterns": ["*.w"],
                                        "mode": mode, "poll_interval": 0.3, "quiet_seconds": 0.2}], **extra)
    return config, path, inbox


def cli(config_path: Path, *args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(config_path), *args],  # noqa: S603
                         capture_output=True, text=True, env=child_env(), timeout=timeout)
    return res, time.monotonic() - t0


def read(config, fn):
    store = Store(config.db)
    try:
        return fn(store)
    finally:
        store.close()


def problems(config) -> list[str]:
    return read(config, lambda s: [f"{p['source']}: {p['message']}" for p in s.problems(limit=200)])


def daemon_up(config) -> bool:
    return bool(read(config, lambda s: s.daemon_info()))


def all_done(config, keys) -> bool:
    st = states(config)
    return all(st.get(k) == "done" for k in keys)


def journal_in_order(config) -> None:
    """Each subject's journal chains from state to state, the last row naming where it is."""
    def check(store):
        by_subject: dict[int, list[dict]] = {}
        for r in store.journal():
            by_subject.setdefault(r["subject_id"], []).append(r)
        for subject_id, chain in by_subject.items():
            assert chain[0]["from_state"] is None
            for before, after in zip(chain, chain[1:], strict=False):
                assert after["from_state"] == before["to_state"], (before, after)
            assert store.subject_by_id(subject_id).state == chain[-1]["to_state"]
    read(config, check)


# -- 1. the state database locked by another process --------------------------------------

LOCKER = """
import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
c.execute("COMMIT")
"""


@pytest.mark.slow
def test_state_db_locked_by_another_process(write_config, tmp_path, daemon_factory):
    config, path, inbox = inbox_config(write_config, tmp_path)
    d = daemon_factory(path).start()
    wait_for(lambda: daemon_up(config), what="daemon up")
    (inbox / "before-1.w").write_text("ok")
    wait_for(lambda: all_done(config, ["before"]), what="before done")
    read(config, lambda s: s.ensure_subject("widget", "z", "new", actor="test"))

    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(config.db), str(LOCK_SECONDS)],  # noqa: S603
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        t_locked = time.monotonic()
        keys = [f"l{i}" for i in range(5)]
        for k in keys:
            (inbox / f"{k}-1.w").write_text("ok")
        # The CLI, meanwhile: reads still answer (WAL readers never wait for a writer) ...
        res, took = cli(path, "status", "--json")
        assert res.returncode == 0 and took < 10, (res.stderr, took)
        # ... and a write says clearly that the database is busy, naming it, within seconds.
        res, took = cli(path, "set", "widget", "z", "failed", "--reason", "test", "--force")
        assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
        assert "busy" in res.stderr and str(config.db) in res.stderr and "Traceback" not in res.stderr
        assert took < 15, took
        # The daemon is blocked, not dead: it waits for the lock.
        time.sleep(max(0.0, LOCK_SECONDS - (time.monotonic() - t_locked) - 1))
        assert d.proc.poll() is None, d.output()
        assert not any(states(config).get(k) == "done" for k in keys)  # it really could not write
        locker.wait(LOCK_SECONDS + 10)
    finally:
        locker.kill()
        locker.wait()
    wait_for(lambda: all_done(config, keys), timeout=30, what="files that arrived during the lock done")
    assert d.proc.poll() is None
    assert any("write lock was held by another process" in p for p in problems(config)), problems(config)
    assert "waiting" in d.output() and "Traceback" not in d.output()
    assert read(config, lambda s: s.subject("widget", "z").state) == "new"  # the refused `set` did nothing
    assert read(config, lambda s: s.file_counts()) == {"consumed": 6}
    journal_in_order(config)


# -- 2. the work (and attempt log) directory full -------------------------------------------

def mount_tmpfs(where: Path, size: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],  # noqa: S603,S607
                         capture_output=True)
    return res.returncode == 0


def fill(where: Path) -> Path:
    filler = where / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_work_dir_full_then_space_back(write_config, tmp_path, daemon_factory):
    work = tmp_path / "work"
    if not mount_tmpfs(work, "256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        config, path, inbox = inbox_config(write_config, tmp_path, work_dir=str(work), space_retry_seconds=0.5)
        d = daemon_factory(path).start()
        wait_for(lambda: daemon_up(config), what="daemon up")
        (inbox / "a-1.w").write_text("ok")
        wait_for(lambda: all_done(config, ["a"]), what="a done while there is space")
        filler = fill(work)
        keys = ["f1", "f2"]
        for k in keys:
            (inbox / f"{k}-1.w").write_text("ok")
        wait_for(lambda: sum("No space left" in p for p in problems(config)) >= 2, what="no-space problems")

        def waiting_reasons(store):
            return [a.result.get("reason", "") for a in store.attempts(status=("waiting",))]
        reasons = wait_for(lambda: read(config, waiting_reasons), what="attempts waiting for space")
        assert all("No space left on device" in r for r in reasons), reasons
        st = states(config)
        assert all(st[k] == "building" for k in keys), st  # waiting, not failed: no budget spent
        assert d.proc.poll() is None
        journal_in_order(config)
        filler.unlink()  # space is back
        wait_for(lambda: all_done(config, keys), timeout=30, what="f1, f2 done once space is back")
        assert d.proc.poll() is None and "Traceback" not in d.output()
        assert read(config, lambda s: s.file_counts()) == {"consumed": 3}
        journal_in_order(config)
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)  # noqa: S603,S607


def test_file_size_limit_then_lifted(write_config, tmp_path, daemon_factory):
    """The same fault without root: a file-size limit (`ulimit -f`, systemd's LimitFSIZE=)
    on the daemon, which its children inherit. A C tool filling its log is killed by
    SIGXFSZ; a Python child writing a big output file gets EFBIG. Both attempts wait for
    space (no retry budget spent) and finish once the limit is lifted."""
    limit, big = 16 << 20, 32 << 20
    config, path, inbox = inbox_config(write_config, tmp_path, space_retry_seconds=0.5)
    d = daemon_factory(path).start()
    wait_for(lambda: daemon_up(config), what="daemon up")
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (limit, hard))
    (inbox / "a-1.w").write_text("ok")
    wait_for(lambda: all_done(config, ["a"]), what="a done under the limit")
    (inbox / "log-1.w").write_text(f"spew {big}")
    (inbox / "out-1.w").write_text(f"bigfile {big}")

    def waiting_reasons(store):
        return {store.subject_by_id(a.subject_id).key: a.result.get("reason", "")
                for a in store.attempts(status=("waiting",))}
    reasons = wait_for(lambda: len(r := read(config, waiting_reasons)) == 2 and r, what="both attempts waiting")
    assert "spew was killed by SIGXFSZ" in reasons["log"] and "file-size limit" in reasons["log"], reasons
    assert 'bigfile failed with "File too large"' in reasons["out"], reasons
    def full_problems() -> int:
        return sum("SIGXFSZ" in p or "File too large" in p for p in problems(config))
    wait_for(lambda: full_problems() >= 2, what="no-space problems")
    time.sleep(2.0)  # a few more tries each (every 0.5 s): still one problem row per attempt
    assert full_problems() == 2, problems(config)
    st = states(config)
    assert st["log"] == st["out"] == "building", st  # waiting: no budget spent, not failed
    assert read(config, lambda s: [a for a in s.attempts() if a.status == "failed"]) == []
    assert d.proc.poll() is None
    resource.prlimit(d.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))  # the limit is lifted
    wait_for(lambda: all_done(config, ["log", "out"]), timeout=30, what="both done once the limit is lifted")
    assert d.proc.poll() is None and "Traceback" not in d.output()
    assert read(config, lambda s: s.file_counts()) == {"consumed": 3}
    journal_in_order(config)


# -- 3. a watched directory that disappears and comes back -----------------------------------

@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_watched_dir_disappears_and_comes_back(write_config, tmp_path, daemon_factory, mode):
    config, path, inbox = inbox_config(write_config, tmp_path, mode=mode)
    d = daemon_factory(path).start()
    (inbox / "a-1.w").write_text("ok")
    wait_for(lambda: all_done(config, ["a"]), what="a done")
    # An NFS hiccup: the mount point goes away (here: renamed), a file lands in the real
    # directory meanwhile, then it is back where it was, and more files arrive.
    away = tmp_path / "inbox.away"
    inbox.rename(away)
    wait_for(lambda: any("inbox" in p and "watch" in p for p in problems(config)), timeout=30,
             what="the watcher reports the missing root")
    (away / "b-1.w").write_text("ok")
    time.sleep(1.0)
    away.rename(inbox)
    (inbox / "c-1.w").write_text("ok")
    # And it vanishes for good, comes back as a new (empty) directory, and files arrive.
    time.sleep(1.0)
    wait_for(lambda: all_done(config, ["b", "c"]), timeout=30, what="b (written while away) and c done")
    shutil.rmtree(inbox)
    time.sleep(1.5)
    inbox.mkdir()
    for k in ("d", "e"):
        (inbox / f"{k}-1.w").write_text("ok")
    wait_for(lambda: all_done(config, ["a", "b", "c", "d", "e"]), timeout=30, what="d, e done after the rmdir")
    assert d.proc.poll() is None and "Traceback" not in d.output()
    assert read(config, lambda s: s.file_counts()) == {"consumed": 5}
    ledger = (Path(config.root) / "ledger.txt").read_text().splitlines()
    for k in "abcde":
        assert ledger.count(f"done {k}") == 1, ledger


# -- 4. a child that hangs ------------------------------------------------------------------

def short_timeout_machines(tmp_path: Path, timeout: float, max_tries: int) -> Path:
    machines = tmp_path / "machines"
    machines.mkdir()
    spec = yaml.safe_load((MACHINES / "widget.yaml").read_text())
    spec["states"]["building"]["timeout"] = timeout
    spec["states"]["building"]["retry"] = {"max_tries": max_tries, "backoff_seconds": 0.05}
    (machines / "widget.yaml").write_text(yaml.safe_dump(spec))
    return machines


def test_hung_child_killed_at_deadline_then_retry_policy(write_config, tmp_path, daemon_factory):
    machines = short_timeout_machines(tmp_path, timeout=1, max_tries=2)
    config, path, inbox = inbox_config(write_config, tmp_path, machines_dir=str(machines))
    d = daemon_factory(path).start()
    (inbox / "h-1.w").write_text("hang")
    (inbox / "k-1.w").write_text("ok")  # the rest carries on meanwhile
    wait_for(lambda: states(config).get("h") == "failed", timeout=40, what="h failed after its tries")
    assert states(config)["k"] == "done"

    def history(store):
        s = store.subject("widget", "h")
        return store.attempts(s.id), store.journal(s.id)
    attempts, journal = read(config, history)
    assert [a.status for a in attempts] == ["failed", "failed"]
    for a in attempts:
        assert a.result["kind"] == "retry" and "timed out after 1 s" in a.result["reason"], a.result
        assert a.ended - a.started < 10  # killed at the deadline (+ the kill grace), not left to run
    assert journal[-1]["to_state"] == "failed"
    assert "gave up after 2 tries" in journal[-1]["reason"] and "timed out" in journal[-1]["reason"]
    # Nothing of those process groups survives: the children and the grandchildren that
    # ignored SIGTERM were SIGKILLed with their group.
    pids = [int(p) for line in (Path(config.root) / "hung.pids").read_text().split("\n") for p in line.split()]
    assert len(pids) == 4
    wait_for(lambda: all(pid_gone(p) for p in pids), timeout=5, what="hung children and grandchildren gone")
    assert all(group_gone(a.pgid) for a in attempts)
    assert d.proc.poll() is None


# -- 5. a worker killed from outside --------------------------------------------------------

def test_worker_killed_from_outside_is_retried(write_config, tmp_path, daemon_factory):
    config, path, inbox = inbox_config(write_config, tmp_path)
    d = daemon_factory(path).start()
    (inbox / "w-1.w").write_text("sleep 3")

    def running(store):
        return [a for a in store.attempts(status=("running",)) if a.pgid]
    attempt = wait_for(lambda: read(config, running), what="w's build running")[0]
    os.killpg(attempt.pgid, signal.SIGKILL)  # the OOM killer, an admin, a lost node
    wait_for(lambda: all_done(config, ["w"]), timeout=30, what="w done after the kill")
    attempts = read(config, lambda s: s.attempts(s.subject("widget", "w").id))
    build = [a for a in attempts if a.stage == "building"]
    assert [a.status for a in build] == ["failed", "succeeded"]
    assert build[0].result["kind"] == "retry" and "-9" in build[0].result["reason"]
    assert build[1].try_number == 2
    assert group_gone(attempt.pgid)
    ledger = (Path(config.root) / "ledger.txt").read_text().splitlines()
    assert ledger.count("build w try=2 adjust={}") == 1 and ledger.count("done w") == 1
    assert d.proc.poll() is None


# -- 6. the clock crossing a night boundary -------------------------------------------------

def test_night_rollover_runs_a_reconcile(write_config, tmp_path):
    """The engine's clock crosses 12:00 TAI (the DEEP `night` rule's boundary): a reconcile
    scan runs once, and finds the file no watcher event announced."""
    from autoproc.deep.chain import night_of as observing_night
    from autoproc.engine import Engine

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    # Poll mode with an hour between polls: only a scan (start, reconcile) sees new files.
    config, _ = write_config(watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "patterns": ["*.w"],
                                     "mode": "poll", "poll_interval": 3600, "quiet_seconds": 0.1}],
                             reconcile_minutes=10_000)
    boundary = calendar.timegm((2024, 6, 2, 12, 0, 0)) - 37  # 12:00 TAI on 2024-06-02
    offset = boundary - 4.0 - time.time()  # the engine's clock reaches it 4 s from now
    engine = Engine(config, clock=lambda: time.time() + offset)
    assert engine.periods["deep"] == "20240601"
    (inbox / "a-1.w").write_text("ok")
    engine.start()
    scans = []
    real_reconcile = engine.watcher.reconcile
    engine.watcher.reconcile = lambda **kw: (scans.append(engine.clock()), real_reconcile(**kw))[1]
    thread = threading.Thread(target=engine.run, daemon=True)
    thread.start()
    view = Store(config.db)  # the test thread's own connection (the engine's belongs to its thread)
    try:
        wait_for(lambda: (s := view.find_subject("widget", "a")) and s.state == "done", what="a done")
        (inbox / "b-1.w").write_text("ok")  # no event will announce it
        time.sleep(0.5)
        assert view.find_subject("widget", "b") is None and not scans
        wait_for(lambda: scans, timeout=10, what="the rollover reconcile")
        assert scans[0] >= boundary and engine.periods["deep"] == "20240602"
        wait_for(lambda: (s := view.find_subject("widget", "b")) and s.state == "done", what="b done")
        time.sleep(1.0)
        assert len(scans) == 1  # once per rollover, not every turn
    finally:
        engine.stop()
        thread.join(10)
        engine.shutdown()
    assert observing_night(boundary - 1) == "20240601" and observing_night(boundary + 1) == "20240602"


def test_raws_straddling_midnight_land_in_their_nights(write_config, tmp_path):
    """A raw's night is read from its DATE-OBS (TAI − 12 h), never from the wall clock:
    exposures either side of UTC midnight are the same night; either side of 12:00 TAI
    they are not. The engine's rollover uses the same boundary."""
    from astropy.time import Time

    from autoproc.deep.chain import night_of as observing_night
    from autoproc.deep.stages import raw_file
    from autoproc.sim.deep.raws import SimExposure, write_raw

    config, _ = write_config(plugins=["autoproc.deep.stages"])
    cases = {
        "2024-06-01T23:59:59.000": "20240601", "2024-06-02T00:00:01.000": "20240601",
        "2024-06-02T03:59:59.000": "20240601",  # local midnight at CTIO (UTC−4)
        "2024-06-02T11:58:00.000": "20240601", "2024-06-02T12:01:00.000": "20240602",
    }
    for i, (date_obs, night) in enumerate(cases.items()):
        exp = SimExposure(expnum=1000 + i, obs_type="zero", physical_filter="solid plate 0.0 0.0",
                          date_obs=Time(date_obs, scale="utc"), exptime=0.0, night=int(night))
        raw = write_raw(exp, tmp_path / "raws")
        assert raw_file(raw, config).subject == ("night", night), date_obs
        assert observing_night(Time(date_obs, scale="utc").unix) == night, date_obs
