"""Security (issue 6): no data reaches a shell, hostile names are refused or passed verbatim as
argv elements, the CLI refuses what the machines do not declare, files are private, hooks get a
minimal environment, the report escapes names.

Covered elsewhere and referenced here, not repeated:
- the CLI refuses undeclared states and kinds: tests/test_daemon.py::test_cli_refuses_undeclared_states_and_kinds
  (extended below with hostile keys for `add` and `set`);
- hooks run with a minimal environment: tests/test_hooks.py::test_daemon_runs_hooks_on_failed;
- the report escapes a <script> name in Chromium: tests/test_report.py::test_report_in_chromium; a bad raw
  named <script>alert(1)</script>.fits through the daemon into the report:
  tests/reliability/test_bad_input.py::test_bad_raws_through_the_daemon_night_proceeds.
"""

from __future__ import annotations

import ast
import json
import re
import stat
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

from autoproc.config import ConfigError, parse_config
from autoproc.desgw import dagmaker, postproc
from autoproc.desgw.errors import DesgwInputError
from autoproc.desgw.stages import DAGMAKER_SCRIPT
from autoproc.hooks import hook_environment
from autoproc.store import Store
from conftest import child_env, states, wait_for

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "autoproc"
HOSTILE = ["a;b", "$(touch PWNED)", "`touch PWNED`", "a b", "ünï", "-rf", "x|touch PWNED", "x&&touch PWNED",
           "x\ntouch PWNED", "../../etc", ""]
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def cli(path: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autoproc.cli", "-c", str(path), *args],  # noqa: S603
                          capture_output=True, text=True, env=child_env(), timeout=60, check=False, cwd=cwd)


def pwned(*roots: Path) -> list[Path]:
    hits = [p for r in roots if r.exists() for p in r.rglob("PWNED")]
    return hits + [p for p in (Path.cwd() / "PWNED", Path("/PWNED"), Path.home() / "PWNED") if p.exists()]


# ---------------------------------------------------------------- (a) no shell, argv only

def test_no_shell_anywhere_in_src():
    """grep, whatever ruff says: no shell=True, os.system, os.popen, getoutput, create_subprocess_shell."""
    forbidden = re.compile(r"shell\s*=\s*True|os\.system\s*\(|os\.popen\s*\(|getstatusoutput|getoutput\s*\(|"
                           r"create_subprocess_shell|pty\.spawn")
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in SRC.rglob("*.py")
            for n, line in _code_lines(p) if forbidden.search(line)]
    assert hits == []
    text = (ROOT / "pyproject.toml").read_text()
    assert "S602" in text and "S605" in text  # ruff's shell checks stay enabled


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """The file's lines with comments and string literals blanked (prose may mention os.system)."""
    lines = path.read_text().splitlines()
    with open(path, "rb") as f:
        for tok in tokenize.tokenize(f.readline):
            if tok.type in (tokenize.COMMENT, tokenize.STRING) and tok.start[0] == tok.end[0]:
                row = tok.start[0] - 1
                lines[row] = lines[row][:tok.start[1]] + " " * (tok.end[1] - tok.start[1]) + lines[row][tok.end[1]:]
            elif tok.type == tokenize.STRING:  # a multi-line string: blank all its lines
                for row in range(tok.start[0] - 1, tok.end[0]):
                    lines[row] = ""
    return list(enumerate(lines, 1))


def _subprocess_calls() -> list[tuple[str, int, ast.Call]]:
    out = []
    for p in SRC.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)
                    and ((node.func.value.id == "subprocess" and node.func.attr in SUBPROCESS_CALLS)
                         or (node.func.value.id == "os" and node.func.attr.startswith(("exec", "spawn"))))):
                out.append((str(p.relative_to(ROOT)), node.lineno, node))
    return out


def test_every_subprocess_is_an_argv():
    """Every subprocess call site passes a list/tuple/variable (never a string or f-string) and no shell=."""
    calls = _subprocess_calls()
    assert len(calls) >= 5  # process.py, season.py, deep/repo.py, script/demo.py…: the scan found them
    for where, line, call in calls:
        assert not any(k.arg == "shell" for k in call.keywords), (where, line)
        if call.args:
            first = call.args[0]
            assert not isinstance(first, ast.JoinedStr | ast.BinOp), (where, line, ast.dump(first))
            assert not (isinstance(first, ast.Constant) and isinstance(first.value, str)), (where, line)


