"""CLI conventions (issue 15): `--json` on every read verb; `show` readable in 80 columns with
dates, not epoch floats, and everything with `--wide`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from autoproc.cli.render import subject_view
from autoproc.script.inspect import show
from autoproc.store import Store
from conftest import child_env

EPOCH = re.compile(r"\b1[6-9]\d{8}(\.\d+)?\b")
LONG_LOG = "/very/long/path/to/the/work/directory/widget/w/000001-building/build.log"


def cli(path: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), *args],  # noqa: S603
                          capture_output=True, text=True, env={**child_env(), "COLUMNS": str(columns)}, timeout=60)


def _subject(config):
    store = Store(config.db)
    s, _ = store.ensure_subject("widget", "w", "new", actor="t")
    store.update(s, held=None, trigger="note", actor="alice", reason="r", evidence={"on_behalf_of": "bob"})
    for try_number, status in ((1, "failed"), (2, "succeeded")):
        a = store.add_attempt(store.subject("widget", "w"), "building", step="build", try_number=try_number)
        store.update_attempt(a, status=status, log=LONG_LOG, ended=store.attempt(a).started + 75,
                             exit_status=0 if status == "succeeded" else 1,
                             result={"reason": "the build child exited 1 after writing half of its output " * 3})
    return store


def _render(info, width: int, wide: bool = False) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(subject_view(info, wide=wide))
    return console.export_text()


def test_show_fits_80_columns_and_prints_dates(write_config):
    config, _ = write_config()
    info = show(_subject(config), "widget", "w")
    text = _render(info, 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert not EPOCH.search(text), text
    assert re.search(r"\d\d-\d\d \d\d:\d\d:\d\d", text) and "0:01:15" in text  # started, and how long it took
    assert "alice (for bob)" in text
    assert LONG_LOG not in text  # the compact view leaves the log path to --wide
    wide = _render(info, 300, wide=True)  # every column in full wants a wide terminal
    assert LONG_LOG in wide and not EPOCH.search(wide)


def test_every_read_verb_has_json(write_config, tmp_path):
    config, path = write_config()
    _subject(config)
    for args in (["status"], ["show", "widget", "w"], ["history", "widget", "w"], ["graph", "widget"],
                 ["report", "--out", str(tmp_path / "report")], ["config", "check"]):
        res = cli(path, *args, "--json")
        assert res.returncode == 0, (args, res.stderr)
        json.loads(res.stdout)
    assert json.loads(cli(path, "graph", "widget", "--json").stdout)["initial"] == "new"
    res = cli(path, "show", "widget", "w", "--wide", columns=300)
    assert res.returncode == 0 and LONG_LOG in res.stdout
