"""Watchers: turn filesystem changes into `FileReady` events.

One `Watcher` serves every configured `WatchRoot`. Per root it runs one watchdog
observer (inotify where the kernel sees the writes, polling on network and FUSE mounts),
and for all roots together:

- a *readiness gate*: a file is ready when it is closed after writing (inotify), renamed
  into place (inotify), or when its size and mtime have been quiet for `quiet_seconds`
  (everything else, and everything in poll mode). Each (path, size, mtime) is emitted
  once; a later change makes the file ready again.
- a *reconcile scan* (`os.scandir` walk) that offers every matching file to the gate, so
  a missed event never loses a file (inotify queue overflow, NFS, a root that vanished).
- a *supervisor* that notices a missing, vanished, replaced or re-pointed (symlink) root,
  or an observer whose emitter died, and restarts watching plus a scan of that root.

Events are hints; the engine dedupes them against its store and validates the file.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import logging
import os
import re
import stat as statmod
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver, EventEmitter
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.inotify_c import (
    CallbackId,
    InotifyEvent,
    InotifyFD,
    Mask,
    WatchCallback,
    WatchDescriptor,
)
from watchdog.observers.polling import PollingObserver
from watchdog.version import VERSION_STRING as watchdog_version

from autoproc.config import WatchRoot

log = logging.getLogger(__name__)

# watchdog warns when `mkdir -p a/b` makes it add the same watch twice (its recursive
# walk and the IN_CREATE of b race); the second add is harmless. Only warnings raised
# through this module's inotify hook are silenced.
warnings.filterwarnings(
    "ignore", message="Callback with id .* already exists", category=RuntimeWarning, module=__name__
)

__all__ = ["FileReady", "Watcher", "resolve_mode", "NETWORK_FS_TYPES"]

# Filesystems whose writes may come from another host (or the hypervisor), where the
# local kernel's inotify does not see them. `fuse` and every `fuse.<subtype>` count too.
NETWORK_FS_TYPES = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "smb", "ncpfs", "9p", "ceph", "glusterfs",
        "lustre", "gpfs", "beegfs", "afs", "openafs", "coda", "davfs", "sshfs", "fuse",
        "panfs", "pvfs2", "orangefs", "cvfs", "wekafs", "quobyte", "gfs2", "ocfs2",
        "virtiofs", "vboxsf", "vmhgfs", "moosefs", "lizardfs", "juicefs",
    }
)  # fmt: skip

# The watchdog event types the gate uses; the inotify mask is built from this, so opens,
# reads and close-without-write (our own validator reading the file) cost nothing.
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    DirDeletedEvent,
]

_MIN_POLL_INTERVAL = 0.05
_MIN_TICK = 0.02
_MAX_TICK = 0.25


@dataclass(frozen=True, slots=True)
class FileReady:
    root: str  # WatchRoot.name
    kind: str  # WatchRoot.kind
    path: str  # absolute path (os.path.abspath, not resolved through symlinks)
    size: int
    mtime: float
    how: str  # "closed" | "quiet" | "scan"


# --------------------------------------------------------------------------- mounts


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape_mount(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def _is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FS_TYPES or fstype.startswith("fuse.")


def mount_of(path: str | os.PathLike[str], mounts_file: str = "/proc/self/mounts") -> tuple[str, str] | None:
    """(mount point, fs type) of the deepest mount containing `path` (symlinks resolved)."""
    target = os.path.realpath(os.fspath(path))
    best: tuple[str, str] | None = None
    with open(mounts_file, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = _unescape_mount(parts[1])
            if len(mnt) > 1:
                mnt = mnt.rstrip("/")
            if not (mnt == "/" or target == mnt or target.startswith(mnt + "/")):
                continue
            # Longest mount point wins; for the same mount point the later line (mounted
            # on top) wins.
            if best is None or len(mnt) >= len(best[0]):
                best = (mnt, parts[2])
    return best


def resolve_mode(path: Path, requested: str, mounts_file: str = "/proc/self/mounts") -> str:
    """What a root's `mode` means here: "inotify" or "poll".

    `auto` polls when the deepest mount containing `path` has a network or FUSE file
    system type (NFS, CIFS, GPFS, Lustre, CephFS, sshfs, any fuse.*, ...), where inotify
    does not see writes made by other hosts; otherwise inotify. The path need not exist.
    """
    if requested in ("inotify", "poll"):
        return requested
    if requested != "auto":
        raise ValueError(f"unknown watch mode {requested!r}")
    try:
        found = network_mount(path, mounts_file)
    except OSError as err:
        log.warning("cannot read %s (%s); assuming a local file system for %s", mounts_file, err, path)
        return "inotify"
    return "poll" if found is not None else "inotify"


def network_mount(path: str | os.PathLike[str], mounts_file: str = "/proc/self/mounts") -> tuple[str, str] | None:
    """(mount point, fs type) when `path` is on a network or FUSE file system, else None.
    Also used for the state database, where SQLite's WAL mode is unsafe on such mounts."""
    found = mount_of(path, mounts_file)
    return found if found is not None and _is_network_fs(found[1]) else None