def test_bash_c_scripts_are_constants():
    """The two `bash -c` launches (DAGMaker, post-processing) and process.py's wrapper run constant text;
    data only as positional arguments ("$1"…), each quoted where used."""
    for script in (DAGMAKER_SCRIPT, postproc.LAUNCH_SCRIPT):
        assert "{" not in script.replace("${SEASON:-}", "").replace("${args[@]}", "").replace("{ echo", "")
        for var in re.findall(r"\$(\w+)", script):
            assert var in {"1", "2", "3", "4", "5", "6", "7", "setup", "script", "expnum", "pp_dir", "pp_outdir",
                           "pp_season", "pp_skipto", "pp_links", "pp_nite", "pp_python"}, var
        # every use of a data variable is inside double quotes
        for line in script.splitlines():
            for m in re.finditer(r"\$(setup|script|expnum|pp_\w+)", line):
                before = line[:m.start()]
                assert before.count('"') % 2 == 1, line


# ---------------------------------------------------------------- (b) hostile names through every launch

def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_dagmaker_launch_with_hostile_paths(tmp_path):
    """gw_workflow, setup script and DAGMaker paths with spaces and metacharacters: run exactly as
    run_dagmaker builds the argv; the script sees its expnum, the setup is sourced, nothing else runs."""
    evil = tmp_path / "gw $(touch PWNED) `touch PWNED`;|&"
    setup = _executable(evil / "setup $(touch PWNED).sh", 'export FROM_SETUP=\'yes;$(echo no)\'\n')
    script = _executable(evil / "DAG Maker;`x`.sh",
                         '#!/bin/sh\nprintf "%s|%s\\n" "$1" "$FROM_SETUP" > "$(dirname "$0")/out.txt"\n')
    argv = ["bash", "-c", DAGMAKER_SCRIPT, "autoproc-dagmaker", str(setup), str(script), "941201"]
    res = subprocess.run(argv, cwd=evil, capture_output=True, text=True, check=False)  # noqa: S603
    assert res.returncode == 0, res.stderr
    assert (evil / "out.txt").read_text() == "941201|yes;$(echo no)\n"
    assert pwned(tmp_path) == []


MALICIOUS_SUBMIT_LINES = {
    "jobsub_submit_dag -G des file://desgw_pipeline_941201.dag; touch PWNED": "shell metacharacters",
    "jobsub_submit_dag -G des file://desgw_pipeline_941201.dag && touch PWNED": "shell metacharacters",
    "jobsub_submit_dag $(touch PWNED) file://desgw_pipeline_941201.dag": "shell metacharacters",
    "jobsub_submit_dag `touch PWNED` file://desgw_pipeline_941201.dag": "shell metacharacters",
    "jobsub_submit_dag -G des file://desgw_pipeline_941201.dag | sh": "shell metacharacters",
    "touch PWNED file://desgw_pipeline_941201.dag": "first token must be jobsub_submit_dag",
    "sh -c file://desgw_pipeline_941201.dag": "first token must be jobsub_submit_dag",
    "jobsub_submit_dag -G des file:///etc/passwd": "last token must be file://desgw_pipeline_941201.dag",
    "jobsub_submit_dag -G des file://desgw_pipeline_941202.dag": "last token must be",
    "jobsub_submit_dag PWNED file://desgw_pipeline_941201.dag": "'PWNED' is not an option",
    "jobsub_submit_dag": "too short",
    "": "too short",
}


@pytest.mark.parametrize("line", sorted(MALICIOUS_SUBMIT_LINES))
def test_dagmaker_printed_submit_command_is_refused(line, tmp_path):
    with pytest.raises(DesgwInputError) as err:
        dagmaker.validate_submit_command(line, 941201)
    assert MALICIOUS_SUBMIT_LINES[line] in str(err.value)
    # The same line as DAGMaker's last output: the run is judged failed with that reason.
    (tmp_path / "mytemp_941201").mkdir()
    (tmp_path / "mytemp_941201" / "DAGMaker.DONE").write_text("")
    (tmp_path / "desgw_pipeline_941201.dag").write_text("-S dp2206\n")
    verdict = dagmaker.judge_dagmaker_run(tmp_path, 941201, f"making the DAG\n{line}\n", 0)
    assert not verdict.ok and verdict.submit_argv is None
    assert verdict.reason.startswith(("last output line is not the submit command", "no "))


def test_dagmaker_good_submit_command_is_an_argv():
    argv = dagmaker.validate_submit_command(
        "jobsub_submit_dag -G des --role=DESGW --need-storage-modify /des/persistent file://desgw_pipeline_7.dag", 7)
    assert argv == ["jobsub_submit_dag", "-G", "des", "--role=DESGW", "--need-storage-modify", "/des/persistent",
                    "file://desgw_pipeline_7.dag"]


