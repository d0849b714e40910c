"""The engine's retry policy as pure functions: what happens to a subject whose state has
an action, given its attempts so far in this entry of the state, the state's spec, the
retry policy and the time.

Nothing here reads or writes the store, starts anything or looks at a clock: the engine
(autoproc.engine) reads the attempts, asks these functions, and applies the typed
decision they return (records the attempt, fires the trigger, dispatches the action).
docs/STAGES.md and RELIABILITY.md describe the rules in prose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from autoproc.actions import ActionResult, ResultKind
from autoproc.config import Config
from autoproc.machines import StateSpec
from autoproc.store import Attempt, AttemptStatus

# A Wait that does not say when to look again.
DEFAULT_WAIT_SECONDS = 30.0
# An action hung in itself gets its timeout again, at most this long, to kill its own children.
HUNG_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Policy:
    """The retry policy of one state: the config's `retry` section with the state's own
    `retry` spec over it, and the daemon-wide limits the rules need."""

    max_tries: int
    backoff_seconds: float
    backoff_factor: float
    max_backoff_seconds: float
    max_interruptions: int
    poll_seconds: float

    @classmethod
    def of(cls, config: Config, st: StateSpec) -> Policy:
        r = config.retry
        return cls(max_tries=st.retry.max_tries or r.max_tries,
                   backoff_seconds=r.backoff_seconds if st.retry.backoff_seconds is None else st.retry.backoff_seconds,
                   backoff_factor=r.backoff_factor, max_backoff_seconds=r.max_backoff_seconds,
                   max_interruptions=config.max_interruptions, poll_seconds=config.poll_seconds)

    def backoff(self, try_number: int) -> float:
        """The wait after try `try_number` failed: growing by `backoff_factor`, capped."""
        return min(self.max_backoff_seconds, self.backoff_seconds * self.backoff_factor ** max(0, try_number - 1))


# -- how an attempt that ended is recorded ------------------------------------------------


@dataclass(frozen=True)
class Ended:
    """How to record an attempt whose action returned: its new status, when it may run
    again, and an outside problem to record for a person (once per attempt and cause)."""

    status: AttemptStatus
    not_before: float | None = None
    problem: str | None = None
    clean_stop: bool = False


def ended(result: ActionResult, attempt: Attempt, policy: Policy, now: float, *, stopping: bool) -> Ended:
    """What the result of `attempt`'s action makes of it. `stopping`: the daemon is
    stopping, so a failure may be the stop's doing (the attempt is interrupted, not failed)."""
    kind = result.kind
    if stopping and kind is not ResultKind.OUTCOME:
        return Ended(AttemptStatus.INTERRUPTED, clean_stop=True)
    if kind is ResultKind.OUTCOME:
        if result.trigger:
            return Ended(AttemptStatus.SUCCEEDED)
        return Ended(AttemptStatus.WAITING, not_before=now + (result.retry_after or policy.poll_seconds))
    if kind is ResultKind.WAIT:
        # The environment's fault (a full disk, a database away) is said once per attempt and
        # cause, however long it lasts: the attempt tries again by itself, in place.
        new_problem = result.problem if result.problem and attempt.result.get("problem") != result.problem else None
        return Ended(AttemptStatus.WAITING, not_before=now + float(result.retry_after or DEFAULT_WAIT_SECONDS),
                     problem=new_problem)
    if kind is ResultKind.HOLD:
        return Ended(AttemptStatus.HELD)
    return Ended(AttemptStatus.FAILED, not_before=now + policy.backoff(attempt.try_number))


def executor_lost(err: BaseException) -> ActionResult:
    """The result of an attempt whose executor failed (e.g. a lost HTEX worker): worth a retry."""
    return ActionResult(ResultKind.RETRY, f"executor: {type(err).__name__}: {err}", executor_lost=True)


def hung(attempt: Attempt, timeout: float | None, now: float) -> ActionResult | None:
    """The result for an attempt whose action is hung in itself (not a child: the action
    had its timeout to kill those), or None while it may still be working. Past its
    timeout it gets a grace as long as the timeout, at most HUNG_GRACE_SECONDS."""
    if timeout is None or now - (attempt.started or now) < timeout + min(timeout, HUNG_GRACE_SECONDS):
        return None
    return ActionResult(ResultKind.RETRY, f"hung: still running {timeout:.0f} s past its timeout")


# -- what a subject in a state with an action needs next ----------------------------------


@dataclass(frozen=True)
class Busy:
    """An attempt is queued or running: nothing to do until it ends."""


@dataclass(frozen=True)
class HoldSubject:
    """The action asked for a person: hold the subject (and mark the attempt applied)."""

    attempt: Attempt
    reason: str


@dataclass(frozen=True)
class Apply:
    """The action succeeded: fire the trigger it asked for."""

    attempt: Attempt


