"""No drift between the machines' YAML and the Python that names their states and triggers:
renaming a state or a trigger in a machine fails here, not at run time in the field.

State names the code holds (module constants, literals compared with a subject's state) are
listed below with their kind. Triggers are found by reading the code: every `Outcome("x")`
an action returns must be a trigger from each state that runs that action (or its recover
action); an Outcome built in a helper must name a trigger of one of the kinds its module's
actions serve (any kind, for a module without actions).
"""

import ast
from pathlib import Path

import pytest

import autoproc
from autoproc.config import DEFAULT_MACHINES_DIR
from autoproc.deep import stages as deep_stages
from autoproc.desgw import stages as desgw_stages
from autoproc.machines import StateMachine, load_machines
from autoproc.script import demo

SRC = Path(autoproc.__file__).parent
TESTS = Path(__file__).parent

# (where, kind, the state names it holds)
STATE_NAMES = [
    ("desgw.stages.ACTIVE", "exposure", desgw_stages.ACTIVE),
    ("desgw.stages.NEEDS_RC", "exposure", desgw_stages.NEEDS_RC),
    ("desgw.stages.CONFIGURED", "season", desgw_stages.CONFIGURED),
    ("desgw.stages.POSTPROCESSABLE", "exposure", desgw_stages.POSTPROCESSABLE),
    ("desgw.stages: a season configuring", "season", {"configuring"}),
    ("desgw.stages: an exposure ready", "exposure", {"ready"}),
    ("deep.stages.PAST_DRP", "night", set(deep_stages.PAST_DRP)),
    ("deep.stages: templates_built", "template", {"done"}),
    ("deep.stages: nights waiting", "night", {"waiting_calibs", "waiting_template"}),
    ("script.demo: seasons settled", "season", {"waiting"}),
    *((f"script.demo.SETTLED[{kind!r}]", kind, names) for kind, names in demo.SETTLED.items()),
]


@pytest.fixture(scope="module")
def machines() -> dict[str, StateMachine]:
    found = load_machines(DEFAULT_MACHINES_DIR, [])
    test_machines = load_machines(TESTS / "machines", [])
    assert not set(found) & set(test_machines)
    return {**found, **test_machines}


@pytest.mark.parametrize(("where", "kind", "names"), STATE_NAMES, ids=[s[0] for s in STATE_NAMES])
def test_state_names_in_the_code_exist_in_their_machine(machines, where, kind, names):
    assert kind in machines, f"{where}: no machine {kind!r}"
    unknown = sorted(set(names) - set(machines[kind].spec.states))
    assert not unknown, f"{where} names states {unknown} that the {kind} machine does not declare"


def _registered_action(fn: ast.FunctionDef) -> str | None:
    """The name an `@action()` / `@action("name")` decorator registers `fn` under."""
    for d in fn.decorator_list:
        if isinstance(d, ast.Call) and getattr(d.func, "id", getattr(d.func, "attr", None)) == "action":
            if d.args and isinstance(d.args[0], ast.Constant):
                return str(d.args[0].value)
            return fn.name
    return None


def _triggers(node: ast.AST) -> list[tuple[int, str]]:
    """(line, trigger) of every Outcome(...) under `node` whose trigger is a string literal
    (or a conditional between literals); a trigger passed in by name is followed through
    the keyword arguments of the same name given to calls in the module (see below)."""
    found = []
    for call in ast.walk(node):
        if not (isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None)) == "Outcome"):
            continue
        arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "trigger"), None)
        for value in (arg.body, arg.orelse) if isinstance(arg, ast.IfExp) else (arg,):
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.append((call.lineno, value.value))
    return found


def _passed_triggers(tree: ast.AST) -> dict[str, list[tuple[int, str]]]:
    """Helpers that build an Outcome from a parameter (`Outcome(done, ...)`): the string
    literals the module passes for it as a keyword argument, by parameter name."""
    names = {a.args[0].id for a in ast.walk(tree) if isinstance(a, ast.Call)
             and getattr(a.func, "id", None) == "Outcome" and a.args and isinstance(a.args[0], ast.Name)}
    passed: dict[str, list[tuple[int, str]]] = {}
    for call in ast.walk(tree):
        if isinstance(call, ast.Call):
            for k in call.keywords:
                if k.arg in names and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str):
                    passed.setdefault(k.arg, []).append((call.lineno, k.value.value))
    return passed


def _modules() -> list[Path]:
    return [*sorted(SRC.rglob("*.py")), TESTS / "widgets.py"]


def test_the_scan_finds_the_actions_and_their_triggers():
    """The scan below must see what it checks (else it would pass by finding nothing)."""
    tree = ast.parse((SRC / "desgw" / "stages.py").read_text())
    actions_found = {_registered_action(f) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)} - {None}
    assert {"find_dag_submission", "wait_for_proxy"} <= actions_found
    triggers = {t for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and _registered_action(f) == "wait_for_proxy"
                for _, t in _triggers(f)}
    assert "proxy_valid" in triggers
    assert "done" in _passed_triggers(ast.parse((SRC / "deep" / "stages.py").read_text()))


def test_triggers_the_actions_return_exist_in_their_machines(machines):
    problems = []
    using: dict[str, list[tuple[str, str]]] = {}  # action -> (kind, state) that run it
    for kind, machine in machines.items():
        for name, st in machine.spec.states.items():
            for fn in (st.action, st.recover):
                if fn:
                    using.setdefault(fn, []).append((kind, name))
    for path in _modules():
        tree = ast.parse(path.read_text())
        where = path.relative_to(SRC.parent if path.is_relative_to(SRC) else TESTS.parent)
        kinds: set[str] = set()
        in_actions: set[int] = set()
        for fn in (f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)):
            name = _registered_action(fn)
            if name is None:
                continue
            kinds |= {k for k, _ in using.get(name, [])}
            for line, trigger in _triggers(fn):
                in_actions.add(line)
                for kind, state in using.get(name, []):
                    if trigger not in machines[kind].triggers_from[state]:
                        problems.append(f"{where}:{line}: action {name} returns {trigger!r}, which is not a "
                                        f"trigger from {kind}.{state}")
        # Outcomes built outside an action (helpers), and triggers handed to such helpers.
        loose = [(line, t) for line, t in _triggers(tree) if line not in in_actions]
        loose += [x for found in _passed_triggers(tree).values() for x in found]
        kinds = kinds or set(machines)  # a module of helpers only: whichever kind its callers serve
        known = {t for k in kinds for ts in machines[k].triggers_from.values() for t in ts}
        for line, trigger in loose:
            if trigger not in known:
                problems.append(f"{where}:{line}: {trigger!r} is not a trigger of {sorted(kinds)}")
    assert not problems, "\n".join(problems)
