"""The chain plugin interface (autoproc.chain, docs/CHAINS.md): the core names no chain, runs
with no chain installed but a third one, and finds that one through a real entry point.

The example chain (tests/example_chain) is installed for a child process by writing its
dist-info directory (`entry_points.txt`) onto the child's sys.path; the two shipped chains
are hidden from a child by a dist-info of `autoproc` itself, earlier on the path, that
declares no chains (importlib.metadata takes the first distribution of a name it finds).
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from autoproc.chain import chains
from autoproc.config import config_model, parse_config
from autoproc.store import Store, StoreError
from conftest import wait_for

SRC = Path(__file__).resolve().parents[1] / "src" / "autoproc"
EXAMPLE = Path(__file__).resolve().parent / "example_chain"
CHAIN_PACKAGES = ("deep", "desgw", "sim")
# The demo runs both chains on the simulator: the one core module that may know them.
CHAIN_AWARE = {"script/demo.py"}
# What only a chain may know: its modules, its kinds, its names. Identifiers are split into
# words; string constants are checked when they are one token (a kind, a key, a module name),
# so prose in help texts may still give a DEEP example.
CHAIN_WORDS = {"deep", "desgw", "sim", "decam", "night", "nights", "exposure", "exposures", "season",
               "seasons", "coadd", "bps", "ccd", "ccds", "butler", "pipetask", "dagmaker", "visit", "raw", "raws",
               "postproc"}
# Kinds whose word has another meaning in the core too (a Jinja template): only the kind itself.
CHAIN_KINDS = {"template"}


def core_modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if p.relative_to(SRC).parts[0] not in CHAIN_PACKAGES
                  and p.relative_to(SRC).as_posix() not in CHAIN_AWARE)


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]
    return {id(n.body[0].value) for n in nodes if n.body and isinstance(n.body[0], ast.Expr)  # type: ignore[attr-defined]
            and isinstance(n.body[0].value, ast.Constant)}  # type: ignore[attr-defined]


def _words(identifier: str) -> set[str]:
    return {w.lower() for w in identifier.replace("-", "_").replace(".", "_").split("_") if w}


def chain_names_in(path: Path) -> list[str]:
    """Where a core module imports a chain or the simulator, or names a chain's kinds or words."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        for m in modules:
            if any(m == f"autoproc.{p}" or m.startswith(f"autoproc.{p}.") for p in CHAIN_PACKAGES):
                found.append(f"{where}: imports {m}")
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names = [node.name]
        elif isinstance(node, ast.arg):
            names = [node.arg]
        elif isinstance(node, ast.keyword) and node.arg:
            names = [node.arg]
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
              and node.value and not any(c.isspace() for c in node.value)):
            names = [node.value]
        for name in names:
            hit = (_words(name) & CHAIN_WORDS) | ({name} & CHAIN_KINDS if isinstance(node, ast.Constant) else set())
            if hit:
                found.append(f"{where}: {name!r} ({', '.join(sorted(hit))})")
    return found


def test_the_core_names_no_chain():
    """A regression (an import of autoproc.deep, a kind named in the engine, a
    `config.deep` in the report) fails here, with the line."""
    modules = core_modules()
    assert {"engine.py", "store.py", "machines.py", "watch.py", "intake.py", "executor.py", "process.py",
            "hooks.py", "notify.py", "config.py", "report.py", "chain.py", "requests.py", "control.py",
            "cli/commands.py", "script/daemon.py"} <= {p.relative_to(SRC).as_posix() for p in modules}
    found = [hit for path in modules for hit in chain_names_in(path)]
    assert not found, "\n".join(found)


def test_the_scan_sees_what_it_forbids(tmp_path):
    """The scan itself can fail: each way a module can lean on a chain is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""A night is fine in a docstring."""\nfrom autoproc.deep.stages import raw_file\n'
                   'import autoproc.sim.deep\nKIND = "exposure"\n\n\ndef f(config):\n'
                   '    return config.desgw.poll_seconds, steps_on_slurm\n'
                   'HELP = "prose may say DEEP night"\n')
    found = _scan(bad)
    assert any("imports autoproc.deep.stages" in f for f in found), found
    assert any("imports autoproc.sim.deep" in f for f in found), found
    assert any("'exposure'" in f for f in found), found
    assert any("'desgw'" in f for f in found), found
    assert not any("prose" in f or "docstring" in f for f in found), found


def _scan(path: Path) -> list[str]:
    global SRC
    saved, SRC = SRC, path.parent
    try:
        return chain_names_in(path)
    finally:
        SRC = saved


def test_the_two_chains_are_installed():
    names = [c.name for c in chains()]
    assert names[:2] == ["deep", "desgw"] and "example" not in names, names
    model = config_model()
    assert {"deep", "desgw"} <= set(model.model_fields)
    for chain in chains():
        assert chain.command() is not None and chain.command().name == chain.name
        assert chain.machines and all(p.is_file() for p in chain.machines), chain.machines
    # A chain's section is validated by its own model; errors name the key path.
    with pytest.raises(Exception, match=r"deep: Value error, steps\.drp: step 'a b'"):
        parse_config({"deep": {"steps": {"drp": ["a b"]}}})


