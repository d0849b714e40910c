"""Operator overrides: every one is a journaled, validated change of one subject.

They write the same store the daemon uses, with a compare-and-set, so they work while
the daemon runs; the daemon notices them within a second. `operator` is who makes the change,
as established by the caller (the daemon's control socket from its peer credentials, the CLI
from its real uid: `autoproc.requests`); `on_behalf_of` is only a note journaled beside it.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass, field

from autoproc import actions
from autoproc.config import Config
from autoproc.errors import AutoprocError
from autoproc.machines import StateMachine
from autoproc.store import Conflict, Store, Subject

# A rerun plans from the Butler between reading the subject and writing it; a daemon moving
# the subject on meanwhile (a step finished) means planning again from what is stored now.
RERUN_CONFLICT_TRIES = 3


class OverrideError(AutoprocError):
    """An override the machine or the subject does not allow; the message says why."""


@dataclass
class Plan:
    """What an override does (or, with --dry-run, would do)."""

    subject: Subject
    action: str
    to_state: str | None = None
    trigger: str = ""
    redo: list[str] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)
    note: str = ""
    done: bool = False

    def describe(self) -> str:
        verb = "did" if self.done else "would"
        ref = self.subject.ref
        if self.action in ("hold", "release"):
            text = f"{verb} {self.action} {ref} (in {self.subject.state})"
        else:
            text = f"{verb} move {ref} from {self.subject.state} to {self.to_state} ({self.trigger})"
        if self.redo:
            text += "\n  states to run again, in machine order: " + " -> ".join(self.redo)
        if self.set_aside:
            text += f"\n  {'set aside' if self.done else 'to set aside'} ({len(self.set_aside)}):"
            text += "".join(f"\n    {line}" for line in self.set_aside)
        if self.note:
            text += f"\n  {self.note}"
        return text


def user_name(uid: int) -> str:
    """The account name of `uid` (`uid:N` when it has none)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid:{uid}"


def operator_name(given: str | None = None) -> str:
    """`given`, or the name of the real uid running this process (never $USER: anyone can set that)."""
    name = given or user_name(os.getuid())
    if not name or name == "daemon":
        raise OverrideError("an operator name is required (and it cannot be 'daemon', the engine's own)")
    return name


def note(on_behalf_of: str | None) -> dict:
    """The journal evidence that says on whose behalf an operator acted."""
    return {"on_behalf_of": on_behalf_of} if on_behalf_of else {}


def _need_reason(reason: str | None) -> str:
    if not reason or not reason.strip():
        raise OverrideError("--reason is required: say why, it goes into the journal")
    return reason.strip()


def _machine(machines: dict[str, StateMachine], kind: str) -> StateMachine:
    if kind not in machines:
        raise OverrideError(f"unknown kind {kind!r}; known: {', '.join(sorted(machines)) or 'none'}")
    return machines[kind]


def _move(store: Store, plan: Plan, *, operator: str, reason: str, dry_run: bool,
          evidence: dict | None = None, data: dict | None = None, on_behalf_of: str | None = None) -> Plan:
    assert plan.to_state is not None, "a plan that moves the subject names its state"
    if dry_run:
        return plan
    forget: dict[str, dict] = {key: {} for key in sorted(actions.FORGOTTEN_ON_RESET.get(plan.subject.kind, ()))}
    store.transition(plan.subject, plan.to_state, trigger=plan.trigger, actor=operator, reason=reason,
                     evidence={"override": plan.action, **(evidence or {}), **note(on_behalf_of)},
                     data={**forget, **(data or {})} or None)
    plan.done = True
    return plan


def set_state(store: Store, machines: dict[str, StateMachine], kind: str, key: str, state: str, *,
              reason: str | None, operator: str | None = None, force: bool = False, dry_run: bool = False,
              on_behalf_of: str | None = None) -> Plan:
    machine = _machine(machines, kind)
    reason = _need_reason(reason)
    if state not in machine.spec.states:
        raise OverrideError(f"{kind} has no state {state!r}; states: {', '.join(machine.spec.states)}")
    subject = store.subject(kind, key)
    if subject.state == state:
        raise OverrideError(f"{subject.ref} is already in {state}")
    triggers = machine.reachable(subject.state, state)
    if not triggers and not force:
        raise OverrideError(f"no transition leads from {subject.state} to {state}; "
                            "--force sets it anyway (journaled as forced)")
    plan = Plan(subject, "set", state, triggers[0] if triggers else "force")
    return _move(store, plan, operator=operator_name(operator), reason=reason, dry_run=dry_run,
                 on_behalf_of=on_behalf_of)


