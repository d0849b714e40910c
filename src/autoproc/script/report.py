"""`autoproc report`: write the static HTML report page from the store."""

from __future__ import annotations

from pathlib import Path

from autoproc.config import Config
from autoproc.machines import StateMachine
from autoproc.report import page_path, write_page


def report(config: Config, machines: dict[str, StateMachine], out: Path | None = None) -> Path:
    """Write `index.html` into `out` (default: config `report.directory`, or <root>/report)
    from a read-only look at the store (through the daemon for a viewer who may not read the
    database); returns the page's path."""
    from autoproc.script.client import carry_out

    path = page_path(config, out)
    html = carry_out(config, lambda: machines, {"verb": "report", "out_dir": str(path.parent.resolve())})["data"]["html"]
    return write_page(path, html)
