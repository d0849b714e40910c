"""The control socket (issue 15) with real OS users: who may change state, who may look, and what
a crafted or stuck client gets. The daemon runs as root here (the tests create users); the users
run the real CLI after really switching uid (tests/as_user.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from autoproc.config import load_config
from autoproc.control import HEADER, recv_frame, send_frame
from autoproc.store import Store
from conftest import MACHINES, TESTS, child_env, states, wait_for

SUFFIX = f"{os.getpid() % 100000}"
SOCKET_GROUP, VIEWER_GROUP = f"aps{SUFFIX}", f"apv{SUFFIX}"
OPERATOR, OUTSIDER, VIEWER = f"apo{SUFFIX}", f"apx{SUFFIX}", f"apw{SUFFIX}"


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603


@pytest.fixture(scope="module")
def users():
    """Three throw-away users, all allowed to connect to the socket (its group): an operator, an
    outsider, and a viewer (through a viewers group). Removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating throw-away users needs root")
    if not shutil.which("useradd"):
        pytest.skip("useradd is missing: cannot create throw-away users")
    made_groups, made_users = [], []
    try:
        for group in (SOCKET_GROUP, VIEWER_GROUP):
            res = _run("groupadd", group)
            if res.returncode:
                pytest.skip(f"cannot create group {group}: {res.stderr.strip()}")
            made_groups.append(group)
        for user, groups in ((OPERATOR, SOCKET_GROUP), (OUTSIDER, SOCKET_GROUP),
                             (VIEWER, f"{SOCKET_GROUP},{VIEWER_GROUP}")):
            res = _run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", groups, user)
            if res.returncode:
                pytest.skip(f"cannot create user {user}: {res.stderr.strip()}")
            made_users.append(user)
        yield
    finally:
        for user in made_users:
            _run("userdel", user)
        for group in made_groups:
            _run("groupdel", group)


@pytest.fixture
def site(tmp_path):
    """A world-traversable directory (pytest's tmp_path is not) with the config; the state root
    inside it is the daemon's (0750 root), the socket's directory belongs to the socket group."""
    base = Path(tempfile.mkdtemp(prefix="autoproc-control-", dir="/tmp"))
    base.chmod(0o755)
    inbox = base / "inbox"
    inbox.mkdir()
    data = {"root": str(base / "root"), "machines_dir": str(MACHINES), "poll_seconds": 0.2,
            "retry": {"backoff_seconds": 0.05},
            "watch": [{"name": "inbox", "path": str(inbox), "kind": "widget", "patterns": ["*.w"],
                       "mode": "inotify", "quiet_seconds": 0.2}],
            "control": {"socket": str(base / "run" / "control.sock"), "group": SOCKET_GROUP,
                        "operators": {"users": [OPERATOR]}, "viewers": {"groups": [VIEWER_GROUP]},
                        "timeout_seconds": 1.0, "max_clients": 2}}
    path = base / "autoproc.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)
    yield load_config(path), path, inbox
    shutil.rmtree(base, ignore_errors=True)


def as_user(user: str, config_path: Path, *args: str, claimed: str = "mallory") -> subprocess.CompletedProcess:
    return subprocess.run(  # noqa: S603
        [sys.executable, str(TESTS / "as_user.py"), user, claimed, "--", "-c", str(config_path), *args],
        capture_output=True, text=True, env=child_env(), timeout=60)


def up(config) -> None:
    wait_for(lambda: Path(config.control.socket).exists() and Path(config.db).exists()
             and Store(config.db).daemon_info(), what="daemon and its control socket up")


