"""`autoproc daemon`: one engine per state database, driven by signals.

SIGTERM/SIGINT stop it (children are killed, their attempts marked interrupted, exit 0);
SIGHUP reloads the configuration (a bad file is reported and the old one kept).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

from autoproc.backup import BackupScheduler, refuse_missing_db, refuse_network_db
from autoproc.config import Config
from autoproc.control import ControlServer
from autoproc.engine import Engine, Reload
from autoproc.hooks import Hooks
from autoproc.logs import configure as configure_logging
from autoproc.metrics import MetricsWriter
from autoproc.notify import Notifier
from autoproc.report import ReportWriter, page_path
from autoproc.store import AlreadyRunning, lock_store

__all__ = ["AlreadyRunning", "run_daemon"]


def _at_start(start: Callable[[], object]) -> Callable[[Engine], None]:
    """An `Engine.on_started` callback that calls `start` (what it returns is not needed)."""
    def started(engine: Engine) -> None:
        start()
    return started


def _lock(config: Config) -> int:
    """An exclusive lock next to the database: one daemon per store."""
    config.root.mkdir(parents=True, exist_ok=True, mode=0o750)
    return lock_store(config.db)


def run_daemon(config: Config, config_path: Path | None = None, *, watch: bool = True,
               log_levels: Mapping[str, str] | None = None, long_log: bool | None = None) -> int:
    """`log_levels` and `long_log`: the command line's `--log-level` and `--long-log`."""
    configure_logging(config.logging, log_levels, long_log)
    notifier = Notifier()  # first: it takes systemd's variables out of what children inherit
    # What the systemd units set (UMask=0027), also when started by hand: everything the daemon and its
    # children create (state, work and attempt directories, logs, hook logs) is not world-readable.
    os.umask(os.umask(0o027) | 0o027)
    # Signals first: a SIGTERM that arrives while the engine is still being built (imports,
    # Parsl) must still give a clean stop, not kill the process half-way.
    stop_requested = threading.Event()
    engine: Engine | None = None

    def stop(signum, frame) -> None:
        stop_requested.set()
        if engine is not None:
            engine.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Refused before anything is opened: a database on NFS or FUSE, or a damaged one
    # (the engine runs SQLite's quick check), stops the daemon with the reason and the
    # exit status the units do not restart on (RestartPreventExitStatus=).
    refuse_network_db(config.db)
    lock = _lock(config)
    refuse_missing_db(config)  # under the lock: a restore may be putting it back
    engine = Engine(config, config_path=config_path, watch=watch)
    if stop_requested.is_set():
        engine.stop()
    engine.on_started.append(lambda e: notifier.ready(e.status_line()))
    engine.on_loop.append(notifier.on_loop)
    # Waiting for another process's lock on the state database is not a hung loop: keep
    # the watchdog fed (WatchdogSec is 90 s; the lock may be held longer).
    engine.on_busy.append(lambda e, waited: notifier.on_loop(e))
    control = None
    if config.control.enabled:
        # Before READY: once systemd says the service is up, operators can reach it.
        control = ControlServer(lambda: engine.config, lambda: engine.machines)
        engine.on_started.insert(0, _at_start(control.start))
    metrics = MetricsWriter(lambda: engine.config, engine)
    engine.on_started.insert(0, _at_start(metrics.start))
    hooks = Hooks(lambda: engine.config, report=page_path(config)).start()
    engine.listeners.append(hooks)
    engine.on_loop.append(ReportWriter(lambda: engine.config, lambda: engine.machines).on_loop)
    backups = BackupScheduler(lambda: engine.config)
    engine.on_loop.append(backups.on_loop)

    def reload(signum, frame) -> None:
        notifier.reloading()
        engine.events.put(Reload())
        # Events are handled in order: READY=1 goes out once the reload is done.
        engine.events.put(lambda e: notifier.ready(e.status_line()))

    signal.signal(signal.SIGHUP, reload)
    try:
        engine.start()
        logging.getLogger("autoproc").info("daemon started on %s", config.db)
        engine.run()
    finally:
        notifier.stopping()
        if control is not None:
            control.close()
        metrics.close()
        engine.shutdown()
        hooks.close()
    backups.at_stop()  # a clean stop only: after an exception the database may be why
    notifier.close()
    os.close(lock)
    logging.getLogger("autoproc").info("daemon stopped")
    logging.shutdown()
    # Everything is recorded and every child group killed; an action hung in Python itself
    # (not in a child) must not keep the process alive past systemd's stop timeout.
    os._exit(0)
