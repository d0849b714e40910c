"""Scale-out on the real Slurm cluster the session starts (tests/slurm_cluster.py): actions on
Parsl HTEX blocks that are Slurm jobs, DEEP steps through bps on ctrl_bps_parsl's Slurm site,
and what the daemon does about its jobs when it is killed, stopped, or a job is cancelled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from autoproc import slurm as autoproc_slurm
from autoproc.executor import stale_interchanges
from autoproc.store import Attempt, Store
from conftest import argv_of, child_env, pid_gone, states, wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def htex_on_slurm(cluster, **provider) -> dict:
    """executor settings for HTEX blocks on the test cluster (strategy_period 1: the first
    block is asked for about a second after start)."""
    return {"kind": "htex", "max_workers": 4, "heartbeat_seconds": 2, "strategy_period": 1.0,
            "provider": {"kind": "slurm", "partition": cluster.partition, "walltime": "00:30:00",
                         "init_blocks": 1, "min_blocks": 0, "max_blocks": 1, **provider}}


def our_jobs(config) -> list[autoproc_slurm.Job]:
    return autoproc_slurm.jobs(autoproc_slurm.tag_of(config.db))


def cli(path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), *args],  # noqa: S603
                          capture_output=True, text=True, env={**child_env(), "COLUMNS": "400"}, timeout=120)


def attempts_of(config) -> list[Attempt]:
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
    ran = [a for a in store.attempts(subject.id) if a.status not in ("interrupted", "superseded")]
    store.close()
    assert ran
    for a in ran:
        where = a.result.get("ran_on", {})
        assert where.get("slurm_job_id") in blocks, (a.id, a.stage, where, blocks)
        assert where.get("host") == a.host
    shown = cli(path, "show", kind, key)
    assert shown.returncode == 0, shown.stderr
    for a in ran:
        assert f"{a.host}, Slurm job {a.result['ran_on']['slurm_job_id']}" in shown.stdout, shown.stdout
    out = config.root / "report-test"
    rep = cli(path, "report", "--out", str(out))
    assert rep.returncode == 0, rep.stderr
    html = (out / "index.html").read_text()
    for a in ran[-3:]:
        assert f"Slurm job {a.result['ran_on']['slurm_job_id']}" in html


# --- actions on HTEX over Slurm ------------------------------------------------------------


def htex_widget_config(write_config, tmp_path, slurm):
    """Widgets (tests/widgets.py) from an inbox, on HTEX blocks of the test cluster."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config, path = write_config(
        executor=htex_on_slurm(slurm),
        watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "mode": "inotify", "quiet_seconds": 0.2}])
    return config, path, inbox


def test_widgets_run_in_slurm_blocks_and_sigterm_cancels_them(write_config, tmp_path, daemon_factory, slurm):
    config, path, inbox = htex_widget_config(write_config, tmp_path, slurm)
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


def widget_done_on_htex(write_config, tmp_path, daemon_factory, slurm):
    """A daemon on an HTEX block of the test cluster that has taken one widget to done."""
    config, path, inbox = htex_widget_config(write_config, tmp_path, slurm)
    daemon = daemon_factory(path).start()
    (inbox / "a-1.w").write_text("ok")
    wait_for(lambda: states(config) == {"a": "done"}, timeout=180, interval=0.2, what="a done")
    return config, path, inbox, daemon


