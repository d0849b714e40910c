"""Watchers, readiness gate and reconcile scan, with real watchdog observers on real
temporary directories. Conditions are waited for with short polling loops."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, WatchDescriptor

from autoproc.config import WatchRoot
from autoproc.watch import FileReady, WatchdogInternalsChanged, Watcher, _hook_inotify, mount_of, resolve_mode

QUIET = 0.3
POLL = 0.1
CHECK = 0.2


class Sink:
    """Collects emitted FileReady events and on_problem reports, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[FileReady] = []
        self.problems: list[tuple[str, str]] = []
        self.on_emit = None

    def emit(self, ready: FileReady) -> None:
        with self.lock:
            self.items.append(ready)
        if self.on_emit is not None:
            self.on_emit(ready)

    def problem(self, where: str, message: str) -> None:
        with self.lock:
            self.problems.append((where, message))

    def for_path(self, path: Path | str) -> list[FileReady]:
        with self.lock:
            return [r for r in self.items if r.path == str(path)]

    def paths(self) -> set[str]:
        with self.lock:
            return {r.path for r in self.items}

    def problem_text(self) -> str:
        with self.lock:
            return "\n".join(f"{w}: {m}" for w, m in self.problems)

    def wait(self, pred, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.01)
        return bool(pred())


def make_root(path: Path, name: str = "raw", **kw) -> WatchRoot:
    kw.setdefault("quiet_seconds", QUIET)
    kw.setdefault("poll_interval", POLL)
    kw.setdefault("kind", "raw")
    return WatchRoot(name=name, path=path, **kw)


@pytest.fixture
def watch():
    """Factory: watch(roots) -> (Watcher, Sink), started; every watcher is stopped at teardown."""
    made: list[Watcher] = []

    def factory(roots, start: bool = True, sink: Sink | None = None, **kw):
        sink = sink or Sink()
        kw.setdefault("check_interval", CHECK)
        w = Watcher(roots if isinstance(roots, list) else [roots], sink.emit, sink.problem, **kw)
        made.append(w)
        if start:
            w.start()
        return w, sink

    yield factory
    for w in made:
        w.stop(timeout=2.0)


def write(path: Path, data: bytes = b"x" * 4096) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def age(path: Path, seconds: float = 3600) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# --------------------------------------------------------------------------- resolve_mode


def test_resolve_mode_with_fake_mounts(tmp_path: Path) -> None:
    nfs_dir = tmp_path / "nfs mount"
    nfs_dir.mkdir()
    escaped = str(nfs_dir).replace(" ", "\\040")
    mounts = tmp_path / "mounts"
    mounts.write_text(
        textwrap.dedent(
            f"""\
            /dev/vda / ext4 rw,relatime 0 0
            server:/export /data nfs4 rw,relatime 0 0
            /dev/sdb1 /data/local ext4 rw 0 0
            //host/share /mnt/my\\040share cifs rw 0 0
            sshfs#me@host: /scratch fuse.sshfs rw 0 0
            /dev/sdc1 /media/usb fuseblk rw 0 0
            tmpfs /over tmpfs rw 0 0
            host:/over /over nfs rw 0 0
            gpfs0 /gpfs gpfs rw 0 0
            server:/x {escaped} nfs rw 0 0
            """
        )
    )
    m = str(mounts)
    assert resolve_mode(Path("/data/raw/20240101"), "auto", m) == "poll"
    assert resolve_mode(Path("/data"), "auto", m) == "poll"
    assert resolve_mode(Path("/data/local/raw"), "auto", m) == "inotify"  # deeper local mount wins
    assert resolve_mode(Path("/datax/raw"), "auto", m) == "inotify"  # prefix of a name is not a parent
    assert resolve_mode(Path("/mnt/my share/raw"), "auto", m) == "poll"  # \040 decoded
    assert resolve_mode(Path("/mnt/my"), "auto", m) == "inotify"
    assert resolve_mode(Path("/scratch/a"), "auto", m) == "poll"  # fuse.*
    assert resolve_mode(Path("/media/usb/a"), "auto", m) == "inotify"  # fuseblk is a local block device
    assert resolve_mode(Path("/over/a"), "auto", m) == "poll"  # later mount on the same point wins
    assert resolve_mode(Path("/gpfs/proj"), "auto", m) == "poll"
    assert resolve_mode(Path("/home/u"), "auto", m) == "inotify"
    # Explicit modes are taken as they are.
    assert resolve_mode(Path("/data/raw"), "inotify", m) == "inotify"
    assert resolve_mode(Path("/home/u"), "poll", m) == "poll"
    # A symlink is resolved before looking for its mount; the path need not exist.
    link = tmp_path / "link"
    link.symlink_to(nfs_dir)
    assert resolve_mode(link / "not" / "there", "auto", m) == "poll"
    assert mount_of(link, m) == (str(nfs_dir), "nfs")
    # An unreadable mounts file falls back to inotify instead of raising.
    assert resolve_mode(Path("/data"), "auto", str(tmp_path / "missing")) == "inotify"
    with pytest.raises(ValueError):
        resolve_mode(Path("/data"), "sometimes", m)


