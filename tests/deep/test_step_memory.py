"""A night remembers the DEEP steps it found done (docs/DEEP.md#step-memory): `Steps.advance`
checks only the steps not remembered, and the memory is forgotten whenever a step's inputs
may have changed. Real Butler, real `pipetask run`, the real state store; the checks are
counted by wrapping the real `runner.plan_step` (the check, and the graph a step runs)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

pytest.importorskip("lsst.daf.butler")

from steps_support import BIAS_PARENT, NIGHT, fail_config, run_bias_step  # noqa: E402

from autoproc.deep import collections as C  # noqa: E402
from autoproc.deep import runner as R  # noqa: E402

pytestmark = pytest.mark.middleware

ROOT = Path(__file__).resolve().parents[2]
KEY = str(NIGHT)


class World:
    """The night's subject in a real store, a config on the bias repo, and the checks counted."""

    def __init__(self, tmp_path: Path, repo: str, monkeypatch, steps: list[str] | None = None):
        from autoproc.machines import load_machines
        from autoproc.store import Store

        self.tmp, self.repo = tmp_path, repo
        self.config = self.configure(steps or ["step1", "step2"])
        self.machines = load_machines(self.config.machines_dir, self.config.kinds)
        self.store = Store(self.config.db)
        self.subject, _ = self.store.ensure_subject("night", KEY, "bias", actor="test", reason="test")
        self.checked: list[str] = []
        real = R.plan_step

        def counted(butler, pipeline, step, chain, attempt_root, **kw):
            self.checked.append(step)
            return real(butler, pipeline, step, chain, attempt_root, **kw)

        monkeypatch.setattr(R, "plan_step", counted)
        self.attempt = 0

    def configure(self, steps: list[str]):
        from autoproc.config import parse_config
        from autoproc.sim.deep.scenario import deep_settings

        self.config = parse_config({
            "root": str(self.tmp / "root"), "machines_dir": str(ROOT / "statemachines"), "kinds": ["night", "template"],
            "deep": {**deep_settings(), "repo": self.repo, "mode": "pipetask", "warm": False, "where": "instrument='DECam'",
                     "steps": {"bias": steps}}})
        return self.config

    def ctx(self, **kw):
        from autoproc.actions import ActionContext

        self.attempt += 1
        self.subject = self.store.subject("night", KEY)
        return ActionContext(subject=self.subject, stage="bias", attempt_id=self.attempt, try_number=1,
                             workdir=self.tmp / f"attempt{self.attempt}", config=self.config, **kw)

    def steps(self, butler):
        from autoproc.deep.stages import Steps, names

        return Steps(self.ctx(), butler, "bias", BIAS_PARENT, names(self.config.deep).fixed_inputs("bias", KEY))

    def advance(self, butler):
        """One action's advance, its Outcome applied as the engine does (data merged, state kept):
        (the Outcome or None, the steps checked, the Steps)."""
        self.checked.clear()
        steps = self.steps(butler)
        (self.tmp / f"attempt{self.attempt}").mkdir()
        out = steps.advance()
        if out is not None:
            self.apply(out.trigger, out.data)
        return out, list(self.checked), steps

    def apply(self, trigger: str, data: dict) -> None:
        self.subject = self.store.transition(self.store.subject("night", KEY), "bias", trigger=trigger,
                                             actor="daemon", data=data)

    def memory(self) -> dict:
        return self.store.subject("night", KEY).data.get("steps_done") or {}


def test_done_steps_are_not_checked_again_and_a_changed_step_list_or_a_late_raw_forgets(
        bias_repo, tmp_path, monkeypatch):
    from autoproc.deep.stages import _step_summary, ingest_night

    b, repo, _ = bias_repo
    w = World(tmp_path, repo, monkeypatch)
    out, checked, _ = w.advance(b)
    assert out.trigger == "next_step" and out.evidence["status"] == "succeeded" and checked == ["step1"]
    assert out.evidence["step_checks"] == {"checked": 1, "remembered": 0}
    out, checked, _ = w.advance(b)  # step1 just succeeded: not checked again
    assert out.evidence["status"] == "succeeded" and checked == ["step2"]
    assert out.evidence["step_checks"] == {"checked": 1, "remembered": 1}
    out, checked, remembered = w.advance(b)  # every step remembered: no check, no graph build
    assert out is None and checked == []
    # ...and the done outcome's evidence is what checking every step says
    fresh = w.steps(b)
    fresh.memory = {}
    assert fresh.advance() is None and w.checked == ["step1", "step2"]
    assert {k: _step_summary(remembered)[k] for k in ("failed", "succeeded")} == \
        {k: _step_summary(fresh)[k] for k in ("failed", "succeeded")} == \
        {"failed": {"step1": 0, "step2": 0}, "succeeded": {"step1": {"cpBiasIsr": 6}, "step2": {"cpBiasCombine": 2}}}
    assert _step_summary(remembered)["step_checks"] == {"checked": 0, "remembered": 2}

    # A step list changed in the configuration: the memory was found for another one.
    w.configure(["step1"])
    out, checked, _ = w.advance(b)
    assert out is None and checked == ["step1"]
    w.configure(["step1", "step2"])
    assert w.advance(b)[1] == []  # the memory kept is the one found for this list

    # New raws for the night: the ingest forgets every chain's steps.
    ing = ingest_night(w.ctx(files=[]))
    w.store.transition(w.store.subject("night", KEY), "ingesting", trigger="reingest", actor="daemon")
    subject = w.store.transition(w.store.subject("night", KEY), "bias", trigger=ing.trigger, actor="daemon",
                                 data=ing.data)
    assert subject.data["steps_done"] == {}
    assert w.advance(b)[1] == ["step1", "step2"]


