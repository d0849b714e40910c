"""sd_notify against a real unix datagram socket given to a real `autoproc daemon`."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from autoproc.notify import Notifier, socket_address, watchdog_interval
from conftest import wait_for


class Listener:
    """What systemd does: a bound datagram socket, collecting what arrives."""

    def __init__(self, address: str | bytes):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.setblocking(False)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def drain(self) -> list[tuple[float, dict[str, str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def having(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.drain() if key in m]


@pytest.fixture
def listener():
    # A short directory: unix socket paths are limited to 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="sdn-"))
    path = directory / "notify"
    lis = Listener(str(path))
    yield lis, str(path)
    lis.sock.close()
    path.unlink(missing_ok=True)
    directory.rmdir()


def test_daemon_ready_status_watchdog_stopping(listener, write_config, daemon_factory, monkeypatch):
    lis, path = listener
    config, config_path = write_config()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    d = daemon_factory(config_path).start()
    _, ready = wait_for(lambda: lis.having("READY")[:1], what="READY=1")[0]
    assert ready["READY"] == "1"
    assert ready["STATUS"] == "no subjects; 0 running"
    # STATUS follows the store: an operator adds a subject, the summary changes.
    from autoproc.store import Store

    Store(config.db).ensure_subject("widget", "w1", "new", actor="test")
    wait_for(lambda: any(m["STATUS"] == "1 new; 0 running" for _, m in lis.having("STATUS")), timeout=10,
             what="STATUS with the new subject")
    pings = wait_for(lambda: (p := lis.having("WATCHDOG")) and len(p) >= 6 and p, timeout=10, what="pings")
    gaps = [b[0] - a[0] for a, b in zip(pings, pings[1:], strict=False)]
    assert max(gaps) < 0.4, gaps  # well inside the 0.4 s watchdog
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    stopping = lis.having("STOPPING")
    assert stopping and stopping[0][1]["STOPPING"] == "1"


def test_reload_says_reloading_then_ready(listener, write_config, daemon_factory, monkeypatch):
    lis, path = listener
    _, config_path = write_config()
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    d = daemon_factory(config_path).start()
    wait_for(lambda: lis.having("READY"), what="READY=1")
    d.signal(signal.SIGHUP)
    wait_for(lambda: len(lis.having("READY")) >= 2, what="READY=1 after the reload")
    keys = [next(iter(m)) for _, m in lis.drain() if "READY" in m or "RELOADING" in m]
    assert keys == ["READY", "RELOADING", "READY"]
    assert not lis.having("WATCHDOG")  # no WATCHDOG_USEC, no pings


def test_abstract_socket_and_no_socket():
    name = f"@autoproc-test-{os.getpid()}"
    lis = Listener(socket_address(name))
    try:
        env = {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
        n = Notifier(env)
        assert env == {}  # taken out of the environment children inherit
        assert n.watchdog_seconds == 0.5
        n.ready("fine")
        assert lis.having("READY")[0][1] == {"READY": "1", "STATUS": "fine"}
    finally:
        lis.sock.close()
    quiet = Notifier({})
    assert not quiet.enabled and quiet.send("READY=1") is False


def test_watchdog_only_for_us():
    assert watchdog_interval({"WATCHDOG_USEC": "2000000"}, 42) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "41"}, 42) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_interval({}, 42) is None


def test_a_socket_nobody_listens_on_does_not_raise(tmp_path):
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.send("READY=1") is False
    n.stopping()