def test_auto_mode_resolves_per_root(tmp_path: Path, watch) -> None:
    (tmp_path / "a").mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda / ext4 rw 0 0\nserver:/e {tmp_path / 'a'} nfs rw 0 0\n")
    w, _ = watch(
        [make_root(tmp_path / "a", "a", mode="auto"), make_root(tmp_path / "b", "b", mode="auto")],
        start=False,
        mounts_file=str(mounts),
    )
    assert w.mode_of("a") == "poll"
    assert w.mode_of("b") == "inotify"


# --------------------------------------------------------------------------- readiness


def test_inotify_close_after_write_is_ready_at_once(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode="inotify", quiet_seconds=5.0))  # quiet path would take 5 s
    assert w.mode_of("raw") == "inotify"
    f = root / "c4d_240101_000001_ori.fits"
    t0 = time.monotonic()
    write(f, b"y" * 5000)
    assert sink.wait(lambda: sink.for_path(f), timeout=2.0), sink.problem_text()
    assert time.monotonic() - t0 < 1.0
    (r,) = sink.for_path(f)
    assert r == FileReady("raw", "raw", str(f), 5000, os.stat(f).st_mtime, "closed")
    time.sleep(0.3)
    assert len(sink.for_path(f)) == 1  # once per (path, size, mtime)


def test_poll_mode_quiet_readiness(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode="poll"))
    assert w.mode_of("raw") == "poll"
    f = root / "a.fits"
    t0 = time.monotonic()
    write(f, b"z" * 1234)
    assert sink.wait(lambda: sink.for_path(f), timeout=3.0), sink.problem_text()
    elapsed = time.monotonic() - t0
    (r,) = sink.for_path(f)
    assert (r.how, r.size, r.root, r.kind) == ("quiet", 1234, "raw", "raw")
    assert elapsed >= QUIET  # not before the quiet period
    time.sleep(0.5)
    assert len(sink.for_path(f)) == 1


@pytest.mark.parametrize("mode", ["poll", "inotify-held-open", "inotify-closed"])
def test_partial_file_waits_until_it_stops_growing(tmp_path: Path, watch, mode: str) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    quiet = 0.5  # the gate re-stats every min(quiet / 2, 0.25) s = 0.25 s
    w, sink = watch(make_root(root, mode=mode.split("-")[0], quiet_seconds=quiet))
    f = root / "growing.fits"
    chunk = b"c" * 1000
    fh = open(f, "wb")  # noqa: SIM115 - held open on purpose
    try:
        # 6 chunks 0.35 s apart: ~2 s of writing, far longer than quiet_seconds. Every
        # pause is shorter than quiet_seconds but longer than one re-stat period, so a
        # gate that times from the first sighting, or that only compares two
        # consecutive stats, emits too early.
        for _ in range(6):
            fh.write(chunk)
            fh.flush()
            time.sleep(0.35)
            assert not sink.for_path(f), f"emitted while still growing: {sink.for_path(f)}"
        if mode != "inotify-held-open":
            fh.close()
        assert sink.wait(lambda: sink.for_path(f), timeout=3.0), sink.problem_text()
        (r,) = sink.for_path(f)
        assert r.size == 6000
        assert r.how == ("closed" if mode == "inotify-closed" else "quiet")
    finally:
        fh.close()


