import re
from pathlib import Path

import pytest
import yaml

import widgets  # noqa: F401 - registers the test machines' names
from autoproc.machines import MachineSpecError, load_machine, load_machines
from conftest import MACHINES


def write(tmp_path, spec: dict, name: str | None = None):
    path = tmp_path / f"{name or spec['kind']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


BASE = {
    "kind": "thing",
    "plugins": ["widgets"],
    "initial": "a",
    "states": {"a": {"action": "build"}, "b": {"terminal": True}, "failed": {"terminal": True}},
    "transitions": [{"trigger": "built", "source": "a", "dest": "b"},
                    {"trigger": "fail", "source": "a", "dest": "failed"}],
}


def variant(**changes):
    spec = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        target = spec
        *parents, last = path.split(".")
        for p in parents:
            target = target[p]
        target[last] = value
    return spec


def test_the_test_machines_load():
    machines = load_machines(MACHINES)
    assert set(machines) == {"widget", "gadget", "sloth"}
    assert machines["widget"].reachable("done", "building") == ["arrived"]


@pytest.mark.parametrize("changes, message", [
    ({"initial": "zzz"}, "initial state 'zzz' is not declared"),
    ({"states.a": {"action": "no_such_action"}}, "unknown action 'no_such_action'"),
    ({"transitions": [{"trigger": "built", "source": "a", "dest": "nowhere"}]}, "unknown dest state 'nowhere'"),
    ({"transitions": [{"trigger": "built", "source": "q", "dest": "b"}]}, "unknown source state 'q'"),
    ({"transitions": [{"trigger": "built", "source": "a", "dest": "b", "conditions": ["nope"]},
                      {"trigger": "fail", "source": "a", "dest": "failed"}]}, "unknown condition 'nope'"),
    ({"transitions": [{"trigger": "built", "source": "a", "dest": "b"}]}, "has no 'fail' transition"),
    ({"states.b": {"terminal": True, "action": "build"}}, "terminal state cannot have an action"),
    ({"states.b": {"auto": ["go"]}}, "auto trigger 'go' has no transition"),
    ({"states.a": {"action": "build", "recover": "missing"}}, "unknown recover 'missing'"),
    ({"plugins": ["no.such.module"]}, "plugin 'no.such.module' cannot be imported"),
    ({"states.a": {"action": "build", "colour": "red"}}, "states.a.colour: Extra inputs are not permitted"),
])
def test_bad_machines_are_clear_errors(tmp_path, changes, message):
    path = write(tmp_path, variant(**changes))
    with pytest.raises(MachineSpecError, match=message) as err:
        load_machine(path)
    assert str(path) in str(err.value)


def test_kind_must_match_file_name(tmp_path):
    path = write(tmp_path, variant(), name="other")
    with pytest.raises(MachineSpecError, match="must match the file name"):
        load_machine(path)


def test_mermaid_lists_every_transition():
    text = load_machines(MACHINES)["widget"].mermaid()
    lines = [line.strip() for line in text.splitlines()]
    assert "stateDiagram-v2" in lines and "[*] --> new" in lines
    assert "new --> building: start [has_files]" in lines
    assert "checking --> stalled: stall" in lines
    assert "checking --> failed: fail" in lines and "building --> failed: fail" in lines
    assert {"done --> [*]", "failed --> [*]"} <= set(lines) and "stalled --> [*]" not in lines
    assert 'state "building\\n- enter:\\n  + build" as building' in lines


def test_mermaid_of_every_shipped_machine_has_each_transition_and_guard():
    for machine in load_machines(Path(__file__).resolve().parents[1] / "statemachines").values():
        text = machine.mermaid()
        edges = {}
        for line in text.splitlines():
            if match := re.fullmatch(r"\s*(\w+) --> (\w+): (.*)", line):
                edges[match[1], match[2]] = match[3].split(" | ")
        for t in machine.spec.transitions:
            guard = " & ".join([*t.conditions, *(f"!{u}" for u in t.unless)])
            label = f"{t.trigger} [{guard}]" if guard else t.trigger
            for src in t.sources:
                assert label in edges.get((src, t.dest), []), (machine.kind, src, t.dest, label)
        for name, st in machine.spec.states.items():
            assert (f"  {name} --> [*]" in text.splitlines()) == st.terminal, (machine.kind, name)


def test_downstream_order():
    m = load_machines(MACHINES)["widget"]
    assert m.downstream("building")[:3] == ["building", "checking", "done"]
