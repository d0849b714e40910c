"""Hooks: site executables run on the transitions they subscribe to.

A hook is any executable file in the hooks directory (config `hooks.directory`, default
`<root>/hooks`; dot files and `*.on` files are not hooks). It says what it wants in a
header comment within its first 30 lines, one rule a line:

    # autoproc-on: kind=exposure to=failed,stalled,no_templates
    # autoproc-on: trigger=hold

or, for a binary, in a sidecar file `NAME.on` with the same rules (`autoproc-on:` is
optional there). Keys are `kind`, `from`, `to`, `trigger` and `actor`; a comma means
"any of". All keys of a rule must match; any rule matching is enough. `to=X` means
*entering* X, so it does not match a hold (`trigger=hold`, the state unchanged). A rule
`*` matches every change. A hook without rules never runs.

Each run gets the change as one JSON document on stdin (kind, key, from, to, trigger,
actor, reason, evidence, data, held, time, report, root, hook; `attempt` with its log
when the evidence names one) and a minimal environment: PATH, LANG, config `hooks.env`,
and AUTOPROC_KIND, _KEY, _FROM, _TO, _TRIGGER, _ACTOR, _ROOT, _REPORT, _EVENT (a file
holding the same JSON), _HOOK, _HOOKS_DIR. Not the daemon's environment: secrets the
daemon holds stay with it. A run has its own process group and a scratch working
directory, is killed at `hooks.timeout_seconds`, and its exit status and output are
appended to `<work>/hooks/NAME.log`. A failure, a timeout, or a run dropped because the
queue was full is recorded as a problem in the store. Hooks run on a few worker threads
behind a bounded queue, so they never block the engine; delivery is at most once.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoproc import process
from autoproc.config import Config
from autoproc.machines import Change
from autoproc.store import Store, StoreError

log = logging.getLogger("autoproc.hooks")

MARK = "autoproc-on:"
HEADER_LINES = 30
KEYS = ("kind", "from", "to", "trigger", "actor")
OUTPUT_LIMIT = 64 * 1024  # of one run's output kept in the hook's log
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
CLOSE_GRACE_SECONDS = 2.0


class RuleError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    """One `autoproc-on:` line: every named key must match one of its values."""

    match: tuple[tuple[str, frozenset[str]], ...]

    def matches(self, event: dict[str, Any]) -> bool:
        for key, values in self.match:
            if key == "to" and event["from"] == event["to"]:
                return False  # `to` means entering; a hold leaves the state as it was
            if str(event.get(key) or "") not in values:
                return False
        return True


def parse_rule(text: str) -> Rule:
    """`kind=exposure to=failed,stalled` (or `*`) into a Rule; RuleError says what is wrong."""
    text = text.strip()
    if text == "*":
        return Rule(())
    if not text:
        raise RuleError("empty rule (write `*` for every change)")
    match = []
    for word in text.split():
        key, sep, values = word.partition("=")
        if not sep or key not in KEYS or not values:
            raise RuleError(f"{word!r}: expected KEY=VALUE[,VALUE...] with KEY one of {', '.join(KEYS)}")
        match.append((key, frozenset(v for v in values.split(",") if v)))
    return Rule(tuple(match))


def read_rules(path: Path) -> list[Rule]:
    """The rules of one hook: its `NAME.on` sidecar, else its header comments."""
    sidecar = path.with_name(path.name + ".on")
    if sidecar.is_file():
        lines = [line.strip() for line in sidecar.read_text(errors="replace").splitlines()]
        lines = [line.removeprefix(MARK) for line in lines if line and not line.startswith("#")]
    else:
        with open(path, "rb") as f:
            head = f.read(8192).decode(errors="replace").splitlines()[:HEADER_LINES]
        lines = [line.split(MARK, 1)[1] for line in head if MARK in line]
    return [parse_rule(line) for line in lines]


@dataclass(frozen=True)
class Hook:
    name: str
    path: Path
    rules: tuple[Rule, ...]

    def wants(self, event: dict[str, Any]) -> bool:
        return any(rule.matches(event) for rule in self.rules)


def discover(directory: Path, on_error: Callable[[str, str], None] | None = None) -> list[Hook]:
    """The hooks in `directory` (none when it does not exist), sorted by name."""
    hooks = []
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith(".") or entry.name.endswith(".on") or not entry.is_file():
            continue
        if not os.access(entry.path, os.X_OK):
            continue
        try:
            rules = read_rules(Path(entry.path))
        except (OSError, RuleError) as err:
            if on_error is not None:
                on_error(entry.name, f"not used: bad subscription: {err}")
            continue
        if rules:
            hooks.append(Hook(entry.name, Path(entry.path), tuple(rules)))
    return hooks


def event_document(change: Change, config: Config, report: Path | None = None) -> dict[str, Any]:
    """What a hook reads on stdin."""
    now = time.time()
    return {
        **change.to_json(),
        "held": change.subject.held,
        "time": now,
        "time_iso": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="seconds"),
        "root": str(config.root),
        "report": str(report) if report else None,
    }


def hook_environment(event: dict[str, Any], config: Config, *, event_file: Path, hook: Hook) -> dict[str, str]:
    """The whole environment of a hook run: a few known variables, nothing inherited."""
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        **config.hooks.env,
    }
    env.update({
        "AUTOPROC_KIND": event["kind"], "AUTOPROC_KEY": event["key"], "AUTOPROC_FROM": event["from"] or "",
        "AUTOPROC_TO": event["to"], "AUTOPROC_TRIGGER": event["trigger"], "AUTOPROC_ACTOR": event["actor"],
        "AUTOPROC_ROOT": str(config.root), "AUTOPROC_REPORT": event["report"] or "",
        "AUTOPROC_EVENT": str(event_file), "AUTOPROC_HOOK": hook.name,
        "AUTOPROC_HOOKS_DIR": str(config.hooks.directory),
    })
    return env


class Hooks:
    """The engine listener that runs hooks. `config()` gives the current configuration
    (it changes on SIGHUP); `report` is the report page hooks are told about."""

    def __init__(self, config: Callable[[], Config], *, report: Path | None = None):
        self.config = config
        self.report = report
        first = config()
        self.queue: queue.Queue[tuple[Hook, dict[str, Any]]] = queue.Queue(maxsize=first.hooks.queue_size)
        self._cache: tuple[tuple, list[Hook]] | None = None
        self._closed = threading.Event()  # no new runs are accepted
        self._kill = threading.Event()    # running hooks are killed, queued ones dropped
        self._log_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name=f"hook-{i}", daemon=True)
                         for i in range(first.hooks.workers)]

    def start(self) -> Hooks:
        for t in self._threads:
            t.start()
        return self

    # -- the engine side: cheap, never blocks --------------------------------------------

    def hooks(self) -> list[Hook]:
        """The directory's hooks; subscriptions are read again only when a file changed."""
        directory = self.config().hooks.directory
        try:
            stamp = (str(directory), *sorted((e.name, st.st_mtime_ns, st.st_size, st.st_mode)
                                             for e in os.scandir(directory) for st in [e.stat()]))
        except OSError:
            return []
        if self._cache is None or self._cache[0] != stamp:
            self._cache = (stamp, discover(directory, on_error=self.problem))
        return self._cache[1]

    def __call__(self, change: Change) -> None:
        if self._closed.is_set():
            return
        hooks = self.hooks()
        if not hooks:
            return
        event = event_document(change, self.config(), self.report)
        for hook in hooks:
            if not hook.wants(event):
                continue
            try:
                self.queue.put_nowait((hook, {**event, "hook": hook.name}))
            except queue.Full:
                self.problem(hook.name, f"dropped for {event['kind']}/{event['key']} ({event['from']} -> "
                             f"{event['to']}): {self.queue.maxsize} hook runs already waiting")

    # -- the workers ------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                hook, event = self.queue.get(timeout=0.2)
            except queue.Empty:
                if self._closed.is_set():
                    return
                continue
            try:
                if self._kill.is_set():
                    self.problem(hook.name, f"not run for {event['kind']}/{event['key']}: the daemon stopped")
                else:
                    self.run(hook, event)
            except Exception as err:  # noqa: BLE001 - a hook must never take a worker down
                log.exception("hook %s", hook.name)
                self.problem(hook.name, f"could not run: {type(err).__name__}: {err}")
            finally:
                self.queue.task_done()

    def run(self, hook: Hook, event: dict[str, Any]) -> process.ChildResult:
        """Run one hook for one event (in the calling thread); log and record the outcome."""
        config = self.config()
        base = config.work_dir / "hooks"
        base.mkdir(parents=True, exist_ok=True, mode=0o750)
        scratch = Path(tempfile.mkdtemp(prefix=f"{hook.name}.", dir=base))
        try:
            event_file = scratch / "event.json"
            if event["evidence"].get("attempt"):
                event["attempt"] = self._attempt(config, event["evidence"]["attempt"])
            event_file.write_text(json.dumps(event, default=str, indent=1))
            result = process.run(
                [str(hook.path)], cwd=scratch, log=scratch / "output.log", stdin=event_file,
                env=hook_environment(event, config, event_file=event_file, hook=hook),
                timeout=config.hooks.timeout_seconds, should_stop=self._kill.is_set)
            self._log(base / f"{hook.name}.log", hook, event, result, config.hooks.timeout_seconds)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return result

    @staticmethod
    def _attempt(config: Config, attempt_id: Any) -> dict[str, Any] | None:
        try:
            store = Store(config.db, readonly=True)
        except StoreError:
            return None
        try:
            a = store.attempt(int(attempt_id))
        except (StoreError, ValueError):
            return None
        finally:
            store.close()
        return {k: v for k, v in a.to_json().items()
                if k in ("id", "stage", "step", "try", "status", "log", "cwd", "exit_status")}

    def _log(self, path: Path, hook: Hook, event: dict, result: process.ChildResult, timeout: float) -> None:
        what = f"{event['kind']}/{event['key']} {event['from']} -> {event['to']} ({event['trigger']})"
        if result.timed_out:
            outcome = f"killed after the {timeout:g} s timeout"
        else:
            outcome = f"exit {result.returncode}"
        try:
            with open(result.log, "rb") as f:
                output = f.read(OUTPUT_LIMIT).decode(errors="replace")
        except OSError:
            output = ""
        when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        block = f"=== {when} {what}: {outcome} in {result.seconds:.2f} s\n{output}"
        if output and not output.endswith("\n"):
            block += "\n"
        with self._log_lock, open(path, "a") as f:
            f.write(block)
        if result.ok and not result.timed_out:
            log.info("hook %s for %s: %s", hook.name, what, outcome)
            return
        log.warning("hook %s for %s: %s", hook.name, what, outcome)
        tail = " | ".join(output.strip().splitlines()[-3:])
        self.problem(hook.name, f"{what}: {outcome} (log {path})" + (f": {tail}" if tail else ""))

    def problem(self, name: str, message: str) -> None:
        """Record a problem with hook `name` in the store (its own connection: this runs on
        worker threads, and after the engine has closed its store)."""
        log.warning("hook %s: %s", name, message)
        try:
            store = Store(self.config().db)
            try:
                store.add_problem(f"hook:{name}", message)
            finally:
                store.close()
        except StoreError as err:
            log.error("hook %s: cannot record the problem: %s", name, err)

    def close(self, grace: float = CLOSE_GRACE_SECONDS) -> None:
        """Stop accepting runs; let queued and running hooks finish for `grace` seconds,
        then kill what runs and drop what waits (each recorded)."""
        self._closed.set()
        self._join(time.monotonic() + grace)
        self._kill.set()
        self._join(time.monotonic() + process.KILL_GRACE_SECONDS + 1.0)

    def _join(self, deadline: float) -> None:
        for t in self._threads:
            if t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))
