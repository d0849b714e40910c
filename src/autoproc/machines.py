"""State machines as data: `statemachines/<kind>.yaml`, loaded with `transitions`.

The state lives in SQLite; a machine is rebuilt around a subject's stored state each time
an event touches it. Everything a YAML file names (states, actions, conditions,
callbacks, triggers) is checked when it is loaded, so a typo is an error at start, not a
surprise at 3 a.m.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from transitions import Machine, MachineError
from transitions.extensions.diagrams import GraphMachine

from autoproc import actions
from autoproc.config import Config
from autoproc.errors import AutoprocError
from autoproc.store import Subject

NAME = r"^[a-z][a-z0-9_]*$"


class MachineSpecError(AutoprocError):
    """A machine file that cannot be used; the message names the file and the problem."""


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrySpec(Spec):
    max_tries: int | None = Field(default=None, ge=1)
    backoff_seconds: float | None = Field(default=None, ge=0)


class DeadlineSpec(Spec):
    after: float = Field(gt=0, description="Seconds in the state before `trigger` fires (config `deadlines` "
                         "can override it by `kind.state`).")
    trigger: str


class StateSpec(Spec):
    description: str = ""
    terminal: bool = False
    action: str | None = Field(default=None, description="Action run on entering the state.")
    step: str = Field(default="", description="Free label stored with the attempts (e.g. a pipeline step).")
    recover: str | None = Field(
        default=None, description="For actions with external side effects: after a crash, this action looks for "
        "evidence of the outcome instead of running the step again; None from it holds the subject.")
    limit: str | None = Field(default=None, description="Concurrency group (config `limits`) this action counts in.")
    timeout: float | None = Field(default=None, gt=0, description="Seconds an attempt may run before it is killed.")
    retry: RetrySpec = Field(default_factory=RetrySpec)
    auto: list[str] = Field(default_factory=list, description="Triggers tried whenever the subject is looked at.")
    deadline: DeadlineSpec | None = None
    attention: bool = Field(default=False, description="Shown as needing a person (status, report, hooks).")


class TransitionSpec(Spec):
    trigger: str = Field(pattern=NAME)
    source: str | list[str]
    dest: str
    conditions: list[str] = Field(default_factory=list)
    unless: list[str] = Field(default_factory=list)
    after: list[str] = Field(default_factory=list, description="Callbacks run once the change is committed.")

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


class MachineSpec(Spec):
    kind: str = Field(pattern=NAME)
    description: str = ""
    plugins: list[str] = Field(default_factory=list, description="Modules that register the names used here.")
    initial: str
    key_pattern: str = Field(default=r"^[A-Za-z0-9_.:+-]{1,128}$", description="What a subject key may look like.")
    on_intake: str | None = Field(default=None, description="Trigger fired when a new file for the subject arrives.")
    on_failure: str = Field(default="fail", description="Trigger fired when an action has failed for good.")
    limits: dict[str, int] = Field(default_factory=dict,
                                   description="Default size of the concurrency groups its states name (config "
                                   "`limits` overrides).")
    states: dict[str, StateSpec]
    transitions: list[TransitionSpec]

    @field_validator("states")
    @classmethod
    def _state_names(cls, states: dict[str, StateSpec]) -> dict[str, StateSpec]:
        bad = [s for s in states if not re.match(NAME, s)]
        if bad:
            raise ValueError(f"state names must match {NAME}: {bad}")
        return states


@dataclass(frozen=True)
class Change:
    """A committed state change, as callbacks and hooks see it."""

    subject: Subject
    from_state: str | None
    to_state: str
    trigger: str
    actor: str
    reason: str
    evidence: dict[str, Any]

    def to_json(self) -> dict:
        return {
            "kind": self.subject.kind, "key": self.subject.key, "from": self.from_state, "to": self.to_state,
            "trigger": self.trigger, "actor": self.actor, "reason": self.reason, "evidence": self.evidence,
            "data": self.subject.data, "version": self.subject.version,
        }


class _Model:
    """What transitions moves around: a stand-in for one stored subject."""

    # Set by transitions when the machine adds the model.
    state: str
    trigger: Callable[[str], bool]

    def __init__(self, subject: Subject, env: actions.Env):
        self.subject = subject
        self.env = env


class StateMachine:
    """One kind's machine: its spec, resolved names, and a `transitions` Machine."""

    def __init__(self, spec: MachineSpec, source: str = "<spec>"):
        self.spec = spec
        self.source = source
        self._validate()
        self._machine = Machine(
            model=None,
            states=list(spec.states),
            transitions=[self._transition_kwargs(t) for t in spec.transitions],
            initial=spec.initial,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
        )

    @property
    def kind(self) -> str:
        return self.spec.kind

    def state(self, name: str) -> StateSpec:
        return self.spec.states[name]

    def _error(self, message: str) -> MachineSpecError:
        return MachineSpecError(f"{self.source}: {message}")

    def _validate(self) -> None:
        spec = self.spec
        for module in spec.plugins:
            try:
                importlib.import_module(module)
            except ImportError as err:
                raise self._error(f"plugin {module!r} cannot be imported: {err}") from None
        states = spec.states
        if spec.initial not in states:
            raise self._error(f"initial state {spec.initial!r} is not declared")
        triggers_from: dict[str, set[str]] = {s: set() for s in states}
        for i, t in enumerate(spec.transitions):
            where = f"transitions[{i}] ({t.trigger})"
            for src in t.sources:
                if src != "*" and src not in states:
                    raise self._error(f"{where}: unknown source state {src!r}")
                for s in (states if src == "*" else [src]):
                    triggers_from[s].add(t.trigger)
            if t.dest not in states:
                raise self._error(f"{where}: unknown dest state {t.dest!r}")
            for name in (*t.conditions, *t.unless):
                if name not in actions.CONDITIONS:
                    raise self._error(f"{where}: unknown condition {name!r}")
            for name in t.after:
                if name not in actions.CALLBACKS:
                    raise self._error(f"{where}: unknown callback {name!r}")
        for name, st in states.items():
            where = f"states.{name}"
            for label, fn in (("action", st.action), ("recover", st.recover)):
                if fn is not None and fn not in actions.ACTIONS:
                    raise self._error(f"{where}: unknown {label} {fn!r}")
            if st.terminal and (st.action or st.auto or st.deadline):
                raise self._error(f"{where}: a terminal state cannot have an action, auto triggers or a deadline")
            if st.recover and not st.action:
                raise self._error(f"{where}: `recover` needs an `action`")
            if st.action and spec.on_failure not in triggers_from[name]:
                raise self._error(f"{where}: runs an action but has no {spec.on_failure!r} transition for failures")
            for trig in st.auto:
                if trig not in triggers_from[name]:
                    raise self._error(f"{where}: auto trigger {trig!r} has no transition from this state")
            if st.deadline and st.deadline.trigger not in triggers_from[name]:
                raise self._error(f"{where}: deadline trigger {st.deadline.trigger!r} has no transition from here")
        if spec.on_intake and not any(spec.on_intake in ts for ts in triggers_from.values()):
            raise self._error(f"on_intake trigger {spec.on_intake!r} is not used by any transition")
        self.triggers_from = triggers_from

    @staticmethod
    def _condition(name: str) -> Callable:
        fn = actions.CONDITIONS[name]
        return lambda event: bool(fn(event.model.subject, event.model.env))

    def _transition_kwargs(self, t: TransitionSpec) -> dict:
        return {
            "trigger": t.trigger,
            "source": t.source,
            "dest": t.dest,
            "conditions": [self._condition(c) for c in t.conditions],
            "unless": [self._condition(c) for c in t.unless],
        }

    def fire(self, subject: Subject, trigger: str, env: actions.Env) -> str | None:
        """The state `trigger` leads to from the subject's state, or None if a condition
        said no. Raises MachineError when the trigger is not valid from that state."""
        if trigger not in self.triggers_from.get(subject.state, set()):
            raise MachineError(f"{subject.ref}: {trigger!r} is not a trigger from state {subject.state!r}")
        model = _Model(subject, env)
        self._machine.add_model(model, initial=subject.state)
        try:
            moved = model.trigger(trigger)
            return model.state if moved else None
        finally:
            self._machine.remove_model(model)

    def after_callbacks(self, from_state: str, trigger: str, to_state: str) -> list[str]:
        """The `after:` callbacks of the transition that took `trigger` from one state to the other."""
        return [name for t in self.spec.transitions if t.trigger == trigger and t.dest == to_state
                and ("*" in t.sources or from_state in t.sources) for name in t.after]

    def _dests(self, state: str) -> list[tuple[str, str]]:
        """(trigger, dest) of every transition out of `state`, as `transitions` resolved them
        (a `*` source included), in the machine's order."""
        return [(trigger, t.dest) for trigger in self._machine.get_triggers(state)
                for t in self._machine.events[trigger].transitions[state] if t.dest is not None]

    def reachable(self, from_state: str, to_state: str) -> list[str]:
        """Triggers that lead directly from one state to the other."""
        return sorted({trigger for trigger, dest in self._dests(from_state) if dest == to_state})

    def downstream(self, state: str) -> list[str]:
        """States reachable from `state`, in breadth-first order (for rerun previews)."""
        seen, order, frontier = {state}, [state], [state]
        while frontier:
            nxt = []
            for s in frontier:
                for trigger, dest in self._dests(s):
                    if dest not in seen and trigger != self.spec.on_failure:
                        seen.add(dest)
                        order.append(dest)
                        nxt.append(dest)
            frontier = nxt
        return order

    def mermaid(self) -> str:
        """The machine as a mermaid state diagram, drawn by `transitions`' diagram extension.

        The one thing it does not draw is added here: a terminal state's arrow to `[*]`
        (transitions accepts `final` states but its mermaid output leaves them out)."""
        spec = self.spec
        # A state's action runs on entering it: shown as transitions' `enter` callback (the
        # diagram's model never moves, so nothing calls it).
        states = [{"name": name, "on_enter": [st.action] if st.action else []} for name, st in spec.states.items()]
        transitions = [{"trigger": t.trigger, "source": t.source, "dest": t.dest,
                        "conditions": t.conditions, "unless": t.unless} for t in spec.transitions]
        model = _Diagram()
        graph = GraphMachine(model=model, states=states, transitions=transitions, initial=spec.initial,
                             auto_transitions=False, graph_engine="mermaid", show_conditions=True,
                             show_state_attributes=True, title=spec.kind)
        # The diagram shows the machine, not one subject in it: no state is marked current.
        graph.model_graphs[id(model)].reset_styling()
        text = str(graph.get_combined_graph().draw(None))
        return "\n".join([text, *(f"  {name} --> [*]" for name, st in spec.states.items() if st.terminal)])