def test_kill9_leaves_a_block_the_restart_cancels(write_config, tmp_path, daemon_factory, slurm):
    """A daemon killed with -9 cannot cancel its HTEX block (Slurm jobs outlive it): the next
    daemon finds it by its comment and cancels it before starting its own."""
    config, path, inbox, daemon = widget_done_on_htex(write_config, tmp_path, daemon_factory, slurm)
    (old,) = [j.id for j in our_jobs(config)]
    (interchange,) = stale_interchanges(config.work_dir / "parsl")  # the running daemon's own
    daemon.kill9()
    time.sleep(1.0)
    assert old in [j.id for j in our_jobs(config)], "the killed daemon's block should still be queued"
    assert not pid_gone(interchange), "the killed daemon's interchange should still run (under init)"
    daemon = daemon_factory(path).start()
    wait_for(lambda: old not in [j.id for j in our_jobs(config)], timeout=60, what="the old block cancelled")
    wait_for(lambda: pid_gone(interchange), timeout=30, what="the killed daemon's interchange stopped")
    (inbox / "c-1.w").write_text("ok")
    wait_for(lambda: states(config).get("c") == "done", timeout=180, interval=0.2, what="c done on a new block")
    store = Store(config.db)
    ran_in = {a.result.get("ran_on", {}).get("slurm_job_id") for a in store.attempts(store.subject("widget", "c").id)}
    store.close()
    (new,) = [j.id for j in our_jobs(config)]
    assert ran_in == {new} and new != old
    daemon.stop()
    wait_for(lambda: not our_jobs(config), timeout=30, what="no job left after the stop")


# --- DEEP steps through bps on the Slurm site ----------------------------------------------

def _environ(pid: int) -> dict[str, str]:
    try:
        return psutil.Process(pid).environ()
    except psutil.Error:
        return {}


class QuantumWatch(JobWatch):
    """Also samples the `pipetask run-qbb` processes (the bps jobs, one per quantum cluster)
    under this test's directory, with the Slurm job they run in."""

    def __init__(self, cluster, tmp_path: Path):
        super().__init__(cluster)
        self.tmp_path, self.quanta = str(tmp_path), {}

    def _run(self) -> None:
        while not self.stop.is_set():
            for pid in psutil.pids():
                argv = argv_of(pid)
                if "run-qbb" in argv and any(self.tmp_path in a for a in argv):
                    self.quanta.setdefault(pid, _environ(pid).get("SLURM_JOB_ID"))
            try:
                for j in self.cluster.jobs():
                    self.seen.setdefault(j["id"], j)
            except RuntimeError:
                pass
            self.stop.wait(0.1)


def bps_slurm_night(write_config, tmp_path, slurm, **deep):
    from test_daemon_night import deep_config, deep_init

    config, path, raws = deep_config(write_config, tmp_path, mode="bps", bps_site="slurm",
                                     slurm={"partition": slurm.partition, "walltime": "00:20:00"}, **deep)
    deep_init(path)
    return config, path, raws


def step_jobs(watch: JobWatch, config) -> dict[str, dict]:
    """The Slurm jobs seen that carry an attempt's comment (a step's bps block)."""
    prefix = autoproc_slurm.tag_of(config.db) + ":a"
    return {i: j for i, j in watch.seen.items() if j["comment"].startswith(prefix)}


def test_bps_steps_run_as_slurm_jobs(write_config, tmp_path, daemon_factory, slurm):
    from test_daemon_night import settled, stream

    night = "20240616"
    config, path, raws = bps_slurm_night(write_config, tmp_path, slurm)
    with QuantumWatch(slurm, tmp_path) as watch:
        daemon = daemon_factory(path).start()
        assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0
        wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")
    jobs = step_jobs(watch, config)
    steps = [a for a in attempts_of(config) if a.step == "bias" and a.result.get("evidence", {}).get("run")]
    assert len(steps) == 2, steps  # bias step1 and step2, each one bps submission
    # Each submission's block carried its attempt's comment; every quantum ran inside one of them.
    assert {j["comment"] for j in jobs.values()} == {autoproc_slurm.attempt_comment(config.db, a.id)
                                                     for a in steps}, jobs
    assert watch.quanta and set(watch.quanta.values()) <= set(jobs), (watch.quanta, jobs)
    from lsst.daf.butler import Butler

    b = Butler.from_config(str(config.root / "repo"))
    for dtype, n in (("cpBiasIsr_metadata", 8), ("cpBiasIsrExp", 8), ("bias", 2)):
        refs = b.query_datasets(dtype, collections=f"DEEP/{night}/bias", find_first=False, explain=False)
        assert len(refs) == n and len({r.dataId for r in refs}) == n, dtype
    b.close()
    assert not our_jobs(config)  # each block was cancelled when its step ended


