"""The engine in-process, with real watchers on real directories and real children."""

import threading
import time
from pathlib import Path

import pytest

from autoproc.engine import Engine
from autoproc.script import override
from autoproc.store import Store
from conftest import wait_for


@pytest.fixture
def engine_for(write_config, tmp_path):
    engines = []

    def make(clock=time.time, **overrides):
        inbox = tmp_path / "inbox"
        inbox.mkdir(exist_ok=True)
        overrides.setdefault("watch", [{"name": "inbox", "path": str(inbox), "kind": "widget",
                                        "patterns": ["*.w"], "mode": "inotify", "quiet_seconds": 0.2}])
        config, _ = write_config(**overrides)
        engine = Engine(config, clock=clock)
        engine.start()
        thread = threading.Thread(target=engine.run, daemon=True)
        thread.start()
        engines.append((engine, thread))
        return engine, inbox

    yield make
    for engine, thread in engines:
        engine.stop()
        thread.join(10)
        engine.shutdown()
        if id(engine) in _stores:
            _stores.pop(id(engine)).close()


_stores: dict[int, Store] = {}


def db(engine) -> Store:
    """The test's own connection to the engine's database: the engine's connection belongs
    to the engine's thread (as the CLI's is its own process's)."""
    if id(engine) not in _stores:
        _stores[id(engine)] = Store(engine.config.db)
    return _stores[id(engine)]


def state(engine, key, kind="widget"):
    s = db(engine).find_subject(kind, key)
    return s.state if s else None


def drop(inbox: Path, name: str, text: str) -> Path:
    path = inbox / name
    path.write_text(text)
    return path


def ledger(engine) -> list[str]:
    p = Path(engine.config.root) / "ledger.txt"
    return p.read_text().splitlines() if p.exists() else []