# --------------------------------------------------------------------------- inotify observer


# watchdog has no public signal for the two inotify troubles that call for a scan: a kernel
# queue overflow (it rebuilds its watches, but the events are gone) and a watch limit hit
# on a subdirectory (it skips that directory silently). Only the observer's inotify reader
# sees them: `InotifyObserver._inotify_fd`, an `InotifyFD`, through its `handle_event` and
# `add_callback`. Those two methods are wrapped on that one instance (the observer itself
# is built through its public constructor). If a watchdog upgrade moves them, the watcher
# says so as a problem and relies on its reconcile scans; tests/test_watch.py fails on it.
_INOTIFY_INTERNALS = ("InotifyObserver._inotify_fd", "InotifyFD.handle_event(event)",
                      "InotifyFD.add_callback(path, mask, callback, id_)", "InotifyEvent.is_queue_overflow")


class WatchdogInternalsChanged(RuntimeError):
    """The installed watchdog no longer has the inotify internals the watcher hooks."""


def _hook_inotify(
    observer: InotifyObserver, on_overflow: Callable[[], None], on_limit: Callable[[OSError], None]
) -> None:
    """Tell `on_overflow` about queue overflows and `on_limit` about watch limits that
    `observer`'s reader meets (see above). Raises WatchdogInternalsChanged."""
    fd = getattr(observer, "_inotify_fd", None)
    if not (isinstance(fd, InotifyFD) and callable(getattr(fd, "handle_event", None))
            and callable(getattr(fd, "add_callback", None))
            and isinstance(getattr(InotifyEvent, "is_queue_overflow", None), property)):
        raise WatchdogInternalsChanged(
            f"watchdog {watchdog_version} does not have {', '.join(_INOTIFY_INTERNALS)} as autoproc.watch expects: "
            "inotify queue overflows and watch limits on subdirectories go unnoticed until a reconcile scan")
    handle_event, add_callback = fd.handle_event, fd.add_callback

    @functools.wraps(handle_event)
    def hooked_handle_event(event: InotifyEvent) -> None:
        if event.is_queue_overflow:
            try:
                on_overflow()
            except Exception:  # never kill the reader thread
                log.exception("overflow hook failed")
        handle_event(event)

    @functools.wraps(add_callback)
    def hooked_add_callback(path: bytes, mask: Mask, callback: WatchCallback, id_: CallbackId) -> WatchDescriptor:
        try:
            return add_callback(path, mask, callback, id_)
        except OSError as err:
            if err.errno in (errno.ENOSPC, errno.EMFILE):
                try:
                    on_limit(err)
                except Exception:
                    log.exception("watch-limit hook failed")
            raise

    # Wrapping one instance's methods is the point here (see above).
    fd.handle_event = hooked_handle_event  # type: ignore[method-assign]
    fd.add_callback = hooked_add_callback  # type: ignore[method-assign]


# --------------------------------------------------------------------------- per-root state


