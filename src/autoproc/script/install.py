"""What an installed site needs beyond the package: its version, the systemd units and the
example hooks, shipped as package data (`autoproc.config.DATA_DIR`)."""

from __future__ import annotations

import os
import platform
import shutil
from importlib import metadata
from pathlib import Path

from autoproc.config import DATA_DIR
from autoproc.errors import AutoprocError

# The libraries whose versions decide how the core behaves; each chain adds its own
# (`Chain.distributions`), shown first.
RUNTIME_DISTRIBUTIONS = ("parsl", "psycopg", "watchdog", "transitions")
UNITS = {False: "autoproc.service", True: "autoproc-user.service"}


def versions() -> dict[str, str]:
    """autoproc's version, Python's, and those of the runtime distributions ("missing" if absent)."""
    found = {"autoproc": metadata.version("autoproc"), "python": platform.python_version()}
    for name in runtime_distributions():
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found


def runtime_distributions() -> tuple[str, ...]:
    """The installed chains' distributions, then the core's."""
    from autoproc.chain import chains

    return tuple(dict.fromkeys((*(d for c in chains() for d in c.distributions), *RUNTIME_DISTRIBUTIONS)))


def version_text() -> str:
    v = versions()
    rest = ", ".join(f"{name} {v[name]}" for name in runtime_distributions())
    return f"autoproc {v['autoproc']} (Python {v['python']}; {rest})"


def unit_text(user: bool = False) -> str:
    return (DATA_DIR / "systemd" / UNITS[user]).read_text()


def default_unit_dir(user: bool) -> Path:
    if user:
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return config_home / "systemd" / "user"
    return Path("/etc/systemd/system")


def _copy(source: Path, target: Path, mode: int, force: bool) -> Path:
    if target.exists() and not force:
        raise AutoprocError(f"{target} exists; --force replaces it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target.chmod(mode)
    return target


def install_unit(user: bool = False, directory: Path | None = None, force: bool = False) -> Path:
    """Copy the system (or user) unit to `directory` as `autoproc.service`."""
    target = (directory or default_unit_dir(user)) / "autoproc.service"
    return _copy(DATA_DIR / "systemd" / UNITS[user], target, 0o644, force)


def install_hooks(directory: Path, force: bool = False) -> list[Path]:
    """Copy the example hooks into `directory` (e.g. the configured hooks directory)."""
    return [_copy(hook, directory / hook.name, 0o755, force)
            for hook in sorted((DATA_DIR / "hooks").iterdir()) if hook.is_file()]
