"""Prometheus metrics (issue 15): the text format parsed with the official client's parser, the
values checked against the store, from a real daemon's file and its loopback /metrics."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from autoproc.config import ConfigError, parse_config
from autoproc.metrics import render, write_atomically
from autoproc.store import Store
from conftest import states, wait_for


def samples(text: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted label items: value}, through prometheus_client's parser."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("autoproc_")
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def expected_from(store: Store) -> dict[str, dict[tuple, float]]:
    """The same figures, computed from the store's own API (not the metrics' SQL)."""
    subjects = {(("kind", k), ("state", s)): n for k, s, n in store.counts()}
    finished, running, retries = {}, {}, {}
    for a in store.attempts():
        kind = store.subject_by_id(a.subject_id).kind
        if a.status == "running":
            key = (("kind", kind), ("stage", a.stage))
            running[key] = running.get(key, 0) + 1
        if a.status in ("succeeded", "failed", "interrupted", "superseded"):
            key = (("kind", kind), ("stage", a.stage), ("status", a.status))
            finished[key] = finished.get(key, 0) + 1
        key = (("kind", kind), ("stage", a.stage))
        retries[key] = retries.get(key, 0) + (a.try_number > 1)
    problems: dict[tuple, int] = {}
    for p in store.problems(limit=10_000):
        problems[(("source", p["source"]),)] = problems.get((("source", p["source"]),), 0) + 1
    return {"autoproc_subjects": subjects, "autoproc_attempts_running": running,
            "autoproc_attempts_total": finished, "autoproc_retries_total": retries,
            "autoproc_problems_total": problems,
            "autoproc_intake_files": {(("status", s),): n for s, n in store.file_counts().items()}}


def test_render_matches_the_store(tmp_path):
    store = Store(tmp_path / "s.db")
    a, _ = store.ensure_subject("widget", "a", "new", actor="t")
    b, _ = store.ensure_subject("widget", 'quo"te\\d', "new", actor="t")  # escaped in labels
    store.ensure_subject("night", "20240601", "bias", actor="t")
    store.update(b, held="look", trigger="hold", actor="t")
    for try_number, status in ((1, "failed"), (2, "succeeded"), (1, "running")):
        attempt = store.add_attempt(a, "building", try_number=try_number)
        store.update_attempt(attempt, status=status)
    store.add_problem("store", "x")
    store.add_problem("control", "y")
    store.add_problem("control", "z")
    store.record_file(path="/in/a-1.w", root="inbox", kind="widget", size=1, mtime=0, status="ready")
    store.record_file(path="/in/b.w", root="inbox", kind="widget", size=1, mtime=0, status="bad", reason="r")
    got = samples(render(store))
    for name, values in expected_from(store).items():
        assert got.get(name, {}) == values, name
    assert got["autoproc_subjects_held"] == {(("kind", "widget"),): 1}
    assert got["autoproc_retries_total"][(("kind", "widget"), ("stage", "building"))] == 1
    assert got["autoproc_subjects"][(("kind", "widget"), ("state", "new"))] == 2


def test_write_is_atomic_and_group_readable(tmp_path):
    path = tmp_path / "autoproc.prom"
    write_atomically(path, "a 1\n")
    write_atomically(path, "a 2\n")
    assert path.read_text() == "a 2\n" and oct(path.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == ["autoproc.prom"]


def test_listen_must_be_loopback():
    with pytest.raises(ConfigError, match="metrics.listen.*not a loopback address"):
        parse_config({"metrics": {"listen": "0.0.0.0:9464"}})
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        parse_config({"metrics": {"listen": "127.0.0.1"}})
    assert parse_config({"metrics": {"listen": "[::1]:9464"}}).metrics.listen == "[::1]:9464"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_daemon_writes_and_serves_metrics(write_config, tmp_path, daemon_factory):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = _free_port()
    config, path = write_config(
        watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "patterns": ["*.w"], "mode": "inotify",
                "quiet_seconds": 0.2}],
        metrics={"interval_seconds": 0.2, "listen": f"127.0.0.1:{port}"})
    daemon_factory(path).start()
    prom = Path(config.metrics.file)
    wait_for(lambda: prom.exists() and Store(config.db).daemon_info()["status"] != "starting",
             what="daemon up (its watchers too: these files come as events, not by the start-up scan)")
    for name, text in (("ok-1.w", "ok"), ("bad-1.w", "fail"), ("flaky-1.w", "flaky")):
        (inbox / name).write_text(text)
    wait_for(lambda: states(config) == {"ok": "done", "bad": "failed", "flaky": "done"}, what="widgets settled")

    def current() -> bool:
        # The file catches up within an interval; compare once nothing moves any more.
        if not prom.exists():
            return False
        got = samples(prom.read_text())
        store = Store(config.db)
        return all(got.get(name, {}) == values for name, values in expected_from(store).items())

    wait_for(current, timeout=10, what="metrics file matching the store")
    got = samples(prom.read_text())
    assert got["autoproc_retries_total"][(("kind", "widget"), ("stage", "building"))] >= 1
    assert got["autoproc_watcher_lag_seconds_count"][(("root", "inbox"),)] >= 3
    assert 0 <= got["autoproc_watcher_lag_seconds_sum"][(("root", "inbox"),)] < 60
    assert got["autoproc_engine_heartbeat_age_seconds"][()] < 5
    assert got["autoproc_store_write_lock_waits_total"][()] >= 0
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:  # noqa: S310
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        served = samples(response.read().decode())
    assert served["autoproc_subjects"] == got["autoproc_subjects"]
