"""A warm executor for steps: `autoproc-step`/`pipetask`/`butler` commands forked from a
server that has the middleware imported already, instead of a fresh interpreter per step.

The server (`python -m autoproc.deep.warm SOCKET`) is started once, imports the
middleware (and `deep.warm_preload`), then waits on a Unix socket. Per request it forks
one grandchild that starts its own session (own process group, killable as one, like
`process.start`'s children), appends its output to the step's log, takes the step's
environment and working directory, and runs the very command line (`autoproc-step run
REPO <saved graph>`, or `pipetask run -g <saved graph> ...`) through the same entry point
in-process. So the outputs, the logs and the judging from the Butler are those of a fresh
child; only the ~1–3 s of interpreter and middleware start-up is gone (benchmarks/README.md).

`WarmExecutor.run` has `process.run`'s signature (the runner's `run_child`): it reports
the grandchild as a `process.Child` (pid = pgid, the log's `.exit` status file), so a
restarted daemon finds, kills and recovers it exactly like a `pipetask` child. A
grandchild killed with SIGKILL is reaped by the server, which writes its status file
(128 + signal, as the shell wrapper does). If the server itself dies, running
grandchildren go on in their own sessions; the client waits for their group to end and
the next request starts a new server. Commands other than those three, and any command
when the server cannot start or refuses it, run through `process.run` instead.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from autoproc import process

_LOG = logging.getLogger(__name__)

# The entry point each command runs in the grandchild (the console scripts' `main`).
ENTRY_POINTS = {"pipetask": "lsst.ctrl.mpexec.cli.pipetask", "butler": "lsst.daf.butler.cli.butler",
                "autoproc-step": "autoproc.deep.execute"}
# What `pipetask run`, `run-qbb` and `butler aggregate-graph` import before their first
# quantum; imported once in the server, shared copy-on-write by every grandchild.
PRELOAD = (
    "lsst.ctrl.mpexec.cli.pipetask", "lsst.ctrl.mpexec.cli.cmd.commands", "lsst.ctrl.mpexec.cli.script.run",
    "lsst.ctrl.mpexec.cli.script.run_qbb", "lsst.daf.butler.cli.butler", "lsst.daf.butler.cli.cmd",
    "lsst.pipe.base.tests.mocks", "lsst.pipe.base.quantum_graph", "sqlalchemy.dialects.sqlite",
    "autoproc.deep.execute", "lsst.pipe.base.mp_graph_executor", "lsst.pipe.base.single_quantum_executor",
    "lsst.pipe.base.script.utils", "lsst.daf.butler.cli.cliLog",
)
START_TIMEOUT = 60.0


class WarmError(RuntimeError):
    pass


# --- the server ---------------------------------------------------------------------------


def _write_status(status_file: str, rc: int) -> None:
    """The `.exit` file `process.recorded_exit` reads, written as the shell wrapper does."""
    if not status_file or os.path.exists(status_file):
        return
    tmp = status_file + ".tmp"
    with contextlib.suppress(OSError):
        process.write_private(Path(tmp), f"{rc}\n")
        os.replace(tmp, status_file)


def _grandchild(req: Mapping, close: Sequence[socket.socket]) -> int:
    """In the forked grandchild: become the step's process, run its command, return its status."""
    os.setsid()
    for s in close:
        s.close()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(req["cwd"])
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)
    os.environ.clear()
    os.environ.update(req["env"])
    argv = [str(a) for a in req["argv"]]
    sys.argv = argv
    try:
        # click mains exit by SystemExit (below); autoproc-step's main returns its status
        code = importlib.import_module(ENTRY_POINTS[Path(argv[0]).name]).main()
        rc = code if isinstance(code, int) else 0
    except SystemExit as exc:
        code = exc.code
        rc = code if isinstance(code, int) else (0 if code is None else 1)
    except BaseException:  # noqa: BLE001 - what a console script would print before exiting 1
        import traceback

        traceback.print_exc()
        rc = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    _write_status(req["status_file"], rc)
    return rc


def _send(conn: socket.socket, msg: Mapping) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(msg) + "\n").encode())