class SteppedClock:
    """The engine's clock, moved forward by the test (the real one keeps running under it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> bool:
        self.offset += seconds
        return True


def test_file_to_done_through_the_watcher(engine_for):
    engine, inbox = engine_for()
    drop(inbox, "a-1.w", "ok")
    wait_for(lambda: state(engine, "a") == "done", what="a done")
    assert ledger(engine) == ["build a try=1 adjust={}", "check a", "done a"]
    s = db(engine).subject("widget", "a")
    attempts = db(engine).attempts(s.id)
    assert [a.status for a in attempts] == ["succeeded", "succeeded"]
    build = attempts[0]
    assert build.exit_status == 0 and build.pgid and Path(build.log).exists()
    assert Path(build.cwd).is_dir()
    assert db(engine).files(subject_id=s.id)[0]["status"] == "consumed"


def test_retry_with_adjustment_then_success(engine_for):
    engine, inbox = engine_for()
    drop(inbox, "b-1.w", "flaky")
    wait_for(lambda: state(engine, "b") == "done", what="b done")
    assert "build b try=2 adjust={'memory': 2}" in ledger(engine)


def test_fatal_failure_is_journaled_with_reason(engine_for):
    engine, inbox = engine_for()
    drop(inbox, "c-1.w", "fail")
    wait_for(lambda: state(engine, "c") == "failed", what="c failed")
    last = db(engine).journal(db(engine).subject("widget", "c").id)[-1]
    assert last["trigger"] == "fail" and "the widget file says fail" in last["reason"]


def test_retry_budget_is_finite(engine_for):
    engine, inbox = engine_for(retry={"max_tries": 2, "backoff_seconds": 0.01})
    drop(inbox, "d-1.w", "crash")
    wait_for(lambda: state(engine, "d") == "failed", what="d failed")
    s = db(engine).subject("widget", "d")
    failed = [a for a in db(engine).attempts(s.id) if a.status == "failed"]
    assert len(failed) == 3  # widget.yaml allows 3 tries in `building`
    assert all(a.exit_status == 3 for a in failed)
    assert "gave up after 3 tries: build child exited 3" in db(engine).journal(s.id)[-1]["reason"]


def test_bad_and_duplicate_files(engine_for):
    engine, inbox = engine_for()
    drop(inbox, "e-1.w", "bogus words")
    drop(inbox, "e-2.w", "")
    wait_for(lambda: len(db(engine).files(status="bad")) == 2, what="two bad files")
    reasons = sorted(f["reason"] for f in db(engine).files(status="bad"))
    assert reasons == ["e-1.w: unknown instruction 'bogus'", "e-2.w: empty widget file"]
    drop(inbox, "f-1.w", "ok")
    wait_for(lambda: state(engine, "f") == "done")
    n = engine.watcher.reconcile(force=True)  # the same facts again change nothing
    assert n >= 3
    time.sleep(0.5)
    assert ledger(engine).count("build f try=1 adjust={}") == 1


def test_new_file_reopens_a_done_subject(engine_for):
    engine, inbox = engine_for()
    drop(inbox, "g-1.w", "ok")
    wait_for(lambda: state(engine, "g") == "done")
    drop(inbox, "g-2.w", "ok")
    wait_for(lambda: ledger(engine).count("done g") == 2, what="g done twice")
    assert [r["trigger"] for r in db(engine).journal(db(engine).subject("widget", "g").id)].count("arrived") == 1


def test_operator_hold_release_and_set(engine_for):
    engine, inbox = engine_for()
    drop(inbox, "h-1.w", "sleep 1.5")
    wait_for(lambda: state(engine, "h") == "building")
    machines = engine.machines
    override.hold(db(engine), machines, "widget", "h", reason="look first", operator="alice")
    h = db(engine).subject("widget", "h").id
    wait_for(lambda: any(a.status == "succeeded" for a in db(engine).attempts(h)), what="h's build finished")
    assert state(engine, "h") == "building"  # its outcome waits for the release
    override.release(db(engine), machines, "widget", "h", reason="fine", operator="alice")
    wait_for(lambda: state(engine, "h") == "done", what="h done after release")
    plan = override.rerun_from(db(engine), machines, "widget", "h", "building", reason="redo", operator="bob")
    assert plan.redo == ["building", "checking"]
    wait_for(lambda: ledger(engine).count("done h") == 2, what="h rerun")
    actors = [r["actor"] for r in db(engine).journal(db(engine).subject("widget", "h").id)]
    assert actors.count("alice") == 2 and actors.count("bob") == 1


def test_operator_move_kills_the_running_step(engine_for):
    engine, inbox = engine_for()
    drop(inbox, "k-1.w", "sleep 30")
    wait_for(lambda: state(engine, "k") == "building")
    s = db(engine).subject("widget", "k")
    attempt = wait_for(lambda: [a for a in db(engine).attempts(s.id) if a.pgid], what="child started")[0]
    t0 = time.monotonic()
    override.set_state(db(engine), engine.machines, "widget", "k", "failed", reason="wrong data", operator="carol")
    wait_for(lambda: db(engine).attempt(attempt.id).status == "superseded", timeout=10)
    assert time.monotonic() - t0 < 5
    import os
    with pytest.raises(ProcessLookupError):
        os.killpg(attempt.pgid, 0)
    assert state(engine, "k") == "failed"


def test_waiting_past_the_deadline_stalls(engine_for):
    clock = SteppedClock()
    engine, inbox = engine_for(deadlines={"widget.checking": 3600.0}, clock=clock)
    # `checking` waits for an output that never comes (the widget was never built).
    s, _ = db(engine).ensure_subject("widget", "m", "checking", actor="test")
    wait_for(lambda: db(engine).attempts(s.id), what="m's first look")
    clock.advance(3600.0)
    wait_for(lambda: state(engine, "m") == "stalled", what="m stalled")
    polls = db(engine).attempts(s.id)
    assert len(polls) == 1 and polls[0].status == "waiting"  # one attempt row, polled in place
    last = db(engine).journal(s.id)[-1]
    assert last["trigger"] == "stall" and "more than 3600 s" in last["reason"]


def test_gadget_is_recovered_not_resubmitted(engine_for, tmp_path):
    engine, _ = engine_for(watch=[])
    root = Path(engine.config.root)
    s, _ = db(engine).ensure_subject("gadget", "x", "submitting", actor="test")
    # Simulate a crash after the external submission happened but before its outcome was stored.
    (root / "submitted").mkdir(parents=True, exist_ok=True)
    (root / "submitted" / "x").write_text("submitted\n")
    attempt = db(engine).add_attempt(s, "submitting", try_number=1, status="interrupted")
    engine.events.put(lambda e: e.evaluate(s.id))
    wait_for(lambda: state(engine, "x", "gadget") == "done")
    assert (root / "submitted" / "x").read_text() == "submitted\n"  # not submitted a second time
    attempts = db(engine).attempts(s.id)
    assert attempts[0].id == attempt and attempts[-1].step == "recover"


def test_only_crashes_since_the_last_progress_count(engine_for):
    engine, _ = engine_for(watch=[], max_interruptions=3)

    def crashed(key: str, *results: dict) -> None:
        s, _ = db(engine).ensure_subject("widget", key, "building", actor="test")
        for result in results:
            attempt = db(engine).add_attempt(s, "building", try_number=1, status="interrupted")
            db(engine).update_attempt(attempt, result=result)
        engine.events.put(lambda e: e.evaluate(s.id))

    crash, stop, progress = {"reason": "the daemon stopped"}, {"clean_stop": True}, {"progress": ["1 quantum"]}
    # Three crashes in a row, a clean stop among them: given up.
    crashed("stuck", crash, stop, crash, crash)
    # Three crashes, but the second moved forward: one crash since, so the build runs.
    crashed("moving", crash, progress, crash)
    wait_for(lambda: state(engine, "stuck") == "failed" and state(engine, "moving") == "done",
             what="stuck failed, moving done")
    assert db(engine).journal(db(engine).subject("widget", "stuck").id)[-1]["reason"] == (
        "interrupted 3 times in a row with no progress")
    assert "build moving try=1 adjust={}" in ledger(engine)
    assert "build stuck try=1 adjust={}" not in ledger(engine)


def test_hold_from_recover_then_release_runs_the_step(engine_for):
    engine, _ = engine_for(watch=[])
    root = Path(engine.config.root)
    s, _ = db(engine).ensure_subject("gadget", "y", "submitting", actor="test", data={"unsafe_to_resubmit": True})
    db(engine).add_attempt(s, "submitting", try_number=1, status="interrupted")  # crashed, no evidence left
    engine.events.put(lambda e: e.evaluate(s.id))
    wait_for(lambda: db(engine).subject("gadget", "y").held, what="held for a person")
    assert "not submitting again" in db(engine).subject("gadget", "y").held
    assert not (root / "submitted" / "y").exists()
    time.sleep(0.5)
    assert db(engine).subject("gadget", "y").held  # stays held: no loop, no submission
    override.release(db(engine), engine.machines, "gadget", "y", reason="checked the grid: nothing there",
                     operator="erin")
    wait_for(lambda: state(engine, "y", "gadget") == "done", what="submitted after release")
    assert (root / "submitted" / "y").read_text() == "submitted\n"  # exactly once


def test_operator_transitions_run_the_machines_callbacks(engine_for):
    engine, _ = engine_for(watch=[])
    db(engine).ensure_subject("widget", "n", "checking", actor="test")  # waits: never built
    wait_for(lambda: db(engine).attempts(db(engine).subject("widget", "n").id), what="polling")
    override.set_state(db(engine), engine.machines, "widget", "n", "done", reason="checked by eye", operator="fay")
    wait_for(lambda: "done n" in ledger(engine), what="the `checked` transition's callback")


def test_a_poke_wakes_a_polling_action(engine_for):
    engine, _ = engine_for(watch=[], poll_seconds=3600)  # left alone, it would look again in an hour
    s, _ = db(engine).ensure_subject("widget", "p", "checking", actor="test")
    wait_for(lambda: [a for a in db(engine).attempts(s.id) if a.status == "waiting"], what="polling")
    out = Path(engine.config.root) / "built" / "p.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("made by hand")
    engine.poke("widget", "p")
    wait_for(lambda: state(engine, "p") == "done", timeout=5, what="done right after the poke")


def test_reaper_gives_up_on_an_action_hung_in_itself(engine_for):
    clock = SteppedClock()
    engine, _ = engine_for(watch=[], clock=clock)
    s, _ = db(engine).ensure_subject("sloth", "z", "thinking", actor="test", data={"seconds": 600})
    # Each look moves the engine's clock past the timeout and its grace (decision.hung): the
    # reaper gives up on the running try, which is retried once (sloth.yaml), then fails.
    wait_for(lambda: clock.advance(100) and state(engine, "z", "sloth") == "failed", what="given up after 2 hung tries")
    attempts = db(engine).attempts(s.id)
    assert [a.status for a in attempts] == ["failed", "failed"]
    assert all("hung" in a.result["reason"] for a in attempts)
    assert "gave up after 2 tries" in db(engine).journal(s.id)[-1]["reason"]


def test_rerun_plans_again_when_the_daemon_moves_the_subject_meanwhile(tmp_path, monkeypatch):
    """The kind's rerun hook is consulted (its lines listed, its data stored, its evidence
    journaled); a subject that changed while the hook looked (a step finished) is planned again."""
    from autoproc import actions
    from autoproc.machines import load_machines
    from conftest import MACHINES

    machines = load_machines(MACHINES, ["widget"])
    store = Store(tmp_path / "db.sqlite")
    subject, _ = store.ensure_subject("widget", "r", "new", actor="test")
    subject = store.transition(subject, "checking", trigger="force", actor="test")
    seen = []

    def hook(subject, state, redo, config):
        seen.append((subject.state, subject.version, list(redo)))
        if len(seen) == 1:  # the daemon finishes the check while we look
            store.transition(store.subject("widget", "r"), "done", trigger="checked", actor="daemon")
        return actions.RerunPlan(set_aside=[f"output of v{subject.version}"], data={"aside": subject.version},
                                 evidence={"looked_at": subject.state}, notes=["a note"])

    monkeypatch.setitem(actions.RERUN_HOOKS, "widget", hook)
    dry = override.rerun_from(store, machines, "widget", "r", "building", reason="redo", operator="bob",
                              dry_run=True)
    assert "to set aside (1):\n    output of v" in dry.describe() and "  a note" in dry.describe()
    assert store.subject("widget", "r").state == "done" and len(seen) == 1
    seen.clear()
    store.transition(store.subject("widget", "r"), "checking", trigger="force", actor="test")
    plan = override.rerun_from(store, machines, "widget", "r", "building", reason="redo", operator="bob")
    assert [s for s, _, _ in seen] == ["checking", "done"] and seen[0][2] == ["building", "checking"]
    after = store.subject("widget", "r")
    assert plan.done and after.state == "building" and after.data["aside"] == seen[1][1]
    row = store.journal(after.id)[-1]
    assert (row["trigger"], row["actor"], row["from_state"]) == ("rerun", "bob", "done")
    assert row["evidence"]["looked_at"] == "done" and row["evidence"]["set_aside"] == [f"output of v{seen[1][1]}"]
    store.close()
