"""The daemon's own log, for operators, and each attempt's log, for the full story.

The daemon's log (stderr; the journal under systemd) shows autoproc's own loggers at
`logging.level` and every other logger (lsst.*, transitions, parsl, …) only from
`logging.libraries` (WARNING) up, unless `logging.loggers` or `--log-level NAME=LEVEL`
says otherwise for a logger and the loggers below it. The filtering is done on the
daemon's handler, not on the loggers: everything an action does in the daemon's own
process (e.g. building a quantum graph) is still written, in full (INFO and up), to that
attempt's `action.log` beside its children's logs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from autoproc.config import LoggingConfig, check_level

SHORT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LONG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(threadName)s %(name)s (%(filename)s:%(lineno)d): %(message)s"
# lsst.utils.logging's extra levels.
EXTRA_LEVELS = {"VERBOSE": 15, "TRACE": 5}
ATTEMPT_LOG_LEVEL = logging.INFO


class LogLevelError(ValueError):
    pass


def level_number(name: str) -> int:
    try:
        upper = check_level(name)
    except ValueError as err:
        raise LogLevelError(str(err)) from None
    return EXTRA_LEVELS.get(upper) or logging.getLevelName(upper)


def parse_levels(items: Iterable[str]) -> dict[str, str]:
    """`--log-level` values: `LEVEL` (autoproc's own loggers) or `NAME=LEVEL`, e.g.
    `lsst.daf.butler=DEBUG`; later ones win."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, level = item.rpartition("=")
        level_number(level)
        out[name if sep else "autoproc"] = level.upper()
    return out


class ByLogger(logging.Filter):
    """Passes a record from its logger's threshold up: the nearest configured ancestor's,
    else autoproc's own level for `autoproc.*`, else the libraries' level."""

    def __init__(self, own: int, libraries: int, levels: Mapping[str, int]):
        super().__init__()
        self.own, self.libraries, self.levels = own, libraries, dict(levels)
        self._cache: dict[str, int] = {}

    def threshold(self, name: str) -> int:
        if name not in self._cache:
            parts = name.split(".")
            for n in range(len(parts), 0, -1):
                prefix = ".".join(parts[:n])
                if prefix in self.levels:
                    self._cache[name] = self.levels[prefix]
                    break
            else:
                self._cache[name] = self.own if parts[0] == "autoproc" else self.libraries
        return self._cache[name]

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.threshold(record.name)


_attempt = threading.local()
_state = {"configured": False}  # set by `configure`: only the daemon captures attempt logs


class AttemptLog(logging.Handler):
    """Writes the records of a thread running an action to that attempt's log."""

    def emit(self, record: logging.LogRecord) -> None:
        stream = getattr(_attempt, "stream", None)
        if stream is None or record.levelno < ATTEMPT_LOG_LEVEL:
            return
        try:
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - a full disk must not break the action's logging
            self.handleError(record)


@contextlib.contextmanager
def attempt_log(path: Path) -> Iterator[None]:
    """While it is open, what this thread logs also goes to `path` (when the daemon set up
    its logging with `configure`; a no-op elsewhere, e.g. in a Parsl worker)."""
    if not _state["configured"]:
        yield
        return
    try:
        stream = open(path, "a")
    except OSError:
        yield  # no attempt log (e.g. a full disk): the action itself says what went wrong
        return
    _attempt.stream = stream
    try:
        yield
    finally:
        _attempt.stream = None
        stream.close()


def configure(cfg: LoggingConfig, levels: Mapping[str, str] | None = None, long: bool | None = None) -> ByLogger:
    """Set up the daemon's logging: `cfg`, with the command line's `--log-level` and
    `--long-log` (`levels`, `long`) over it."""
    levels = {**cfg.loggers, **(levels or {})}
    own = level_number(levels.pop("autoproc", cfg.level))
    by_logger = ByLogger(own, level_number(cfg.libraries), {k: level_number(v) for k, v in levels.items()})
    fmt = logging.Formatter(LONG_FORMAT if (cfg.long if long is None else long) else SHORT_FORMAT)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.addFilter(by_logger)
    attempts = AttemptLog()
    attempts.setFormatter(logging.Formatter(LONG_FORMAT))
    root.addHandler(console)
    root.addHandler(attempts)
    # Loggers let through what either handler wants; each handler keeps only its own part.
    root.setLevel(min(ATTEMPT_LOG_LEVEL, own, by_logger.libraries, *by_logger.levels.values()))
    _state["configured"] = True
    return by_logger