def serve(sock_path: str, parent: int, preload: Sequence[str] = ()) -> int:
    """The server's loop: one thread (forking is only safe so), a selector over the
    listening socket and the clients, grandchildren reaped every 0.1 s. It stops once
    `parent` (the client's process) is no longer its parent, even if that died during the
    preload."""
    for name in (*PRELOAD, *preload):
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - a missing optional module only costs its import later
            print(f"autoproc-warm: preload {name}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    # pyarrow (imported by daf_butler) starts jemalloc's background thread, which makes
    # os.fork warn; jemalloc's own fork handlers keep its allocator consistent in the child,
    # and no thread of ours exists, so the warning says nothing here.
    warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path + ".tmp")
    os.chmod(sock_path + ".tmp", 0o600)
    os.replace(sock_path + ".tmp", sock_path)  # clients connect only once the preload is done
    listener.listen(16)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    buffers: dict[socket.socket, bytes] = {}
    running: dict[int, tuple[socket.socket, str]] = {}  # pid -> (client, status file)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop and os.getppid() == parent:  # the daemon gone: stop taking work
        for key, _ in sel.select(timeout=0.1):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _addr = listener.accept()
                sel.register(conn, selectors.EVENT_READ)
                buffers[conn] = b""
                continue
            data = sock.recv(65536)
            if not data:  # the client went away; its grandchild, if any, runs on
                sel.unregister(sock)
                buffers.pop(sock, None)
                sock.close()
                continue
            buffers[sock] += data
            if b"\n" not in buffers[sock]:
                continue
            line, _, buffers[sock] = buffers[sock].partition(b"\n")
            try:
                req = json.loads(line)
                if Path(str(req["argv"][0])).name not in ENTRY_POINTS:
                    raise ValueError(f"not a command this server runs: {req['argv'][0]!r}")
                Path(req["log"]).parent.mkdir(parents=True, exist_ok=True)
                Path(req["cwd"]).mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(req["status_file"])
            except (ValueError, KeyError, TypeError, IndexError, OSError) as err:
                _send(sock, {"error": f"{type(err).__name__}: {err}"})
                continue
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    code = _grandchild(req, [listener, *buffers])
                finally:
                    os._exit(code)
            running[pid] = (sock, req["status_file"])
            _send(sock, {"pid": pid})
        while running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            client, status_file = running.pop(pid, (None, ""))
            rc = os.waitstatus_to_exitcode(status)
            _write_status(status_file, rc if rc >= 0 else 128 - rc)
            if client is not None:
                _send(client, {"exit": rc})
    # A client killed with -9 cannot clean up: the server removes its socket and directory.
    with contextlib.suppress(OSError):
        os.unlink(sock_path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(sock_path))
    return 0


# --- the client ---------------------------------------------------------------------------