@dataclass(frozen=True)
class Later:
    """Nothing before `when` (a poll interval, a backoff): look again then."""

    when: float


@dataclass(frozen=True)
class RunAgain:
    """A waiting attempt is due: run its action again, in the same attempt."""

    attempt: Attempt


@dataclass(frozen=True)
class GiveUp:
    """The state failed: fire the machine's `on_failure` trigger with this reason."""

    reason: str
    evidence: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Run:
    """Start a new attempt: try `try_number`, with the last try's `adjust` (e.g. more memory);
    `recover` names the recover action to run instead of the step (after an interruption);
    `previous` is what the action sees of the last attempt (ActionContext.previous)."""

    try_number: int
    adjust: dict[str, Any] = field(default_factory=dict)
    recover: str | None = None
    previous: dict[str, Any] = field(default_factory=dict)


Decision = Busy | HoldSubject | Apply | Later | RunAgain | GiveUp | Run


def crashes_since_progress(attempts: Sequence[Attempt]) -> int:
    """Attempts a crash interrupted since the last sign of progress (an attempt that
    succeeded or reported progress). A step that takes the daemon down with it, and so
    never gets anywhere, must not loop forever; one that moves forward between outside
    kills must not be given up. A clean stop (SIGTERM, a reload) says nothing of the step."""
    count = 0
    for attempt in reversed(attempts):
        if attempt.status is AttemptStatus.SUCCEEDED or attempt.progress:
            break
        if attempt.status is AttemptStatus.INTERRUPTED and not attempt.clean_stop:
            count += 1
    return count


PREVIOUS_FIELDS = ("id", "status", "cwd", "log", "argv", "exit_status")


def next_step(attempts: Sequence[Attempt], st: StateSpec, policy: Policy, now: float) -> Decision:
    """What a subject in state `st` needs next, from its attempts in this entry of the
    state (oldest first)."""
    if not attempts:
        return Run(try_number=1)
    last = attempts[-1]
    status = last.status
    if last.active:
        return Busy()
    if status is AttemptStatus.HELD and not last.applied:
        return HoldSubject(last, last.result.get("reason", "the action asked for a person"))
    if status is AttemptStatus.SUCCEEDED:
        return Apply(last)
    if status is AttemptStatus.WAITING:
        if now < (last.not_before or 0):
            return Later(last.not_before or 0)
        return RunAgain(last)
    # A person released a hold the action asked for: they checked, so the step runs
    # again (not its recover action); holds and recover checks spend no retry budget.
    counted = [a for a in attempts if a.status is AttemptStatus.FAILED and a.step != "recover"]
    if status is AttemptStatus.FAILED:
        result = ActionResult.from_json(last.result)
        if last.step == "recover" and result.retryable:
            pass  # the recover action found no trace of the step: safe to run it
        elif not result.retryable or len(counted) >= policy.max_tries:
            why = result.reason or "failed"
            if result.retryable:
                why = f"gave up after {len(counted)} tries: {why}"
            return GiveUp(why, {"attempt": last.id, **result.evidence})
        if now < (last.not_before or 0):
            return Later(last.not_before or 0)
    interrupted = crashes_since_progress(attempts)
    if interrupted >= policy.max_interruptions:
        return GiveUp(f"interrupted {interrupted} times in a row with no progress", {"attempt": last.id})
    previous = dict(last.result)
    # Which attempt came before (a recover action reads its directory and log).
    previous["attempt"] = {k: v for k, v in last.to_json().items() if k in PREVIOUS_FIELDS}
    return Run(try_number=len(counted) + 1,
               adjust=dict(last.result.get("adjust") or {}) if status is AttemptStatus.FAILED else {},
               recover=st.recover if status is AttemptStatus.INTERRUPTED else None, previous=previous)


# -- a state's deadline -------------------------------------------------------------------


@dataclass(frozen=True)
class Expire:
    """The state's deadline passed: fire its deadline trigger."""

    reason: str


def deadline(state: str, st: StateSpec, entered: float, after: float, now: float, *, looked: bool,
             attempts: Sequence[Attempt]) -> Later | Expire | None:
    """A state's deadline `after` seconds past `entered`: Later (not yet due), Expire, or
    None (past due, but it does not count yet). A state with an action looks at its
    evidence once in this daemon's life (`looked`) before its deadline counts: after a
    long stop or a restore from a backup, the time since `entered` says nothing about
    what happened meanwhile. A success not applied yet wins over a deadline passed meanwhile."""
    if now - entered < after:
        return Later(entered + after)
    found = bool(attempts) and attempts[-1].status is AttemptStatus.SUCCEEDED
    if (looked or not st.action) and not found:
        return Expire(f"in {state} for more than {after:.0f} s")
    return None