def test_patterns_and_ignore_patterns(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(
        make_root(
            root, mode="inotify", patterns=["*.fits", "*.fits.fz"], ignore_patterns=[".*", "*.part", "skip_*"]
        )
    )
    (root / "dir.fits").mkdir()  # directories are never emitted
    for name in ["b.txt", ".hidden.fits", "c.fits.part", "skip_d.fits", "a.fits", "e.fits.fz"]:
        write(root / name)
    want = {str(root / "a.fits"), str(root / "e.fits.fz")}
    assert sink.wait(lambda: sink.paths() >= want, timeout=2.0)
    time.sleep(QUIET + 0.3)  # anything else would have become quiet by now
    assert sink.paths() == want
    # The scan applies the same rules (a fresh watcher has no memory of what was emitted).
    for name in sink.paths():
        age(Path(name))
    w2, sink2 = watch(
        make_root(
            root, mode="inotify", patterns=["*.fits", "*.fits.fz"], ignore_patterns=[".*", "*.part", "skip_*"]
        ),
        start=False,
    )
    assert w2.reconcile() == 2
    assert sink2.paths() == want
    assert {r.how for r in sink2.items} == {"scan"}


def test_write_then_rename_is_ready_at_once(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    outside = tmp_path / "staging"
    outside.mkdir()
    w, sink = watch(make_root(root, mode="inotify", quiet_seconds=5.0))
    tmp = root / "x.fits.part"
    write(tmp, b"p" * 2048)
    os.rename(tmp, root / "x.fits")
    assert sink.wait(lambda: sink.for_path(root / "x.fits"), timeout=2.0)
    assert sink.for_path(root / "x.fits")[0].how == "closed"
    assert sink.for_path(root / "x.fits")[0].size == 2048
    # Written elsewhere on the same file system, then renamed into the root.
    write(outside / "y.fits", b"q" * 100)
    os.rename(outside / "y.fits", root / "y.fits")
    assert sink.wait(lambda: sink.for_path(root / "y.fits"), timeout=2.0)
    assert sink.for_path(root / "y.fits")[0].how == "closed"
    assert not sink.for_path(tmp)


def test_recursive_and_non_recursive_roots(tmp_path: Path, watch) -> None:
    deep = tmp_path / "deep"
    flat = tmp_path / "flat"
    for d in (deep, flat):
        (d / "night1").mkdir(parents=True)
    w, sink = watch(
        [make_root(deep, "deep", mode="inotify"), make_root(flat, "flat", mode="inotify", recursive=False)]
    )
    (deep / "night2" / "sub").mkdir(parents=True)  # created after start: watched too
    write(deep / "night2" / "sub" / "a.fits")
    write(flat / "night1" / "b.fits")
    write(flat / "top.fits")
    assert sink.wait(lambda: {str(deep / "night2/sub/a.fits"), str(flat / "top.fits")} <= sink.paths())
    time.sleep(QUIET + 0.3)
    assert str(flat / "night1" / "b.fits") not in sink.paths()
    assert {r.root for r in sink.items} == {"deep", "flat"}


def test_root_given_through_a_symlink_keeps_the_link_path(tmp_path: Path, watch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "tonight"
    link.symlink_to(real)
    w, sink = watch(make_root(link, mode="inotify"))
    write(link / "a.fits")
    assert sink.wait(lambda: sink.items)
    assert sink.items[0].path == str(link / "a.fits")  # abspath, not resolved
    assert sink.items[0].how == "closed"
    # Re-pointing the link (a night rollover) moves the watch to the new target.
    real2 = tmp_path / "real2"
    real2.mkdir()
    tmp_link = tmp_path / "tonight.new"
    tmp_link.symlink_to(real2)
    os.replace(tmp_link, link)
    assert sink.wait(lambda: "replaced" in sink.problem_text(), timeout=3.0)
    time.sleep(0.1)
    write(link / "b.fits")
    assert sink.wait(lambda: sink.for_path(link / "b.fits"), timeout=3.0), sink.problem_text()


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_modify_after_ready_is_ready_again(tmp_path: Path, watch, mode: str) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode=mode))
    f = root / "a.fits"
    write(f, b"1" * 100)
    assert sink.wait(lambda: sink.for_path(f), timeout=3.0)
    time.sleep(0.05)
    with open(f, "ab") as fh:
        fh.write(b"2" * 50)
    assert sink.wait(lambda: len(sink.for_path(f)) >= 2, timeout=3.0), sink.for_path(f)
    first, second = sink.for_path(f)[:2]
    assert (first.size, second.size) == (100, 150)
    assert second.mtime >= first.mtime
    time.sleep(QUIET + 0.3)
    assert len(sink.for_path(f)) == 2
    # A metadata-only change (same size and mtime) is not a new readiness.
    os.chmod(f, 0o640)
    time.sleep(QUIET + 0.4)
    assert len(sink.for_path(f)) == 2


def test_pending_file_that_disappears_is_dropped(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode="poll", quiet_seconds=0.6))
    f = root / "gone.fits"
    write(f)
    assert sink.wait(lambda: w.status()["raw"]["pending"] == 1, timeout=2.0)
    f.unlink()
    write(root / "sentinel.fits")
    assert sink.wait(lambda: sink.for_path(root / "sentinel.fits"), timeout=3.0)
    time.sleep(0.3)
    assert not sink.for_path(f)
    assert w.status()["raw"]["pending"] == 0
    assert not sink.problems