class WarmExecutor:
    """Starts the server on first use and runs commands through it (`run` = `process.run`)."""

    def __init__(self, env: Mapping[str, str] | None = None, preload: Sequence[str] = (),
                 log: Path | str | None = None):
        self.env = dict(os.environ if env is None else env)
        self.preload = list(preload)
        self.log = Path(log) if log is not None else None
        self._dir: str | None = None  # made when a server starts
        self.socket = ""
        self._server: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self.starts = 0
        atexit.register(self.close)

    def _ensure_server(self) -> None:
        with self._lock:
            if self._server is not None and self._server.poll() is None and os.path.exists(self.socket):
                return
            if self._server is not None:
                self.close(remove_dir=False)
            if self._dir is None or not os.path.isdir(self._dir):
                self._dir = tempfile.mkdtemp(prefix="autoproc-warm-")  # 0700; short enough for a socket path
                self.socket = os.path.join(self._dir, "sock")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)
            out = open(self.log, "ab") if self.log is not None else None  # noqa: SIM115 - closed below
            try:
                self._server = subprocess.Popen(  # noqa: S603 - our own module, paths as argv
                    [sys.executable, "-m", "autoproc.deep.warm", self.socket, str(os.getpid()), *self.preload],
                    env=self.env,
                    stdin=subprocess.DEVNULL, stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                    start_new_session=True)
            finally:
                if out is not None:
                    out.close()
            self.starts += 1
            end = time.monotonic() + START_TIMEOUT
            while not os.path.exists(self.socket):
                if self._server.poll() is not None:
                    raise WarmError(f"warm server exited {self._server.returncode} at start (see {self.log})")
                if time.monotonic() > end:
                    raise WarmError(f"warm server not ready after {START_TIMEOUT:.0f} s (see {self.log})")
                time.sleep(0.02)

    def start(self) -> None:
        """Start the server now (else on the first command), so a step never waits for its imports."""
        self._ensure_server()

    @property
    def server_pid(self) -> int | None:
        return self._server.pid if self._server is not None and self._server.poll() is None else None

    def close(self, remove_dir: bool = True) -> None:
        """Stop the server (running grandchildren go on: they are the steps, in their own sessions)."""
        srv, self._server = self._server, None
        if srv is not None and srv.poll() is None:
            srv.terminate()
            try:
                srv.wait(5)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()
        if remove_dir and self._dir is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.socket)
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)
            self._dir = None

    def run(self, argv: Sequence[str], *, cwd: Path | str, log: Path | str, env: Mapping[str, str] | None = None,
            timeout: float | None = None, on_start: Callable[[process.Child], None] | None = None,
            should_stop: Callable[[], bool] | None = None, stdin: Path | str | None = None) -> process.ChildResult:
        """`process.run` for the `ENTRY_POINTS` commands, forked warm; anything else (or a
        command with standard input) through `process.run` itself."""
        argv = [str(a) for a in argv]
        if not argv or Path(argv[0]).name not in ENTRY_POINTS or stdin is not None:
            return process.run(argv, cwd=cwd, log=log, env=env, timeout=timeout, on_start=on_start,
                               should_stop=should_stop, stdin=stdin)
        log = Path(log)
        process.make_dirs(Path(cwd))
        process.make_dirs(log.parent)
        status_file = str(log.with_suffix(log.suffix + ".exit"))
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:  # nothing runs yet: a server that cannot start or answer costs the warm start, not the step
                self._ensure_server()
                conn.connect(self.socket)
                conn.sendall((json.dumps({"argv": argv, "cwd": str(cwd), "log": str(log),
                                          "status_file": status_file,
                                          "env": dict(os.environ if env is None else env)}) + "\n").encode())
            except (WarmError, OSError) as err:
                _LOG.warning("%s; running %s as a fresh process", err, Path(argv[0]).name)
                return process.run(argv, cwd=cwd, log=log, env=env, timeout=timeout, on_start=on_start,
                                   should_stop=should_stop)
            lines = _Lines(conn)
            reply = json.loads(lines.next(START_TIMEOUT) or b"{}")
            if "error" in reply:  # refused before forking: nothing of the step runs
                _LOG.warning("warm server refused %s: %s; running it as a fresh process", argv[:2], reply["error"])
                return process.run(argv, cwd=cwd, log=log, env=env, timeout=timeout, on_start=on_start,
                                   should_stop=should_stop)
            if "pid" not in reply:  # it may have forked: starting a second copy could run the graph twice
                raise WarmError(f"warm server gave no answer for {argv[:2]} within {START_TIMEOUT:.0f} s")
            pid = int(reply["pid"])
            child = process.Child(pid=pid, pgid=pid, host=socket.gethostname(), argv=tuple(argv), cwd=str(cwd),
                                  log=str(log), status_file=status_file, started=time.time())
            if on_start is not None:
                on_start(child)
            done: list[int] = []

            def poll(wait: float) -> int | None:
                if done:
                    return done[0]
                line = lines.next(wait)
                if line:
                    done.append(int(json.loads(line)["exit"]))
                elif line is not None:
                    return None
                elif process.group_alive(pid):  # the server died; the grandchild's group is its life
                    time.sleep(wait)
                    return None
                else:
                    rc = process.recorded_exit(status_file)
                    done.append(-signal.SIGKILL if rc is None else rc)
                return done[0]

            return process.wait(child, poll, timeout=timeout, should_stop=should_stop)
        finally:
            conn.close()


_SHARED: dict[tuple, WarmExecutor] = {}
_SHARED_LOCK = threading.Lock()


def shared(env: Mapping[str, str], preload: Sequence[str] = (), log: Path | str | None = None) -> WarmExecutor:
    """The process's one executor for this environment and preload (a daemon starts one
    server and keeps it; the steps of every night share it)."""
    key = (tuple(sorted(env.items())), tuple(preload))
    with _SHARED_LOCK:
        ex = _SHARED.get(key)
        if ex is None:
            ex = _SHARED[key] = WarmExecutor(env, preload, log)
        return ex


class _Lines:
    """Lines from a socket, waiting at most so long for each: b"" = none yet, None = closed."""

    def __init__(self, conn: socket.socket):
        self.conn, self.buf = conn, b""

    def next(self, wait: float | None) -> bytes | None:
        while b"\n" not in self.buf:
            self.conn.settimeout(wait)
            try:
                data = self.conn.recv(65536)
            except TimeoutError:
                return b""
            except OSError:
                return None
            if not data:
                return None
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or not args[1].isdigit():
        print("usage: python -m autoproc.deep.warm SOCKET PARENT_PID [MODULE ...]", file=sys.stderr)
        return 2
    return serve(args[0], int(args[1]), args[2:])


if __name__ == "__main__":
    sys.exit(main())
