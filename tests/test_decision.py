"""The retry policy (autoproc.decision), branch by branch, without an engine: attempts are
built as the store returns them, the clock is a number."""

import json
import pickle

import pytest

from autoproc import actions, decision
from autoproc.actions import ActionResult, ResultKind
from autoproc.config import Config
from autoproc.decision import Apply, Busy, Expire, GiveUp, HoldSubject, Later, Policy, Run, RunAgain
from autoproc.machines import StateSpec
from autoproc.store import Attempt, AttemptStatus

NOW = 1_000_000.0
POLICY = Policy(max_tries=3, backoff_seconds=10.0, backoff_factor=2.0, max_backoff_seconds=60.0,
                max_interruptions=2, poll_seconds=30.0)
STATE = StateSpec(action="build", recover="find_build")

S = AttemptStatus
RETRY = {"kind": "retry", "reason": "out of memory", "evidence": {"rss": 9}, "adjust": {"request_memory": 4096}}
FATAL = {"kind": "fail", "reason": "bad input", "evidence": {"line": 3}}
CRASH = {"reason": "the daemon stopped while this ran"}
CLEAN = {"reason": "daemon stopped before the action returned", "clean_stop": True}


def att(status: AttemptStatus, result: dict | None = None, *, id: int = 1, step: str = "", try_number: int = 1,
        not_before: float | None = None, applied: bool = False) -> Attempt:
    return Attempt(id=id, subject_id=7, stage="building", step=step, try_number=try_number, entry=5, status=status,
                   cwd=f"/work/{id}", log=f"/work/{id}/child.log", result=result or {}, applied=applied,
                   not_before=not_before)


def history(*specs) -> list[Attempt]:
    """Attempts numbered in order: each spec is (status, result) or (status, result, extra fields)."""
    return [att(s[0], s[1], id=i + 1, **(s[2] if len(s) > 2 else {})) for i, s in enumerate(specs)]