# -- a third chain, with and without the two -------------------------------------------------

def dist_info(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


@pytest.fixture
def example_env(tmp_path):
    """A child's environment: the example chain installed (entry point), the two shipped ones hidden."""
    site = tmp_path / "site"
    dist_info(site, "autoproc_example", "[autoproc.chains]\nexample = autoproc_example:chain\n")
    dist_info(site, "autoproc", "[console_scripts]\nautoproc = autoproc.cli:main\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE), str(Path(__file__).resolve().parent)])
    return env


def run(env: dict[str, str], *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,  # noqa: S603
                          timeout=120)
    if check and done.returncode != 0:
        pytest.fail(f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def cli(env, config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(env, "-m", "autoproc.cli", "-c", str(config), *args, check=check)


def write(tmp_path: Path, **settings) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    data = {"root": str(tmp_path / "root"), "poll_seconds": 0.2,
            "watch": [{"name": "inbox", "path": str(inbox), "kind": "stamp_file", "patterns": ["*.stamp"],
                       "mode": "inotify", "quiet_seconds": 0.2}],
            "report": {"min_interval_seconds": 0.5}, **settings}
    path = tmp_path / "autoproc.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_core_runs_with_only_a_third_chain(example_env, tmp_path):
    """No DEEP, no DESGW: config check, the chain's command, a daemon that drives a stamp
    through the example machine to `done`, the report; and no chain module is imported."""
    config = write(tmp_path, example={"greeting": "ahoy"})
    probe = run(example_env, "-c", "import json, sys; from autoproc.chain import chains; "
                "from autoproc.config import load_config; from autoproc.machines import load_configured; "
                "import autoproc.cli, autoproc.engine, autoproc.report, autoproc.control; "
                f"c = load_config({str(config)!r}); m = load_configured(c); "
                "print(json.dumps({'chains': [x.name for x in chains()], 'machines': sorted(m), "
                "'leaked': sorted(n for n in sys.modules if n.startswith(('autoproc.deep', 'autoproc.desgw', "
                "'autoproc.sim')))}))")
    assert json.loads(probe.stdout) == {"chains": ["example"], "machines": ["stamp"], "leaked": []}
    checked = cli(example_env, config, "config", "check")
    assert "OK (1 machines: stamp;" in checked.stdout, checked.stdout
    assert cli(example_env, config, "example", "greet").stdout == "ahoy\n"
    assert "No such command 'deep'" in cli(example_env, config, "deep", "init", check=False).stderr
    # The chain's section is validated by its model, the error naming the key path.
    bad = cli(example_env, write(tmp_path, example={"greeting": ""}), "config", "check", check=False)
    assert bad.returncode == 2 and "example.greeting: String should have at least 1 character" in bad.stderr
    unknown = cli(example_env, write(tmp_path, deep={"repo": "/x"}), "config", "check", check=False)
    assert unknown.returncode == 2 and "deep: Extra inputs are not permitted" in unknown.stderr
    config = write(tmp_path, example={"greeting": "ahoy"})

    log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "autoproc.cli", "-c", str(config), "daemon"],  # noqa: S603
                              env=example_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        (tmp_path / "inbox" / "first.stamp").write_text("")
        store = None

        def stamped():
            nonlocal store
            if store is None:
                try:
                    store = Store(tmp_path / "root" / "autoproc.db", readonly=True)
                except StoreError:  # not there yet, or the daemon is still creating it
                    return False
            s = store.find_subject("stamp", "first")
            return s is not None and s.state == "done"

        wait_for(stamped, timeout=60, what="the stamp done")
        (attempt,) = store.attempts(store.subject("stamp", "first").id)
        assert Path(attempt.result["evidence"]["stamp"]).read_text() == "ahoy first\n"
        page = tmp_path / "root" / "report" / "index.html"
        wait_for(lambda: page.exists() and "Stamps × stages" in page.read_text(), timeout=30, what="the report")
        store.close()
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(30)
        log.close()
    assert daemon.returncode == 0, (tmp_path / "daemon.log").read_text()[-3000:]


def test_a_third_chain_beside_the_two(tmp_path):
    """Installed beside DEEP and DESGW, the example is a third chain: its section, command and
    machine join theirs (the real autoproc dist-info is found, with its two entry points)."""
    site = tmp_path / "site"
    dist_info(site, "autoproc_example", "[autoproc.chains]\nexample = autoproc_example:chain\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(EXAMPLE)])
    config = tmp_path / "autoproc.yaml"
    config.write_text(yaml.safe_dump({"root": str(tmp_path / "root")}))
    checked = cli(env, config, "config", "check")
    assert "OK (5 machines: exposure, night, season, stamp, template;" in checked.stdout, checked.stdout
    assert cli(env, config, "example", "greet").stdout == "hello\n"
    commands = cli(env, config, "--help").stdout
    assert all(f"  {name} " in commands for name in ("deep", "desgw", "example")), commands
