"""The daemon's control socket: the CLI's requests (`autoproc.requests`) carried to the daemon,
which knows who sent them.

A unix stream socket, mode 0660 in the group `control.group`: who may connect at all. The
daemon reads the caller's uid from the socket itself (SO_PEERCRED, filled in by the kernel at
connect), maps it to a user name and its groups, and decides: operators may change state,
viewers may read, anyone else is refused (a clear error and a problem row, nothing changes).
The caller cannot claim to be someone else: the request's `operator` is only an "on behalf
of" note.

One request per connection, framed as a 4-byte big-endian length and that many bytes of
UTF-8 JSON; the reply is framed the same way. Each connection is served in its own thread
with a timeout and a size cap, at most `control.max_clients` at once, each with its own
store connection: a slow, stuck or hostile client never holds up the engine loop.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoproc import requests
from autoproc.config import Config, ControlConfig
from autoproc.errors import AutoprocError
from autoproc.machines import StateMachine
from autoproc.script.override import user_name
from autoproc.store import Store

log = logging.getLogger("autoproc.control")

HEADER = struct.Struct(">I")
MAX_REPLY_BYTES = 64 * 1024 * 1024
# The kernel's limit on a unix socket path (sun_path) is 108 bytes with its NUL.
MAX_SOCKET_PATH = 107
SERVER_BUSY_TIMEOUT_MS = 5_000
REPLY_TIMEOUT_SECONDS = 60.0
PROBLEMS_PER_MINUTE = 30


class ControlError(AutoprocError):
    """The control socket cannot be used (the message says why)."""


class FrameError(Exception):
    """A frame that is not a length and that many bytes of JSON."""


# -- framing --------------------------------------------------------------------------------

def send_frame(sock: socket.socket, payload: Any) -> None:
    body = json.dumps(payload, default=str).encode()
    sock.sendall(HEADER.pack(len(body)) + body)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 65536))
        if not chunk:
            raise FrameError(f"connection closed after {got} of {size} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, max_bytes: int) -> Any:
    (size,) = HEADER.unpack(_read_exactly(sock, HEADER.size))
    if size > max_bytes:
        raise FrameError(f"a request of {size} bytes is larger than the {max_bytes} allowed")
    try:
        return json.loads(_read_exactly(sock, size).decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # RecursionError: [[[[…]]]]
        raise FrameError(f"not JSON: {type(err).__name__}: {err}") from None


@contextlib.contextmanager
def reachable(path: Path) -> Iterator[str]:
    """`path` as something bind() and connect() take: a path longer than sun_path allows is
    reached through its directory's /proc/self/fd entry."""
    text = str(path)
    if len(text.encode()) <= MAX_SOCKET_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# -- who is calling -------------------------------------------------------------------------

@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    name: str
    groups: frozenset[str]

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
        name = user_name(uid)
        gids = {gid}
        with contextlib.suppress(KeyError):
            gids.update(os.getgrouplist(name, pwd.getpwuid(uid).pw_gid))
        groups = set()
        for g in gids:
            with contextlib.suppress(KeyError):
                groups.add(grp.getgrgid(g).gr_name)
        return cls(pid, uid, gid, name, frozenset(groups))


def role(peer: Peer, control: ControlConfig) -> str | None:
    """`operator`, `viewer` or None. The daemon's own user and root are always operators:
    they can write the state database anyway."""
    if peer.uid in (0, os.geteuid()):
        return "operator"
    for name, access in (("operator", control.operators), ("viewer", control.viewers)):
        if peer.name in access.users or peer.groups & set(access.groups):
            return name
    return None


# -- the server -----------------------------------------------------------------------------