NEXT_STEP = [
    # (what, attempts so far, what the decision must be)
    ("first entry runs the action", [], Run(try_number=1)),
    ("queued: busy", history((S.QUEUED, {})), Busy()),
    ("running: busy", history((S.RUNNING, {})), Busy()),
    ("succeeded: apply its outcome", history((S.SUCCEEDED, {"kind": "outcome", "trigger": "built"})), "apply"),
    ("asked for a person: hold", history((S.HELD, {"kind": "hold", "reason": "unknown job"})), "hold"),
    ("hold released: the step runs again", history((S.HELD, {"kind": "hold", "reason": "x"}, {"applied": True})),
     "run 1 no-recover"),
    ("polling, not due: later", history((S.WAITING, {"kind": "outcome"}, {"not_before": NOW + 5})), Later(NOW + 5)),
    ("polling, due: in the same attempt", history((S.WAITING, {"kind": "outcome"}, {"not_before": NOW - 1})),
     "run again"),
    ("waiting for space, due", history((S.WAITING, {"kind": "wait", "problem": "no_space"}, {"not_before": NOW})),
     "run again"),
    ("retry in backoff: later", history((S.FAILED, RETRY, {"not_before": NOW + 20})), Later(NOW + 20)),
    ("retry, backoff over: try 2 with more memory", history((S.FAILED, RETRY, {"not_before": NOW - 1})),
     "run 2 adjust"),
    ("budget left after two", history((S.FAILED, RETRY), (S.FAILED, RETRY)), "run 3 adjust"),
    ("budget spent", history((S.FAILED, RETRY), (S.FAILED, RETRY), (S.FAILED, RETRY)),
     GiveUp("gave up after 3 tries: out of memory", {"attempt": 3, "rss": 9})),
    ("fatal on the first try", history((S.FAILED, FATAL)), GiveUp("bad input", {"attempt": 1, "line": 3})),
    ("a fatal failure without a reason", history((S.FAILED, {"kind": "fail"})), GiveUp("failed", {"attempt": 1})),
    ("a refused outcome is fatal", history((S.FAILED, {"kind": "fail", "reason": "'x' was refused"})),
     GiveUp("'x' was refused", {"attempt": 1})),
    ("executor lost: a retry", history((S.FAILED, {"kind": "retry", "reason": "executor: WorkerLost",
                                                   "executor_lost": True})), "run 2"),
    ("recover found nothing, in backoff: later",
     history((S.INTERRUPTED, CRASH), (S.FAILED, {"kind": "retry", "reason": "no trace"},
                                      {"step": "recover", "not_before": NOW + 9})), Later(NOW + 9)),
    ("recover found nothing: the step, no budget spent",
     history((S.FAILED, RETRY), (S.INTERRUPTED, CRASH),
             (S.FAILED, {"kind": "retry", "reason": "no trace"}, {"step": "recover", "not_before": NOW - 1})),
     "run 2 no-recover"),
    ("recover found nothing after the budget was spent: the step still runs",
     history((S.FAILED, RETRY), (S.FAILED, RETRY), (S.FAILED, RETRY), (S.INTERRUPTED, CRASH),
             (S.FAILED, {"kind": "retry", "reason": "no trace"}, {"step": "recover"})), "run 4 no-recover"),
    ("recover gave a fatal verdict", history((S.INTERRUPTED, CRASH), (S.FAILED, FATAL, {"step": "recover"})),
     GiveUp("bad input", {"attempt": 2, "line": 3})),
    ("a crash: its recover action runs", history((S.INTERRUPTED, CRASH)), "run 1 recover"),
    ("a clean stop: recover too, but not counted",
     history((S.INTERRUPTED, CLEAN), (S.INTERRUPTED, CLEAN), (S.INTERRUPTED, CLEAN)), "run 1 recover"),
    ("max_interruptions crashes in a row", history((S.INTERRUPTED, CRASH), (S.INTERRUPTED, CRASH)),
     GiveUp("interrupted 2 times in a row with no progress", {"attempt": 2})),
    ("progress between crashes resets the count",
     history((S.INTERRUPTED, CRASH), (S.INTERRUPTED, {**CRASH, "progress": ["3 of 9 quanta"]}),
             (S.INTERRUPTED, CRASH)), "run 1 recover"),
    ("a success between crashes resets the count",
     history((S.INTERRUPTED, CRASH), (S.SUCCEEDED, {"kind": "outcome", "trigger": None}, {"applied": True}),
             (S.INTERRUPTED, CRASH)), "run 1 recover"),
    ("a crash after a retryable failure keeps the budget count", history((S.FAILED, RETRY), (S.INTERRUPTED, CRASH)),
     "run 2 recover"),
    ("superseded (an operator moved on, then back)", history((S.SUPERSEDED, {"reason": "moved"})), "run 1 no-recover"),
]


@pytest.mark.parametrize(("what", "attempts", "expected"), NEXT_STEP, ids=[c[0] for c in NEXT_STEP])
def test_next_step(what, attempts, expected):
    got = decision.next_step(attempts, STATE, POLICY, NOW)
    if not isinstance(expected, str):
        assert got == expected
        return
    last = attempts[-1] if attempts else None
    if expected == "apply":
        assert got == Apply(last)
    elif expected == "hold":
        assert got == HoldSubject(last, last.result["reason"])
    elif expected == "run again":
        assert got == RunAgain(last)
    else:
        _, number, *flags = expected.split()
        assert isinstance(got, Run), got
        assert got.try_number == int(number)
        assert got.adjust == (RETRY["adjust"] if "adjust" in flags else {})
        assert got.recover == ("find_build" if "recover" in flags else None)
        # What the action sees of the attempt before it (a recover action reads its directory).
        assert got.previous["attempt"] == {"id": last.id, "status": last.status, "cwd": last.cwd, "log": last.log,
                                           "argv": None, "exit_status": None}
        assert got.previous["reason"] == last.result.get("reason")


