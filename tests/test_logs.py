"""The daemon's own log is for operators (issue 15): library loggers from WARNING up there,
configurable per logger (config and `--log-level NAME=LEVEL`), their full output in the
attempt's own log."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoproc.config import ConfigError, parse_config
from autoproc.logs import LogLevelError, parse_levels
from autoproc.store import Store
from conftest import states, wait_for


def test_parse_levels():
    assert parse_levels(["DEBUG", "lsst.daf.butler=verbose", "parsl=INFO"]) == {
        "autoproc": "DEBUG", "lsst.daf.butler": "VERBOSE", "parsl": "INFO"}
    with pytest.raises(LogLevelError, match="'LOUD' is not a log level"):
        parse_levels(["lsst=LOUD"])
    with pytest.raises(ConfigError, match="loggers.lsst: 'LOUD' is not a log level"):
        parse_config({"logging": {"loggers": {"lsst": "LOUD"}}})


def _chatter_night(write_config, tmp_path, daemon_factory, *daemon_args: str):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config, path = write_config(watch=[{"name": "inbox", "path": str(inbox), "kind": "widget",
                                        "patterns": ["*.w"], "mode": "inotify", "quiet_seconds": 0.2}])
    d = daemon_factory(path, *daemon_args).start()
    (inbox / "talk-1.w").write_text("chatter")
    wait_for(lambda: states(config).get("talk") == "done", what="talk done")
    attempt = next(a for a in Store(config.db).attempts() if a.stage == "building")
    d.stop()
    return d.output(), (Path(attempt.cwd) / "action.log").read_text()


def test_library_chatter_goes_to_the_attempt_log_not_the_daemon_log(write_config, tmp_path, daemon_factory):
    daemon_log, action_log = _chatter_night(write_config, tmp_path, daemon_factory)
    assert "chatter: for operators" in daemon_log
    assert "chatter: processing 4 quanta" not in daemon_log and "executed callback" not in daemon_log
    assert "lsst.pipe.base.quantum_graph_builder" in action_log and "chatter: processing 4 quanta" in action_log
    assert "transitions.core" in action_log and "chatter: for operators" in action_log


def test_log_level_per_logger_and_long_log(write_config, tmp_path, daemon_factory):
    daemon_log, _ = _chatter_night(write_config, tmp_path, daemon_factory,
                                   "--log-level", "lsst.pipe.base=INFO", "--long-log")
    line = next(line for line in daemon_log.splitlines() if "chatter: processing 4 quanta" in line)
    assert "lsst.pipe.base.quantum_graph_builder (widgets.py:" in line
    assert "executed callback" not in daemon_log  # transitions stays at WARNING