# --------------------------------------------------------------------------- reconcile


def test_reconcile_finds_files_created_while_stopped(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    (root / "n1").mkdir(parents=True)
    cfg = make_root(root, mode="inotify")
    w1, sink1 = watch(cfg)
    write(root / "n1" / "a.fits")
    assert sink1.wait(lambda: sink1.items)
    w1.stop()
    # While nobody watches: an old file, and one still being written (fresh mtime).
    write(root / "n1" / "b.fits")
    age(root / "n1" / "b.fits")
    (root / "n2").mkdir()
    write(root / "n2" / "c.fits", b"c" * 10)
    w2, sink2 = watch(cfg)  # start() runs the initial scan synchronously
    got = {Path(r.path).name: r.how for r in sink2.items}
    assert got.get("b.fits") == "scan"
    assert "c.fits" not in got  # too fresh: waits in the gate
    assert sink2.wait(lambda: sink2.for_path(root / "n2" / "c.fits"), timeout=3.0)
    assert sink2.for_path(root / "n2" / "c.fits")[0].how == "quiet"
    # a.fits was written > quiet ago by the time of the scan, or became quiet since.
    assert sink2.wait(lambda: sink2.for_path(root / "n1" / "a.fits"), timeout=3.0)
    # A second scan emits nothing new; force=True offers everything again.
    n = len(sink2.items)
    assert w2.reconcile() == 3
    assert len(sink2.items) == n
    assert w2.reconcile(force=True) == 3
    assert len(sink2.items) == n + 3


def test_reconcile_before_start_and_memory_follows_the_tree(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    for i in range(5):
        write(root / f"f{i}.fits")
        age(root / f"f{i}.fits")
    w, sink = watch(make_root(root), start=False)
    assert w.reconcile() == 5
    assert len(sink.items) == 5 and {r.how for r in sink.items} == {"scan"}
    (root / "f0.fits").unlink()
    assert w.reconcile() == 4
    assert w.status()["raw"]["known"] == 4
    # A file with the same name coming back is new again.
    write(root / "f0.fits")
    age(root / "f0.fits", 100)
    w.reconcile()
    assert len(sink.for_path(root / "f0.fits")) == 2


def test_symlink_loop_is_reported_and_skipped(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    (root / "sub").mkdir(parents=True)
    write(root / "sub" / "a.fits")
    age(root / "sub" / "a.fits")
    (root / "sub" / "loop").symlink_to(root)  # sub/loop/sub/loop/... forever
    (root / "sub" / "self").symlink_to(".")
    (root / "dangling.fits").symlink_to(tmp_path / "nowhere")
    other = tmp_path / "elsewhere"
    other.mkdir()
    write(other / "linked.fits")
    age(other / "linked.fits")
    (root / "outside").symlink_to(other)  # a symlinked directory that is not a loop is followed
    w, sink = watch(make_root(root, mode="inotify"))  # start: observers and scan must not hang
    assert sorted(Path(r.path).name for r in sink.items) == ["a.fits", "linked.fits"]
    assert str(root / "outside" / "linked.fits") in sink.paths()
    text = sink.problem_text()
    assert "loop" in text and str(root / "sub" / "loop") in text and str(root / "sub" / "self") in text
    assert "broken symlink" in text and "dangling.fits" in text
    assert w.reconcile() == 2


def test_directory_vanishing_mid_scan_is_reported(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    (root / "later").mkdir(parents=True)
    write(root / "later" / "x.fits")
    write(root / "top.fits")
    age(root / "top.fits")
    sink = Sink()

    def remove_later(ready: FileReady) -> None:
        # Emitted for the top directory, before the queued subdirectory is read.
        shutil.rmtree(root / "later", ignore_errors=True)

    sink.on_emit = remove_later
    w, _ = watch(make_root(root), start=False, sink=sink)
    assert w.reconcile() == 1
    assert "vanished during the scan" in sink.problem_text()
    assert [Path(r.path).name for r in sink.items] == ["top.fits"]


_CAPLESS_SCRIPT = """
import json, os, time
from autoproc.config import WatchRoot
from autoproc.watch import Watcher
items, problems = [], []
w = Watcher([WatchRoot(name="r", path=os.environ["WATCH_TEST_ROOT"], kind="raw", mode="inotify", quiet_seconds=0.3)],
            items.append, lambda a, b: problems.append(b), check_interval=0.2)
w.start()
n = w.reconcile()
w.stop()
print(json.dumps({"n": n, "paths": sorted(r.path for r in items), "problems": problems}))
"""


def _setpriv_works() -> bool:
    if not shutil.which("setpriv"):
        return False
    res = subprocess.run(
        ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", sys.executable, "-c", "pass"],
        capture_output=True,
    )
    return res.returncode == 0


def test_unreadable_directory_is_reported_and_skipped(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    (root / "locked").mkdir(parents=True)
    (root / "open").mkdir()
    write(root / "locked" / "hidden.fits")
    write(root / "open" / "ok.fits")
    age(root / "open" / "ok.fits")
    os.chmod(root / "locked", 0)
    try:
        if os.geteuid() != 0:
            w, sink = watch(make_root(root, mode="inotify"))
            assert [Path(r.path).name for r in sink.items] == ["ok.fits"]
            assert "cannot read directory" in sink.problem_text() and "locked" in sink.problem_text()
            return
        # As root, chmod 000 does not stop reads. Run the watcher in a child whose root
        # user has lost CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so the mode bits apply.
        if not _setpriv_works():
            pytest.skip("running as root and setpriv cannot drop DAC capabilities: chmod 000 blocks nothing")
        res = subprocess.run(  # noqa: S603 - fixed argv built by this test
            [
                "setpriv",
                "--bounding-set",
                "-dac_override,-dac_read_search",
                "--",
                sys.executable,
                "-c",
                _CAPLESS_SCRIPT,
            ],
            env={**os.environ, "WATCH_TEST_ROOT": str(root)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["paths"] == [str(root / "open" / "ok.fits")]
        assert out["n"] == 1
        assert any("cannot read directory" in p and "locked" in p for p in out["problems"]), out["problems"]
    finally:
        os.chmod(root / "locked", 0o755)


# --------------------------------------------------------------------------- surviving


@pytest.mark.parametrize("mode", ["inotify", "poll"])
def test_missing_root_is_reported_then_watched_when_it_appears(tmp_path: Path, watch, mode: str) -> None:
    root = tmp_path / "not" / "yet"
    w, sink = watch(make_root(root, mode=mode))
    assert "does not exist" in sink.problem_text()
    assert w.status()["raw"]["watching"] is False
    assert w.reconcile() == 0  # no raise
    assert sink.problem_text().count("does not exist") == 1  # reported once, not on every check
    root.mkdir(parents=True)
    write(root / "early.fits")  # may land before the observer is up: the scan finds it
    assert sink.wait(lambda: w.status()["raw"]["watching"], timeout=3.0)
    write(root / "late.fits")
    assert sink.wait(lambda: {str(root / "early.fits"), str(root / "late.fits")} <= sink.paths(), timeout=3.0)
    if mode == "inotify":
        assert sink.for_path(root / "late.fits")[0].how == "closed"


@pytest.mark.parametrize("mode", ["inotify", "poll"])
@pytest.mark.parametrize("how", ["rmtree", "rename-away"])
def test_root_removed_and_recreated(tmp_path: Path, watch, mode: str, how: str) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode=mode))
    write(root / "one.fits")
    assert sink.wait(lambda: sink.for_path(root / "one.fits"), timeout=3.0)
    if how == "rmtree":
        shutil.rmtree(root)
    else:
        root.rename(tmp_path / "raw.old")
    assert sink.wait(lambda: "vanished" in sink.problem_text(), timeout=3.0), sink.problem_text()
    assert sink.wait(lambda: not w.status()["raw"]["watching"], timeout=2.0)
    root.mkdir()
    assert sink.wait(lambda: w.status()["raw"]["watching"], timeout=3.0)
    write(root / "two.fits")
    assert sink.wait(lambda: sink.for_path(root / "two.fits"), timeout=3.0), sink.problem_text()
    if how == "rename-away":
        # Files in the old directory are not under the root any more.
        write(tmp_path / "raw.old" / "stale.fits")
        time.sleep(QUIET + 0.3)
        assert not any("stale" in p for p in sink.paths())


def test_quick_remove_and_recreate_is_caught_by_the_supervisor(tmp_path: Path, watch) -> None:
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode="inotify"))
    shutil.rmtree(root)
    root.mkdir()  # faster than any check; the inotify emitter died on IN_DELETE_SELF
    write(root / "a.fits")
    assert sink.wait(lambda: sink.for_path(root / "a.fits"), timeout=3.0), sink.problem_text()
    write(root / "b.fits")
    assert sink.wait(lambda: sink.for_path(root / "b.fits"), timeout=3.0), sink.problem_text()


def test_inotify_limit_falls_back_to_polling(tmp_path: Path, watch) -> None:
    """The real ENOSPC needs fs.inotify.max_user_watches lowered system-wide, which a test
    must not do; this injects the error report watchdog's reader would give us."""
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode="inotify"))
    r = w._by_name["raw"]
    w._flag(r, limit=OSError(errno.ENOSPC, "inotify watch limit reached"))
    assert sink.wait(lambda: w.mode_of("raw") == "poll", timeout=3.0)
    assert "inotify limit reached" in sink.problem_text()
    write(root / "a.fits")
    assert sink.wait(lambda: sink.for_path(root / "a.fits"), timeout=3.0)
    assert sink.for_path(root / "a.fits")[0].how == "quiet"


def test_inotify_overflow_triggers_a_rescan(tmp_path: Path, watch) -> None:
    """A real IN_Q_OVERFLOW needs 16k unread events; the overflow event is handed to the
    observer's own inotify reader, so it takes watchdog's path and the watcher's hook."""
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode="inotify"))
    r = w._by_name["raw"]
    # A file the gate has never heard of (as if its events were lost): forget it after.
    write(root / "lost.fits")
    assert sink.wait(lambda: sink.items)
    with w._lock:
        r.emitted.clear()
    sink.items.clear()
    overflow = InotifyEvent(WatchDescriptor(-1), InotifyConstants.IN_Q_OVERFLOW, 0, b"")
    r.observer._inotify_fd.handle_event(overflow)
    assert sink.wait(lambda: sink.for_path(root / "lost.fits"), timeout=3.0)
    assert "overflowed" in sink.problem_text()
    write(root / "after.fits")  # watchdog rebuilt its watches: events flow again
    assert sink.wait(lambda: sink.for_path(root / "after.fits"), timeout=3.0)


