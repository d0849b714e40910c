"""Hooks: real executables run by a real daemon, and the shipped examples."""

from __future__ import annotations

import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from autoproc.config import parse_config
from autoproc.hooks import Hooks, RuleError, discover, hook_environment, parse_rule
from autoproc.machines import Change
from autoproc.store import Store, Subject
from conftest import pid_gone, states, wait_for

REPO_HOOKS = Path(__file__).resolve().parents[1] / "hooks"


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP)
    return path


def problems(config, source: str) -> list[str]:
    store = Store(config.db)
    try:
        return [p["message"] for p in store.problems(limit=100) if p["source"] == source]
    finally:
        store.close()


def test_daemon_runs_hooks_on_failed(write_config, tmp_path, daemon_factory, monkeypatch):
    hooks, out, inbox = tmp_path / "hooks", tmp_path / "out", tmp_path / "inbox"
    for d in (hooks, out, inbox):
        d.mkdir()
    executable(hooks / "record", '#!/bin/sh\n# autoproc-on: kind=widget to=failed\n'
               'cat > "$OUT/event-$AUTOPROC_KEY.json"\nenv > "$OUT/env-$AUTOPROC_KEY.txt"\necho recorded\n')
    executable(hooks / "hang", '#!/bin/sh\n# autoproc-on: to=failed\necho $$ > "$OUT/hang.pid"\nexec sleep 60\n')
    executable(hooks / "crash", '#!/bin/sh\n# autoproc-on: to=failed\necho "boom: it broke" >&2\nexit 3\n')
    executable(hooks / "everything", f'#!{sys.executable}\n# autoproc-on: *\nimport os, sys\n'
               'open(os.environ["OUT"] + "/all.txt", "a").write(os.environ["AUTOPROC_TO"] + "\\n")\n')
    (hooks / "not-executable").write_text("#!/bin/sh\n# autoproc-on: *\ntouch \"$OUT/never\"\n")
    config, path = write_config(
        hooks={"directory": str(hooks), "timeout_seconds": 1, "env": {"OUT": str(out)}},
        watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "patterns": ["*.w"], "mode": "inotify",
                "quiet_seconds": 0.2}])
    monkeypatch.setenv("AUTOPROC_TEST_SECRET", "s3cret")  # in the daemon's environment only
    d = daemon_factory(path).start()
    (inbox / "bad-1.w").write_text("fail")
    event = json.loads(wait_for(lambda: (out / "event-bad.json").exists() and (out / "event-bad.json").read_text(),
                                what="the record hook's event"))
    assert event["kind"] == "widget" and event["key"] == "bad"
    assert (event["from"], event["to"], event["trigger"], event["actor"]) == ("building", "failed", "fail", "daemon")
    assert event["reason"] == "the widget file says fail"
    assert event["hook"] == "record" and event["root"] == str(config.root)
    assert event["attempt"]["stage"] == "building" and event["attempt"]["log"].endswith("build.log")
    # The hook writes the event first, then its environment: wait for the second file too.
    env_text = wait_for(lambda: (out / "env-bad.txt").exists() and "AUTOPROC_KIND=" in (out / "env-bad.txt").read_text()
                        and (out / "env-bad.txt").read_text(), what="the record hook's environment")
    env = dict(line.split("=", 1) for line in env_text.splitlines() if "=" in line)
    assert "s3cret" not in (out / "env-bad.txt").read_text()
    assert (env["AUTOPROC_KIND"], env["AUTOPROC_KEY"], env["AUTOPROC_FROM"], env["AUTOPROC_TO"]) == \
        ("widget", "bad", "building", "failed")
    assert env["AUTOPROC_TRIGGER"] == "fail" and env["AUTOPROC_ROOT"] == str(config.root)
    assert env["OUT"] == str(out) and "PATH" in env
    assert not {k for k in env if k not in {"PATH", "LANG", "OUT", "PWD", "SHLVL", "_"}
                and not k.startswith("AUTOPROC_")}, env

    # The hanging hook is killed at its 1 s timeout and recorded; the crash is recorded too.
    hang_pid = int(wait_for(lambda: (out / "hang.pid").exists() and (out / "hang.pid").read_text().strip()))
    wait_for(lambda: problems(config, "hook:hang"), timeout=10, what="the hang recorded")
    assert "killed after the 1 s timeout" in problems(config, "hook:hang")[0]
    wait_for(lambda: pid_gone(hang_pid), timeout=5, what="the hung hook gone")
    crash = wait_for(lambda: problems(config, "hook:crash"), what="the crash recorded")[0]
    assert "exit 3" in crash and "boom: it broke" in crash
    log = (config.work_dir / "hooks" / "record.log").read_text()
    assert "widget/bad building -> failed (fail): exit 0" in log and "recorded" in log

    # The engine went on regardless: another widget is built and checked.
    (inbox / "good-1.w").write_text("ok")
    wait_for(lambda: states(config).get("good") == "done", what="good done")
    wait_for(lambda: (out / "all.txt").exists() and "done" in (out / "all.txt").read_text(), what="`*` hook")
    assert (out / "all.txt").read_text().split().count("failed") == 1
    assert not (out / "event-good.json").exists() and not (out / "never").exists()
    assert d.proc.poll() is None
    wait_for(lambda: not list((config.work_dir / "hooks").glob("*/")), timeout=5,
             what="scratch directories cleaned up after the last hook")