class ControlServer:
    """Listens on `control.socket` in a thread of its own; serves each connection in another."""

    def __init__(self, config: Callable[[], Config], machines: Callable[[], dict[str, StateMachine]]):
        self._config = config
        self._machines = machines
        cfg = config().control
        self.path = Path(cfg.socket)
        self._slots = threading.BoundedSemaphore(cfg.max_clients)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()
        self._problem_lock = threading.Lock()
        self._window_start, self._in_window, self._suppressed = time.monotonic(), 0, 0

    def start(self) -> ControlServer:
        cfg = self._config().control
        gid = _group_id(cfg.group)
        parent = self.path.parent
        if not parent.is_dir():
            parent.mkdir(parents=True, mode=0o750)
            if gid is not None:
                os.chown(parent, -1, gid)
        # A socket left by a daemon that was killed: the store's lock (taken first) says no
        # other daemon runs, so it is ours to replace. Anything else there is not touched.
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise ControlError(f"control.socket {self.path} exists and is not a socket")
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # never connectable by others, not even between bind and chmod
        try:
            with reachable(self.path) as where:
                sock.bind(where)
        except OSError as err:
            sock.close()
            raise ControlError(f"control.socket {self.path}: cannot listen: {err.strerror or err}") from None
        finally:
            os.umask(old)
        if gid is not None:
            os.chown(self.path, -1, gid)
        os.chmod(self.path, 0o660)
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s (group id %s)", self.path, os.stat(self.path).st_gid)
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as err:
                if self._closing.is_set():
                    return
                log.warning("control socket: accept failed: %s", err)
                continue
            if not self._slots.acquire(blocking=False):
                self._refuse_busy(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="control-client", daemon=True).start()

    def _refuse_busy(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            conn.settimeout(0.5)
            send_frame(conn, {"ok": False, "error": "the daemon is serving too many control connections; "
                                                    "try again"})
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            config = self._config()
            conn.settimeout(config.control.timeout_seconds)
            peer = Peer.of(conn)
            try:
                reply = self._answer(conn, peer, config)
            except (OSError, FrameError) as err:  # a timeout or a bad frame: tell the caller if it listens
                self._problem(config, f"bad request from {peer.name} (uid {peer.uid}, pid {peer.pid}): {err}")
                reply = {"ok": False, "error": f"bad request: {err}"}
            with contextlib.suppress(OSError):
                send_frame(conn, reply)
        except Exception:  # noqa: BLE001 - one client must never take the server down
            log.exception("control socket: serving a client failed")
        finally:
            conn.close()
            self._slots.release()

    def _answer(self, conn: socket.socket, peer: Peer, config: Config) -> dict[str, Any]:
        request = recv_frame(conn, config.control.max_request_bytes)
        try:
            verb = requests.check(request)
        except requests.RequestError as err:
            self._problem(config, f"bad request from {peer.name} (uid {peer.uid}): {err}")
            return {"ok": False, "error": str(err)}
        allowed = role(peer, config.control)
        if allowed != "operator" and (verb.writes or allowed is None):
            what = "change state" if verb.writes else "read the state"
            message = (f"{peer.name} (uid {peer.uid}) may not {what} through the daemon ({verb.name} refused): "
                       f"not in control.{'operators' if verb.writes else 'viewers'}")
            self._problem(config, message)
            return {"ok": False, "error": message}
        store = Store(config.db, create=False, readonly=not verb.writes, busy_timeout_ms=SERVER_BUSY_TIMEOUT_MS)
        try:
            result = requests.perform(store, self._machines(), config, request, user=peer.name)
        except AutoprocError as err:
            return {"ok": False, "error": str(err)}
        except Exception as err:  # noqa: BLE001 - a bug must cost one request, not the server
            log.exception("control socket: %s from %s failed", verb.name, peer.name)
            self._problem(config, f"{verb.name} from {peer.name} failed: {type(err).__name__}: {err}")
            return {"ok": False, "error": f"internal error in the daemon: {type(err).__name__}: {err}"}
        finally:
            store.close()
        if verb.writes:
            log.info("%s by %s (uid %s): %s", verb.name, peer.name, peer.uid, "; ".join(result["lines"]))
        return {"ok": True, **result}

    def _problem(self, config: Config, message: str) -> None:
        log.warning("control socket: %s", message)
        # A local user hammering the socket must not fill the database with problem rows.
        with self._problem_lock:
            now = time.monotonic()
            if now - self._window_start >= 60:
                if self._suppressed:
                    message = f"{message} (and {self._suppressed} more control problems in the last minute)"
                self._window_start, self._in_window, self._suppressed = now, 0, 0
            if self._in_window >= PROBLEMS_PER_MINUTE:
                self._suppressed += 1
                return
            self._in_window += 1
        store = Store(config.db, create=False, busy_timeout_ms=SERVER_BUSY_TIMEOUT_MS)
        try:
            store.add_problem("control", message)
        except AutoprocError as err:
            log.warning("control socket: cannot record the problem: %s", err)
        finally:
            store.close()


def _group_id(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ControlError(f"control.group: no group {name!r} on this machine") from None


# -- the client -----------------------------------------------------------------------------

def call(control: ControlConfig, request: dict[str, Any]) -> dict[str, Any] | None:
    """Send `request` to the daemon; its reply, or None when no daemon listens (no socket,
    or one a killed daemon left). A socket the caller may not use is an error that says so."""
    if not control.enabled:
        return None
    path = Path(control.socket)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(control.timeout_seconds)
    try:
        try:
            with reachable(path) as where:
                sock.connect(where)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            return None
        except PermissionError:
            raise ControlError(f"the daemon's control socket {path} is not open to {user_name(os.getuid())}: "
                               "its group (control.group) must include you") from None
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ECONNREFUSED):
                return None
            raise ControlError(f"cannot reach the daemon's control socket {path}: {err.strerror or err}") from None
        try:
            with contextlib.suppress(BrokenPipeError):  # refused unread (too large): the answer says so
                send_frame(sock, request)
            # The daemon answers within its own timeouts (the store's write lock included).
            sock.settimeout(REPLY_TIMEOUT_SECONDS + control.timeout_seconds)
            reply = recv_frame(sock, MAX_REPLY_BYTES)
        except (OSError, FrameError) as err:
            raise ControlError(f"the daemon's control socket {path} gave no answer: {err}") from None
    finally:
        sock.close()
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError(f"the daemon's control socket {path} answered something else than a reply")
    return reply