def test_a_state_without_a_recover_action_runs_the_step_after_a_crash():
    got = decision.next_step(history((S.INTERRUPTED, CRASH)), StateSpec(action="build"), POLICY, NOW)
    assert isinstance(got, Run) and got.recover is None and got.try_number == 1


@pytest.mark.parametrize(("try_number", "wait"), [(1, 10.0), (2, 20.0), (3, 40.0), (4, 60.0), (9, 60.0), (0, 10.0)])
def test_backoff_grows_and_is_capped(try_number, wait):
    assert POLICY.backoff(try_number) == wait


def test_policy_the_state_overrides_the_config():
    config = Config(root="/tmp/x", retry={"max_tries": 5, "backoff_seconds": 7, "backoff_factor": 3,
                                          "max_backoff_seconds": 100}, max_interruptions=4, poll_seconds=2)
    assert Policy.of(config, StateSpec(action="a")) == Policy(5, 7.0, 3.0, 100.0, 4, 2.0)
    own = Policy.of(config, StateSpec(action="a", retry={"max_tries": 1, "backoff_seconds": 0}))
    assert (own.max_tries, own.backoff_seconds, own.backoff(3)) == (1, 0.0, 0.0)
    spent = history((S.FAILED, RETRY))
    assert decision.next_step(spent, STATE, own, NOW) == GiveUp("gave up after 1 tries: out of memory",
                                                                 {"attempt": 1, "rss": 9})


def outcome(trigger=None, retry_after=None):
    return ActionResult(ResultKind.OUTCOME, trigger=trigger, retry_after=retry_after)


ENDED = [
    # (what, result, the attempt's stored result before, stopping, expected)
    ("found: succeeded", outcome("built"), {}, False, decision.Ended(S.SUCCEEDED)),
    ("not yet: poll", outcome(), {}, False, decision.Ended(S.WAITING, not_before=NOW + 30)),
    ("not yet, says when", outcome(retry_after=5), {}, False, decision.Ended(S.WAITING, not_before=NOW + 5)),
    ("wait", ActionResult(ResultKind.WAIT, "inputs missing", retry_after=12), {}, False,
     decision.Ended(S.WAITING, not_before=NOW + 12)),
    ("wait, no time given", ActionResult(ResultKind.WAIT, "x"), {}, False, decision.Ended(S.WAITING, NOW + 30)),
    ("no space: a problem", ActionResult(ResultKind.WAIT, "no space", retry_after=60, problem="no_space"), {}, False,
     decision.Ended(S.WAITING, not_before=NOW + 60, problem="no_space")),
    ("no space again: said once", ActionResult(ResultKind.WAIT, "no space", retry_after=60, problem="no_space"),
     {"kind": "wait", "problem": "no_space"}, False, decision.Ended(S.WAITING, not_before=NOW + 60)),
    ("another cause: said", ActionResult(ResultKind.WAIT, "registry", retry_after=60, problem="registry"),
     {"kind": "wait", "problem": "no_space"}, False,
     decision.Ended(S.WAITING, not_before=NOW + 60, problem="registry")),
    ("hold", ActionResult(ResultKind.HOLD, "ask"), {}, False, decision.Ended(S.HELD)),
    ("retry: backoff of try 2", ActionResult(ResultKind.RETRY, "oom"), {}, False,
     decision.Ended(S.FAILED, not_before=NOW + 20)),
    ("fail", ActionResult(ResultKind.FAIL, "bad"), {}, False, decision.Ended(S.FAILED, not_before=NOW + 20)),
    ("executor lost", decision.executor_lost(RuntimeError("gone")), {}, False,
     decision.Ended(S.FAILED, not_before=NOW + 20)),
    ("failure while stopping: interrupted", ActionResult(ResultKind.FAIL, "killed"), {}, True,
     decision.Ended(S.INTERRUPTED, clean_stop=True)),
    ("wait while stopping: interrupted", ActionResult(ResultKind.WAIT, "x"), {}, True,
     decision.Ended(S.INTERRUPTED, clean_stop=True)),
    ("success while stopping counts", outcome("built"), {}, True, decision.Ended(S.SUCCEEDED)),
]