def test_postproc_launch_with_hostile_outdir(tmp_path):
    """Post-processing in a directory and to an outdir with spaces and metacharacters: run_postproc.py
    gets them verbatim as argv elements; nite is validated."""
    pp = tmp_path / "Post Processing $(touch PWNED);`x`"
    _executable(pp / "diffimg_setup.sh", "SEASON=2206\n")
    _executable(pp / "update_forcephoto_links.sh", 'printf "%s " "$@" > links.txt\n')
    fake_python = _executable(tmp_path / "py thon;x", f'#!{sys.executable}\nimport json, sys\n'
                              'open("argv.json", "w").write(json.dumps(sys.argv[1:]))\n')
    outdir = tmp_path / "out dir $(touch PWNED) `touch PWNED` & | ;"
    launch = postproc.build_postproc_launch(pp, outdir, 2206, skipto=3, update_links=True, nite="20190814",
                                            python=str(fake_python))
    res = subprocess.run(list(launch.argv), cwd=launch.cwd, capture_output=True, text=True, check=False)  # noqa: S603
    assert res.returncode == 0, res.stderr
    assert json.loads((pp / "argv.json").read_text()) == [
        "run_postproc.py", "--outputdir", str(outdir), "--season", "2206", "--SKIPTO", "3"]
    assert (pp / "links.txt").read_text() == "-n 20190814 "
    for nite in ("$(touch PWNED)", "2019081;", "-n"):
        with pytest.raises(ValueError, match="nite must be YYYYMMDD"):
            postproc.build_postproc_launch(pp, outdir, 2206, nite=nite)
    assert pwned(tmp_path) == []


@pytest.mark.parametrize("value", HOSTILE)
def test_deep_names_are_validated(value):
    from autoproc.deep import collections as colls
    from autoproc.deep import runner

    for check in (colls.check_night, colls.check_step):
        with pytest.raises(ValueError):
            check(value)
    if value not in ("ünï", "a b"):  # check_collection is about the characters a shell would act on
        with pytest.raises(ValueError):
            colls.check_collection(f"DEEP/{value}/bias")
    if any(c in value for c in ";`$|&\n"):
        with pytest.raises(runner.RunnerError, match="unsafe characters in data query"):
            runner.check_where(f"instrument='DECam' {value}")


@pytest.mark.parametrize("field,value,message", [
    ("steps", {"bias": ["$(touch PWNED)"]}, "steps.bias: step '$(touch PWNED)' must match"),
    ("steps", {"drp": ["step1", "a;b"]}, "steps.drp: step 'a;b' must match"),
    ("templates", {"`touch PWNED`": ["20240601"]}, "templates: name '`touch PWNED`' must match"),
])
def test_config_refuses_hostile_deep_names(field, value, message):
    """Step and template names become collection names and argv elements: refused when the config loads
    (they were accepted before, and refused only when a night reached the step)."""
    with pytest.raises(ConfigError) as err:
        parse_config({"root": "/tmp/x", "deep": {field: value}})
    assert message in str(err.value)


def test_cli_add_and_set_refuse_hostile_keys(write_config, tmp_path):
    """`autoproc add`/`set` with hostile keys, kinds and states: refused with the rule, nothing created,
    nothing run (extends tests/test_daemon.py::test_cli_refuses_undeclared_states_and_kinds)."""
    config, path = write_config(machines_dir=str(ROOT / "statemachines"),
                                kinds=["night", "template", "exposure", "season"])
    from click.testing import CliRunner

    from autoproc.cli import main

    runner = CliRunner()  # in-process (44 refusals); the real CLI process is checked below
    tried = 0
    for kind in ("night", "season", "exposure", "template"):
        for key in HOSTILE:
            args = ["-c", str(path), "add", kind, "--reason", "t", "--", key]
            res = runner.invoke(main, args)
            tried += 1
            assert res.exit_code != 0, (kind, key, res.output)
            assert "is not a valid" in res.output or "Error" in res.output, (kind, key, res.output)
    res = cli(path, "add", "night", "$(touch PWNED)", "--reason", "t", cwd=tmp_path)
    assert res.returncode != 0 and "'$(touch PWNED)' is not a valid night key" in res.stderr, res.stderr
    assert cli(path, "add", "night", "20240601", "--reason", "ok").returncode == 0
    for state in ("$(touch PWNED)", "done;touch PWNED"):
        res = cli(path, "set", "night", "20240601", state, "--reason", "t", cwd=tmp_path)
        assert res.returncode == 2 and "night has no state" in res.stderr, res.stderr
    res = cli(path, "set", "`touch PWNED`", "20240601", "done", "--reason", "t", cwd=tmp_path)
    assert res.returncode == 2 and "unknown kind" in res.stderr
    store = Store(config.db)
    assert [(s.kind, s.key) for kind in ("night", "season", "exposure", "template")
            for s in store.subjects(kind)] == [("night", "20240601")]
    store.close()
    assert pwned(tmp_path) == []
    assert tried == 4 * len(HOSTILE)


