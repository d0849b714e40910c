"""The unit files: `systemd-analyze verify` accepts them, and their sandbox is tight.

`verify` checks that ExecStart's program exists. The units name the install location
(/opt/autoproc, ~/.local/opt/autoproc), which a test machine does not have, so each test
checks an installed copy of the unit in a temporary directory whose ExecStart names this
venv's real `autoproc`: every other line is checked as shipped. `systemd-analyze` comes
from Debian's `systemd` package (`make test` installs it when missing).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autoproc import hooks, process
from autoproc.config import parse_config
from autoproc.store import EXIT_STORE_DAMAGED, EXIT_STORE_UNSAFE

UNITS_DIR = Path(__file__).resolve().parents[1] / "systemd"
UNITS = {
    # unit file: (user manager?, the ExecStart program as shipped)
    "autoproc.service": (False, "/opt/autoproc/bin/autoproc"),
    "autoproc-user.service": (True, "%h/.local/opt/autoproc/bin/autoproc"),
}
MAX_EXPOSURE = 2.5


@pytest.fixture(scope="module")
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is missing: `make test-tools` installs Debian's systemd package")
    return path


def settings(text: str) -> dict[str, list[str]]:
    """KEY -> values (a key may repeat) of a unit file."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def installed(unit: str, tmp_path: Path) -> Path:
    user, program = UNITS[unit]
    text = (UNITS_DIR / unit).read_text()
    assert settings(text)["ExecStart"][0].startswith(program + " ")
    autoproc = Path(sys.executable).with_name("autoproc")
    assert autoproc.exists()
    copy = tmp_path / unit
    copy.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={autoproc} "))
    return copy


def run_analyze(analyze: str, unit: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    user, _ = UNITS[unit]
    runtime = tmp_path / "runtime"  # a user manager wants XDG_RUNTIME_DIR, even offline
    runtime.mkdir(mode=0o700, exist_ok=True)
    argv = [analyze, *(["--user"] if user else []), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,  # noqa: S603
                          env={"PATH": "/usr/bin:/bin", "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_COLORS": "0"})


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_verify(analyze, unit, tmp_path):
    res = run_analyze(analyze, unit, ["verify", str(installed(unit, tmp_path))], tmp_path)
    assert res.returncode == 0 and not res.stdout.strip() and not res.stderr.strip(), res.stdout + res.stderr


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_security_exposure(analyze, unit, tmp_path):
    res = run_analyze(analyze, unit, ["security", "--offline=true", str(installed(unit, tmp_path))], tmp_path)
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+(?:\.\d+)?)", res.stdout)
    assert match, res.stdout + res.stderr
    exposure = float(match.group(1))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, res.stdout


@pytest.mark.parametrize("unit", sorted(UNITS))
def test_key_choices(unit):
    s = settings((UNITS_DIR / unit).read_text())
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["ExecStart"][0].endswith("/autoproc.yaml daemon") and " -c " in s["ExecStart"][0]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and s["Restart"] == ["on-failure"]
    assert s["KillMode"] == ["mixed"]
    assert s["CapabilityBoundingSet"] == [""] and s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"] and s["ReadWritePaths"] and s["StateDirectory"] == ["autoproc"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    # The control socket's directory: the service's group may enter it, nobody else.
    assert s["RuntimeDirectory"] == ["autoproc"] and s["RuntimeDirectoryMode"] == ["0750"]
    # The daemon's own stop (engine, then hooks, each with its kill grace) fits before
    # systemd's SIGKILL.
    stop = parse_config({}).stop_timeout_seconds
    needed = stop + hooks.CLOSE_GRACE_SECONDS + 2 * process.KILL_GRACE_SECONDS + 1
    assert float(s["TimeoutStopSec"][0].rstrip("s")) >= needed
    # Watchdog pings come at half the interval from a loop that may wait 30 s on SQLite.
    assert float(s["WatchdogSec"][0].rstrip("s")) > 60
    # A damaged or unsafe state database stops the daemon for good: no restart loop.
    assert set(s["RestartPreventExitStatus"][0].split()) == {str(EXIT_STORE_DAMAGED), str(EXIT_STORE_UNSAFE)}