def _compile(patterns: Sequence[str]) -> re.Pattern[str] | None:
    """One regex for a list of fnmatch patterns; None when '*' makes it match everything."""
    if any(p == "*" for p in patterns):
        return None
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class _Root:
    def __init__(self, cfg: WatchRoot) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.kind = cfg.kind
        self.path = os.path.abspath(os.fspath(cfg.path))
        self.quiet = float(cfg.quiet_seconds)
        self.recursive = cfg.recursive
        inc = _compile(cfg.patterns)
        ign = _compile(cfg.ignore_patterns) if cfg.ignore_patterns else re.compile(r"(?!)")
        # Bound match methods (None: every name matches), used inline by the scan loop.
        self.inc_match = inc.match if inc is not None else None
        self.ign_match = ign.match if ign is not None else None
        self.mode = "inotify"  # effective mode; set by resolve at start
        self.force_poll = False  # set after an inotify limit was hit
        # observer lifecycle (guarded by `life`)
        self.life = threading.Lock()
        self.scan_lock = threading.Lock()
        self.observer: BaseObserver | None = None
        self.emitter: EventEmitter | None = None
        self.real: str | None = None  # the directory the observer watches (realpath)
        self.ident: tuple[int, int] | None = None
        self.missing_reported = False
        self.start_problem: str | None = None  # last "cannot watch" message, said once
        # flags raised by observer threads, handled by the supervisor
        self.overflowed = False
        self.limit_error: OSError | None = None
        # gate memory (guarded by Watcher._lock): path -> (size, mtime_ns) last emitted
        self.emitted: dict[str, tuple[int, int]] = {}

    def accept(self, name: str) -> bool:
        if self.inc_match is not None and self.inc_match(name) is None:
            return False
        return self.ign_match is None or self.ign_match(name) is None


class _Pending:
    __slots__ = ("root", "size", "mtime_ns", "mtime", "since", "gen")

    def __init__(self, root: _Root, size: int, mtime_ns: int, mtime: float, since: float) -> None:
        self.root = root
        self.size = size
        self.mtime_ns = mtime_ns
        self.mtime = mtime
        self.since = since
        self.gen = 0


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher, root: _Root, real: str, closes: bool) -> None:
        self.w = watcher
        self.root = root
        self.real = real
        self.closes = closes

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self.w._on_fs_event(self.root, self.real, self.closes, event)
        except Exception as err:  # an observer thread must survive anything
            self.w._problem(self.root.name, f"internal error handling {event!r}: {err!r}")


# --------------------------------------------------------------------------- the watcher


