import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

from autoproc.store import MIGRATIONS, Conflict, Store, StoreError


def test_schema_version_and_reopen(tmp_path):
    s = Store(tmp_path / "a.db")
    assert s.schema_version() == len(MIGRATIONS)
    s.close()
    s = Store(tmp_path / "a.db")  # migrating again is a no-op
    assert s.schema_version() == len(MIGRATIONS)
    assert set(s.db.table_names()) >= {"subjects", "journal", "attempts", "files", "problems", "daemon"}


def test_database_file_is_private(tmp_path):
    Store(tmp_path / "a.db").close()
    assert stat.S_IMODE(os.stat(tmp_path / "a.db").st_mode) == 0o600


def test_wal_and_busy_timeout(tmp_path):
    s = Store(tmp_path / "a.db")
    assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_compare_and_set_and_journal(tmp_path):
    s = Store(tmp_path / "a.db")
    subj, created = s.ensure_subject("widget", "a", "new", actor="daemon")
    assert created and subj.version == 1
    again, created = s.ensure_subject("widget", "a", "new", actor="daemon")
    assert not created and again.id == subj.id
    moved = s.transition(subj, "building", trigger="start", actor="alice", reason="go", evidence={"n": 1})
    assert moved.state == "building" and moved.version == 2 and moved.entry is not None
    with pytest.raises(Conflict):
        s.transition(subj, "done", trigger="x", actor="bob")  # stale version
    rows = s.journal(subj.id)
    assert [(r["from_state"], r["to_state"], r["actor"]) for r in rows] == [(None, "new", "daemon"),
                                                                          ("new", "building", "alice")]
    assert rows[1]["evidence"] == {"n": 1}


def test_journal_is_append_only(tmp_path):
    s = Store(tmp_path / "a.db")
    s.ensure_subject("widget", "a", "new", actor="daemon")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        s.conn.execute("UPDATE journal SET reason = 'rewritten'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        s.conn.execute("DELETE FROM journal")


def test_readonly_open_of_missing_db_is_clear(tmp_path):
    with pytest.raises(StoreError, match="no state database here"):
        Store(tmp_path / "missing.db", readonly=True)


def test_busy_database_waits_for_the_lock(tmp_path):
    s = Store(tmp_path / "a.db")
    subj, _ = s.ensure_subject("widget", "a", "new", actor="daemon")
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(1.0, lambda: other.execute("COMMIT")).start()
    t0 = time.monotonic()
    s.transition(subj, "building", trigger="start", actor="daemon")
    assert time.monotonic() - t0 >= 0.9  # it waited for the other writer instead of failing


WRITER = r"""
import sys
from autoproc.store import Store, Conflict
store = Store(sys.argv[1])
name, n = sys.argv[2], int(sys.argv[3])
done = 0
while done < n:
    s = store.subject("widget", "shared")
    try:
        store.update(s, data={"count": s.data.get("count", 0) + 1, "last": name}, trigger="note", actor=name)
        done += 1
    except Conflict:
        pass
"""


def test_two_processes_lose_no_update(tmp_path):
    path = tmp_path / "a.db"
    s = Store(path)
    s.ensure_subject("widget", "shared", "new", actor="daemon")
    n = 300
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(n)])  # noqa: S603
             for name in ("daemon-like", "cli-like")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    final = s.subject("widget", "shared")
    assert final.data["count"] == 2 * n
    assert final.version == 1 + 2 * n
    notes = [r for r in s.journal(final.id) if r["trigger"] == "note"]
    assert len(notes) == 2 * n
    assert {r["actor"] for r in notes} == {"daemon-like", "cli-like"}
