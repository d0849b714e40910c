"""The demo scenario with its state database put back from a backup taken mid-demo: the
daemon carries on to the same end states, and nothing outside is done twice."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from steps_support import outputs_twice

from autoproc import backup
from autoproc.script import demo as scenario
from autoproc.store import Store
from conftest import child_env, journal_consistent
from reliability.test_crash import expected_states, raws_in_butler, settle, steps_by_launch

pytestmark = pytest.mark.middleware


def submissions(site) -> Counter[int]:
    found: Counter[int] = Counter()
    for where in ("incoming", "running", "done"):
        for path in (site.spool / where).glob("*.json"):
            found[int(json.loads(path.read_text())["expnum"])] += 1
    return found


def states_in(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {f"{k}/{key}": state for k, key, state in conn.execute("SELECT kind, key, state FROM subjects")}
    finally:
        conn.close()


def cli(demo, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(demo.config_path), *args],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), timeout=60)


def done_outside(config, site) -> tuple[Counter[int], list[list[int]]]:
    """What the demo did outside autoproc so far: the DAGs submitted per exposure and the
    post-processing launches (`end_state_checks` compares them at the end)."""
    store = Store(config.db, readonly=True)
    try:
        outdir = Path(store.subject("season", str(scenario.SEASON)).data["outdir"])
    finally:
        store.close()
    return submissions(site), steps_by_launch(outdir)


def carry_on(demo, config, after: str) -> None:
    """Start the daemon again on the state put back, let it settle, stop it."""
    daemon = scenario.start_daemon(demo)
    time.sleep(5.0)
    assert settle(config, daemon), f"the demo did not settle after the {after}"
    daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("which", ["first scheduled", "before the daemon started"])
def test_restore_a_backup_after_the_demo_and_carry_on(tmp_path: Path, which: str):
    """`first scheduled`: DESGW's exposures were on the grid, post-processing had not run,
    the nights were ingesting; all that happened after it is found again from the evidence.
    `before the daemon started`: only the season (in `validating`) and the template; the
    season's validation meets the dp{S} trees its own DAGs made and accepts them."""
    demo, site = scenario.set_up(tmp_path / "demo", quiet=True)
    # Backups every 3 s, all kept (the first one is restored).
    settings = yaml.safe_load(demo.config_path.read_text())
    settings["backup"] = {"interval_minutes": 0.05, "keep": 1000}
    demo.config_path.write_text(yaml.safe_dump(settings))
    config = demo.config
    if which == "before the daemon started":
        assert cli(demo, "store", "backup").returncode == 0
    try:
        daemon = scenario.start_daemon(demo)
        scenario.start_data(demo, site)
        assert settle(config, daemon), "the demo did not settle before the restore"
        before, launches_before = done_outside(config, site)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        mid = backup.backups(config.backup.directory)[-1]  # the oldest
        mid_states = states_in(mid)
        assert mid_states[f"season/{scenario.SEASON}"] != "postprocessing"
        assert all(mid_states.get(f"night/{night}") != "done" for night, _, _ in scenario.NIGHTS)
        if which == "before the daemon started":
            # What set-up made (the season, the template coadd's subject), none of the rest.
            assert not [ref for ref in mid_states if ref.startswith(("exposure/", "night/"))], mid_states
        res = cli(demo, "store", "restore", str(mid))
        assert res.returncode == 0, res.stderr
        print("restored", mid.name, json.dumps(mid_states))
        carry_on(demo, config, "restore")
    finally:
        demo.stop_all()

    end_state_checks(config, site, before, launches_before)


def end_state_checks(config, site, before: Counter[int], launches_before: list[list[int]]) -> None:
    """The uninterrupted demo's end states, a consistent journal, and nothing done twice:
    no DAG submitted again, no raw ingested twice, no quantum recomputed, no post-processing
    launched again."""
    store = Store(config.db, readonly=True)
    try:
        final = {(s.kind, s.key): s.state for s in store.subjects()}
        season = store.subject("season", str(scenario.SEASON))
        journal_consistent(store)
    finally:
        store.close()
    assert final == {**final, **expected_states()}, final
    after = submissions(site)
    assert after == before and set(after.values()) == {1}, (before, after)
    assert not [k for k, n in Counter(raws_in_butler(str(config.deep.repo))).items() if n > 1]
    assert not outputs_twice(str(config.deep.repo))
    assert steps_by_launch(Path(season.data["outdir"])) == launches_before


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_rebuild_after_the_demo_with_no_database_and_no_backup(tmp_path: Path):
    """A finished demo, its state database and backups deleted: `store rebuild` finds every
    subject again from the evidence, and the daemon takes them to the same end states
    without submitting a DAG, launching a post-processing run or running a step again."""
    demo, site = scenario.set_up(tmp_path / "demo", quiet=True)
    config = demo.config
    try:
        daemon = scenario.start_daemon(demo)
        scenario.start_data(demo, site)
        assert settle(config, daemon), "the demo did not settle before the database was deleted"
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        before, launches_before = done_outside(config, site)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{config.db}{suffix}").unlink(missing_ok=True)
        for old in backup.backups(config.backup.directory):
            old.unlink()
        res = cli(demo, "store", "rebuild")
        assert res.returncode == 0, res.stderr
        print(res.stdout)
        assert "journal" in res.stdout and "holds" in res.stdout  # says what could not come back
        assert cli(demo, "store", "rebuild").returncode != 0  # never over a database without --replace
        store = Store(config.db, readonly=True)
        try:
            rebuilt = {(s.kind, s.key): s.state for s in store.subjects()}
            rows = {r["subject_id"]: r for r in store.journal() if r["trigger"] == "rebuild"}
            assert len(rows) == len(rebuilt) and all(r["reason"].startswith("rebuilt from evidence")
                                                     for r in rows.values())
        finally:
            store.close()
        assert set(rebuilt) == set(expected_states()), rebuilt
        # Submitted exposures come back past their submission; the season past its post-processing.
        for expnum, behaviour in scenario.EXPOSURES.items():
            want = "no_templates" if behaviour.get("no_templates") else "ccd_check"
            assert rebuilt[("exposure", f"{scenario.SEASON}.{expnum}")] == want, rebuilt
        assert rebuilt[("season", str(scenario.SEASON))] == "waiting"
        carry_on(demo, config, "rebuild")
    finally:
        demo.stop_all()
    end_state_checks(config, site, before, launches_before)