def _running_step_job(config) -> autoproc_slurm.Job | None:
    prefix = autoproc_slurm.tag_of(config.db) + ":a"
    return next((j for j in our_jobs(config) if j.comment.startswith(prefix) and j.state == "RUNNING"), None)


def test_kill9_during_a_bps_slurm_step_then_restart(write_config, tmp_path, daemon_factory, slurm):
    """The daemon is killed with -9 while a bias step's block runs on Slurm: the block outlives
    it. The next daemon cancels that block (found by the killed attempt's comment) before it
    recovers the step, and the night finishes with every output exactly once."""
    from test_daemon_night import assert_bias_once, bias_step1_job_done, settled, stream

    night = "20240615"
    config, path, raws = bps_slurm_night(write_config, tmp_path, slurm)
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0
    wait_for(bias_step1_job_done(config, night), timeout=240, interval=0.1, what="bps running bias step1 on Slurm")
    job = _running_step_job(config)
    assert job is not None, our_jobs(config)
    daemon.kill9()
    time.sleep(1.0)
    assert job.id in [j.id for j in our_jobs(config)], "the killed step's block should outlive the daemon"
    daemon = daemon_factory(path).start()
    wait_for(lambda: job.id not in [j.id for j in our_jobs(config)], timeout=60,
             what="the killed attempt's Slurm job cancelled by the restart")
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")

    from lsst.daf.butler import Butler

    b = Butler.from_config(str(config.root / "repo"))
    assert_bias_once(b, night)
    b.close()
    store = Store(config.db)
    assert any(a.status == "interrupted" for a in store.attempts(store.subject("night", night).id))
    store.close()
    daemon.stop()
    assert not our_jobs(config)


def test_sigterm_during_a_bps_slurm_step_cancels_its_job(write_config, tmp_path, daemon_factory, slurm):
    from test_daemon_night import stream

    night = "20240617"
    config, path, raws = bps_slurm_night(write_config, tmp_path, slurm)
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0
    job = wait_for(lambda: _running_step_job(config), timeout=240, interval=0.2, what="a step's block running")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(config.stop_timeout_seconds + 5) == 0
    # The daemon cancelled it before exiting (the test's clean-up has not run yet).
    left = [j for j in slurm.jobs() if j["id"] == job.id and j["state"] not in ("COMPLETING", "CANCELLED")]
    assert not left, left
    wait_for(lambda: not slurm.jobs(), timeout=30, what="squeue empty after SIGTERM")
    store = Store(config.db)
    assert [a.status for a in store.attempts(store.subject("night", night).id) if a.step == "bias"] == [
        "interrupted"]
    store.close()


def test_a_step_job_scancelled_from_outside_is_retried(write_config, tmp_path, daemon_factory, slurm):
    """Someone `scancel`s a running step's block: bps loses its workers, the attempt is judged
    from the Butler (incomplete), retried, and the night finishes with every output once."""
    from test_daemon_night import settled, stream

    night = "20240618"
    config, path, raws = bps_slurm_night(write_config, tmp_path, slurm)
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0
    job = wait_for(lambda: _running_step_job(config), timeout=240, interval=0.2, what="a step's block running")
    slurm.run("scancel", job.id)
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")
    assert daemon.proc.poll() is None

    from lsst.daf.butler import Butler

    b = Butler.from_config(str(config.root / "repo"))
    for dtype, n in (("cpBiasIsr_metadata", 8), ("cpBiasIsrExp", 8), ("bias", 2)):
        refs = b.query_datasets(dtype, collections=f"DEEP/{night}/bias", find_first=False, explain=False)
        assert len(refs) == n and len({r.dataId for r in refs}) == n, dtype  # done once
    b.close()
    bias = [a for a in attempts_of(config) if a.step == "bias"]
    cancelled = next(a for a in bias if a.id == int(job.comment.rpartition(":a")[2]))
    assert (cancelled.status, cancelled.result["kind"]) == ("failed", "retry"), cancelled.result
    assert bias[-1].status == "succeeded"
    assert not our_jobs(config)


