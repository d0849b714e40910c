"""A broken state database and a stale verdict lose nothing: integrity checks, backups,
restore, and bad files examined again (RELIABILITY.md)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoproc import backup
from autoproc.store import EXIT_STORE_DAMAGED, Store, StoreDamaged, StoreUnsafe
from conftest import child_env, states, wait_for


def cli(config_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(config_path), *args],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), timeout=timeout)


def widget_config(write_config, tmp_path: Path, kind: str = "widget", **extra):
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    config, path = write_config(watch=[{"name": "inbox", "path": str(inbox), "kind": kind, "patterns": ["*.w"],
                                        "mode": "inotify", "quiet_seconds": 0.2}], **extra)
    return config, path, inbox


def fill(config, subjects: int = 3000) -> None:
    """A store a few MB large, mostly subject rows (what `status` reads)."""
    store = Store(config.db)
    try:
        with store.write() as c:
            now = time.time()
            c.executemany("INSERT INTO subjects (kind, key, state, data, entered, created, updated)"
                          " VALUES ('widget', ?, 'done', ?, ?, ?, ?)",
                          [(f"w{i:05d}", json.dumps({"pad": "x" * 600}), now, now, now) for i in range(subjects)])
    finally:
        store.close()


def damage(db: Path) -> None:
    """Overwrite 32 KiB in the middle of the file, as a disk fault or a torn copy would."""
    size = db.stat().st_size
    assert size > 4 * 32768
    with open(db, "r+b") as f:
        f.seek(size // 2 - 16384)
        f.write(os.urandom(32768))


def assert_damage_message(res: subprocess.CompletedProcess, db: Path) -> None:
    assert res.returncode == EXIT_STORE_DAMAGED, res.stdout + res.stderr
    assert "Traceback" not in res.stderr
    assert f"{db}: the state database is damaged (SQLite says:" in res.stderr
    for command in ("autoproc store check", "autoproc store restore"):
        assert command in res.stderr


# ------------------------------------------------------------------ integrity


def test_damaged_database_gives_one_message_and_a_status_systemd_does_not_restart(write_config, tmp_path):
    config, path, _ = widget_config(write_config, tmp_path)
    fill(config)
    assert cli(path, "store", "check").returncode == 0
    damage(config.db)
    for verb in (["status"], ["status", "--json"], ["store", "check"], ["daemon", "--no-watch"]):
        res = cli(path, *verb)
        assert_damage_message(res, config.db)


def test_quick_check_on_open_and_full_check(tmp_path):
    db = tmp_path / "autoproc.db"
    Store(db).close()
    Store(db, check=True).close()
    backup.check_file(db)
    db.write_bytes(b"this is not a database" * 1000)
    with pytest.raises(StoreDamaged, match="not a database"):
        Store(db, check=True)
    with pytest.raises(StoreDamaged, match="not a database"):
        backup.check_file(db)


def test_state_database_on_a_network_file_system_is_refused(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/export {tmp_path / 'nfs'} nfs4 rw 0 0\n"
                      f"sshfs#me@host: {tmp_path / 'fuse'} fuse.sshfs rw 0 0\n")
    backup.refuse_network_db(tmp_path / "local" / "autoproc.db", str(mounts))  # local: fine
    with pytest.raises(StoreUnsafe, match=r"nfs4 file system \(mounted at .*nfs\).*WAL"):
        backup.refuse_network_db(tmp_path / "nfs" / "state" / "autoproc.db", str(mounts))
    with pytest.raises(StoreUnsafe, match="fuse.sshfs"):
        backup.refuse_network_db(tmp_path / "fuse" / "autoproc.db", str(mounts))


# ------------------------------------------------------------------ verdicts


def test_config_check_rejects_a_kind_no_plugin_provides(write_config, tmp_path):
    _, path, _ = widget_config(write_config, tmp_path, kind="widgt")
    res = cli(path, "config", "check")
    assert res.returncode == 2
    assert "watch root 'inbox' has kind 'widgt'" in res.stderr and "widget" in res.stderr
    assert "Traceback" not in res.stderr


def bad_files(config) -> list[dict]:
    store = Store(config.db)
    try:
        return store.files(status="bad")
    finally:
        store.close()


def test_misspelt_kind_then_fixed_and_restarted_ingests_the_files(write_config, tmp_path, daemon_factory):
    config, path, inbox = widget_config(write_config, tmp_path, kind="widgt")
    d = daemon_factory(path).start()
    for name in ("m1-1.w", "m2-1.w"):
        (inbox / name).write_text("ok")
    wait_for(lambda: len(bad_files(config)) == 2, what="both files bad")
    assert {f["cause"] for f in bad_files(config)} == {"environment"}
    assert "no validator for file kind 'widgt'" in bad_files(config)[0]["reason"]
    listed = json.loads(cli(path, "files", "--status", "bad", "--json").stdout)
    assert [f["cause"] for f in listed] == ["environment", "environment"]
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=20) == 0
    widget_config(write_config, tmp_path)  # the typo fixed
    daemon_factory(path).start()
    wait_for(lambda: states(config).get("m1") == "done" and states(config).get("m2") == "done",
             timeout=40, what="files ingested and built after the restart")
    assert bad_files(config) == []


def test_fixed_kind_takes_effect_on_reload(write_config, tmp_path, daemon_factory):
    config, path, inbox = widget_config(write_config, tmp_path, kind="widgt")
    d = daemon_factory(path).start()
    (inbox / "h1-1.w").write_text("ok")
    wait_for(lambda: len(bad_files(config)) == 1, what="file bad")
    widget_config(write_config, tmp_path)
    d.signal(signal.SIGHUP)
    wait_for(lambda: states(config).get("h1") == "done", timeout=40, what="ingested after SIGHUP")


def test_files_retry_by_hand_is_journaled_with_the_operator(write_config, tmp_path, daemon_factory):
    config, path, inbox = widget_config(write_config, tmp_path)
    daemon_factory(path).start()
    f = inbox / "r1-1.w"
    f.write_text("bogus")
    (inbox / "r2-1.w").write_text("nope")
    wait_for(lambda: len(bad_files(config)) == 2, what="two bad files")
    assert {b["cause"] for b in bad_files(config)} == {"file"}
    # Repaired by a copy that keeps size and time (rsync -t): no new fact for the watcher.
    st = f.stat()
    f.write_text("ok   ")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    time.sleep(1.0)
    assert states(config).get("r1") is None
    res = cli(path, "files", "retry", str(f), "--operator", "dana", "--reason", "re-copied")
    assert res.returncode == 0 and f"sent back: {f}" in res.stdout, res.stdout + res.stderr
    wait_for(lambda: states(config).get("r1") == "done", timeout=30, what="r1 ingested after retry")
    res = cli(path, "files", "retry", "--bad", "--root", "inbox", "--operator", "dana")
    assert res.returncode == 0 and "sent back" in res.stdout
    wait_for(lambda: [b["status"] for b in bad_files(config)] == ["bad"], what="r2 examined again, still bad")
    store = Store(config.db)
    rows = store.intake_journal()
    assert [(r["path"], r["actor"], r["reason"]) for r in rows] == [
        (str(f), "dana", "re-copied"), (str(inbox / "r2-1.w"), "dana", "examine again")]
    assert cli(path, "files", "retry", "--bad", str(f)).returncode == 2  # one or the other
    listing = cli(path, "files").stdout
    assert "[file] r2-1.w: unknown instruction 'nope'" in listing


# ------------------------------------------------------------------ backups


def test_backup_by_hand_keeps_the_last_k_and_status_shows_them(write_config, tmp_path):
    config, path, _ = widget_config(write_config, tmp_path, backup={"keep": 2})
    fill(config, 50)
    for _ in range(3):
        res = cli(path, "store", "backup")
        assert res.returncode == 0, res.stderr
    kept = backup.backups(config.backup.directory)
    assert len(kept) == 2
    for b in kept:
        backup.check_file(b)
        conn = sqlite3.connect(b)
        assert conn.execute("SELECT count(*) FROM subjects").fetchone()[0] == 50
        conn.close()
    info = json.loads(cli(path, "status", "--json").stdout)
    assert [b["path"] for b in info["backups"][:2]] == [str(p) for p in kept]
    assert "last backup" in cli(path, "status").stdout


def test_kill9_during_a_backup_leaves_a_complete_backup_or_none(write_config, tmp_path):
    config, path, _ = widget_config(write_config, tmp_path, backup={"keep": 100})
    fill(config, 40000)  # ~30 MB: the copy takes long enough to be killed in
    directory = config.backup.directory
    directory.mkdir(parents=True)
    killed_mid_copy = 0
    for delay in (0.0, 0.01, 0.03, 0.06, 0.1, 0.2):
        before = set(backup.backups(directory))
        proc = subprocess.Popen([sys.executable, "-m", "autoproc.cli", "-c", str(path), "store", "backup"],  # noqa: S603
                                env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda proc=proc: proc.poll() is not None or any(p.name.endswith(".tmp") for p in directory.iterdir()),
                 timeout=60, interval=0.002, what="the backup started")
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        new = set(backup.backups(directory)) - before
        if proc.returncode == -signal.SIGKILL and not new:
            killed_mid_copy += 1
        assert len(new) <= 1
        for b in new:  # if the name is there, the whole copy is
            backup.check_file(b)
            conn = sqlite3.connect(b)
            assert conn.execute("SELECT count(*) FROM subjects").fetchone()[0] == 40000
            conn.close()
    assert killed_mid_copy >= 1, "no kill landed during a copy: the test proved nothing"
    # What a killed backup left is temporary, never restored, and the next backup removes it.
    assert cli(path, "store", "backup").returncode == 0
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_daemon_backs_up_on_schedule_and_at_a_clean_stop(write_config, tmp_path, daemon_factory):
    config, path, inbox = widget_config(write_config, tmp_path, backup={"interval_minutes": 0.02, "keep": 3})
    d = daemon_factory(path).start()
    (inbox / "b1-1.w").write_text("ok")
    wait_for(lambda: states(config).get("b1") == "done", what="b1 done")
    wait_for(lambda: len(backup.backups(config.backup.directory)) >= 2, timeout=30, what="scheduled backups")
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0
    store = Store(config.db)
    rows = store.backups(limit=10)
    store.close()
    assert rows[0]["why"] == "clean stop" and "scheduled" in {r["why"] for r in rows}
    assert len(backup.backups(config.backup.directory)) == 3
    newest = backup.backups(config.backup.directory)[0]
    assert str(newest) == rows[0]["path"]
    conn = sqlite3.connect(newest)
    assert conn.execute("SELECT state FROM subjects WHERE key = 'b1'").fetchone() == ("done",)
    conn.close()


# ------------------------------------------------------------------ restore


def test_restore_after_damage_then_the_daemon_carries_on(write_config, tmp_path, daemon_factory):
    config, path, inbox = widget_config(write_config, tmp_path, backup={"interval_minutes": 0})
    d = daemon_factory(path).start()
    (inbox / "a-1.w").write_text("ok")
    wait_for(lambda: states(config).get("a") == "done", what="a done")
    assert cli(path, "store", "backup").returncode == 0
    res = cli(path, "store", "restore")
    assert res.returncode == 2 and "another autoproc daemon" in res.stderr  # not under a running daemon
    (inbox / "b-1.w").write_text("ok")  # after the backup
    wait_for(lambda: states(config).get("b") == "done", what="b done")
    d.signal(signal.SIGKILL)  # no clean stop, so no newer backup
    d.wait(timeout=10)
    fill(config, 3000)
    damage(config.db)
    assert_damage_message(cli(path, "status"), config.db)
    damaged = config.db.read_bytes()
    res = cli(path, "store", "restore")
    assert res.returncode == 0, res.stderr
    assert "restored" in res.stdout and "kept as" in res.stdout
    # The damaged file is kept as it was, for a person to look at (whether SQLite still finds
    # the damage there depends on what its WAL held, so compare the bytes).
    (aside,) = [p for p in config.db.parent.glob("autoproc.db.replaced-*") if not p.name.endswith(("-wal", "-shm"))]
    assert aside.read_bytes() == damaged
    assert states(config) == {"a": "done"}
    daemon_factory(path).start()
    # The raw of b is still in the watched root: the start-up scan finds it again.
    wait_for(lambda: states(config).get("b") == "done", timeout=40, what="b found again")
    ledger = (config.root / "ledger.txt").read_text().splitlines()
    assert sum(1 for line in ledger if line.startswith("build a ")) == 1  # a was not redone
    store = Store(config.db)
    assert any(p["message"].startswith("restored from") for p in store.problems())
    store.close()


def test_named_backup_is_checked_before_restore(write_config, tmp_path):
    config, path, _ = widget_config(write_config, tmp_path)
    fill(config, 10)
    bogus = tmp_path / "autoproc-20260101T000000.000000Z.db"
    bogus.write_bytes(b"not sqlite" * 100)
    res = cli(path, "store", "restore", str(bogus))
    assert res.returncode == EXIT_STORE_DAMAGED and "Traceback" not in res.stderr
    assert len(states(config)) == 10  # untouched


def test_deleted_database_is_not_silently_started_afresh(write_config, tmp_path, daemon_factory):
    config, path, inbox = widget_config(write_config, tmp_path, backup={"interval_minutes": 0})
    d = daemon_factory(path).start()
    (inbox / "d-1.w").write_text("ok")
    wait_for(lambda: states(config).get("d") == "done", what="d done")
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=30) == 0  # and a backup at the clean stop
    for suffix in ("", "-wal", "-shm"):
        Path(str(config.db) + suffix).unlink(missing_ok=True)
    refused = daemon_factory(path).start()
    assert refused.wait(timeout=30) == EXIT_STORE_DAMAGED
    assert "the state database is missing, but 1 backup(s)" in refused.output()
    assert "Traceback" not in refused.output() and not config.db.exists()
    assert cli(path, "store", "restore").returncode == 0
    daemon_factory(path).start()
    wait_for(lambda: Store(config.db).daemon_info()["status"] != "stopped", what="daemon up again")
    time.sleep(2.0)  # the start-up scan has seen d's file again
    assert states(config) == {"d": "done"}
    ledger = (config.root / "ledger.txt").read_text().splitlines()
    assert sum(1 for line in ledger if line.startswith("build d ")) == 1
