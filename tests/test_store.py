import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

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


# -- databases made by the previous autoproc (schema written as SQL DDL) -------------------

OLD_SCHEMA = Path(__file__).parent / "data" / "store-schema"


def old_database(path: Path, version: int) -> None:
    """A state database as autoproc made it before sqlite-utils wrote its schema, at `version`,
    with a subject, a journal row, an attempt and a file in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    for number in range(1, version + 1):
        conn.executescript((OLD_SCHEMA / f"v{number}.sql").read_text())
        conn.execute(f"PRAGMA user_version = {number}")
    conn.execute("INSERT INTO subjects (kind, key, state, entered, created, updated) VALUES ('widget', 'w1', 'new',"
                 " 1, 1, 1)")
    conn.execute("INSERT INTO journal (subject_id, to_state, trigger, actor, version, time)"
                 " VALUES (1, 'new', 'create', 'daemon', 1, 1)")
    conn.execute("INSERT INTO attempts (subject_id, stage, try, entry, status) VALUES (1, 'building', 1, 1, 'succeeded')")
    conn.execute("INSERT INTO files (path, root, kind, size, mtime, subject_id, status, seen, updated)"
                 " VALUES ('/raw/a.fits', 'raw', 'raw', 10, 1, 1, 'bad', 1, 1)")
    conn.close()


def schema_of(conn: sqlite3.Connection) -> dict:
    """What a schema means (columns, keys, unique and plain indexes, triggers' tables), not
    how its DDL was spelled or what its indexes are called."""

    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out = {}
    for t in tables:
        columns = [(c[1], c[2], c[3], c[4], c[5]) for c in conn.execute(f"PRAGMA table_info({t})")]
        fks = sorted((f[2], f[3], f[4]) for f in conn.execute(f"PRAGMA foreign_key_list({t})"))
        indexes = sorted((tuple(i[2] for i in conn.execute(f"PRAGMA index_info('{ix[1]}')")), ix[2])
                         for ix in conn.execute(f"PRAGMA index_list({t})"))
        out[t] = {"columns": columns, "foreign_keys": fks, "indexes": indexes}
    out["triggers on"] = sorted(r[0] for r in conn.execute("SELECT tbl_name FROM sqlite_master WHERE type = 'trigger'"
                                                           " AND name NOT LIKE 'daemon_one_row%'"))
    return out


def test_the_schema_means_what_the_previous_versions_ddl_meant(tmp_path):
    old_database(tmp_path / "old.db", len(MIGRATIONS))
    old = sqlite3.connect(tmp_path / "old.db")
    new = Store(tmp_path / "new.db")
    assert schema_of(new.conn) == schema_of(old)
    old.close()


@pytest.mark.parametrize("version", range(1, len(MIGRATIONS) + 1))
def test_a_database_from_the_previous_version_opens_and_migrates(tmp_path, version):
    old_database(tmp_path / "a.db", version)
    s = Store(tmp_path / "a.db")
    assert s.schema_version() == len(MIGRATIONS)
    subject = s.subject("widget", "w1")
    assert subject.state == "new" and [r["trigger"] for r in s.journal(subject.id)] == ["create"]
    assert [a.status for a in s.attempts(subject.id)] == ["succeeded"]
    assert s.file("/raw/a.fits")["cause"] == "file"  # the column migration 2 adds, with its default
    s.transition(subject, "building", trigger="start", actor="alice")
    s.record_file(path="/raw/b.fits", root="raw", kind="raw", size=1, mtime=1, status="bad", cause="environment")
    assert s.request_recheck(["/raw/b.fits"], actor="alice", reason="fixed") == ["/raw/b.fits"]
    s.record_backup("/backups/x.db", 1, "test")
    assert s.backups()[0]["why"] == "test"
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        s.conn.execute("DELETE FROM journal")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        s.conn.execute("UPDATE intake_journal SET actor = 'mallory'")
    s.close()


def test_a_migration_that_fails_leaves_the_database_as_it_was(tmp_path):
    """sqlite-utils runs inside the migration's transaction: nothing of a failed step stays."""
    old_database(tmp_path / "a.db", 1)
    conn = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    conn.execute("CREATE TABLE intake_journal (x)")  # in the way of migration 2's last table
    conn.close()
    with pytest.raises(sqlite3.OperationalError, match="intake_journal"):
        Store(tmp_path / "a.db")
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "cause" not in [c[1] for c in conn.execute("PRAGMA table_info(files)")]
    assert "backups" not in [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    conn.close()


@pytest.mark.parametrize("made_by", ["previous", "current"])
def test_the_daemon_table_has_one_row(tmp_path, made_by):
    if made_by == "previous":
        old_database(tmp_path / "a.db", len(MIGRATIONS))
    s = Store(tmp_path / "a.db")
    s.heartbeat("up", started=1.0)
    s.heartbeat("still up")
    assert s.daemon_info()["status"] == "still up"
    with pytest.raises(sqlite3.IntegrityError):
        s.conn.execute("INSERT INTO daemon (id, pid, host, started, heartbeat) VALUES (2, 1, 'h', 1, 1)")
    with pytest.raises(sqlite3.IntegrityError):
        s.conn.execute("UPDATE daemon SET id = 3")
    s.close()
