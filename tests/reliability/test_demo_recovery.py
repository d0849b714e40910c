"""The demo scenario with its state database put back from a backup taken mid-demo: the
daemon carries on to the same end states, and nothing outside is done twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from autoproc import backup
from autoproc.script import demo as scenario
from autoproc.store import Store
from conftest import child_env, journal_consistent, wait_for
from reliability.test_crash import expected_states, raws_in_butler, settle, steps_by_launch

pytestmark = pytest.mark.middleware


def submissions(site) -> Counter[int]:
    found: Counter[int] = Counter()
    for where in ("incoming", "running", "done"):
        for path in (site.spool / where).glob("*.json"):
            found[int(json.loads(path.read_text())["expnum"])] += 1
    return found


def early(config) -> bool:
    """Exposures exist and none has been submitted to the grid yet."""
    if not config.db.exists():
        return False
    store = Store(config.db, readonly=True)
    try:
        exposures = store.subjects("exposure")
        return bool(exposures) and all(s.state in ("new", "queued", "dagmaker") for s in exposures)
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_restore_a_mid_demo_backup_and_carry_on(tmp_path: Path):
    demo, site = scenario.set_up(tmp_path / "demo", quiet=True)
    config = demo.config
    try:
        daemon = scenario.start_daemon(demo)
        scenario.start_data(demo, site)
        wait_for(lambda: early(config), timeout=120, interval=0.1, what="exposures before any submission")
        res = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(demo.config_path),  # noqa: S603
                              "store", "backup"], capture_output=True, text=True, env=child_env(), timeout=60)
        assert res.returncode == 0, res.stderr
        mid = backup.backups(config.backup.directory)[0]
        assert settle(config, daemon), "the demo did not settle before the restore"
        before = submissions(site)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        res = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(demo.config_path),  # noqa: S603
                              "store", "restore", str(mid)], capture_output=True, text=True, env=child_env(),
                             timeout=60)
        assert res.returncode == 0, res.stderr
        daemon = scenario.start_daemon(demo)
        time.sleep(5.0)
        assert settle(config, daemon), "the demo did not settle after the restore"
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    finally:
        demo.stop_all()

    store = Store(config.db, readonly=True)
    try:
        final = {(s.kind, s.key): s.state for s in store.subjects()}
        season = store.subject("season", str(scenario.SEASON))
        journal_consistent(store)
    finally:
        store.close()
    assert final == {**final, **expected_states()}, final
    # No DAG submitted again after the restore.
    after = submissions(site)
    assert after == before and set(after.values()) == {1}, (before, after)
    # Raws: no (exposure, detector) twice in the Butler.
    assert not [k for k, n in Counter(raws_in_butler(str(config.deep.repo))).items() if n > 1]
    # Post-processing: step 0 (reading the exposure list) at most once per distinct list.
    runs = season.data.get("postproc_runs") or []
    launches = steps_by_launch(Path(season.data["outdir"]))
    assert sum(1 for launch in launches if 0 in launch) <= max(1, len({tuple(sorted(r["expnums"])) for r in runs}))