class _Diagram:
    """The model `transitions` needs to draw a machine's diagram; it never moves."""


def _format(source: str, err: ValidationError) -> str:
    parts = [f"{source}: invalid machine"]
    for e in err.errors():
        parts.append(f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}")
    return "\n".join(parts)


def load_machine(path: Path) -> StateMachine:
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as err:
        raise MachineSpecError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise MachineSpecError(f"{path}: not valid YAML: {err}") from None
    try:
        spec = MachineSpec.model_validate(data)
    except ValidationError as err:
        raise MachineSpecError(_format(str(path), err)) from None
    if spec.kind != path.stem:
        raise MachineSpecError(f"{path}: kind {spec.kind!r} must match the file name {path.stem!r}")
    return StateMachine(spec, str(path))


def load_machines(directory: Path, kinds: Iterable[str] = ()) -> dict[str, StateMachine]:
    """Load `<kind>.yaml` machines (all of them, or the named kinds)."""
    kinds = list(kinds)
    if not directory.is_dir():
        raise MachineSpecError(f"{directory}: no such machines directory")
    paths = [directory / f"{k}.yaml" for k in kinds] if kinds else sorted(directory.glob("*.yaml"))
    return _load_files(paths)


def _load_files(paths: Iterable[Path]) -> dict[str, StateMachine]:
    machines = {}
    for path in paths:
        if not path.exists():
            raise MachineSpecError(f"{path}: no machine for kind {path.stem!r}")
        m = load_machine(path)
        machines[m.kind] = m
    return machines