def test_hook_environment_carries_hostile_values_verbatim(tmp_path):
    """What reaches a hook is data in environment variables and JSON on stdin, never shell text."""
    config = parse_config({"root": str(tmp_path), "hooks": {"directory": str(tmp_path / "hooks")}})

    class H:
        name = "h"

    event = {"kind": "widget", "key": "$(touch PWNED)", "from": "a;b", "to": "`touch PWNED`", "trigger": "x y",
             "actor": "op|x", "report": None}
    env = hook_environment(event, config, event_file=tmp_path / "e.json", hook=H())
    assert env["AUTOPROC_KEY"] == "$(touch PWNED)" and env["AUTOPROC_TO"] == "`touch PWNED`"
    assert set(env) <= {"PATH", "LANG"} | {k for k in env if k.startswith("AUTOPROC_")}


# ---------------------------------------------------------------- (b, d) through a real daemon

@pytest.mark.slow
def test_daemon_hostile_names_hooks_and_file_modes(write_config, tmp_path, daemon_factory):
    """Widget files with hostile names (their keys are refused at intake, with the rule) and hostile
    content (passed to the build child and hooks as data); then every file the daemon made is private:
    db, -wal, -shm 0600; attempt and hook logs ≤ 0640; directories ≤ 0750."""
    inbox, hooks, out = tmp_path / "inbox", tmp_path / "hooks", tmp_path / "out"
    for d in (inbox, hooks, out):
        d.mkdir()
    _executable(hooks / "record", '#!/bin/sh\n# autoproc-on: *\n'
                'cat > "$OUT/event-$AUTOPROC_TO.json"\nprintf "%s\\n" "$AUTOPROC_KEY" >> "$OUT/keys.txt"\n'
                'echo "hook ran for $AUTOPROC_KEY"\n')
    config, path = write_config(
        watch=[{"name": "inbox", "path": str(inbox), "kind": "widget", "patterns": ["*.w"], "mode": "inotify",
                "quiet_seconds": 0.2}],
        hooks={"directory": str(hooks), "env": {"OUT": str(out)}})
    daemon = daemon_factory(path).start()
    names = ["a;b-1.w", "$(touch PWNED)-1.w", "`touch PWNED`-1.w", "sp ace-1.w", "ünï-1.w"]
    for name in names:
        (inbox / name).write_text("ok")
    (inbox / "good-1.w").write_text("ok $(touch PWNED) `touch PWNED`; | & > x")
    # The daemon makes its root; a Store opened here first would make it instead (store.py makes the
    # db's parent with the default mode: see RELIABILITY.md).
    wait_for(lambda: Path(config.db).exists(), timeout=20, what="the daemon's state db")
    wait_for(lambda: states(config).get("good") == "done", timeout=30, what="the good widget done")
    wait_for(lambda: (out / "keys.txt").exists() and "good" in (out / "keys.txt").read_text(), timeout=15,
             what="the hook ran")
    store = Store(config.db)
    bad = {Path(f["path"]).name: f["reason"] for f in store.files(status="bad")}
    store.close()
    for name in names:
        key = name[:-4]
        assert f"subject key {key!r} does not match" in bad[name], (name, bad.get(name))
    built = (Path(config.root) / "built" / "good.txt").read_text()
    assert built == "ok $(touch PWNED) `touch PWNED`; | & > x"  # the data went through an argv, verbatim
    assert set(states(config)) == {"good"}
    daemon.stop()
    assert pwned(tmp_path) == []

    # (d) modes of everything the daemon created under its root (the report page is meant to be served).
    root = Path(config.root)
    db = Path(config.db)
    for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if p.exists():
            assert stat.S_IMODE(p.stat().st_mode) & 0o177 == 0, (p, oct(p.stat().st_mode))
    checked, too_open = 0, []
    for p in [root, *root.rglob("*")]:
        if p.is_symlink() or "report" in p.relative_to(root).parts or p.name == "ledger.txt" or \
                "built" in p.relative_to(root).parts:
            continue  # the served report; files the test's own widget action writes
        mode = stat.S_IMODE(p.stat().st_mode)
        limit = 0o750 if p.is_dir() else 0o640
        if mode & ~limit:
            too_open.append(f"{p.relative_to(tmp_path)} {oct(mode)} (limit {oct(limit)})")
        checked += 1
    assert too_open == [], "\n".join(too_open)
    logs = [p for p in (root / "work").rglob("*.log")] + [p for p in root.rglob("*") if "hook" in p.name]
    assert logs, "no attempt or hook logs found to check"
    assert checked >= 5
