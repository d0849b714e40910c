"""sd_notify for systemd's `Type=notify`, without python-systemd.

systemd hands the daemon a unix datagram socket in `NOTIFY_SOCKET` (a path, or an
abstract name written with a leading `@`); each datagram is a few `KEY=VALUE` lines.
The daemon says `READY=1` once the store and the watchers are up, keeps a one-line
`STATUS=`, pings `WATCHDOG=1` from the engine loop itself (so a hung loop stops the
pings and systemd restarts the service), and says `STOPPING=1` on the way out.
Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import Any

log = logging.getLogger("autoproc.notify")

# STATUS= costs a count query; systemctl shows it to people, so a few seconds is fresh enough.
STATUS_SECONDS = 2.0
# The variables systemd sets for us alone: children (bps, DAGMaker, hooks) must not inherit
# them, or their own sd_notify calls would speak for the daemon.
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | bytes:
    """The sendto() address for a `NOTIFY_SOCKET` value (`@name` is an abstract socket)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when systemd
    asked for none or asked another process (WATCHDOG_PID)."""
    usec = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if owner and owner != str(pid):
        return None
    return int(usec) / 2 / 1e6


class Notifier:
    """One daemon's conversation with systemd. Reads (and removes) the systemd variables
    from `environ` when made."""

    def __init__(self, environ: MutableMapping[str, str] | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        environ = os.environ if environ is None else environ
        self.clock = clock
        value = environ.get("NOTIFY_SOCKET", "")
        self.address = socket_address(value) if value else None
        self.watchdog_seconds = watchdog_interval(environ, os.getpid()) if self.address else None
        for name in SYSTEMD_VARIABLES:
            environ.pop(name, None)
        self._sock: socket.socket | None = None
        self._next_ping = 0.0
        self._next_status = 0.0
        self._last_status = ""
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines. Never raises and never blocks: a
        systemd that does not listen must not stop the engine."""
        if self.address is None:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, socket.MSG_DONTWAIT, self.address)
        except OSError as err:
            if not self._failed:  # say it once, not four times a second
                log.warning("sd_notify to %s failed: %s", os.fsdecode(self.address), err)
                self._failed = True
            return False
        self._failed = False
        return True

    def ready(self, status: str) -> None:
        self._last_status = status
        self._next_status = self.clock() + STATUS_SECONDS
        self.send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd (>= 253) tie the reload to this message.
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}",
                  "STATUS=reloading the configuration")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def status(self, line: str) -> None:
        if line != self._last_status:
            self._last_status = line
            self.send(f"STATUS={line}")

    def on_loop(self, engine: Any) -> None:
        """Called every engine loop turn: a WATCHDOG=1 ping when one is due, and STATUS=
        when the summary changed."""
        if self.address is None:
            return
        now = self.clock()
        if self.watchdog_seconds is not None and now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.watchdog_seconds
        if now >= self._next_status:
            self.status(engine.status_line())
            self._next_status = now + STATUS_SECONDS

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
