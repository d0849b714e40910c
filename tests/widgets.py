"""Actions, conditions and a file kind for the engine's test machines.

A widget file (`<key>-<n>.w`) holds one instruction the build step obeys: `ok`,
`fail`, `flaky` (fails on the first try), `sleep <seconds>`, `hold`, `crash` (the
build's child exits 3), `hang` (the child and a grandchild ignore SIGTERM and never
finish; their pids are appended to `<root>/hung.pids`), `spew <bytes>` (the child, a C
tool, writes that much to its log), `bigfile <bytes>` (the child, Python, writes that much
to a file in its working directory), `chatter` (the build logs INFO, in the daemon's
process, as lsst.pipe.base.quantum_graph_builder and transitions.core do). A `progress` word after an
instruction makes the build report progress before its child starts. Every finished
action appends a line to `<root>/ledger.txt`, so tests can tell how often each ran.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from autoproc.actions import (
    Fail,
    FileInfo,
    Hold,
    Outcome,
    Retry,
    Wait,
    action,
    callback,
    condition,
    file_kind,
)


def ledger(ctx_or_config, line: str) -> None:
    config = getattr(ctx_or_config, "config", ctx_or_config)
    with open(Path(config.root) / "ledger.txt", "a") as f:
        f.write(line + "\n")


@file_kind("widget")
def widget_file(path: Path, config) -> FileInfo:
    text = path.read_text().strip()
    if not text:
        raise ValueError(f"{path.name}: empty widget file")
    word = text.split()[0]
    if word not in {"ok", "fail", "flaky", "sleep", "hold", "crash", "hang", "spew", "bigfile", "chatter"}:
        raise ValueError(f"{path.name}: unknown instruction {word!r}")
    key = path.name.split("-", 1)[0]
    return FileInfo(subject=("widget", key), info={"instruction": text})


@condition()
def has_files(subject, env) -> bool:
    return bool(env.store.files(subject_id=subject.id, status="ready"))


# A child that never finishes and shrugs off SIGTERM, with a grandchild that does the
# same: only SIGKILL to the whole process group ends them.
HANG = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
grand = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"])
with open(os.path.join(os.path.dirname(sys.argv[2]), "..", "hung.pids"), "a") as f:
    f.write(f"{os.getpid()} {grand.pid}\\n")
time.sleep(3600)
"""


BIGFILE = """
import sys
with open("big.out", "wb") as f:
    f.write(bytes(int(sys.argv[1])))
"""


@action()
def build(ctx) -> Outcome:
    instructions = [f["info"]["instruction"] for f in ctx.files]
    seconds = max([float(i.split()[1]) for i in instructions if i.startswith("sleep")] or [0.0])
    out = Path(ctx.config.root) / "built" / f"{ctx.subject.key}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    if any("progress" in i.split() for i in instructions):
        ctx.progress("half built")
    if "chatter" in instructions:
        import logging

        logging.getLogger("lsst.pipe.base.quantum_graph_builder").info("chatter: processing 4 quanta")
        logging.getLogger("transitions.core").info("chatter: executed callback")
        logging.getLogger("autoproc.widgets").info("chatter: for operators")
    script = "import sys, time; time.sleep(float(sys.argv[1])); open(sys.argv[2], 'w').write(sys.argv[3])"
    if "crash" in instructions:
        script = "raise SystemExit(3)"
    if "hang" in instructions:
        script = HANG
    argv = [sys.executable, "-c", script, str(seconds), str(out), " ".join(instructions)]
    for i in instructions:
        word, *arg = i.split()
        if word in ("spew", "bigfile"):
            argv_of = {"spew": ["head", "-c", *arg, "/dev/zero"], "bigfile": [sys.executable, "-c", BIGFILE, *arg]}
            if not ctx.run(argv_of[word], name=word).ok:
                raise Retry(f"{word} failed")
    result = ctx.run(argv, name="build")
    if not result.ok:
        raise Retry(f"build child exited {result.returncode}", evidence={"log": str(result.log)})
    if "fail" in instructions:
        raise Fail("the widget file says fail")
    if "flaky" in instructions and ctx.try_number == 1:
        raise Retry("flaky widget: first try fails", adjust={"memory": 2})
    if "hold" in instructions:
        raise Hold("the widget file asks for a person")
    ledger(ctx, f"build {ctx.subject.key} try={ctx.try_number} adjust={ctx.adjust}")
    return Outcome("built", evidence={"output": str(out)}, data={"files": len(ctx.files)},
                   consume=[f["path"] for f in ctx.files])


@action()
def check(ctx) -> Outcome:
    out = Path(ctx.config.root) / "built" / f"{ctx.subject.key}.txt"
    if not out.exists():
        raise Wait(f"{out} is not there yet", retry_after=ctx.config.poll_seconds)
    ledger(ctx, f"check {ctx.subject.key}")
    return Outcome("checked", evidence={"size": out.stat().st_size})


@callback()
def note_done(change: dict, env) -> None:
    ledger(env, f"done {change['key']}")


@action()
def submit_once(ctx) -> Outcome:
    marker = Path(ctx.config.root) / "submitted" / ctx.subject.key
    marker.parent.mkdir(parents=True, exist_ok=True)
    # A pretend external submission: it takes a while, and must never happen twice.
    ctx.run([sys.executable, "-c", "import time, sys; time.sleep(float(sys.argv[1]))",
             str(ctx.subject.data.get("seconds", 0))], name="submit")
    with open(marker, "a") as f:
        f.write("submitted\n")
    ledger(ctx, f"submit {ctx.subject.key}")
    return Outcome("submitted", evidence={"marker": str(marker)})


@action()
def find_submission(ctx) -> Outcome:
    marker = Path(ctx.config.root) / "submitted" / ctx.subject.key
    if marker.exists():
        return Outcome("submitted", evidence={"marker": str(marker), "recovered": True})
    if ctx.subject.data.get("unsafe_to_resubmit"):
        raise Hold("no evidence of the submission; not submitting again")
    raise Retry("no evidence of a submission: safe to submit")


@action()
def think(ctx) -> Outcome:
    """Hangs in Python for `data.seconds` (ignoring its timeout), but ends when the daemon stops."""
    end = time.monotonic() + float(ctx.subject.data.get("seconds", 0))
    while time.monotonic() < end and not (ctx.stopping and ctx.stopping.is_set()):
        time.sleep(0.05)
    return Outcome("thought")
