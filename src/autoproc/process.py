"""Child processes: each in its own session (so its process group can be killed as one),
its own working directory and log file, never through a shell that sees data.

Exit status is also written to a file by a tiny constant wrapper, so a daemon that was
killed and restarted can still learn how a child it did not reap ended.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

KILL_GRACE_SECONDS = 3.0
# errno values that mean "the disk is full", whichever way it shows (EFBIG: a file-size limit).
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The wrapper's script is constant; argv reaches it only as positional parameters.
# The status file is made 0640 whatever the child's umask (a subshell keeps it from the child).
_WRAPPER = ('status="$1"; shift; "$@"; rc=$?; (umask 027; printf "%s\\n" "$rc" > "$status.tmp") '
            '&& mv "$status.tmp" "$status"; exit "$rc"')


@dataclass(frozen=True)
class Child:
    """A started child: enough to find, wait for or kill it later, from any process."""

    pid: int
    pgid: int
    host: str
    argv: tuple[str, ...]
    cwd: str
    log: str
    status_file: str
    started: float

    def to_json(self) -> dict:
        return {
            "pid": self.pid, "pgid": self.pgid, "host": self.host, "argv": list(self.argv),
            "cwd": self.cwd, "log": self.log, "status_file": self.status_file, "started": self.started,
        }


@dataclass(frozen=True)
class ChildResult:
    returncode: int
    log: Path
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 20) -> str:
        return log_tail(self.log, lines)

    def no_space(self) -> OSError | None:
        """Why this failed child looks like a victim of a full disk or a file-size limit
        (then it is the environment's fault, not the step's), else None."""
        return None if self.ok else no_space(self.log.stem, self.returncode, self.tail(5), self.log)


def no_space(what: str, returncode: int, log_text: str, log: Path | str) -> OSError | None:
    """The OSError a failed child `what` shows, by its exit status or the last lines of
    its log, if a full disk or a file-size limit made it fail; else None."""
    if returncode in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ):  # direct, or through the wrapper's shell
        return OSError(errno.EFBIG, f"{what} was killed by SIGXFSZ: a file it wrote reached "
                       "the file-size limit (ulimit -f, LimitFSIZE=)")
    code = no_space_errno(log_text)
    if code is None:
        return None
    return OSError(code, f"{what} failed with \"{os.strerror(code)}\" (see {log})")


def no_space_errno(text: str) -> int | None:
    """The no-space errno whose message `text` shows (as perror, Python's OSError and most
    tools print it), else None."""
    return next((code for code in NO_SPACE_ERRNOS if os.strerror(code) in text), None)


def make_dirs(path: Path) -> Path:
    """`mkdir -p` where every level it creates is 0750 (mkdir's mode covers only the last)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for level in reversed(missing):
        level.mkdir(mode=0o750, exist_ok=True)
    return missing[0] if missing else path


def write_private(path: Path, text: str) -> None:
    """Write a small file readable by owner and group only (0640), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def log_tail(path: Path | str, lines: int = 20, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def start(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    log: Path | str,
    env: Mapping[str, str] | None = None,
    stdin: Path | str | None = None,
) -> tuple[subprocess.Popen, Child]:
    """Start `argv` in a new session with stdout and stderr appended to `log` (and its
    standard input read from the file `stdin`, else empty)."""
    argv = [str(a) for a in argv]
    if not argv:
        raise ValueError("empty command")
    cwd = Path(cwd)
    make_dirs(cwd)
    log = Path(log)
    make_dirs(log.parent)
    status_file = log.with_suffix(log.suffix + ".exit")
    status_file.unlink(missing_ok=True)
    full_env = dict(os.environ if env is None else env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    in_fd = os.open(stdin, os.O_RDONLY) if stdin is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(  # noqa: S603 - constant script, data only as argv
            ["/bin/sh", "-c", _WRAPPER, "autoproc-child", str(status_file), *argv],
            cwd=cwd,
            env=full_env,
            stdin=in_fd,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(fd)
        if stdin is not None:
            os.close(in_fd)
    child = Child(
        pid=proc.pid, pgid=proc.pid, host=socket.gethostname(), argv=tuple(argv), cwd=str(cwd),
        log=str(log), status_file=str(status_file), started=time.time(),
    )
    return proc, child


def run(
    argv: Sequence[str],
    *,
    cwd: Path | str,
    log: Path | str,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_start: Callable[[Child], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    stdin: Path | str | None = None,
) -> ChildResult:
    """Run a child to completion. On timeout, or when `should_stop()` turns true, its
    whole process group is killed; the result then says so."""
    proc, child = start(argv, cwd=cwd, log=log, env=env, stdin=stdin)
    if on_start is not None:
        on_start(child)

    def poll(wait: float) -> int | None:
        try:
            return proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None

    return wait(child, poll, timeout=timeout, should_stop=should_stop)


def wait(child: Child, poll: Callable[[float], int | None], *, timeout: float | None = None,
         should_stop: Callable[[], bool] | None = None) -> ChildResult:
    """Wait for a started child: `poll(seconds)` waits up to that long and returns its exit
    status once it ended (else None). On timeout, or when `should_stop()` turns true, its
    whole process group is killed (SIGTERM, SIGKILL after the grace); the result says so."""
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    killed_at: float | None = None
    while (returncode := poll(0.1)) is None:
        now = time.monotonic()
        if killed_at is None:
            timed_out = deadline is not None and now > deadline
            if timed_out or (should_stop is not None and should_stop()):
                signal_group(child.pgid, signal.SIGTERM)
                killed_at = now
        elif now - killed_at > KILL_GRACE_SECONDS:
            signal_group(child.pgid, signal.SIGKILL)
    # The group may still hold grandchildren (e.g. a bps worker pool); they go too.
    kill_group(child.pgid, grace=0.5)
    return ChildResult(returncode, Path(child.log), time.time() - child.started, timed_out)


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _exists(send: Callable[[int, int], None], ident: int) -> bool:
    """Signal 0 to a process or group: it exists (perhaps someone else's) unless none is found."""
    try:
        send(ident, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int) -> bool:
    return _exists(os.kill, pid)


def group_alive(pgid: int) -> bool:
    return _exists(os.killpg, pgid)


def kill_group(pgid: int, grace: float = 3.0) -> bool:
    """SIGTERM the group, then SIGKILL whatever is left after `grace` seconds.
    Returns True when something was still running."""
    return bool(kill_groups([pgid], grace))


def kill_groups(pgids: Iterable[int], grace: float = 3.0) -> list[int]:
    """SIGTERM every group at once, wait up to `grace` seconds for all of them, then
    SIGKILL what is left. Returns the groups that were still running."""
    alive = [p for p in set(pgids) if p > 1 and group_alive(p)]
    for pgid in alive:
        signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + grace
    while time.monotonic() < end and any(group_alive(p) for p in alive):
        time.sleep(0.05)
    for pgid in alive:
        if group_alive(pgid):
            signal_group(pgid, signal.SIGKILL)
    return alive


def recorded_exit(status_file: Path | str) -> int | None:
    """The exit status the wrapper wrote, or None if the child never finished."""
    try:
        return int(Path(status_file).read_text().strip())
    except (OSError, ValueError):
        return None
