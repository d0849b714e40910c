"""What stage code plugs in: actions, conditions, callbacks and file kinds, by name.

An *action* is a plain function `fn(ctx: ActionContext) -> Outcome` that does one
idempotent step for a subject. It never writes the store: it returns an Outcome (the
trigger to fire, evidence, data) or raises one of the exceptions below, and the engine,
the single writer, records it. A *condition* is `fn(subject, env) -> bool`, checked by
the state machine before a transition. A *callback* is `fn(change, env) -> None`, run
after a transition has been committed. A *file kind* validates an intake file and says
which subject it feeds. An *environment check* is `fn() -> None` that raises when the
installed software cannot run the stage correctly; the daemon runs every check at start
and `config check` reports them, so a stage never runs silently wrong. A *rerun hook*
`fn(subject, state, redo, config) -> RerunPlan`, one per kind, says what a chain sets aside when an operator reruns a subject from a state
(`autoproc rerun-from`): what it lists, journals and records in the subject's data. A
*rebuild hook* `fn(config) -> list[Rebuilt]`, one per kind, finds that kind's subjects
again from the evidence (the watched roots, the Butler, the DESGW trees) when the state
database is lost (`autoproc store rebuild`, autoproc.rebuild): each with the state and data
the evidence supports, and what it was rebuilt from.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from autoproc import process
from autoproc.config import Config
from autoproc.errors import AutoprocError
from autoproc.store import Subject


@dataclass
class Outcome:
    """What an action found. `trigger=None` means "not yet": look again after `retry_after`."""

    trigger: str | None
    evidence: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    retry_after: float | None = None
    consume: list[str] = field(default_factory=list)  # intake file paths this action used up
    bad: dict[str, str] = field(default_factory=dict)  # intake file path -> why it cannot be used


class ActionError(Exception):
    """Base of the exceptions an action raises to steer the retry policy."""

    def __init__(self, reason: str, *, evidence: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.evidence = evidence or {}


class Retry(ActionError):
    """A failure worth another try (within the budget), e.g. out of memory.
    `adjust` is handed to the next try (for example a larger memory request)."""

    def __init__(self, reason: str, *, adjust: dict | None = None, evidence: dict | None = None):
        super().__init__(reason, evidence=evidence)
        self.adjust = adjust or {}


class Wait(ActionError):
    """Inputs are missing, or something outside the step is (a database, a disk): look again
    later, without spending the retry budget. `problem` names an outside cause a person may
    need to see; it is recorded as a problem once per attempt."""

    def __init__(self, reason: str, *, retry_after: float = 30.0, evidence: dict | None = None,
                 problem: str | None = None):
        super().__init__(reason, evidence=evidence)
        self.retry_after = retry_after
        self.problem = problem


class Hold(ActionError):
    """Stop and ask a person (e.g. the outcome of an external submission is unknown)."""


class Fail(ActionError):
    """A failure that retrying will not fix."""


class ResultKind(StrEnum):
    """How an action ended: returned an Outcome, or raised Retry, Wait, Hold or Fail (any
    other exception is a FAIL)."""

    OUTCOME = "outcome"
    RETRY = "retry"
    WAIT = "wait"
    HOLD = "hold"
    FAIL = "fail"


@dataclass(frozen=True)
class ActionResult:
    """What the executor hands back to the engine for one attempt: plain data, so it
    crosses the process boundary to HTEX/Slurm workers, and is stored as `to_json()` in
    the attempt's `result`. Which fields mean something depends on `kind`: `trigger`,
    `data`, `consume`, `bad` an OUTCOME's; `adjust` and `executor_lost` a RETRY's;
    `problem` a WAIT's; `retry_after` an OUTCOME without a trigger or a WAIT."""

    kind: ResultKind
    reason: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    trigger: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    retry_after: float | None = None
    consume: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    adjust: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    executor_lost: bool = False  # the process that ran the action is gone (e.g. a lost HTEX worker)
    ran_on: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_outcome(cls, outcome: Outcome) -> ActionResult:
        return cls(ResultKind.OUTCOME, **asdict(outcome))

    @classmethod
    def of_error(cls, err: ActionError, reason: str | None = None) -> ActionResult:
        """The result of an action that raised one of the steering exceptions (`reason`
        replaces the exception's own, e.g. with the children's timeouts added)."""
        why = err.reason if reason is None else reason
        if isinstance(err, Retry):
            return cls(ResultKind.RETRY, why, err.evidence, adjust=err.adjust)
        if isinstance(err, Wait):
            return cls(ResultKind.WAIT, why, err.evidence, retry_after=err.retry_after, problem=err.problem)
        if isinstance(err, Hold):
            return cls(ResultKind.HOLD, why, err.evidence)
        return cls(ResultKind.FAIL, why, err.evidence)

    @property
    def retryable(self) -> bool:
        """A failure another try may fix (within the retry budget)."""
        return self.kind is ResultKind.RETRY

    def to_json(self) -> dict[str, Any]:
        """The stored form: `kind`, `reason`, `evidence`, and the fields that are set."""
        out: dict[str, Any] = {"kind": self.kind.value, "reason": self.reason, "evidence": self.evidence}
        if self.kind is ResultKind.OUTCOME:
            out.update(trigger=self.trigger, data=self.data, retry_after=self.retry_after, consume=self.consume,
                       bad=self.bad)
        for name in ("adjust", "problem", "executor_lost", "ran_on"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.kind is ResultKind.WAIT:
            out["retry_after"] = self.retry_after
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActionResult:
        """Read back `to_json()`, ignoring what the engine noted beside it (progress, ...)."""
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and data[k] is not None}
        return cls(**{**known, "kind": ResultKind(data.get("kind", ResultKind.FAIL))})


