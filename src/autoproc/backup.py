"""The state database's safety net: integrity checks, online backups, restore.

A backup is a consistent copy made with SQLite's backup API while the daemon runs (WAL
readers do not block its writes), written under a temporary name, checked, fsynced and
only then renamed to `autoproc-<UTC time>.db`: a backup killed half-way leaves a temporary
file (removed by the next backup), never a file with the final name that is incomplete.
Only files with the final name are ever restored. See RELIABILITY.md.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoproc import actions
from autoproc.config import Config
from autoproc.process import make_dirs, pid_alive
from autoproc.store import Store, StoreDamaged, StoreError, StoreMissing, StoreUnsafe, is_damage

log = logging.getLogger("autoproc.backup")

_NAME = re.compile(r"^autoproc-(\d{8}T\d{6}\.\d{6}Z)\.db$")
_TEMP = re.compile(r"^\.autoproc-.*\.db\.(\d+)\.tmp$")


def refuse_network_db(db: Path, mounts_file: str = "/proc/self/mounts") -> None:
    """StoreUnsafe when the state database would live on a network or FUSE file system."""
    from autoproc.watch import network_mount

    try:
        found = network_mount(db.parent if not db.exists() else db, mounts_file)
    except OSError as err:
        log.warning("cannot read %s (%s); assuming %s is on a local file system", mounts_file, err, db)
        return
    if found is not None:
        mount, fstype = found
        raise StoreUnsafe(
            f"{db}: the state database is on a {fstype} file system (mounted at {mount}); SQLite's WAL mode, "
            "which the daemon and the CLI share it with, needs shared memory and locks that network and FUSE "
            "file systems do not give reliably, so it could be damaged. Put it on a local disk: set `db:` (or "
            "`root:`) in the configuration; the watched directories and outputs may stay where they are.")


def refuse_missing_db(config: Config) -> None:
    """StoreMissing when the database is gone but backups of it exist: a fresh, empty store
    would start every subject again (and could submit to the grid twice)."""
    found = backups(config.backup.directory)
    if not config.db.exists() and found:
        raise StoreMissing(
            f"{config.db}: the state database is missing, but {len(found)} backup(s) of it are in "
            f"{config.backup.directory} (newest {found[0].name}). Starting with an empty one would redo the work. "
            "Put the newest back with `autoproc store restore` (then start the daemon: it finds the work done "
            "since from the evidence), or move the backups away to start afresh on purpose.")


def check_file(path: Path, *, full: bool = True) -> None:
    """SQLite's integrity check of a database file, opened read-only; StoreDamaged if it fails."""
    if not path.is_file():
        raise StoreError(f"{path}: no such database file")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.DatabaseError as err:
        raise StoreDamaged(path, str(err)) from None
    try:
        pragma = "integrity_check" if full else "quick_check"
        rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}(20)").fetchall()]
    except sqlite3.DatabaseError as err:
        if is_damage(err):
            raise StoreDamaged(path, str(err)) from None
        raise StoreError(f"{path}: cannot check: {err}") from None
    finally:
        conn.close()
    if rows != ["ok"]:
        raise StoreDamaged(path, "; ".join(rows))


