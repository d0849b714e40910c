"""The state store: SQLite in WAL mode, shared by the daemon and the CLI.

Every state change is a compare-and-set on the subject's version plus one journal row,
in one `BEGIN IMMEDIATE` transaction, so two processes writing at once lose nothing.
The journal is append-only (enforced by triggers).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoproc.errors import AutoprocError
from autoproc.process import make_dirs

if TYPE_CHECKING:  # imported when first used (`Store.db`): it takes ~0.4 s, and most opens need no migration
    import sqlite_utils

BUSY_TIMEOUT_MS = 30_000
# The daemon waits for the write lock in slices this long, forever: another process holding
# the database (a backup, a sqlite3 shell left in a transaction) must never crash it, and
# between slices it can tell systemd's watchdog it is alive and waiting (see `on_busy`).
DAEMON_BUSY_SLICE_MS = 5_000
# A write that waited this long for the write lock counts as a wait (see `lock_waits`).
LOCK_WAIT_COUNTED_SECONDS = 0.01

def _append_only(db: sqlite_utils.Database, table: str, what: str) -> None:
    # sqlite-utils declares tables, columns and indexes but not triggers: these stay SQL.
    for verb in ("UPDATE", "DELETE"):
        db.execute(f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                   f"BEGIN SELECT RAISE(ABORT, '{what} is append-only'); END")


def _schema_1(db: sqlite_utils.Database) -> None:
    subject_fk = [("subject_id", "subjects", "id")]
    db.table("subjects").create(
        {"id": int, "kind": str, "key": str, "state": str, "version": int, "data": str, "held": str, "entry": int,
         "entered": float, "created": float, "updated": float},
        pk="id", not_null={"kind", "key", "state", "version", "data", "entered", "created", "updated"},
        defaults={"version": 1, "data": "{}"})
    db.table("subjects").create_index(["kind", "key"], index_name="subjects_kind_key", unique=True)
    db.table("subjects").create_index(["kind", "state"], index_name="subjects_kind_state")
    db.table("journal").create(
        {"id": int, "subject_id": int, "from_state": str, "to_state": str, "trigger": str, "actor": str,
         "reason": str, "evidence": str, "version": int, "time": float},
        pk="id", foreign_keys=subject_fk,
        not_null={"subject_id", "to_state", "trigger", "actor", "reason", "evidence", "version", "time"},
        defaults={"reason": "", "evidence": "{}"})
    db.table("journal").create_index(["subject_id", "id"], index_name="journal_subject")
    _append_only(db, "journal", "the journal")
    db.table("attempts").create(
        {"id": int, "subject_id": int, "stage": str, "step": str, "try": int, "entry": int, "status": str,
         "argv": str, "cwd": str, "log": str, "pid": int, "pgid": int, "host": str, "started": float,
         "ended": float, "exit_status": int, "result": str, "applied": int, "not_before": float},
        pk="id", foreign_keys=subject_fk,
        not_null={"subject_id", "stage", "step", "try", "entry", "status", "result", "applied"},
        defaults={"step": "", "result": "{}", "applied": 0})
    db.table("attempts").create_index(["subject_id", "id"], index_name="attempts_subject")
    db.table("attempts").create_index(["status"], index_name="attempts_status")
    db.table("files").create(
        {"id": int, "path": str, "root": str, "kind": str, "size": int, "mtime": float, "subject_id": int,
         "status": str, "reason": str, "info": str, "seen": float, "updated": float},
        pk="id", foreign_keys=subject_fk,
        not_null={"path", "root", "kind", "size", "mtime", "status", "reason", "info", "seen", "updated"},
        defaults={"reason": "", "info": "{}"})
    db.table("files").create_index(["path"], index_name="files_path", unique=True)
    db.table("files").create_index(["subject_id", "status"], index_name="files_subject")
    db.table("files").create_index(["status"], index_name="files_status")
    db.table("problems").create({"id": int, "time": float, "source": str, "message": str}, pk="id",
                          not_null={"time", "source", "message"})
    db.table("daemon").create({"id": int, "pid": int, "host": str, "started": float, "heartbeat": float, "status": str},
                        pk="id", not_null={"pid", "host", "started", "heartbeat", "status"}, defaults={"status": ""})
    # One row, id 1 (a CHECK constraint before sqlite-utils, which declares none).
    for verb in ("INSERT", "UPDATE"):
        db.execute(f"CREATE TRIGGER daemon_one_row_{verb.lower()} BEFORE {verb} ON daemon WHEN NEW.id != 1 "
                   "BEGIN SELECT RAISE(ABORT, 'the daemon table has one row, id 1'); END")


def _schema_2(db: sqlite_utils.Database) -> None:
    # Bad-file verdicts say whose fault they were ("file", or "environment": the config, a
    # manifest, permissions), so environment verdicts can be re-examined; the backups taken.
    db.table("files").add_column("cause", str, not_null_default="file")
    db.table("backups").create({"id": int, "path": str, "time": float, "size": int, "why": str}, pk="id",
                         not_null={"path", "time", "size", "why"})
    db.table("intake_journal").create(
        {"id": int, "path": str, "action": str, "actor": str, "reason": str, "time": float}, pk="id",
        not_null={"path", "action", "actor", "reason", "time"}, defaults={"reason": ""})
    _append_only(db, "intake_journal", "the intake journal")


# Each entry upgrades the schema by one version; `PRAGMA user_version` says where a file is.
# A database made by an older autoproc (its tables written as SQL DDL, same columns and
# constraints) is upgraded by the same steps (tests/test_store.py opens one).
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_schema_1, _schema_2]



class AttemptStatus(StrEnum):
    """Where an attempt is. A StrEnum: stored as its value, equal to it in comparisons."""

    QUEUED = "queued"            # recorded, not handed to the executor yet
    RUNNING = "running"          # its action runs
    WAITING = "waiting"          # the action found nothing to do yet, or the environment is at fault: runs again
    SUCCEEDED = "succeeded"      # the action returned an Outcome with a trigger (fired once `applied`)
    FAILED = "failed"            # the action failed (its result says whether a retry may help)
    HELD = "held"                # the action asked for a person
    INTERRUPTED = "interrupted"  # the daemon stopped or died while it ran
    SUPERSEDED = "superseded"    # an operator moved the subject on while it ran


# Statuses of an attempt that has not ended: at most one per subject and state entry.
ATTEMPT_ACTIVE: tuple[AttemptStatus, ...] = (AttemptStatus.QUEUED, AttemptStatus.RUNNING)


class StoreError(AutoprocError):
    """The store cannot do what was asked (it says why)."""


# Exit status of a daemon (or CLI verb) that found the state database damaged or unsafe:
# the systemd units do not restart on it (RestartPreventExitStatus=), since a restart
# cannot fix it and a person must (see `damage_message`).
EXIT_STORE_DAMAGED = 65  # EX_DATAERR
EXIT_STORE_UNSAFE = 78  # EX_CONFIG
# SQLite's primary result codes meaning the file itself is bad (not a lock or a full disk).
_DAMAGE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


class StoreDamaged(StoreError):
    """The state database file is damaged: the message says what SQLite found and how to recover."""

    exit_status = EXIT_STORE_DAMAGED

    def __init__(self, path: Path | str, said: str):
        self.path = Path(path)
        self.said = said
        super().__init__(damage_message(self.path, said))


class StoreUnsafe(StoreError):
    """The state database is somewhere SQLite's WAL mode is not safe (a network file system)."""

    exit_status = EXIT_STORE_UNSAFE