# --- the demo's chains with every action in a Slurm job -----------------------------------


def test_desgw_season_on_htex_over_slurm(write_config, tmp_path, daemon_factory, slurm):
    from test_daemon_season import NITE, SEASON, desgw_config, exposure_states, subject

    from autoproc.sim.desgw.site import SimExposure, make_site

    expnums = [941201, 941202, 941203]
    site = make_site(tmp_path / "site", [SimExposure(e, NITE, "i") for e in expnums],
                     {"seconds_per_batch": 0.2, "batch_size": 30, "postproc_step_sleep": 0.1, "exposures": {}},
                     season=33)
    grid = subprocess.Popen(site.grid_argv(once=False), start_new_session=True)  # noqa: S603
    try:
        config, path, lists = desgw_config(write_config, site, tmp_path, executor=htex_on_slurm(slurm))
        made = cli(path, "desgw", "season", str(SEASON), "--trigger-mjd", "58709.437", "--propid", "2019B-0372",
                   "--ligoid", "S190814bv", "--triggerid", "G298048", "--bands", "i", "--reason", "on Slurm")
        assert made.returncode == 0, made.stderr
        with JobWatch(slurm) as watch:
            daemon_factory(path).start()
            (lists / f"S{SEASON}_night1.list").write_text("".join(f"{e}\n" for e in expnums))
            wait_for(lambda: exposure_states(config) == dict.fromkeys(expnums, "done"), timeout=300, interval=0.5,
                     what="exposures done on HTEX over Slurm")
            wait_for(lambda: subject(config, "season", str(SEASON))[0].data.get("postproc_runs"), timeout=120,
                     interval=0.5, what="the season's post-processing run")
        (run,) = subject(config, "season", str(SEASON))[0].data["postproc_runs"]
        assert run["expnums"] == expnums and run["status"]["state"] == "complete"
        for e in expnums:
            assert_ran_in_our_blocks(config, path, watch, "exposure", f"{SEASON}.{e}")
        assert_ran_in_our_blocks(config, path, watch, "season", str(SEASON))
    finally:
        os.killpg(grid.pid, signal.SIGKILL)
        grid.wait()


def test_deep_night_on_htex_over_slurm(write_config, tmp_path, daemon_factory, slurm):
    from test_daemon_night import FAST_STEPS, deep_config, deep_init, settled, stream

    night = "20240601"
    config, path, raws = deep_config(write_config, tmp_path, executor=htex_on_slurm(slurm),
                                     steps={**FAST_STEPS, "drp": ["step1"]})
    deep_init(path)
    with JobWatch(slurm) as watch:
        daemon = daemon_factory(path).start()
        assert stream(raws, night, "--science", "VR:1", "--n-bias", "4", "--flats", "1").wait(60) == 0
        wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")
    assert_ran_in_our_blocks(config, path, watch, "night", night)