def backups(directory: Path) -> list[Path]:
    """The complete backups in `directory`, newest first."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.match(p.name)), key=lambda p: p.name, reverse=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(directory: Path) -> None:
    for p in directory.iterdir():
        m = _TEMP.match(p.name)
        if m and (int(m.group(1)) == os.getpid() or not pid_alive(int(m.group(1)))):
            p.unlink(missing_ok=True)


@dataclass(frozen=True)
class Backup:
    path: Path
    size: int
    seconds: float


def take_backup(config: Config, *, why: str) -> Backup:
    """Write one backup of the state database now, keep the newest `backup.keep`, record it."""
    db, directory, keep = config.db, config.backup.directory, config.backup.keep
    if not db.exists():
        raise StoreError(f"{db}: no state database here (has the daemon run?)")
    make_dirs(directory)
    _remove_stale_temps(directory)
    t0 = time.monotonic()
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    final = directory / f"autoproc-{stamp}.db"
    temp = directory / f".{final.name}.{os.getpid()}.tmp"
    os.close(os.open(temp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
    try:
        src = sqlite3.connect(f"file:{db}", uri=True, timeout=30)
        dst = sqlite3.connect(temp)
        try:
            src.backup(dst)
            # A standalone file: no -wal beside it to lose when it is copied or restored.
            dst.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.DatabaseError as err:
            if is_damage(err):
                raise StoreDamaged(db, str(err)) from None
            raise StoreError(f"{db}: backup to {directory} failed: {err}") from None
        finally:
            dst.close()
            src.close()
        check_file(temp, full=False)
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, final)
        _fsync_dir(directory)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    for old in backups(directory)[keep:]:
        old.unlink(missing_ok=True)
    size = final.stat().st_size
    store = Store(db)
    try:
        store.record_backup(str(final), size, why)
    finally:
        store.close()
    return Backup(final, size, time.monotonic() - t0)


class BackupScheduler:
    """The daemon's side (an `engine.on_loop` callable): a backup every
    `backup.interval_minutes`, on its own thread and connection, so the loop never waits."""

    def __init__(self, config: Callable[[], Config]):
        self.config = config
        self.last = time.monotonic()
        self.thread: threading.Thread | None = None

    def on_loop(self, engine: Any) -> None:
        config = self.config()
        minutes = config.backup.interval_minutes
        if not minutes or time.monotonic() - self.last < minutes * 60:
            return
        if self.thread is not None and self.thread.is_alive():
            return
        self.last = time.monotonic()
        self.thread = threading.Thread(target=self.run, args=(config, "scheduled"), name="backup", daemon=True)
        self.thread.start()

    def run(self, config: Config, why: str) -> Backup | None:
        try:
            made = take_backup(config, why=why)
        except Exception as err:  # noqa: BLE001 - a failed backup is a problem to see, not a crash
            log.error("backup failed: %s", err)
            try:
                store = Store(config.db)
                try:
                    store.add_problem("backup", f"backup failed: {err}")
                finally:
                    store.close()
            except Exception:  # noqa: BLE001, S110 - the database itself may be why
                pass
            return None
        log.info("backup written: %s (%d bytes, %.1f s)", made.path, made.size, made.seconds)
        return made

    def at_stop(self) -> None:
        """A last backup after a clean stop (the store is closed and every attempt recorded)."""
        if self.thread is not None:
            self.thread.join()
        config = self.config()
        if config.backup.at_stop:
            self.run(config, "clean stop")


def set_aside(db: Path) -> Path | None:
    """Rename the state database (and its -wal) to `<name>.replaced-<UTC time>` before another
    takes its place; the new name, or None when there was none."""
    aside = None
    if db.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = db.with_name(f"{db.name}.replaced-{stamp}")
        os.rename(db, aside)
    # A -wal left beside the new file would be replayed into it: it goes with the old file.
    for suffix in ("-wal", "-shm"):
        extra = Path(str(db) + suffix)
        if extra.exists():
            if aside is not None and suffix == "-wal":
                os.rename(extra, Path(str(aside) + suffix))
            else:
                extra.unlink()
    return aside


def restore(config: Config, backup: Path | None = None) -> tuple[Path, Path | None, list[str]]:
    """Put a backup back in place of the state database (the daemon must not be running).

    Without `backup`, the newest that passes the full integrity check. The database file
    it replaces (and its -wal) is kept beside it, renamed. Returns (backup used, what the
    replaced file was renamed to, backups skipped with why)."""
    from autoproc.machines import load_configured
    from autoproc.store import lock_store

    load_configured(config)  # its plugins say what their subjects' data forgets (below)
    make_dirs(config.db.parent)
    lock = lock_store(config.db)  # AlreadyRunning while a daemon runs; and none starts meanwhile
    try:
        skipped: list[str] = []
        candidates = [backup] if backup is not None else backups(config.backup.directory)
        if not candidates:
            raise StoreError(f"no backups in {config.backup.directory}")
        chosen = None
        for c in candidates:
            try:
                check_file(c, full=True)
            except StoreError as err:
                if backup is not None:
                    raise
                skipped.append(f"{c}: {err}")
                continue
            chosen = c
            break
        if chosen is None:
            raise StoreError("no backup passes the integrity check: " + "; ".join(skipped))
        db = config.db
        make_dirs(db.parent)
        temp = db.with_name(f".{db.name}.restore.tmp")
        with open(chosen, "rb") as fin, open(os.open(temp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600),
                                             "wb") as fout:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        aside = set_aside(db)
        os.rename(temp, db)
        _fsync_dir(db.parent)
        store = Store(db)
        try:
            store.add_problem("store", f"restored from {chosen}" + (f"; the replaced file is kept as {aside}"
                                                                     if aside else ""))
            for kind, keys in actions.FORGOTTEN_ON_RESET.items():  # the work went on after the backup
                for subject in store.subjects(kind):
                    store.update(subject, data=dict.fromkeys(sorted(keys), {}))
        finally:
            store.close()
        return chosen, aside, skipped
    finally:
        os.close(lock)