@dataclass
class ActionContext:
    """Everything an action may use. Picklable, so it can travel to a Parsl worker."""

    subject: Subject
    stage: str
    attempt_id: int
    try_number: int
    workdir: Path
    config: Config
    adjust: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    files: list[dict] = field(default_factory=list)  # ready and waiting (incomplete) intake files of this subject
    previous: dict[str, Any] = field(default_factory=dict)  # result of the last try in this state
    timed_out: list[str] = field(default_factory=list)  # children killed at their deadline (filled by run)
    # Not pickled: set only when the action runs in the daemon's own process.
    notify: Callable[[int, process.Child], None] | None = None
    on_progress: Callable[[int, str], None] | None = None
    stopping: threading.Event | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "notify": None, "on_progress": None, "stopping": None}

    def progress(self, note: str) -> None:
        """Say that this attempt moved the subject forward (kept even if the daemon dies
        later in the attempt): a crash after progress does not count towards
        `max_interruptions`. Only heard when the action runs in the daemon's process."""
        if self.on_progress is not None:
            self.on_progress(self.attempt_id, note)

    def record_child(self, name: str, child: process.Child) -> None:
        """Enter a child this attempt started into the engine's ledger: `<name>.child.json`
        in the attempt directory (what a restart finds and kills, see `recorded_children`)
        and, in the daemon's process, the attempt's row. `run` does it for its children;
        an action that starts children another way (the DEEP runner) calls it itself."""
        process.write_private(_child_record(self.workdir, name), json.dumps(child.to_json()))
        if self.notify is not None:
            self.notify(self.attempt_id, child)

    def run(self, argv: Sequence[str], *, name: str = "child", cwd: Path | str | None = None,
            env: Mapping[str, str] | None = None, timeout: float | None = None) -> process.ChildResult:
        """Run a child process for this attempt: own process group, log under the attempt
        directory, recorded so the daemon can find or kill it after a restart. A child that
        failed because the disk or a file-size limit was full raises that OSError: the
        attempt then waits for space instead of spending its retry budget."""
        log = self.workdir / f"{name}.log"
        stopping = self.stopping
        limit = timeout or self.timeout
        result = process.run(
            argv, cwd=cwd or self.workdir, log=log, env=env, timeout=limit,
            on_start=lambda child: self.record_child(name, child), should_stop=(stopping.is_set if stopping is not None else None))
        if result.timed_out:
            self.timed_out.append(f"{name} timed out after {limit:.0f} s; its process group was killed")
        full = result.no_space()
        if full is not None:
            raise full
        return result


# What `ActionContext.run` leaves in the attempt directory for each child NAME: NAME.log,
# NAME.log.exit (its exit status, process.run) and NAME.child.json (pid, pgid, host, argv,
# log), which the engine reads to find or kill an attempt's children after a restart and a
# recover action reads to learn what an interrupted attempt got as far as. Read them
# through these functions, not by name.


def _child_record(workdir: Path, name: str) -> Path:
    return workdir / f"{name}.child.json"


def recorded_children(workdir: Path) -> list[dict[str, Any]]:
    """Every child `run` started in the attempt directory `workdir`, oldest first (unreadable records skipped)."""
    children = []
    for path in sorted(workdir.glob("*.child.json"), key=lambda p: p.stat().st_mtime):
        try:
            children.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return children


def child_started(workdir: Path, name: str) -> bool:
    """Whether the attempt in `workdir` got as far as starting its child `name`."""
    return _child_record(workdir, name).exists()


def child_exit(workdir: Path, name: str) -> int | None:
    """The exit status the child `name` of the attempt in `workdir` left (None: none recorded)."""
    return process.recorded_exit(workdir / f"{name}.log.exit")


