"""Judging a `DAGMaker.sh EXPNUM` run, validating its submit command, and reading jobsub's job id."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from autoproc.desgw.errors import DesgwInputError

NO_TEMPLATES_MARKER = "NO TEMPLATE IMAGES"
SUBMIT_PROGRAM = "jobsub_submit_dag"

# Anything a shell would interpret; the command is run as an argv, but a line holding these
# is not what DAGMaker prints, so it is refused rather than "fixed".
_SHELL_META = set(";&|$`<>(){}[]*?!~\\'\"\n\r\t#")
_OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9_-]*(?:=[A-Za-z0-9_./:,+@=-]+)?$")
_OPTION_VALUE = re.compile(r"^[A-Za-z0-9_./:,+@=-]+$")
_JOB_ID = re.compile(r"\b(\d+\.\d+@jobsub\d*\.fnal\.gov)\b")

Verdict = Literal["ok", "no_templates", "failed"]


@dataclass(frozen=True)
class DagmakerResult:
    """What a DAGMaker run left behind, and whether the exposure can be submitted."""

    expnum: int
    verdict: Verdict
    reason: str
    done_marker: Path
    dag_path: Path
    submit_argv: tuple[str, ...] | None

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def dag_filename(expnum: int) -> str:
    """`desgw_pipeline_{EXPNUM}.dag`."""
    return f"desgw_pipeline_{expnum}.dag"


def validate_submit_command(line: str, expnum: int) -> list[str]:
    """Check DAGMaker's printed submit command and return it as an argv.

    First token `jobsub_submit_dag`, last token exactly `file://desgw_pipeline_{EXPNUM}.dag`,
    and in between only options (`-G`, `--role=desgw`, `--need-storage-modify /des/…`) made
    of safe characters. Raises DesgwInputError otherwise.
    """
    where = f"DAGMaker submit command for {expnum}"
    text = line.strip()
    bad = sorted({c for c in text if c in _SHELL_META})
    if bad:
        raise DesgwInputError(where, None, f"shell metacharacters {''.join(bad)!r} in {text!r}")
    argv = shlex.split(text)
    if len(argv) < 2:
        raise DesgwInputError(where, None, f"too short: {text!r}")
    if argv[0] != SUBMIT_PROGRAM:
        raise DesgwInputError(where, None, f"first token must be {SUBMIT_PROGRAM}, got {argv[0]!r}")
    expected = f"file://{dag_filename(expnum)}"
    if argv[-1] != expected:
        raise DesgwInputError(where, None, f"last token must be {expected}, got {argv[-1]!r}")
    middle = argv[1:-1]
    i = 0
    while i < len(middle):
        token = middle[i]
        if not _OPTION.match(token):
            raise DesgwInputError(where, None, f"{token!r} is not an option")
        # An option without '=' may take one value (e.g. `-G des`, `--need-storage-modify /des/…`).
        if "=" not in token and i + 1 < len(middle) and not middle[i + 1].startswith("-"):
            if not _OPTION_VALUE.match(middle[i + 1]):
                raise DesgwInputError(where, None, f"bad value {middle[i + 1]!r} for {token}")
            i += 1
        i += 1
    return argv


def last_nonempty_line(text: str) -> str:
    """The last line with something on it, stripped ('' if none)."""
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def judge_dagmaker_run(
    workdir: Path, expnum: int, stdout_text: str, returncode: int | None = None
) -> DagmakerResult:
    """Decide from the files and the output whether DAGMaker succeeded for `expnum`.

    ok: exit status 0 (when known), `mytemp_{EXP}/DAGMaker.DONE` and the DAG exist, the
    last non-empty stdout line is a valid submit command, and no "NO TEMPLATE IMAGES".
    no_templates: the marker was printed (diffimg would fail: do not submit).
    """
    workdir = Path(workdir)
    done = workdir / f"mytemp_{expnum}" / "DAGMaker.DONE"
    dag = workdir / dag_filename(expnum)

    def result(verdict: Verdict, reason: str, argv: list[str] | None = None) -> DagmakerResult:
        return DagmakerResult(expnum, verdict, reason, done, dag, tuple(argv) if argv else None)

    if returncode not in (None, 0):
        tail = last_nonempty_line(stdout_text)
        return result("failed", f"DAGMaker exited {returncode}" + (f": {tail}" if tail else ""))
    if NO_TEMPLATES_MARKER in stdout_text:
        return result("no_templates", "DAGMaker printed 'NO TEMPLATE IMAGES, DIFFIMG WILL FAIL'")
    if not done.is_file():
        return result("failed", f"no {done}")
    if not dag.is_file():
        return result("failed", f"no {dag}")
    last = last_nonempty_line(stdout_text)
    try:
        argv = validate_submit_command(last, expnum)
    except DesgwInputError as err:
        return result("failed", f"last output line is not the submit command: {err.problem}")
    return result("ok", "DAGMaker.DONE present and submit command printed", argv)


def parse_jobsub_job_id(text: str, source: str = "jobsub_submit_dag output") -> str:
    """The job id (`NNNNNNNN.0@jobsub0N.fnal.gov`) in jobsub's output; the last one wins."""
    ids = _JOB_ID.findall(text)
    if not ids:
        raise DesgwInputError(source, None, "no job id like NNNNNNNN.0@jobsub0N.fnal.gov in the output")
    return ids[-1]