def test_a_drained_node_makes_the_step_wait_with_the_reason(write_config, tmp_path, daemon_factory, slurm):
    """The only node is drained: the step's block stays pending. The attempt says why (the
    partition, the drained node, Slurm's reason) in `show` and the problems instead of
    hanging silently, and goes on once the node is resumed."""
    from test_daemon_night import settled, stream

    night = "20240619"
    config, path, raws = bps_slurm_night(write_config, tmp_path, slurm)
    slurm.run("scontrol", "update", f"nodename={slurm.node}", "state=drain", "reason=disk replacement")
    daemon = daemon_factory(path).start()
    assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0

    def waiting() -> str | None:
        return next((a.result["slurm_wait"] for a in attempts_of(config)
                     if a.status == "running" and a.result.get("slurm_wait")), None)

    reason = wait_for(waiting, timeout=240, interval=0.5, what="the step's attempt waiting on Slurm")
    assert f"partition {slurm.partition}" in reason and f"{slurm.node} drained" in reason, reason
    assert "disk replacement" in reason and ("ReqNodeNotAvail" in reason or "DRAINED" in reason), reason
    shown = cli(path, "show", "night", night)
    assert f"{slurm.node} drained" in shown.stdout.replace("\n", " "), shown.stdout
    store = Store(config.db)
    assert any("drained" in p["message"] for p in store.problems()), store.problems()
    store.close()
    assert states(config, "night")[night] == "bias"
    slurm.resume_node()
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")
    assert not any(a.result.get("slurm_wait") for a in attempts_of(config))
    assert not our_jobs(config)


def test_a_reload_that_moves_steps_to_slurm_watches_their_jobs(write_config, tmp_path, daemon_factory, slurm):
    """Started with bps on the local site, the daemon is reloaded with `deep.bps_site: slurm`:
    from then on its steps' jobs are watched as at a start (the node is drained, so the step
    says why it waits). The same reload's executor change is kept for the next start, and
    the reload says so."""
    from test_daemon_night import deep_config, deep_init, settled, stream

    night = "20240620"
    config, path, raws = deep_config(write_config, tmp_path, mode="bps")
    deep_init(path)
    daemon = daemon_factory(path).start()
    wait_for(lambda: Store(config.db).daemon_info(), what="daemon up")
    data = yaml.safe_load(path.read_text())
    data["deep"].update(bps_site="slurm", slurm={"partition": slurm.partition, "walltime": "00:20:00"})
    data["executor"] = {"max_workers": 3}
    path.write_text(yaml.safe_dump(data))
    slurm.run("scontrol", "update", f"nodename={slurm.node}", "state=drain", "reason=reload test")
    daemon.signal(signal.SIGHUP)

    def reloaded() -> str | None:
        store = Store(config.db)
        try:
            return next((p["message"] for p in store.problems() if p["message"].startswith("reloaded")), None)
        finally:
            store.close()

    message = wait_for(reloaded, what="the reload")
    assert "executor changed and take effect at the next start" in message, message
    assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0

    def waiting() -> str | None:
        return next((a.result["slurm_wait"] for a in attempts_of(config)
                     if a.status == "running" and a.result.get("slurm_wait")), None)

    reason = wait_for(waiting, timeout=240, interval=0.5, what="the step's attempt waiting on Slurm")
    assert f"{slurm.node} drained" in reason and "reload test" in reason, reason
    slurm.resume_node()
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")
    assert not our_jobs(config)


def test_actions_wait_out_a_stopped_controller(write_config, tmp_path, daemon_factory, slurm):
    """slurmctld is stopped for 30 s while the daemon runs on its HTEX block: actions that
    arrive meanwhile still run (the block's workers need no controller), the daemon stays
    up, and everything is done once the controller is back."""
    config, path, inbox, daemon = widget_done_on_htex(write_config, tmp_path, daemon_factory, slurm)
    assert len(our_jobs(config)) == 1
    slurm.stop_daemon("slurmctld")
    try:
        (inbox / "b-1.w").write_text("ok")
        (inbox / "c-1.w").write_text("flaky")
        time.sleep(30)
        assert daemon.proc.poll() is None
    finally:
        slurm.start_daemon("slurmctld")
    wait_for(lambda: states(config) == dict.fromkeys("abc", "done"), timeout=180, interval=0.5,
             what="every widget done after the controller came back")
    assert daemon.proc.poll() is None
    store = Store(config.db)
    jobs = {a.result.get("ran_on", {}).get("slurm_job_id") for s in "bc"
            for a in store.attempts(store.subject("widget", s).id) if a.status == "succeeded"}
    store.close()
    assert jobs and None not in jobs, jobs  # still inside Slurm blocks (the first one, or its successor)