class Env(Protocol):
    """What conditions and callbacks may read (the engine provides it)."""

    config: Config
    store: Any  # autoproc.store.Store, read only

    def subject(self, kind: str, key: str) -> Subject: ...

    def poke(self, kind: str, key: str) -> None:
        """Have another subject looked at soon (cross-subject fan-in)."""

    def create(self, kind: str, key: str, *, reason: str, data: dict | None = None) -> bool:
        """Create a subject in its machine's initial state (journaled); False if it existed."""

    def problem(self, source: str, message: str) -> None:
        """Record something a person should see (`autoproc status`, the report)."""


@dataclass(frozen=True)
class FileInfo:
    """A validated intake file: the subject it feeds and what was read from it."""

    subject: tuple[str, str]  # (kind, key)
    info: dict[str, Any] = field(default_factory=dict)
    # Why the file is not complete yet (e.g. HDUs missing): it is recorded `waiting` with this
    # reason instead of `ready`; the stage's action decides how long to wait for the rest.
    waiting: str = ""


class FileKind(Protocol):
    def __call__(self, path: Path, config: Config) -> FileInfo:
        """Validate the file; raise ValueError with a clear reason when it is bad, or
        EnvironmentVerdict when the cause is outside the file."""


class EnvironmentVerdict(ValueError):
    """A file kind cannot accept the file for a reason outside it (a stale or unusable
    manifest, the configuration): the verdict is re-examined after a reload or restart."""


@dataclass
class RerunPlan:
    """What a rerun sets aside, from a kind's rerun hook.

    `set_aside`: one line per thing taken out (printed by `--dry-run`, journaled);
    `data`: merged into the subject's data with the override's transition, for its actions
    to act on; `evidence`: journaled with the override; `notes`: what the operator should know.
    """

    set_aside: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


RerunHook = Callable[[Subject, str, list[str], Config | None], RerunPlan]


@dataclass
class Rebuilt:
    """A subject found again from the evidence, by a kind's rebuild hook.

    `state`: the furthest state the evidence proves (the daemon's actions find the rest, and
    never repeat an external submission); `source`: what it was rebuilt from, journaled."""

    key: str
    state: str
    source: str
    data: dict[str, Any] = field(default_factory=dict)
    evidence: dict[str, Any] = field(default_factory=dict)


RebuildHook = Callable[[Config], list[Rebuilt]]

ACTIONS: dict[str, Callable[[ActionContext], Outcome]] = {}
CONDITIONS: dict[str, Callable[[Subject, Env], bool]] = {}
CALLBACKS: dict[str, Callable[[dict, Env], None]] = {}
FILE_KINDS: dict[str, FileKind] = {}
ENVIRONMENT_CHECKS: dict[str, Callable[[], None]] = {}
RERUN_HOOKS: dict[str, RerunHook] = {}
REBUILD_HOOKS: dict[str, RebuildHook] = {}
# kind -> subject data keys an operator's move (set, retry, rerun-from) or a restore from a
# backup empties: what the kind's actions remember for themselves and may only trust while the
# daemon alone moves the subject.
FORGOTTEN_ON_RESET: dict[str, set[str]] = {}


def _register(table: dict, name: str | None):
    def decorate(fn):
        key = name or fn.__name__
        if key in table and table[key] is not fn:
            raise ValueError(f"{key!r} is registered twice ({table[key].__module__} and {fn.__module__})")
        table[key] = fn
        return fn
    return decorate


def action(name: str | None = None):
    return _register(ACTIONS, name)


def condition(name: str | None = None):
    return _register(CONDITIONS, name)


def callback(name: str | None = None):
    return _register(CALLBACKS, name)


def file_kind(name: str):
    return _register(FILE_KINDS, name)



def environment_check(name: str | None = None):
    return _register(ENVIRONMENT_CHECKS, name)


class EnvironmentProblem(AutoprocError):
    """The installed software cannot run a loaded stage correctly."""


def check_environment() -> None:
    """Run every registered environment check; raise one error naming all that failed."""
    problems = []
    for name, check in ENVIRONMENT_CHECKS.items():
        try:
            check()
        except Exception as err:
            problems.append(f"{name}: {err}")
    if problems:
        raise EnvironmentProblem("the installed software cannot run these stages: " + "; ".join(problems))


def rerun_hook(kind: str):
    """Register what `rerun-from` sets aside for subjects of `kind`."""
    return _register(RERUN_HOOKS, kind)


def rebuild_hook(kind: str):
    """Register how `store rebuild` finds the subjects of `kind` again from the evidence."""
    return _register(REBUILD_HOOKS, kind)


def forgotten_on_reset(kind: str, key: str) -> None:
    """Say that subject data `key` of `kind` is emptied whenever an operator moves such a
    subject (`autoproc.script.override`) and when the state database is restored from a backup
    (`autoproc.backup.restore`)."""
    FORGOTTEN_ON_RESET.setdefault(kind, set()).add(key)