class StoreMissing(StoreError):
    """The state database is gone but backups of it exist: starting afresh would redo work."""

    exit_status = EXIT_STORE_DAMAGED


def damage_message(path: Path, said: str) -> str:
    """The one message every command gives for a damaged state database."""
    return (f"{path}: the state database is damaged (SQLite says: {said.strip()}).\n"
            "  Nothing was changed. To recover (with the daemon stopped):\n"
            "    autoproc store check              # the full integrity check, to see the damage\n"
            "    autoproc store restore            # put the newest good backup back (the damaged file is kept)\n"
            "  then start the daemon again; it finds the work done since the backup from the evidence.")


def is_damage(err: BaseException) -> bool:
    """True when `err` is SQLite saying the database file itself is bad."""
    if not isinstance(err, sqlite3.DatabaseError):
        return False
    code = getattr(err, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_CODES
    text = str(err)
    return "malformed" in text or "not a database" in text


class AlreadyRunning(StoreError):
    """A daemon holds the store's lock."""


def lock_store(db: Path) -> int:
    """An exclusive lock next to the database (`<db>.lock`, holding the pid): one daemon per
    store, and no restore under a running one. Returns the fd that holds it."""
    path = Path(str(db) + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise AlreadyRunning(f"another autoproc daemon (pid {holder}) is running on {db}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


class Conflict(StoreError):
    """Another writer changed the subject first (compare-and-set lost)."""


class UnknownSubject(StoreError):
    pass


@dataclass(frozen=True)
class Subject:
    id: int
    kind: str
    key: str
    state: str
    version: int
    data: dict[str, Any]
    held: str | None
    entry: int | None
    entered: float
    created: float
    updated: float

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.key}"

    @classmethod
    def from_row(cls, row: dict) -> Subject:
        return cls(**{**row, "data": json.loads(row["data"])})


@dataclass(frozen=True)
class Attempt:
    """One try of a state's action (a row of `attempts`). `result` is the action's result
    as recorded (autoproc.decision.ActionResult's JSON) plus what the engine noted beside
    it (progress, clean_stop, slurm_wait, ...)."""

    id: int
    subject_id: int
    stage: str
    step: str
    try_number: int
    entry: int
    status: AttemptStatus
    argv: list[str] | None = None
    cwd: str | None = None
    log: str | None = None
    pid: int | None = None
    pgid: int | None = None
    host: str | None = None
    started: float | None = None
    ended: float | None = None
    exit_status: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    applied: bool = False
    not_before: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ATTEMPT_ACTIVE

    @property
    def progress(self) -> list[str]:
        """What the attempt reported getting done while it ran (ActionContext.progress)."""
        return list(self.result.get("progress") or [])

    @property
    def clean_stop(self) -> bool:
        """Interrupted by a clean stop (SIGTERM, a reload), which says nothing of the step."""
        return bool(self.result.get("clean_stop"))

    @property
    def reason(self) -> str:
        return str(self.result.get("reason", ""))

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Attempt:
        values = {k: v for k, v in row.items() if k not in ("try", "result", "argv", "status", "applied")}
        return cls(**values, try_number=row["try"], status=AttemptStatus(row["status"]),
                   result=json.loads(row["result"] or "{}"),
                   argv=json.loads(row["argv"]) if row["argv"] else None, applied=bool(row["applied"]))

    def to_json(self) -> dict[str, Any]:
        """The row as plain data, with the table's column names (`show`, the report, hooks)."""
        return {"id": self.id, "subject_id": self.subject_id, "stage": self.stage, "step": self.step,
                "try": self.try_number, "entry": self.entry, "status": self.status.value, "argv": self.argv,
                "cwd": self.cwd, "log": self.log, "pid": self.pid, "pgid": self.pgid, "host": self.host,
                "started": self.started, "ended": self.ended, "exit_status": self.exit_status,
                "result": self.result, "applied": int(self.applied), "not_before": self.not_before}


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _rowid(cursor: sqlite3.Cursor) -> int:
    """The id of the row an INSERT just added (always set after one)."""
    if cursor.lastrowid is None:
        raise StoreError("an INSERT added no row")
    return cursor.lastrowid


def _row(cursor: sqlite3.Cursor, values: tuple) -> dict:
    return {d[0]: v for d, v in zip(cursor.description, values, strict=True)}


class Store:
    """One connection to the state database. Not shared between threads."""

    def __init__(self, path: Path | str, *, create: bool = True, readonly: bool = False,
                 busy_timeout_ms: int = BUSY_TIMEOUT_MS, on_busy: Callable[[float], None] | None = None,
                 check: bool = False):
        """`check`: run SQLite's quick check first (the daemon does; StoreDamaged if it fails).
        `busy_timeout_ms`: how long one write waits for another process's write lock
        before giving up with a StoreError that says so (the CLI: a few seconds). With
        `on_busy` (the daemon) a write never gives up: after each timeout `on_busy(seconds
        waited so far)` is called and the wait goes on."""
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.lock_waits = 0
        self.lock_wait_seconds = 0.0
        self.on_busy = on_busy
        if not self.path.exists():
            if not create or readonly:
                raise StoreError(f"{self.path}: no state database here (has the daemon run?)")
            make_dirs(self.path.parent)
            # Created 0600 before SQLite opens it; SQLite gives -wal/-shm the same mode.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        uri = f"file:{self.path}?mode=ro" if readonly else f"file:{self.path}"
        try:
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL in WAL mode: a commit survives a crash of the process (kill -9);
                # only an OS crash or power loss can drop the last commits.
                conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as err:
            if is_damage(err):
                raise StoreDamaged(self.path, str(err)) from None
            raise StoreError(f"{self.path}: cannot open the state database: {err}") from None
        self.conn = conn
        try:
            if check:
                self.check(full=False)
            if not readonly:
                self.migrate()
            elif self.schema_version() != len(MIGRATIONS):
                raise StoreError(f"{self.path}: schema version {self.schema_version()}, expected {len(MIGRATIONS)}")
        except sqlite3.DatabaseError as err:
            conn.close()
            if is_damage(err):
                raise StoreDamaged(self.path, str(err)) from None
            raise
        except StoreError:
            conn.close()
            raise

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils' view of the same connection (imported lazily: it is slow to import)."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def close(self) -> None:
        self.conn.close()

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A read-modify-write transaction; takes the write lock up front.

        Only BEGIN can meet another writer: in WAL mode the lock is held from BEGIN
        IMMEDIATE to COMMIT, so nothing is half-written while we wait for it."""
        start = time.monotonic()
        while True:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                self._count_wait(time.monotonic() - start)
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) and "busy" not in str(err):
                    raise StoreError(f"{self.path}: cannot write the state database: {err}") from None
                waited = time.monotonic() - start
                if self.on_busy is None:
                    raise StoreError(
                        f"{self.path}: the state database is busy: another process has held its write lock "
                        f"for more than {waited:.0f} s ({err}); try again later") from None
                self.on_busy(waited)
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as err:  # e.g. the disk holding the database is full
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: cannot commit to the state database: {err}") from None

    def _count_wait(self, waited: float) -> None:
        # For the metrics (autoproc.metrics): how often, and how long, writes waited for the lock.
        self.lock_wait_seconds += waited
        if waited >= LOCK_WAIT_COUNTED_SECONDS:
            self.lock_waits += 1

    def check(self, *, full: bool = True) -> None:
        """SQLite's integrity_check (or the faster quick_check); StoreDamaged naming what it found."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            rows = [r[0] for r in self.conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
        except sqlite3.DatabaseError as err:
            if is_damage(err):
                raise StoreDamaged(self.path, str(err)) from None
            raise
        if rows != ["ok"]:
            raise StoreDamaged(self.path, "; ".join(rows))

    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        if self.schema_version() == len(MIGRATIONS):
            # Up to date: no write lock needed just to open (the CLI must not wait for one).
            return
        with self.write() as c:
            current = c.execute("PRAGMA user_version").fetchone()[0]
            if current > len(MIGRATIONS):
                raise StoreError(f"{self.path}: schema version {current} is newer than this autoproc knows")
            for number in range(current, len(MIGRATIONS)):
                # sqlite-utils runs inside this transaction (it commits only what it opened).
                MIGRATIONS[number](self.db)
                c.execute(f"PRAGMA user_version = {number + 1}")

    def _one(self, sql: str, params: Sequence = ()) -> dict | None:
        cur = self.conn.execute(sql, params)
        values = cur.fetchone()
        return None if values is None else _row(cur, values)

    def _all(self, sql: str, params: Sequence = ()) -> list[dict]:
        cur = self.conn.execute(sql, params)
        return [_row(cur, v) for v in cur.fetchall()]

    # -- subjects -----------------------------------------------------------------------

    def subject(self, kind: str, key: str) -> Subject:
        row = self._one("SELECT * FROM subjects WHERE kind = ? AND key = ?", (kind, key))
        if row is None:
            raise UnknownSubject(f"no subject {kind}/{key}")
        return Subject.from_row(row)

    def subject_by_id(self, subject_id: int) -> Subject:
        row = self._one("SELECT * FROM subjects WHERE id = ?", (subject_id,))
        if row is None:
            raise UnknownSubject(f"no subject with id {subject_id}")
        return Subject.from_row(row)

    def find_subject(self, kind: str, key: str) -> Subject | None:
        try:
            return self.subject(kind, key)
        except UnknownSubject:
            return None

    def subjects(self, kind: str | None = None, state: str | None = None, *, limit: int | None = None,
                 held: bool | None = None) -> list[Subject]:
        where, params = [], []
        if kind:
            where.append("kind = ?")
            params.append(kind)
        if state:
            where.append("state = ?")
            params.append(state)
        if held is not None:
            where.append("held IS NOT NULL" if held else "held IS NULL")
        # Plain SQL: this is on the `autoproc status` path, which must start fast.
        sql = "SELECT * FROM subjects" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY kind, key"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Subject.from_row(r) for r in self._all(sql, params)]

    def counts(self) -> list[tuple[str, str, int]]:
        return [tuple(r) for r in self.conn.execute(
            "SELECT kind, state, count(*) FROM subjects GROUP BY kind, state ORDER BY kind, state")]

    def ensure_subject(self, kind: str, key: str, initial: str, *, actor: str, reason: str = "",
                       data: dict | None = None, evidence: dict | None = None,
                       trigger: str = "create") -> tuple[Subject, bool]:
        """The subject, created in `initial` (with a journal row, `trigger`) when new."""
        now = time.time()
        with self.write() as c:
            row = self._one("SELECT * FROM subjects WHERE kind = ? AND key = ?", (kind, key))
            if row is not None:
                return Subject.from_row(row), False
            cur = c.execute(
                "INSERT INTO subjects (kind, key, state, version, data, entered, created, updated)"
                " VALUES (?, ?, ?, 1, ?, ?, ?, ?)", (kind, key, initial, _json(data or {}), now, now, now))
            subject_id = _rowid(cur)
            entry = self._journal(c, subject_id, None, initial, trigger, actor, reason, evidence or {}, 1, now)
            c.execute("UPDATE subjects SET entry = ? WHERE id = ?", (entry, subject_id))
        return self.subject_by_id(subject_id), True

    @staticmethod
    def _journal(c: sqlite3.Connection, subject_id: int, from_state: str | None, to_state: str, trigger: str,
                 actor: str, reason: str, evidence: dict, version: int, now: float) -> int:
        cur = c.execute(
            "INSERT INTO journal (subject_id, from_state, to_state, trigger, actor, reason, evidence, version, time)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (subject_id, from_state, to_state, trigger, actor, reason, _json(evidence), version, now))
        return _rowid(cur)

    def transition(self, subject: Subject, to_state: str, *, trigger: str, actor: str, reason: str = "",
                   evidence: dict | None = None, data: dict | None = None,
                   consume_files: Sequence[str] = (), bad_files: Mapping[str, str] | None = None) -> Subject:
        """Compare-and-set the state (and optionally merge `data`), journaled, atomically.
        Raises Conflict when someone else changed the subject since it was read."""
        now = time.time()
        merged = {**subject.data, **(data or {})}
        with self.write() as c:
            cur = c.execute(
                "UPDATE subjects SET state = ?, version = version + 1, data = ?, entered = ?, updated = ?"
                " WHERE id = ? AND version = ?",
                (to_state, _json(merged), now, now, subject.id, subject.version))
            if cur.rowcount != 1:
                raise Conflict(f"{subject.ref} changed since version {subject.version}")
            entry = self._journal(c, subject.id, subject.state, to_state, trigger, actor, reason,
                                  evidence or {}, subject.version + 1, now)
            c.execute("UPDATE subjects SET entry = ? WHERE id = ?", (entry, subject.id))
            self._consume(c, subject.id, consume_files, now, bad_files)
        return self.subject_by_id(subject.id)

    def update(self, subject: Subject, *, data: dict | None = None, held: str | None | bool = False,
               trigger: str | None = None, actor: str = "daemon", reason: str = "",
               evidence: dict | None = None, consume_files: Sequence[str] = ()) -> Subject:
        """Compare-and-set data and/or the hold flag without a state change. A `trigger`
        journals the change (hold, release, notes); plain data updates are not journaled."""
        now = time.time()
        merged = {**subject.data, **(data or {})}
        new_held = subject.held if held is False else held
        with self.write() as c:
            cur = c.execute(
                "UPDATE subjects SET version = version + 1, data = ?, held = ?, updated = ?"
                " WHERE id = ? AND version = ?", (_json(merged), new_held, now, subject.id, subject.version))
            if cur.rowcount != 1:
                raise Conflict(f"{subject.ref} changed since version {subject.version}")
            if trigger:
                self._journal(c, subject.id, subject.state, subject.state, trigger, actor, reason,
                              evidence or {}, subject.version + 1, now)
            self._consume(c, subject.id, consume_files, now)
        return self.subject_by_id(subject.id)

    @staticmethod
    def _consume(c: sqlite3.Connection, subject_id: int, paths: Sequence[str], now: float,
                 bad: Mapping[str, str] | None = None) -> None:
        for path in paths:
            c.execute("UPDATE files SET status = 'consumed', updated = ? WHERE path = ? AND subject_id = ?",
                      (now, path, subject_id))
        for path, reason in (bad or {}).items():
            c.execute("UPDATE files SET status = 'bad', reason = ?, updated = ? WHERE path = ? AND subject_id = ?",
                      (reason, now, path, subject_id))

    # -- journal ------------------------------------------------------------------------

    def journal(self, subject_id: int | None = None, *, since: int = 0, limit: int | None = None,
                newest_first: bool = False) -> list[dict]:
        sql = ("SELECT j.*, s.kind, s.key FROM journal j JOIN subjects s ON s.id = j.subject_id WHERE j.id > ?")
        params: list[Any] = [since]
        if subject_id is not None:
            sql += " AND j.subject_id = ?"
            params.append(subject_id)
        sql += " ORDER BY j.id" + (" DESC" if newest_first else "")
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = self._all(sql, params)
        for r in rows:
            r["evidence"] = json.loads(r["evidence"])
        return rows

    def last_journal_id(self) -> int:
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM journal").fetchone()[0]

    # -- attempts -----------------------------------------------------------------------

    def add_attempt(self, subject: Subject, stage: str, *, step: str = "", try_number: int,
                    status: AttemptStatus = AttemptStatus.QUEUED, cwd: str = "", log: str = "") -> int:
        with self.write() as c:
            cur = c.execute(
                "INSERT INTO attempts (subject_id, stage, step, try, entry, status, cwd, log, host, started)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (subject.id, stage, step, try_number, subject.entry, str(status), cwd, log, socket.gethostname(),
                 time.time()))
            return _rowid(cur)

    def update_attempt(self, attempt_id: int, **fields: Any) -> None:
        if isinstance(fields.get("status"), AttemptStatus):
            fields["status"] = fields["status"].value
        for name in ("argv", "result"):
            if name in fields and not isinstance(fields[name], str):
                fields[name] = _json(fields[name])
        if not fields:
            return
        assignments = ", ".join(f"{name} = ?" for name in fields)
        with self.write() as c:
            c.execute(f"UPDATE attempts SET {assignments} WHERE id = ?", (*fields.values(), attempt_id))

    def attempt(self, attempt_id: int) -> Attempt:
        row = self._one("SELECT * FROM attempts WHERE id = ?", (attempt_id,))
        if row is None:
            raise StoreError(f"no attempt {attempt_id}")
        return Attempt.from_row(row)

    def attempts(self, subject_id: int | None = None, *, status: Sequence[str] = (), entry: int | None = None,
                 limit: int | None = None, newest_first: bool = False) -> list[Attempt]:
        where: list[str] = []
        params: list[Any] = []
        if subject_id is not None:
            where.append("subject_id = ?")
            params.append(subject_id)
        if status:
            where.append(f"status IN ({', '.join('?' * len(status))})")
            params.extend(str(s) for s in status)
        if entry is not None:
            where.append("entry = ?")
            params.append(entry)
        rows = self.db["attempts"].rows_where(" AND ".join(where) or None, params,
                                              order_by="id DESC" if newest_first else "id", limit=limit)
        return [Attempt.from_row(r) for r in rows]

    # -- intake files -------------------------------------------------------------------

    def file(self, path: str) -> dict | None:
        return self._one("SELECT * FROM files WHERE path = ?", (path,))

    def record_file(self, *, path: str, root: str, kind: str, size: int, mtime: float, status: str,
                    reason: str = "", subject_id: int | None = None, info: dict | None = None,
                    cause: str = "file") -> None:
        """`cause` of a bad verdict: "file" (the file itself) or "environment" (the config, a
        manifest, permissions: re-examined after a reload or restart)."""
        now = time.time()
        with self.write() as c:
            c.execute(
                "INSERT INTO files (path, root, kind, size, mtime, subject_id, status, reason, info, seen, updated,"
                " cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET"
                " root = excluded.root, kind = excluded.kind, size = excluded.size, mtime = excluded.mtime,"
                " subject_id = excluded.subject_id, status = excluded.status, reason = excluded.reason,"
                " info = excluded.info, updated = excluded.updated, cause = excluded.cause",
                (path, root, kind, size, mtime, subject_id, status, reason, _json(info or {}), now, now, cause))

    def request_recheck(self, paths: Sequence[str], *, actor: str, reason: str) -> list[str]:
        """Mark bad files for the daemon to examine again (journaled with `actor`); the paths marked."""
        now = time.time()
        marked = []
        with self.write() as c:
            for path in paths:
                cur = c.execute("UPDATE files SET status = 'recheck', updated = ? WHERE path = ? AND status = 'bad'",
                                (now, path))
                if cur.rowcount:
                    marked.append(path)
                    c.execute("INSERT INTO intake_journal (path, action, actor, reason, time) VALUES (?, ?, ?, ?, ?)",
                              (path, "recheck", actor, reason, now))
        return marked

    def intake_journal(self, path: str | None = None) -> list[dict]:
        if path is None:
            return self._all("SELECT * FROM intake_journal ORDER BY id")
        return self._all("SELECT * FROM intake_journal WHERE path = ? ORDER BY id", (path,))

    def files(self, *, subject_id: int | None = None, status: str | Sequence[str] | None = None,
              limit: int | None = None, root: str | None = None, cause: str | None = None) -> list[dict]:
        where: list[str] = []
        params: list[Any] = []
        if subject_id is not None:
            where.append("subject_id = ?")
            params.append(subject_id)
        if status:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        if root:
            where.append("root = ?")
            params.append(root)
        if cause:
            where.append("cause = ?")
            params.append(cause)
        sql = "SELECT * FROM files" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY path"
        if limit:
            sql += f" LIMIT {int(limit)}"
        rows = self._all(sql, params)
        for r in rows:
            r["info"] = json.loads(r["info"])
        return rows

    def file_counts(self) -> dict[str, int]:
        return dict(self.conn.execute("SELECT status, count(*) FROM files GROUP BY status").fetchall())

    # -- problems and the daemon's heartbeat --------------------------------------------

    def add_problem(self, source: str, message: str) -> None:
        with self.write() as c:
            c.execute("INSERT INTO problems (time, source, message) VALUES (?, ?, ?)", (time.time(), source, message))

    def problems(self, limit: int = 20) -> list[dict]:
        return self._all("SELECT * FROM problems ORDER BY id DESC LIMIT ?", (limit,))

    def heartbeat(self, status: str = "", *, started: float | None = None) -> None:
        now = time.time()
        with self.write() as c:
            if started is not None:
                c.execute("INSERT OR REPLACE INTO daemon (id, pid, host, started, heartbeat, status)"
                          " VALUES (1, ?, ?, ?, ?, ?)", (os.getpid(), socket.gethostname(), started, now, status))
            else:
                c.execute("UPDATE daemon SET heartbeat = ?, status = ? WHERE id = 1", (now, status))

    def daemon_info(self) -> dict | None:
        return self._one("SELECT * FROM daemon WHERE id = 1")

    # -- backups ------------------------------------------------------------------------

    def record_backup(self, path: str, size: int, why: str) -> None:
        with self.write() as c:
            c.execute("INSERT INTO backups (path, time, size, why) VALUES (?, ?, ?, ?)", (path, time.time(), size, why))

    def backups(self, limit: int = 5) -> list[dict]:
        return self._all("SELECT * FROM backups ORDER BY id DESC LIMIT ?", (limit,))