def test_the_watchdog_internals_the_watcher_hooks_are_there(tmp_path: Path, watch) -> None:
    """watch.py hooks two methods of the inotify observer's reader (the only place that sees
    queue overflows and watch limits); a watchdog that moved them must fail here, loudly."""
    observer = InotifyObserver(generate_full_events=True)
    try:
        _hook_inotify(observer, on_overflow=lambda: None, on_limit=lambda err: None)
    except WatchdogInternalsChanged as err:
        pytest.fail(f"watchdog changed under autoproc.watch: {err}")
    finally:
        observer.stop()  # never started: this stops and closes its inotify reader
    root = tmp_path / "raw"
    root.mkdir()
    w, sink = watch(make_root(root, mode="inotify"))
    fd = w._by_name["raw"].observer._inotify_fd
    assert hasattr(fd.handle_event, "__wrapped__") and hasattr(fd.add_callback, "__wrapped__"), (
        "the running observer's inotify reader is not hooked")
    assert "watchdog" not in sink.problem_text()
    # The reader really adds watches through the hooked method: a new subdirectory is watched.
    # A file written before that watch is up is still found (quietly); once it is, a close is seen.
    (root / "sub").mkdir()
    written = []

    def closed_in_sub() -> bool:
        written.append(root / "sub" / f"a{len(written)}.fits")
        write(written[-1])
        return any(r.how == "closed" for p in written for r in sink.for_path(p))

    assert sink.wait(closed_in_sub, timeout=3.0), sink.problem_text()