@pytest.mark.parametrize(("what", "result", "before", "stopping", "expected"), ENDED, ids=[c[0] for c in ENDED])
def test_ended(what, result, before, stopping, expected):
    attempt = att(S.RUNNING, before, try_number=2)
    assert decision.ended(result, attempt, POLICY, NOW, stopping=stopping) == expected


@pytest.mark.parametrize(("timeout", "running_for", "is_hung"), [
    (None, 1e9, False),     # no timeout: never hung
    (10.0, 19.9, False),    # the grace is as long as the timeout...
    (10.0, 20.0, True),
    (100.0, 129.0, False),  # ...at most HUNG_GRACE_SECONDS
    (100.0, 130.0, True),
])
def test_hung(timeout, running_for, is_hung):
    attempt = Attempt(id=1, subject_id=1, stage="s", step="", try_number=1, entry=1, status=S.RUNNING,
                      started=NOW - running_for)
    got = decision.hung(attempt, timeout, NOW)
    assert (got is not None) == is_hung
    if got is not None:
        assert got.kind is ResultKind.RETRY and got.reason == f"hung: still running {timeout:.0f} s past its timeout"


@pytest.mark.parametrize(("what", "st", "entered", "looked", "attempts", "expected"), [
    ("not due", STATE, NOW - 5, True, [], Later(NOW + 5)),
    ("due, evidence looked at", STATE, NOW - 10, True, [], Expire("in building for more than 10 s")),
    ("due, evidence not looked at since start", STATE, NOW - 10, False, [], None),
    ("due, no action to look", StateSpec(), NOW - 99, False, [], Expire("in building for more than 10 s")),
    ("due, but what the action found wins", STATE, NOW - 10, True,
     history((S.SUCCEEDED, {"kind": "outcome", "trigger": "built"})), None),
    ("due, the last poll found nothing", STATE, NOW - 10, True, history((S.WAITING, {"kind": "outcome"})),
     Expire("in building for more than 10 s")),
])
def test_deadline(what, st, entered, looked, attempts, expected):
    assert decision.deadline("building", st, entered, 10.0, NOW, looked=looked, attempts=attempts) == expected


@pytest.mark.parametrize(("err", "kind", "field", "value"), [
    (actions.Retry("oom", adjust={"mem": 2}), ResultKind.RETRY, "adjust", {"mem": 2}),
    (actions.Wait("later", retry_after=5, problem="db"), ResultKind.WAIT, "problem", "db"),
    (actions.Hold("ask", evidence={"a": 1}), ResultKind.HOLD, "evidence", {"a": 1}),
    (actions.Fail("no"), ResultKind.FAIL, "reason", "no"),
])
def test_action_results_cross_processes_and_the_store(err, kind, field, value):
    result = ActionResult.of_error(err)
    assert result.kind is kind and getattr(result, field) == value
    assert pickle.loads(pickle.dumps(result)) == result  # to an HTEX/Slurm worker and back
    stored = json.loads(json.dumps(result.to_json()))
    assert stored["kind"] == kind.value
    # What the engine notes beside it (progress, ...) does not get in the way of reading it back.
    assert ActionResult.from_json({**stored, "progress": ["x"], "clean_stop": True}) == result


def test_an_outcome_round_trips():
    result = ActionResult.of_outcome(actions.Outcome("built", evidence={"n": 1}, data={"d": 2}, consume=["/a"],
                                                     bad={"/b": "empty"}, reason="ok"))
    assert ActionResult.from_json(json.loads(json.dumps(result.to_json()))) == result
    assert not result.retryable and decision.executor_lost(OSError("x")).retryable