def retry(store: Store, machines: dict[str, StateMachine], kind: str, key: str, *, reason: str | None,
          operator: str | None = None, dry_run: bool = False, on_behalf_of: str | None = None) -> Plan:
    """Send a subject back to the state it failed in, with a fresh retry budget."""
    machine = _machine(machines, kind)
    reason = _need_reason(reason)
    subject = store.subject(kind, key)
    entered = [r for r in store.journal(subject.id) if r["to_state"] == subject.state and r["from_state"]
               and r["from_state"] != subject.state]
    if not entered:
        raise OverrideError(f"{subject.ref} has no earlier state to retry")
    back = entered[-1]["from_state"]
    if not machine.state(back).action:
        raise OverrideError(f"{subject.ref} came to {subject.state} from {back}, which runs no action to retry")
    if not (machine.state(subject.state).terminal or machine.state(subject.state).attention):
        raise OverrideError(f"{subject.ref} is in {subject.state}, which is neither failed nor waiting for a person")
    plan = Plan(subject, "retry", back, "retry", note="the retry budget starts again")
    return _move(store, plan, operator=operator_name(operator), reason=reason, dry_run=dry_run,
                 on_behalf_of=on_behalf_of)


def rerun_from(store: Store, machines: dict[str, StateMachine], kind: str, key: str, state: str, *,
               reason: str | None, operator: str | None = None, dry_run: bool = False,
               config: Config | None = None, on_behalf_of: str | None = None) -> Plan:
    """Reset a subject to an earlier state; it and every later state run again.

    What the chain sets aside so that they really run again (a DEEP night's RUNs and
    certifications, a DESGW exposure's verdicts and older grid outputs) comes from the
    kind's rerun hook (`autoproc.actions.rerun_hook`); it is listed by `--dry-run`, journaled
    with the override and handed to the subject's actions in its data.
    """
    machine = _machine(machines, kind)
    reason = _need_reason(reason)
    if state not in machine.spec.states:
        raise OverrideError(f"{kind} has no state {state!r}; states: {', '.join(machine.spec.states)}")
    operator = operator_name(operator)
    tries = 0
    while True:
        subject = store.subject(kind, key)
        if subject.state not in machine.downstream(state):
            raise OverrideError(f"{state} does not come before {subject.state} in the {kind} machine")
        redo = rerun_states(machine, state)
        hook = actions.RERUN_HOOKS.get(kind)
        found = hook(subject, state, redo, config) if hook is not None else actions.RerunPlan()
        kept = ("what is set aside stays in place, out of the way" if found.set_aside
                else "their outputs are re-checked, not deleted")
        plan = Plan(subject, "rerun", state, "rerun", redo=redo, set_aside=list(found.set_aside),
                    note="\n  ".join([*found.notes, f"earlier attempts are kept in the history; {kept}"]))
        try:
            return _move(store, plan, operator=operator, reason=reason, dry_run=dry_run,
                         evidence={"rerun_from": state, "redo": redo, "set_aside": list(found.set_aside),
                                   **found.evidence}, data=found.data, on_behalf_of=on_behalf_of)
        except Conflict:
            tries += 1
            if tries >= RERUN_CONFLICT_TRIES:
                raise


def rerun_states(machine: StateMachine, state: str) -> list[str]:
    """The states that run an action again after a rerun from `state`: `state` and those
    reachable from it that the machine declares after it, in the machine's order."""
    order = list(machine.spec.states)
    reachable = set(machine.downstream(state))
    return [s for s in order[order.index(state):]
            if s in reachable and (s == state or machine.state(s).action)]


def hold(store: Store, machines: dict[str, StateMachine], kind: str, key: str, *, reason: str | None,
         operator: str | None = None, dry_run: bool = False, on_behalf_of: str | None = None) -> Plan:
    _machine(machines, kind)
    reason = _need_reason(reason)
    subject = store.subject(kind, key)
    if subject.held:
        raise OverrideError(f"{subject.ref} is already held: {subject.held}")
    plan = Plan(subject, "hold", note="no new action starts until it is released")
    if not dry_run:
        store.update(subject, held=reason, trigger="hold", actor=operator_name(operator), reason=reason,
                     evidence=note(on_behalf_of))
        plan.done = True
    return plan


def release(store: Store, machines: dict[str, StateMachine], kind: str, key: str, *, reason: str | None,
            operator: str | None = None, dry_run: bool = False, on_behalf_of: str | None = None) -> Plan:
    _machine(machines, kind)
    reason = _need_reason(reason)
    subject = store.subject(kind, key)
    if not subject.held:
        raise OverrideError(f"{subject.ref} is not held")
    plan = Plan(subject, "release", note=f"it was held because: {subject.held}")
    if not dry_run:
        store.update(subject, held=None, trigger="release", actor=operator_name(operator), reason=reason,
                     evidence=note(on_behalf_of))
        plan.done = True
    return plan


def add(store: Store, machines: dict[str, StateMachine], kind: str, key: str, *, reason: str | None,
        data: dict | None = None, operator: str | None = None, on_behalf_of: str | None = None) -> Subject:
    """Create a subject by hand (e.g. an exposure nobody's file announced)."""
    import re

    machine = _machine(machines, kind)
    reason = _need_reason(reason)
    if not re.match(machine.spec.key_pattern, key):
        raise OverrideError(f"{key!r} is not a valid {kind} key (must match {machine.spec.key_pattern})")
    subject, created = store.ensure_subject(kind, key, machine.spec.initial, actor=operator_name(operator),
                                            reason=reason, data=data, evidence=note(on_behalf_of))
    if not created:
        raise OverrideError(f"{subject.ref} already exists (in {subject.state})")
    return subject
