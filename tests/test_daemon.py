"""`autoproc daemon` as a real process: signals, kill -9, restarts, overrides from the CLI."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console

from autoproc.cli.render import subject_view
from autoproc.script.inspect import show as show_info
from autoproc.store import Store
from conftest import child_env, group_gone, journal_consistent, states, wait_for


def config_with_inbox(write_config, tmp_path, **extra):
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    return (*write_config(watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "patterns": ["*.w"],
                                  "mode": "inotify", "quiet_seconds": 0.2}], **extra), inbox)


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(config_path), *args],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), timeout=60)


def running_attempts(config):
    store = Store(config.db)
    try:
        return [a for a in store.attempts(status=("running",)) if a.pgid]
    finally:
        store.close()


def test_sigterm_stops_within_ten_seconds_and_kills_children(write_config, tmp_path, daemon_factory):
    config, path, inbox = config_with_inbox(write_config, tmp_path)
    d = daemon_factory(path).start()
    (inbox / "a-1.w").write_text("sleep 4")
    attempt = wait_for(lambda: running_attempts(config), what="a build running")[0]
    t0 = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 10
    wait_for(lambda: group_gone(attempt.pgid), timeout=3, what="child group gone")
    store = Store(config.db)
    assert store.attempt(attempt.id).status == "interrupted"
    assert store.daemon_info()["status"] == "stopped"
    # A restart carries on: the interrupted build runs again, to the end.
    daemon_factory(path).start()
    wait_for(lambda: states(config).get("a") == "done", what="a done after restart")


def test_sighup_keeps_old_config_when_new_is_invalid(write_config, tmp_path, daemon_factory):
    config, path, inbox = config_with_inbox(write_config, tmp_path)
    d = daemon_factory(path).start()
    wait_for(lambda: Store(config.db).daemon_info(), what="daemon up")
    good = path.read_text()
    path.write_text(good + "retry: {max_tries: zero}\n")
    d.signal(signal.SIGHUP)
    wait_for(lambda: any("reload refused" in p["message"] for p in Store(config.db).problems()), what="refusal")
    message = next(p["message"] for p in Store(config.db).problems() if "reload refused" in p["message"])
    assert "retry.max_tries" in message
    (inbox / "b-1.w").write_text("ok")  # still working, on the old configuration
    wait_for(lambda: states(config).get("b") == "done")
    path.write_text(good)
    d.signal(signal.SIGHUP)
    wait_for(lambda: any(p["message"].startswith("reloaded") for p in Store(config.db).problems()))
    assert d.proc.poll() is None


def test_second_daemon_on_same_store_is_refused(write_config, tmp_path, daemon_factory):
    config, path, _ = config_with_inbox(write_config, tmp_path)
    daemon_factory(path).start()
    wait_for(lambda: Store(config.db).daemon_info(), what="first daemon up")
    second = daemon_factory(path).start()
    assert second.wait(timeout=30) == 2
    assert "another autoproc daemon" in second.output()


def test_cli_override_is_seen_within_a_second(write_config, tmp_path, daemon_factory):
    config, path, inbox = config_with_inbox(write_config, tmp_path)
    daemon_factory(path).start()
    (inbox / "c-1.w").write_text("fail")
    wait_for(lambda: states(config).get("c") == "failed")
    (inbox / "c-1.w").write_text("ok")  # the operator fixed the input
    res = cli(path, "retry", "widget", "c", "--reason", "input fixed", "--operator", "dana")
    assert res.returncode == 0, res.stderr
    t0 = time.monotonic()
    wait_for(lambda: states(config).get("c") != "building" or running_attempts(config), timeout=5)
    assert time.monotonic() - t0 < 1.5
    wait_for(lambda: states(config).get("c") == "done", what="c done after retry")
    history = json.loads(cli(path, "history", "widget", "c", "--json").stdout)
    # The daemon journals who sent the request (this test runs as root); --operator is a note beside it.
    retried = next(r for r in history if r["trigger"] == "retry")
    assert retried["actor"] == "root" and retried["evidence"]["on_behalf_of"] == "dana"
    assert retried["reason"] == "input fixed"


def test_cli_refuses_undeclared_states_and_kinds(write_config, tmp_path):
    config, path, _ = config_with_inbox(write_config, tmp_path)
    Store(config.db).ensure_subject("widget", "z", "new", actor="test")
    res = cli(path, "set", "widget", "z", "exploded", "--reason", "x")
    assert res.returncode == 2 and "widget has no state 'exploded'" in res.stderr
    res = cli(path, "set", "doohickey", "z", "new", "--reason", "x")
    assert res.returncode == 2 and "unknown kind 'doohickey'" in res.stderr
    res = cli(path, "set", "widget", "z", "done", "--reason", "x")
    assert res.returncode == 2 and "--force" in res.stderr
    res = cli(path, "set", "widget", "z", "done", "--reason", "x", "--force", "--dry-run")
    assert res.returncode == 0 and "would move widget/z from new to done (force)" in res.stdout


def test_kill9_during_actions_then_restart(write_config, tmp_path, daemon_factory):
    config, path, inbox = config_with_inbox(write_config, tmp_path)
    d = daemon_factory(path).start()
    for i in range(4):
        (inbox / f"q{i}-1.w").write_text("ok")
    wait_for(lambda: all(states(config).get(f"q{i}") == "done" for i in range(4)), what="first batch done")
    (inbox / "s-1.w").write_text("sleep 3 progress")
    (inbox / "t-1.w").write_text("sleep 3")
    wait_for(lambda: len(running_attempts(config)) == 2, what="two builds running")
    wait_for(lambda: any(a.result.get("progress") for a in running_attempts(config)), what="s's progress")
    pgids = [a.pgid for a in running_attempts(config)]
    d.kill9()
    # While the daemon is down, more files arrive: the restart's scan must find them.
    for i in range(3):
        (inbox / f"late{i}-1.w").write_text("ok")
    daemon_factory(path).start()
    everything = [f"q{i}" for i in range(4)] + ["s", "t"] + [f"late{i}" for i in range(3)]
    wait_for(lambda: all(states(config).get(k) == "done" for k in everything), timeout=60, what="all done")
    wait_for(lambda: all(group_gone(p) for p in pgids), timeout=3, what="old children gone")
    ledger = (Path(config.root) / "ledger.txt").read_text().splitlines()
    for k in [f"q{i}" for i in range(4)] + [f"late{i}" for i in range(3)]:
        assert ledger.count(f"done {k}") == 1, k  # finished work is not repeated
    store = Store(config.db)
    journal_consistent(store)
    statuses = {a.status for a in store.attempts()}
    assert statuses <= {"succeeded", "interrupted"}
    interrupted = {store.subject_by_id(a.subject_id).key: a for a in store.attempts()
                   if a.status == "interrupted"}
    assert set(interrupted) == {"s", "t"}
    # The progress s reported before the kill survived it (it resets the crash count).
    assert interrupted["s"].result["progress"] == ["half built"]
    assert "progress" not in interrupted["t"].result
    console = Console(width=400, record=True)  # what `autoproc show widget s` prints
    console.print(subject_view(show_info(store, "widget", "s")))
    assert "[progress: half built]" in console.export_text()
    assert store.file_counts() == {"consumed": 9}
    assert yaml.safe_load(path.read_text())["root"] == str(config.root)
