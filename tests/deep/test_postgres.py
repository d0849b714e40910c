"""The Butler registry on PostgreSQL: a real server started by the tests
(tests/postgres_server.py), `autoproc deep init` against it, a DEEP night through a real
daemon (a kill -9 in the middle included), the server going away for 20 s, and what an
operator is told when the registry cannot be used."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lsst.daf.butler")

from steps_support import outputs_twice  # noqa: E402
from test_daemon_night import N1, deep_config, deep_init, settled, stream  # noqa: E402

from autoproc.store import Store  # noqa: E402
from conftest import child_env, states, wait_for  # noqa: E402
from postgres_server import NO_GIST_DATABASE, PASSWORD, PASSWORD_USER, free_port  # noqa: E402

pytestmark = [pytest.mark.middleware, pytest.mark.postgres]

SCIENCE = ["--science", "VR:2", "--science", "g:1", "--n-bias", "2", "--flats", "2"]


def init(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "deep", "init"],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), timeout=120)


def pg_night_config(write_config, tmp_path, postgres, namespace, **deep):
    return deep_config(write_config, tmp_path, registry_db=postgres.url(), registry_namespace=namespace,
                       templates={"allSky": [N1]}, **deep)


def schema_tables(postgres, namespace: str) -> int:
    with postgres.connect() as conn:
        return conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
                            (namespace,)).fetchone()[0]


def test_deep_init_says_what_is_wrong_and_leaves_nothing_behind(write_config, tmp_path, postgres, pg_namespace):
    cases = {
        "wrong port": (postgres.url(port=free_port()), "Connection refused", "is the server running"),
        "wrong password": (postgres.url(user=PASSWORD_USER, password="s3cr3t-typo"),
                           "password authentication failed", "check the user and password"),
        "no such database": (postgres.url(database="no_such_db"), 'database "no_such_db" does not exist',
                             "createdb no_such_db"),
        "no btree_gist": (postgres.url(database=NO_GIST_DATABASE), "btree_gist",
                          f"`CREATE EXTENSION btree_gist;` in database '{NO_GIST_DATABASE}'"),
    }
    for case, (url, said, hint) in cases.items():
        config, path, _ = deep_config(write_config, tmp_path, registry_db=url, registry_namespace=pg_namespace)
        proc = init(path)
        assert proc.returncode == 2, (case, proc.stdout, proc.stderr)
        assert said in proc.stderr and hint in proc.stderr, (case, proc.stderr)
        assert "Traceback" not in proc.stderr and "s3cr3t" not in proc.stderr, (case, proc.stderr)
        assert not (config.root / "repo").exists(), case  # nothing half-made: the next try can work
    # The cause fixed (here: the right password), the same command works.
    config, path, _ = deep_config(write_config, tmp_path, registry_namespace=pg_namespace,
                                  registry_db=postgres.url(user=PASSWORD_USER, password=PASSWORD))
    assert "created (postgresql)" in deep_init(path)
    assert schema_tables(postgres, pg_namespace) > 10
    assert "already exists" in deep_init(path)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_night_to_done_on_postgres_through_a_kill9(write_config, tmp_path, daemon_factory, postgres, pg_namespace):
    config, path, raws = pg_night_config(write_config, tmp_path, postgres, pg_namespace)
    assert "created (postgresql)" in deep_init(path)
    daemon = daemon_factory(path).start()
    assert stream(raws, N1, *SCIENCE).wait(60) == 0

    def step_child_running() -> bool:
        store = Store(config.db)
        try:
            return any(a.status == "running" and a.pgid and a.step for a in store.attempts())
        finally:
            store.close()

    wait_for(step_child_running, timeout=120, interval=0.1, what="a DEEP step's child running")
    daemon.kill9()
    daemon = daemon_factory(path).start()
    wait_for(lambda: settled(config, {N1: "done"}, daemon=daemon), timeout=300, interval=0.5, what="night done")
    assert states(config, "template") == {"allSky": "done"}
    assert schema_tables(postgres, pg_namespace) > 10  # the registry really is on the server

    from lsst.daf.butler import Butler

    b = Butler.from_config(str(config.root / "repo"))
    try:
        diffs = b.query_datasets("deepDiff_differenceExp", collections=f"DEEP/{N1}/allSky/diff_drp", explain=False)
        assert len(diffs) == 3 * 2
        assert len(b.query_datasets("postISRCCD", collections=f"DEEP/{N1}/drp", explain=False)) == 3 * 2
    finally:
        b.close()
    assert outputs_twice(str(config.root / "repo")) == {}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_server_away_for_20s_mid_night(write_config, tmp_path, daemon_factory, postgres, pg_namespace):
    config, path, raws = pg_night_config(write_config, tmp_path, postgres, pg_namespace, registry_retry_seconds=2.0)
    assert "created (postgresql)" in deep_init(path)
    daemon = daemon_factory(path).start()
    assert stream(raws, N1, *SCIENCE).wait(60) == 0
    wait_for(lambda: states(config, "night").get(N1) in ("flat", "drp"), timeout=180, interval=0.1,
             what="the night past its bias")
    postgres.stop()
    stopped = time.monotonic()
    try:
        def waiting_on_the_registry() -> str | None:
            store = Store(config.db)
            try:
                return next((a.result["reason"] for a in store.attempts() if a.status == "waiting"
                             and "Butler registry unreachable" in a.result.get("reason", "")), None)
            finally:
                store.close()

        reason = wait_for(waiting_on_the_registry, timeout=60, interval=0.2, what="a step waiting on the registry")
        status = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "status"],  # noqa: S603
                                capture_output=True, text=True, env={**child_env(), "COLUMNS": "250"}, timeout=60)
        assert "registry_unreachable" in status.stdout and "Butler registry unreachable" in status.stdout, (
            status.stdout)
        time.sleep(max(0.0, 20 - (time.monotonic() - stopped)))
    finally:
        postgres.start()
    wait_for(lambda: settled(config, {N1: "done"}, daemon=daemon), timeout=300, interval=0.5, what="night done")
    store = Store(config.db)
    try:
        night = store.subject("night", N1)
        attempts = store.attempts(night.id)
        problems = [p for p in store.problems(limit=1000) if p["source"] == "registry_unreachable"]
    finally:
        store.close()
    # The wait spent no retry budget: no attempt of the night failed, and the outage is a problem row.
    assert not [a for a in attempts if a.status == "failed"], [a.result for a in attempts]
    assert problems and "Butler registry unreachable" in reason
    assert outputs_twice(str(config.root / "repo")) == {}