def test_changed_watchdog_internals_are_a_clear_problem() -> None:
    class NotAnInotifyObserver:
        _inotify_fd = None

    with pytest.raises(WatchdogInternalsChanged, match=r"InotifyObserver\._inotify_fd.*reconcile scan"):
        _hook_inotify(NotAnInotifyObserver(), on_overflow=lambda: None, on_limit=lambda err: None)  # type: ignore[arg-type]


def test_stop_is_prompt_and_leaves_no_threads(tmp_path: Path, watch) -> None:
    before = set(threading.enumerate())
    roots = []
    for mode in ("inotify", "poll"):
        (tmp_path / mode).mkdir()
        roots.append(make_root(tmp_path / mode, mode, mode=mode, poll_interval=1.0))
    roots.append(make_root(tmp_path / "missing", "missing"))
    w, sink = watch(roots)
    write(tmp_path / "poll" / "pending.fits")  # something in the gate
    time.sleep(0.2)
    t0 = time.monotonic()
    w.stop(timeout=2.0)
    assert time.monotonic() - t0 < 1.5
    assert sink.wait(lambda: set(threading.enumerate()) <= before, timeout=1.0), (
        set(threading.enumerate()) - before
    )
    assert "still running" not in sink.problem_text()
    with pytest.raises(RuntimeError):
        w.start()