def change(to: str = "failed", frm: str = "building", trigger: str = "fail", key: str = "k") -> Change:
    subject = Subject(1, "widget", key, to, 3, {}, None, 1, 0.0, 0.0, 0.0)
    return Change(subject, frm, to, trigger, "daemon", "why", {})


def test_full_queue_drops_and_records(tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    executable(hooks_dir / "slow", "#!/bin/sh\n# autoproc-on: to=failed\nsleep 0.5\n")
    config = parse_config({"root": str(tmp_path / "root"), "hooks": {"directory": str(hooks_dir), "workers": 1,
                                                                      "queue_size": 1}})
    Store(config.db).close()
    hooks = Hooks(lambda: config).start()
    try:
        t0 = time.monotonic()
        for i in range(4):
            hooks(change(key=f"k{i}"))
        assert time.monotonic() - t0 < 0.3  # the engine's side never waits for a hook
        wait_for(lambda: len(problems(config, "hook:slow")) >= 2, what="drops recorded")
        assert all("already waiting" in p for p in problems(config, "hook:slow"))
    finally:
        hooks.close(grace=3)
    runs = (config.work_dir / "hooks" / "slow.log").read_text().count("=== ")
    assert runs == 2  # one running, one queued; the other two dropped


def test_close_kills_running_hooks_and_records_the_rest(tmp_path):
    hooks_dir = tmp_path / "hooks"
    hooks_dir.mkdir()
    executable(hooks_dir / "long", "#!/bin/sh\n# autoproc-on: to=failed\nexec sleep 30\n")
    config = parse_config({"root": str(tmp_path / "root"), "hooks": {"directory": str(hooks_dir), "workers": 1}})
    Store(config.db).close()
    hooks = Hooks(lambda: config).start()
    hooks(change(key="a"))
    hooks(change(key="b"))
    time.sleep(0.3)
    t0 = time.monotonic()
    hooks.close(grace=0.2)
    assert time.monotonic() - t0 < 3
    messages = problems(config, "hook:long")
    assert any("widget/a" in m for m in messages) and any("the daemon stopped" in m for m in messages)


def test_rules_and_discovery(tmp_path):
    assert parse_rule("kind=exposure to=failed,stalled").matches(
        {"kind": "exposure", "from": "x", "to": "stalled", "trigger": "stall"})
    assert not parse_rule("kind=exposure").matches({"kind": "night", "from": "x", "to": "y"})
    hold = {"kind": "night", "from": "bias", "to": "bias", "trigger": "hold", "actor": "daemon"}
    assert not parse_rule("to=bias").matches(hold) and parse_rule("trigger=hold").matches(hold)
    assert parse_rule("*").matches(hold)
    for bad in ("", "colour=red", "to=", "to"):
        with pytest.raises(RuleError):
            parse_rule(bad)
    executable(tmp_path / "binary", "\x7fELF not a script")
    (tmp_path / "binary.on").write_text("# for a program without comments\nautoproc-on: trigger=hold\nkind=night\n")
    executable(tmp_path / "quiet", "#!/bin/sh\nexit 0\n")  # no rules: never runs
    executable(tmp_path / "typo", "#!/bin/sh\n# autoproc-on: stat=failed\n")
    errors = []
    found = discover(tmp_path, on_error=lambda name, msg: errors.append((name, msg)))
    assert [h.name for h in found] == ["binary"] and len(found[0].rules) == 2
    assert errors and errors[0][0] == "typo" and "stat=failed" in errors[0][1]
    assert discover(tmp_path / "missing") == []


# -- the shipped examples ----------------------------------------------------------------

def run_example(name: str, tmp_path: Path, extra_env: dict[str, str], event: dict | None = None):
    config = parse_config({"root": str(tmp_path), "hooks": {"directory": str(REPO_HOOKS), "env": extra_env}})
    event = event or {"kind": "exposure", "key": "S250101a.123456", "from": "checking", "to": "failed",
                      "trigger": "fail", "actor": "daemon", "reason": "only 3 of 62 CCDs <script>",
                      "evidence": {"ccds": 3}, "data": {"big": 1}, "report": "/r/index.html",
                      "time_iso": "2025-01-01T00:00:00+00:00"}
    event_file = tmp_path / "event.json"
    event_file.write_text(json.dumps(event))
    hook = next(h for h in discover(REPO_HOOKS) if h.name == name)
    assert hook.wants(event)
    env = hook_environment(event, config, event_file=event_file, hook=hook)
    return subprocess.run([str(hook.path)], input=event_file.read_text(), capture_output=True, text=True,  # noqa: S603
                          env=env, cwd=tmp_path, timeout=30)


def test_example_event_log(tmp_path):
    for _ in range(2):
        res = run_example("event-log", tmp_path, {})
        assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["to"] == "failed" and "data" not in lines[0]


def test_example_mail_through_sendmail(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "sendmail", f'#!/bin/sh\necho "$@" > "{tmp_path}/args"\ncat > "{tmp_path}/message"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")  # hooks get the daemon's PATH
    res = run_example("mail", tmp_path, {"MAILTO": "ops@example.org", "MAILFROM": "autoproc@example.org"})
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "args").read_text().split() == ["-i", "--", "ops@example.org"]
    message = (tmp_path / "message").read_text()
    assert "Subject: autoproc: exposure/S250101a.123456 is now failed" in message
    assert "only 3 of 62 CCDs <script>" in message and "report: /r/index.html" in message
    skipped = run_example("mail", tmp_path, {})
    assert skipped.returncode == 0 and "MAILTO is not set" in skipped.stdout


class Receiver(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((self.headers["Content-Type"], body))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


def test_example_slack_webhook(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url_file = tmp_path / "webhook.url"
        url_file.write_text(f"http://127.0.0.1:{server.server_port}/hooks/secret-token\n")
        res = run_example("slack-webhook", tmp_path, {"SLACK_WEBHOOK_URL_FILE": str(url_file)})
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        server.shutdown()
    content_type, body = Receiver.received[-1]
    assert content_type == "application/json"
    text = json.loads(body)["text"]
    assert "exposure/S250101a.123456: checking \u2192 failed (fail, by daemon)" in text
    assert "only 3 of 62 CCDs &lt;script&gt;" in text and "<script>" not in text
    skipped = run_example("slack-webhook", tmp_path, {"SLACK_WEBHOOK_URL_FILE": str(tmp_path / "none")})
    assert skipped.returncode == 0 and "not posting" in skipped.stdout