def load_configured(config: Config) -> dict[str, StateMachine]:
    """The machines a configuration runs, their plugins imported: config `plugins` first, then
    `machines_dir`'s machines or, where it is unset, the installed chains' (autoproc.chain),
    the `kinds` among them; a chain's own `plugins` are imported with its kinds' machines."""
    from autoproc.chain import chains

    for module in config.plugins:
        importlib.import_module(module)
    owner: dict[str, tuple[Path, tuple[str, ...]]] = {}
    for chain in chains():
        for path in chain.machines:
            if path.stem in owner:
                raise MachineSpecError(f"{path}: kind {path.stem!r} is also a machine of another chain "
                                       f"({owner[path.stem][0]})")
            owner[path.stem] = (path, chain.plugins)
    if config.machines_dir is not None:
        machines = load_machines(config.machines_dir, config.kinds)
    else:
        kinds = list(config.kinds) or sorted(owner)
        unknown = [k for k in kinds if k not in owner]
        if unknown:
            raise MachineSpecError(f"kinds: no installed chain has a machine for {', '.join(unknown)} "
                                   f"(installed: {', '.join(sorted(owner)) or 'none'})")
        machines = _load_files(owner[k][0] for k in kinds)
    for module in dict.fromkeys(m for k in machines if k in owner for m in owner[k][1]):
        importlib.import_module(module)
    return machines


__all__ = ["Change", "MachineError", "MachineSpec", "MachineSpecError", "StateMachine", "load_configured",
           "load_machine", "load_machines"]