def request(config, payload, raw: bytes | None = None):
    """One request over the socket as root (an operator), or raw bytes as they are."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(config.control.socket))
        if raw is None:
            send_frame(s, payload)
        else:
            try:
                s.sendall(raw)
                s.shutdown(socket.SHUT_WR)
            except BrokenPipeError:
                pass  # refused unread (too large): the answer is waiting all the same
        return recv_frame(s, 1 << 20)


def problems(config, source="control"):
    return [p["message"] for p in Store(config.db).problems(limit=100) if p["source"] == source]


def test_socket_group_and_mode(users, site, daemon_factory):
    config, path, _ = site
    daemon_factory(path).start()
    up(config)
    st = os.stat(config.control.socket)
    assert oct(st.st_mode & 0o777) == "0o660"
    import grp

    assert grp.getgrgid(st.st_gid).gr_name == SOCKET_GROUP
    assert grp.getgrgid(os.stat(Path(config.control.socket).parent).st_gid).gr_name == SOCKET_GROUP


def test_operator_is_journaled_by_uid_outsider_refused_viewer_reads(users, site, daemon_factory):
    config, path, _ = site
    daemon_factory(path).start()
    up(config)
    # The operator adds and holds a subject, claiming to be someone else twice over ($USER, --operator).
    res = as_user(OPERATOR, path, "add", "widget", "w1", "--reason", "by hand", "--operator", "someone-else")
    assert res.returncode == 0, res.stderr
    assert "added widget/w1 in new" in res.stdout
    res = as_user(OPERATOR, path, "hold", "widget", "w1", "--reason", "look first", "--operator", "someone-else")
    assert res.returncode == 0, res.stderr
    journal = Store(config.db).journal()
    assert [(j["trigger"], j["actor"], j["evidence"].get("on_behalf_of")) for j in journal] == [
        ("create", OPERATOR, "someone-else"), ("hold", OPERATOR, "someone-else")]
    before = Store(config.db).subject("widget", "w1")

    # The outsider reaches the socket (its group) but is not an operator: refused, nothing changes.
    res = as_user(OUTSIDER, path, "release", "widget", "w1", "--reason", "mine now")
    assert res.returncode == 2
    assert f"{OUTSIDER} (uid {_uid(OUTSIDER)}) may not change state through the daemon (release refused)" in res.stderr
    assert Store(config.db).subject("widget", "w1") == before
    assert len(Store(config.db).journal()) == 2
    assert any(f"{OUTSIDER}" in m and "release refused" in m for m in problems(config))
    # ... and may not look either (it cannot read the database, and is no viewer).
    res = as_user(OUTSIDER, path, "status", "--json")
    assert res.returncode == 2 and "may not read the state" in res.stderr

    # The viewer cannot read the database file, but reads through the daemon; it cannot change anything.
    assert not _can_read_as(VIEWER, config.db)
    res = as_user(VIEWER, path, "status", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["counts"] == {"widget": {"new": 1}} and info["held"][0]["key"] == "w1"
    res = as_user(VIEWER, path, "history", "widget", "w1", "--json")
    assert res.returncode == 0 and [r["actor"] for r in json.loads(res.stdout)] == [OPERATOR, OPERATOR]
    res = as_user(VIEWER, path, "show", "widget", "w1")
    assert res.returncode == 0 and "HELD: look first" in res.stdout
    res = as_user(VIEWER, path, "release", "widget", "w1", "--reason", "x")
    assert res.returncode == 2 and "may not change state" in res.stderr
    assert Store(config.db).subject("widget", "w1") == before
    # The report page too: the daemon renders it, the viewer writes it where it may.
    out = Path(config.control.socket).parent.parent / "viewer-report"
    out.mkdir()
    os.chown(out, _uid(VIEWER), -1)
    res = as_user(VIEWER, path, "report", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    page = Path(json.loads(res.stdout)["page"])
    assert page.owner() == VIEWER and "look first" in page.read_text()


def test_operator_change_moves_the_daemon_on(users, site, daemon_factory):
    config, path, inbox = site
    daemon_factory(path).start()
    up(config)
    (inbox / "f-1.w").write_text("fail")
    wait_for(lambda: states(config).get("f") == "failed", what="f failed")
    (inbox / "f-1.w").write_text("ok")
    res = as_user(OPERATOR, path, "retry", "widget", "f", "--reason", "input fixed")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: states(config).get("f") == "done", what="f done after the operator's retry")
    retried = next(j for j in Store(config.db).journal() if j["trigger"] == "retry")
    assert retried["actor"] == OPERATOR and "on_behalf_of" not in retried["evidence"]


def test_crafted_requests_get_errors_and_the_daemon_carries_on(users, site, daemon_factory):
    config, path, inbox = site
    d = daemon_factory(path).start()
    up(config)
    Store(config.db).ensure_subject("widget", "c", "new", actor="test")
    cases = [
        ({"verb": "drop-tables"}, None, "unknown verb 'drop-tables'"),
        ({"verb": "set", "kind": "widget", "key": "c", "state": "exploded", "reason": "x"}, None,
         "widget has no state 'exploded'"),
        ({"verb": "set", "kind": "widget", "key": "c", "state": "done", "reason": 7}, None,
         "field 'reason' has the wrong type"),
        ({"verb": "hold", "kind": "widget", "key": "c", "reason": "x", "sql": "1"}, None, "unknown fields sql"),
        (None, HEADER.pack(1 << 20) + b"x" * (1 << 20), "larger than the 65536 allowed"),
        (None, HEADER.pack(100) + b'{"verb": ', "connection closed after 9 of 100 bytes"),
        (None, HEADER.pack(5) + b"\xff\xfe{}}", "not JSON"),
        (None, b"\x00\x01", "connection closed after 2 of 4 bytes"),
        ([1, 2], None, "a request is a JSON object"),
        (None, HEADER.pack(60_000) + b"[" * 30_000 + b"]" * 30_000, "not JSON: RecursionError"),
    ]
    for payload, raw, expected in cases:
        reply = request(config, payload, raw)
        assert reply["ok"] is False and expected in reply["error"], (payload, raw and raw[:20], reply)
    assert Store(config.db).subject("widget", "c").version == 1
    assert len(problems(config)) >= 7
    # Still serving, and still processing.
    assert d.proc.poll() is None
    assert request(config, {"verb": "status"})["ok"]
    (inbox / "c-1.w").write_text("ok")
    wait_for(lambda: states(config).get("c") == "done", what="c done after the crafted requests")


def test_stuck_clients_do_not_block_the_engine_or_other_clients(users, site, daemon_factory):
    config, path, inbox = site
    daemon_factory(path).start()
    up(config)
    # Two clients (max_clients) connect and send half a frame, then nothing.
    stuck = []
    for _ in range(2):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(config.control.socket))
        s.sendall(HEADER.pack(50) + b'{"ver')
        stuck.append(s)
    try:
        # The engine goes on meanwhile.
        (inbox / "s-1.w").write_text("ok")
        wait_for(lambda: states(config).get("s") == "done", what="s done while clients are stuck")
        # Each stuck client is dropped after control.timeout_seconds, with an answer saying why.
        for s in stuck:
            s.settimeout(10)
            (size,) = struct.unpack(">I", s.recv(4))
            assert "timed out" in json.loads(s.recv(size))["error"]
    finally:
        for s in stuck:
            s.close()
    res = as_user(OPERATOR, path, "hold", "widget", "s", "--reason", "after the stuck ones")
    assert res.returncode == 0, res.stderr


def test_too_many_clients_are_refused_not_queued(users, site, daemon_factory):
    config, path, _ = site
    daemon_factory(path).start()
    up(config)
    stuck = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for s in stuck:
            s.connect(str(config.control.socket))
        time.sleep(0.2)  # both are being served (and wait for their frames)
        reply = request(config, {"verb": "status"})
        assert reply["ok"] is False and "too many control connections" in reply["error"]
    finally:
        for s in stuck:
            s.close()
    wait_for(lambda: request(config, {"verb": "status"})["ok"], timeout=5, what="served again")


def test_without_a_daemon_only_who_can_write_the_database_can(users, site):
    config, path, _ = site
    Store(config.db).ensure_subject("widget", "d", "new", actor="test")
    res = as_user(OUTSIDER, path, "hold", "widget", "d", "--reason", "x")
    assert res.returncode == 2
    assert f"{OUTSIDER} cannot write the state database {config.db}, and no daemon listens" in res.stderr
    # Root can, and the journal names root, whatever $USER says.
    res = subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), "hold", "widget", "d",  # noqa: S603
                          "--reason", "by hand"], capture_output=True, text=True, timeout=60,
                         env={**child_env(), "USER": "mallory"})
    assert res.returncode == 0, res.stderr
    assert Store(config.db).journal()[-1]["actor"] == "root"


def _uid(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_uid


def _can_read_as(user: str, path: Path) -> bool:
    res = subprocess.run(["runuser", "-u", user, "--", "/usr/bin/test", "-r", str(path)],  # noqa: S603
                         capture_output=True, timeout=30)
    return res.returncode == 0


def test_a_socket_path_longer_than_sun_path_works(tmp_path):
    """The kernel takes at most 107 bytes of socket path; a deeper state directory still works."""
    from autoproc.config import parse_config
    from autoproc.control import ControlServer, call

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    config = parse_config({"root": str(deep), "machines_dir": str(MACHINES)})
    assert len(str(config.control.socket)) > 107
    Store(config.db).ensure_subject("widget", "long", "new", actor="test")
    server = ControlServer(lambda: config, lambda: {}).start()
    try:
        reply = call(config.control, {"verb": "status"})
        assert reply["ok"] and reply["data"]["counts"] == {"widget": {"new": 1}}
    finally:
        server.close()
    assert not config.control.socket.exists()
    assert call(config.control, {"verb": "status"}) is None  # no daemon: the CLI goes direct


def test_a_flood_of_bad_requests_is_recorded_a_bounded_number_of_times(tmp_path):
    from autoproc.config import parse_config
    from autoproc.control import PROBLEMS_PER_MINUTE, ControlServer

    config = parse_config({"root": str(tmp_path / "root"), "machines_dir": str(MACHINES)})
    Store(config.db)
    server = ControlServer(lambda: config, lambda: {}).start()
    try:
        for _ in range(PROBLEMS_PER_MINUTE + 20):
            assert request(config, {"verb": "nope"})["ok"] is False
    finally:
        server.close()
    assert len(problems(config)) == PROBLEMS_PER_MINUTE