def test_a_step_waits_out_a_stopped_controller(write_config, tmp_path, daemon_factory, slurm):
    """slurmctld is down for 30 s when a bps step must submit its block: the step waits (no
    retry budget spent on the cluster's outage) and the night finishes once it is back."""
    from test_daemon_night import settled, stream

    night = "20240620"
    config, path, raws = bps_slurm_night(write_config, tmp_path, slurm)
    daemon = daemon_factory(path).start()
    slurm.stop_daemon("slurmctld")
    try:
        t0 = time.monotonic()
        assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0
        # The step's attempt runs (bps's Parsl keeps trying sbatch) and says what it waits for.
        wait_for(lambda: any("does not answer" in (a.result.get("slurm_wait") or "")
                             for a in attempts_of(config) if a.status == "running" and a.step == "bias"),
                 timeout=120, interval=0.5, what="the bias step waiting on the controller")
        time.sleep(max(0.0, 30 - (time.monotonic() - t0)))
        assert daemon.proc.poll() is None
        assert states(config, "night")[night] == "bias"
    finally:
        slurm.start_daemon("slurmctld")
    wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=480, interval=0.5, what="done")
    bias = [a for a in attempts_of(config) if a.step == "bias" and a.result.get("evidence", {}).get("run")]
    assert [a.status for a in bias] == ["succeeded", "succeeded"]  # no retry spent on the outage
    assert not our_jobs(config)


# --- the README's configuration ------------------------------------------------------------


def readme_slurm_config() -> dict:
    import yaml

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Running on a Slurm cluster", 1)[1]
    return yaml.safe_load(section.split("```yaml", 1)[1].split("```", 1)[0])


@pytest.mark.timeout(600)  # two bps steps on Slurm beside the daemon's block: ~110 s here, more on a busy machine
def test_the_readme_slurm_configuration_runs_a_night(write_config, tmp_path, daemon_factory, slurm):
    """The README's autoproc.yaml, with this machine's paths, the address and worker_init
    replaced (the workers get the test's environment from sbatch), through a DEEP night:
    actions in the daemon's block, the bps steps in Slurm jobs of their own, both at once."""
    from test_daemon_night import FAST_STEPS, deep_init, settled, stream

    data = readme_slurm_config()
    raws = tmp_path / "raws"
    raws.mkdir()
    data["executor"]["address"] = "127.0.0.1"
    data["executor"]["provider"]["worker_init"] = ""
    data["watch"] = [{**data["watch"][0], "path": str(raws), "mode": "inotify", "quiet_seconds": 0.5}]
    data.pop("root")
    data["deep"].update(ingest_quiet_seconds=1.0, steps={**FAST_STEPS, "drp": ["step1"]})
    config, path = write_config(machines_dir=str(Path(__file__).resolve().parents[1] / "statemachines"),
                                kinds=["night", "template"], **data)
    assert config.uses_slurm and config.deep.bps_site == "slurm"
    deep_init(path)
    night = "20240621"
    with QuantumWatch(slurm, tmp_path) as watch:
        daemon = daemon_factory(path).start()
        # A night of zeros: bias is the only proc type that runs bps (its two steps).
        assert stream(raws, night, "--science", "VR:0", "--flats", "0", "--n-bias", "4").wait(60) == 0
        wait_for(lambda: settled(config, {night: "done"}, daemon=daemon), timeout=540, interval=0.5, what="done")
    assert_ran_in_our_blocks(config, path, watch, "night", night)
    assert step_jobs(watch, config) and set(watch.quanta.values()) <= set(step_jobs(watch, config)), watch.quanta
    daemon.stop()
    assert not our_jobs(config)