class Watcher:
    """Watch the configured roots and call `emit(FileReady)` for files that are ready.

    Threads: one gate thread (`autoproc-watch-gate`), one supervisor thread
    (`autoproc-watch-roots`), and per watched root watchdog's observer threads (inotify:
    reader, emitter, dispatcher; poll: emitter, dispatcher). All are daemon threads.
    `emit` is called from the observer dispatcher threads ("closed"), the gate thread
    ("quiet"), and whichever thread runs a scan ("scan"), never under the gate lock.
    Once stop() has begun, emit is no longer called.
    """

    def __init__(
        self,
        roots: Sequence[WatchRoot],
        emit: Callable[[FileReady], None],
        on_problem: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        check_interval: float = 2.0,
        mounts_file: str = "/proc/self/mounts",
    ) -> None:
        names = [r.name for r in roots]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"watch root names must be unique, repeated: {', '.join(dup)}")
        self._roots = [_Root(r) for r in roots]
        self._by_name = {r.name: r for r in self._roots}
        self._emit_cb = emit
        self._on_problem = on_problem
        self._clock = clock
        self._check_interval = max(0.05, float(check_interval))
        self._mounts_file = mounts_file
        self._lock = threading.Lock()  # the gate: _pending and every _Root.emitted
        self._pending: dict[str, _Pending] = {}
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._scan_requests: set[str] = set()
        self._started = False
        self._threads: list[threading.Thread] = []
        quiets = [r.quiet for r in self._roots] or [1.0]
        self._tick = max(_MIN_TICK, min(_MAX_TICK, min(q / 2 for q in quiets)))
        for r in self._roots:
            r.mode = self._resolve(r)
            if not r.cfg.patterns:
                self._problem(r.name, "patterns is empty: no file will ever be emitted")

    # ------------------------------------------------------------------ public API

    def start(self, *, wait_for_scan: bool = True) -> None:
        """Start observers, the gate and supervisor threads, then one reconcile scan.

        With `wait_for_scan=False` the initial scan runs on the supervisor thread and
        start() returns as soon as the observers are up.
        """
        if self._started:
            raise RuntimeError("Watcher.start() called twice")
        if self._stopping.is_set():
            raise RuntimeError("a stopped Watcher cannot be restarted; make a new one")
        self._started = True
        for r in self._roots:
            with r.life:
                self._start_observer(r)
        for target, name in (
            (self._gate_loop, "autoproc-watch-gate"),
            (self._supervise, "autoproc-watch-roots"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if wait_for_scan:
            self.reconcile()
        else:
            with self._lock:
                self._scan_requests.update(r.name for r in self._roots)
            self._wake.set()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop every thread; returns within about `timeout` seconds even if an observer
        is stuck (e.g. a poll on a hung NFS mount); stragglers are daemon threads and are
        reported through on_problem."""
        deadline = time.monotonic() + max(0.0, timeout)
        self._stopping.set()
        self._wake.set()
        stoppers: list[tuple[str, BaseObserver, threading.Thread]] = []

        def collect() -> None:
            for r in self._roots:
                obs = r.observer
                if obs is not None:
                    r.observer = r.emitter = None
                    stoppers.append((r.name, obs, self._stop_observer_async(obs)))

        collect()
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        collect()  # one the supervisor may have started meanwhile
        stuck = [t.name for t in self._threads if t.is_alive()]
        for name, obs, helper in stoppers:
            helper.join(max(0.0, deadline - time.monotonic()))
            if helper.is_alive() or obs.is_alive():
                stuck.append(f"observer of {name}")
        if stuck:
            self._problem(
                "watch", f"still running after stop({timeout}): {', '.join(stuck)} (daemon threads)"
            )

    def reconcile(self, *, force: bool = False) -> int:
        """Scan every root; offer every matching regular file to the gate.

        A file already emitted with the same size and mtime is not emitted again unless
        `force`; a file quiet for `quiet_seconds` (by its mtime) is emitted at once
        (how="scan"); a younger one waits in the gate. Returns the number of matching
        files seen. Missing roots are reported once and picked up when they appear.
        """
        if self._started:
            self._wake.set()  # let the supervisor look at missing/broken roots now
        total = 0
        for r in self._roots:
            if self._stopping.is_set():
                break
            total += self._scan_root(r, force=force)
        return total

    def mode_of(self, root_name: str) -> str:
        """Return "inotify" or "poll": what the root is watched with now (auto resolved,
        fallbacks applied). KeyError for an unknown root name."""
        return self._by_name[root_name].mode

    def status(self) -> dict[str, dict[str, object]]:
        """Per-root state for a report page: mode, path, whether an observer is running,
        and the number of files waiting in the gate."""
        with self._lock:
            pend: dict[str, int] = {}
            for p in self._pending.values():
                pend[p.root.name] = pend.get(p.root.name, 0) + 1
        out: dict[str, dict[str, object]] = {}
        for r in self._roots:
            obs = r.observer
            out[r.name] = {
                "path": r.path,
                "mode": r.mode,
                "watching": obs is not None and obs.is_alive(),
                "pending": pend.get(r.name, 0),
                "known": len(r.emitted),
            }
        return out

    # ------------------------------------------------------------------ reporting / emitting

    def _problem(self, where: str, message: str) -> None:
        log.warning("%s: %s", where, message)
        if self._on_problem is not None:
            try:
                self._on_problem(where, message)
            except Exception:
                log.exception("on_problem callback failed")

    def _emit(self, ready: FileReady) -> None:
        if self._stopping.is_set():
            return  # stopping: the engine may be closing its queue; the next start's scan finds it
        try:
            self._emit_cb(ready)
        except Exception as err:
            # Forget it so the next scan offers it again.
            r = self._by_name.get(ready.root)
            if r is not None:
                with self._lock:
                    r.emitted.pop(ready.path, None)
            self._problem(ready.root, f"emit failed for {ready.path}: {err!r}")

    # ------------------------------------------------------------------ the gate

    def _mark_ready_locked(
        self, r: _Root, path: str, size: int, mtime_ns: int, mtime: float, how: str, force: bool = False
    ) -> FileReady | None:
        key = (size, mtime_ns)
        if not force and r.emitted.get(path) == key:
            return None
        r.emitted[path] = key
        return FileReady(r.name, r.kind, path, size, mtime, how)

    def _ready_now(self, r: _Root, path: str, how: str) -> None:
        if not r.accept(os.path.basename(path)):
            return
        try:
            st = os.stat(path)
        except OSError:
            self._forget(r, path)
            return
        if not statmod.S_ISREG(st.st_mode):
            return
        with self._lock:
            self._pending.pop(path, None)
            ready = self._mark_ready_locked(r, path, st.st_size, st.st_mtime_ns, st.st_mtime, how)
        if ready is not None:
            self._emit(ready)

    def _offer(self, r: _Root, path: str) -> None:
        """Something happened to `path`; it is ready once quiet."""
        if not r.accept(os.path.basename(path)):
            return
        now = self._clock()
        with self._lock:
            p = self._pending.get(path)
            if p is not None:
                p.since = now
                p.gen += 1
                return
        try:
            st = os.stat(path)
        except OSError:
            return
        if not statmod.S_ISREG(st.st_mode):
            return
        with self._lock:
            p = self._pending.get(path)
            if p is None:
                self._pending[path] = _Pending(r, st.st_size, st.st_mtime_ns, st.st_mtime, now)
            else:
                p.since = now
                p.gen += 1

    def _forget(self, r: _Root, path: str) -> None:
        with self._lock:
            self._pending.pop(path, None)
            r.emitted.pop(path, None)

    def _gate_loop(self) -> None:
        while not self._stopping.wait(self._tick):
            try:
                self._gate_tick()
            except Exception as err:
                self._problem("watch", f"internal error in the readiness timer: {err!r}")

    def _gate_tick(self) -> None:
        with self._lock:
            if not self._pending:
                return
            items = [(path, p, p.gen) for path, p in self._pending.items()]
        results = []
        for path, p, gen in items:
            if self._stopping.is_set():
                return
            try:
                st: os.stat_result | None = os.stat(path)
            except OSError:
                st = None
            results.append((path, p, gen, st))
        now = self._clock()
        wall = time.time()
        ready: list[FileReady] = []
        with self._lock:
            for path, p, gen, st in results:
                if self._pending.get(path) is not p or p.gen != gen:
                    continue  # touched meanwhile; look again next tick
                if st is None or not statmod.S_ISREG(st.st_mode):
                    del self._pending[path]  # vanished (or replaced by a non-file): drop silently
                    continue
                if st.st_size != p.size or st.st_mtime_ns != p.mtime_ns:
                    p.size, p.mtime_ns, p.mtime = st.st_size, st.st_mtime_ns, st.st_mtime
                    p.since = now
                    p.gen += 1
                    continue
                # Quiet by our clock since we first saw it, or by the file's own mtime (a
                # polled file is often found long after its last write); either way its
                # size and mtime were unchanged across this re-stat.
                if now - p.since >= p.root.quiet or 0 <= wall - p.mtime >= p.root.quiet:
                    del self._pending[path]
                    out = self._mark_ready_locked(p.root, path, p.size, p.mtime_ns, p.mtime, "quiet")
                    if out is not None:
                        ready.append(out)
        for out in ready:
            self._emit(out)

    # ------------------------------------------------------------------ events

    def _map(self, r: _Root, real: str, p: str | bytes) -> str:
        p = os.fsdecode(p)
        if not p:
            return ""
        if real != r.path and (p == real or p.startswith(real + os.sep)):
            p = r.path + p[len(real) :]
        return p

    def _on_fs_event(self, r: _Root, real: str, closes: bool, event: FileSystemEvent) -> None:
        if self._stopping.is_set():
            return
        etype = event.event_type
        if event.is_directory:
            if etype in ("deleted", "moved") and os.fsdecode(event.src_path) == real:
                self._wake.set()  # the root itself went away: let the supervisor act now
            return
        src = self._map(r, real, event.src_path)
        if etype == "closed":
            self._ready_now(r, src, "closed")
        elif etype == "moved":
            if src:
                self._forget(r, src)
            dest = self._map(r, real, getattr(event, "dest_path", ""))
            if dest:
                if closes:  # inotify: a rename into place means the producer is done
                    self._ready_now(r, dest, "closed")
                else:
                    self._offer(r, dest)
        elif etype in ("created", "modified", "attrib"):
            self._offer(r, src)
        elif etype == "deleted":
            self._forget(r, src)

    # ------------------------------------------------------------------ scanning

    def _scan_root(self, r: _Root, *, force: bool = False) -> int:
        with r.scan_lock:
            return self._scan_root_locked(r, force)

    def _scan_root_locked(self, r: _Root, force: bool) -> int:
        try:
            st = os.stat(r.path)
        except FileNotFoundError:
            self._report_missing(r)
            return 0
        except OSError as err:
            self._problem(r.name, f"cannot stat root {r.path}: {err.strerror or err}")
            return 0
        if not statmod.S_ISDIR(st.st_mode):
            self._report_missing(r, what="is not a directory")
            return 0
        seen_paths: set[str] = set()
        visited = {(st.st_dev, st.st_ino)}
        stack = [r.path]
        clean = True
        vanished = 0
        vanished_example = ""
        accept = r.accept
        inc_match, ign_match = r.inc_match, r.ign_match
        recursive = r.recursive
        S_ISREG = statmod.S_ISREG
        while stack:
            if self._stopping.is_set():
                return len(seen_paths)
            d = stack.pop()
            files: list[tuple[str, int, int, float]] = []
            try:
                with os.scandir(d) as it:
                    for e in it:
                        name = e.name
                        try:
                            if e.is_dir():
                                if not recursive:
                                    continue
                                dst = e.stat()
                                key = (dst.st_dev, dst.st_ino)
                                if key in visited:
                                    what = "symlink" if e.is_symlink() else "directory"
                                    self._problem(
                                        r.name,
                                        f"skipped {what} {e.path}: leads to a directory already scanned "
                                        "(symlink loop or second link)",
                                    )
                                    continue
                                visited.add(key)
                                stack.append(e.path)
                                continue
                            if inc_match is not None and inc_match(name) is None:
                                continue
                            if ign_match is not None and ign_match(name) is not None:
                                continue
                            fst = e.stat()
                        except FileNotFoundError:
                            if e.is_symlink():
                                if accept(name):
                                    self._problem(r.name, f"skipped broken symlink {e.path}")
                            else:
                                vanished += 1
                                vanished_example = vanished_example or e.path
                                clean = False
                            continue
                        except OSError as err:
                            self._problem(r.name, f"cannot stat {e.path}: {err.strerror or err}")
                            clean = False
                            continue
                        if S_ISREG(fst.st_mode):
                            files.append((e.path, fst.st_size, fst.st_mtime_ns, fst.st_mtime))
            except FileNotFoundError:
                if d == r.path:
                    self._report_missing(r)
                    return len(seen_paths)
                vanished += 1
                vanished_example = vanished_example or d
                clean = False
            except PermissionError as err:
                self._problem(r.name, f"cannot read directory {d}: {err.strerror or err}")
                clean = False
            except OSError as err:
                self._problem(r.name, f"cannot read directory {d}: {err.strerror or err}")
                clean = False
            if files:
                for f in files:
                    seen_paths.add(f[0])
                self._offer_scanned(r, files, force)
        if vanished:
            self._problem(
                r.name,
                f"{vanished} file(s) or directories vanished during the scan (e.g. {vanished_example})",
            )
        if clean and not self._stopping.is_set():
            # Forget files that are gone, so the memory follows the tree.
            with self._lock:
                for path in [p for p in r.emitted if p not in seen_paths]:
                    del r.emitted[path]
        return len(seen_paths)

    def _offer_scanned(self, r: _Root, files: list[tuple[str, int, int, float]], force: bool) -> None:
        wall = time.time()
        now = self._clock()
        quiet = r.quiet
        out: list[FileReady] = []
        with self._lock:
            emitted = r.emitted
            pending = self._pending
            for path, size, mtime_ns, mtime in files:
                key = (size, mtime_ns)
                if not force and emitted.get(path) == key:
                    continue
                if wall - mtime >= quiet:
                    pending.pop(path, None)
                    emitted[path] = key
                    out.append(FileReady(r.name, r.kind, path, size, mtime, "scan"))
                else:
                    p = pending.get(path)
                    if p is None:
                        pending[path] = _Pending(r, size, mtime_ns, mtime, now)
                    elif (p.size, p.mtime_ns) != key:
                        p.size, p.mtime_ns, p.mtime, p.since = size, mtime_ns, mtime, now
                        p.gen += 1
        for ready in out:
            self._emit(ready)

    def _report_missing(self, r: _Root, what: str = "does not exist") -> None:
        if not r.missing_reported:
            r.missing_reported = True
            self._problem(r.name, f"root {r.path} {what}; it will be watched when it appears")

    # ------------------------------------------------------------------ observers

    def _resolve(self, r: _Root) -> str:
        if r.force_poll:
            return "poll"
        try:
            return resolve_mode(Path(r.path), r.cfg.mode, self._mounts_file)
        except Exception as err:
            self._problem(r.name, f"cannot resolve watch mode ({err!r}); using inotify")
            return "inotify"

    def _start_observer(self, r: _Root) -> bool:
        """Start watching `r` (caller holds r.life). False if the root is not there."""
        real = os.path.realpath(r.path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            self._report_missing(r)
            return False
        except OSError as err:
            self._start_problem(r, f"cannot stat root {r.path}: {err.strerror or err}")
            return False
        if not statmod.S_ISDIR(st.st_mode):
            self._report_missing(r, what="is not a directory")
            return False
        mode = self._resolve(r)
        obs: BaseObserver | None = None
        if mode == "inotify":
            try:
                obs = self._try_start(r, real, "inotify")
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EMFILE):
                    r.force_poll = True
                    r.limit_error = None
                    self._problem(
                        r.name,
                        f"inotify limit reached ({err.strerror or err}); polling {r.path} every "
                        f"{r.cfg.poll_interval:g} s instead (raise fs.inotify.max_user_watches/instances)",
                    )
                    mode = "poll"
                elif isinstance(err, FileNotFoundError | NotADirectoryError):
                    self._report_missing(r)
                    return False
                else:
                    self._start_problem(r, f"cannot watch {r.path} with inotify: {err.strerror or err}")
                    return False
        if obs is None:
            try:
                obs = self._try_start(r, real, "poll")
            except (FileNotFoundError, NotADirectoryError):
                self._report_missing(r)
                return False
            except OSError as err:
                self._start_problem(r, f"cannot poll {r.path}: {err.strerror or err}")
                return False
        if self._stopping.is_set():
            self._stop_observer_async(obs)
            return False
        r.observer = obs
        r.emitter = next(iter(obs.emitters), None)
        r.real = real
        r.ident = (st.st_dev, st.st_ino)
        r.mode = mode
        if r.missing_reported:
            log.info("%s: root %s is there now; watching it (%s)", r.name, r.path, mode)
        r.missing_reported = False
        r.start_problem = None
        return True

    def _start_problem(self, r: _Root, message: str) -> None:
        # The supervisor retries every few seconds: say each distinct failure once.
        if message != r.start_problem:
            r.start_problem = message
            self._problem(r.name, message + "; retrying")

    def _try_start(self, r: _Root, real: str, mode: str) -> BaseObserver:
        if mode == "inotify":
            # Full events: a move into or out of the tree comes as a move with an empty side.
            inotify = InotifyObserver(timeout=DEFAULT_OBSERVER_TIMEOUT, generate_full_events=True)
            try:
                _hook_inotify(inotify, on_overflow=lambda: self._flag(r, overflow=True),
                              on_limit=lambda err: self._flag(r, limit=err))
            except WatchdogInternalsChanged as err:
                self._problem(r.name, str(err))
            obs: BaseObserver = inotify
        else:
            obs = PollingObserver(timeout=max(_MIN_POLL_INTERVAL, float(r.cfg.poll_interval)))
        obs.name = f"autoproc-watch-{r.name}"
        handler = _Handler(self, r, real, closes=(mode == "inotify"))
        try:
            obs.schedule(handler, real, recursive=r.recursive, event_filter=_EVENT_FILTER)
            obs.start()
        except BaseException:
            self._stop_observer_async(obs).join(1.0)
            raise
        return obs

    def _flag(self, r: _Root, *, overflow: bool = False, limit: OSError | None = None) -> None:
        # Called on watchdog's reader thread: only set flags and wake the supervisor.
        if overflow:
            r.overflowed = True
        if limit is not None:
            r.limit_error = limit
        self._wake.set()

    def _stop_observer_async(self, obs: BaseObserver) -> threading.Thread:
        def _stop() -> None:
            try:
                obs.stop()
                if obs.is_alive():
                    obs.join()
            except Exception:
                log.debug("stopping an observer failed", exc_info=True)

        t = threading.Thread(target=_stop, name="autoproc-watch-stopper", daemon=True)
        t.start()
        return t

    def _healthy(self, r: _Root) -> bool:
        obs, em = r.observer, r.emitter
        if obs is None or em is None or not obs.is_alive() or not em.is_alive():
            return False
        try:
            real = os.path.realpath(r.path)
            st = os.stat(real)
        except OSError:
            return False
        return real == r.real and (st.st_dev, st.st_ino) == r.ident and statmod.S_ISDIR(st.st_mode)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self._check_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            for r in self._roots:
                if self._stopping.is_set():
                    return
                try:
                    self._check_root(r)
                except Exception as err:
                    self._problem(r.name, f"internal error checking the root: {err!r}")

    def _check_root(self, r: _Root) -> None:
        scan = False
        with self._lock:
            if r.name in self._scan_requests:
                self._scan_requests.discard(r.name)
                scan = True
        with r.life:
            if self._stopping.is_set():
                return
            if r.limit_error is not None:
                err, r.limit_error = r.limit_error, None
                if r.mode == "inotify" and r.observer is not None:
                    r.force_poll = True
                    self._problem(
                        r.name,
                        f"inotify limit reached while adding watches ({err.strerror or err}); some "
                        f"subdirectories were not watched: polling {r.path} every "
                        f"{r.cfg.poll_interval:g} s instead (raise fs.inotify.max_user_watches)",
                    )
                    self._replace_observer(r)
                    scan = True
            if r.overflowed:
                r.overflowed = False
                self._problem(r.name, "inotify event queue overflowed: events were lost; rescanning")
                scan = True
            if r.observer is not None and not self._healthy(r):
                obs = r.observer
                r.observer = r.emitter = None
                self._stop_observer_async(obs).join(1.0)
                self._problem(
                    r.name, f"root {r.path} vanished or was replaced; watching it again when it is there"
                )
                r.missing_reported = True  # said so already
            if r.observer is None and self._start_observer(r):
                scan = True
        if scan:
            self._scan_root(r)

    def _replace_observer(self, r: _Root) -> None:
        obs = r.observer
        r.observer = r.emitter = None
        if obs is not None:
            self._stop_observer_async(obs).join(1.0)
        self._start_observer(r)