def test_an_operators_move_forgets_and_a_released_failure_runs_again(bias_repo, tmp_path, monkeypatch):
    from autoproc.script import override

    b, repo, pipe = bias_repo
    w = World(tmp_path, repo, monkeypatch)
    w.advance(b)
    w.advance(b)
    assert w.advance(b)[1] == [] and set(w.memory()[BIAS_PARENT]["done"]) == {"step1", "step2"}

    # rerun-from (the override; its first action sets the RUNs aside): checked from the first step.
    w.store.transition(w.store.subject("night", KEY), "flat", trigger="bias_done", actor="daemon")
    override.rerun_from(w.store, w.machines, "night", KEY, "bias", reason="bad zeros", operator="ann",
                        config=w.config)
    assert w.memory() == {}
    from autoproc.deep import rerun

    carried = rerun.carry_out(b, w.store.subject("night", KEY))
    w.apply(carried.trigger, carried.data)
    out, checked, _ = w.advance(b)
    assert checked == ["step1"] and out.evidence["status"] == "succeeded"  # into a new RUN
    w.advance(b)
    assert w.advance(b)[1] == []

    # An operator's set (or retry) moving the night: forgotten as well.
    w.store.transition(w.store.subject("night", KEY), "flat", trigger="bias_done", actor="daemon")
    override.set_state(w.store, w.machines, "night", KEY, "bias", reason="look again", operator="ann", force=True)
    assert w.memory() == {} and w.advance(b)[1] == ["step1", "step2"]

    # A step done with failures is checked every time (a release gives it work back): after the
    # release the released quantum runs, and the steps after it are not taken from memory.
    C.set_aside_runs(b, BIAS_PARENT, "test: start over", dt.datetime.now(dt.UTC))
    bad = b.query_dimension_records("exposure", where="exposure.observation_type='zero'", explain=False)
    exp = sorted(r.id for r in bad)[1]
    failing = run_bias_step(b, repo, pipe, tmp_path, config_files={
        "cpBiasIsr": [str(fail_config(tmp_path, f"detector = 3 AND exposure = {exp}"))]})
    assert failing.failed == {"cpBiasIsr": 1}
    w.apply("next_step", {"steps_done": {}})
    out, checked, _ = w.advance(b)  # step1 done with a failure; step2 runs on the rest
    assert checked == ["step1", "step2"] and out.evidence["status"] == "succeeded"
    out, checked, steps = w.advance(b)
    assert out is None and checked == ["step1", "step2"] and steps.failed == {"step1": 1, "step2": 0}
    assert R.release_failures(b, BIAS_PARENT, pipeline=pipe, step="step1") == 1
    out, checked, _ = w.advance(b)
    assert checked == ["step1"] and out.evidence["status"] == "succeeded" and out.evidence["succeeded"] == {
        "cpBiasIsr": 1}
    out, checked, steps = w.advance(b)
    assert checked == ["step2"] and out is None and steps.failed == {"step1": 0, "step2": 0}

    # A restore from a backup: the work may have moved on since it, so the memory is emptied.
    from autoproc.backup import restore, take_backup

    made = take_backup(w.config, why="test")
    assert list(w.memory()[BIAS_PARENT]["done"]) == ["step1"]
    restore(w.config, made.path)
    from autoproc.store import Store

    w.store.close()
    w.store = Store(w.config.db)  # the restored file
    assert w.memory() == {} and w.advance(b)[1] == ["step1", "step2"]


def test_a_memory_that_turns_out_wrong_is_forgotten_before_waiting(bias_repo, tmp_path, monkeypatch):
    """step1 remembered done, but its outputs left the chain behind autoproc's back: step2's
    inputs are missing, so every step is checked again and step1 runs again."""
    b, repo, _ = bias_repo
    w = World(tmp_path, repo, monkeypatch)
    w.advance(b)
    assert list(w.memory()[BIAS_PARENT]["done"]) == ["step1"]
    C.set_aside_runs(b, BIAS_PARENT, "test: behind autoproc's back", dt.datetime.now(dt.UTC))
    out, checked, steps = w.advance(b)
    assert checked == ["step2", "step1"] and out.evidence["status"] == "succeeded"
    assert out.evidence["step_checks"] == {"checked": 2, "remembered": 0}
    assert list(w.memory()[BIAS_PARENT]["done"]) == ["step1"]
