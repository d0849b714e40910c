"""`autoproc report`: write the static HTML report page from the store."""

from __future__ import annotations

from pathlib import Path

from autoproc.config import Config
from autoproc.machines import StateMachine
from autoproc.report import write_report
from autoproc.store import Store


def report(config: Config, machines: dict[str, StateMachine], out: Path | None = None) -> Path:
    """Write `index.html` into `out` (default: config `report.directory`, or <root>/report)
    from a read-only look at the store; returns the page's path."""
    store = Store(config.db, readonly=True)
    try:
        return write_report(store, machines, config, out)
    finally:
        store.close()
