"""The Slurm jobs autoproc causes, found by the `--comment` it gives them.

Slurm jobs outlive the processes that submitted them: a daemon killed with -9 leaves its
HTEX blocks queued or running, and a killed `bps submit` leaves the Parsl block of its
step. Every job autoproc causes therefore carries a comment that names the state database
(`autoproc-<hash>`) and what it belongs to (`htex` for the daemon's own blocks, `a<id>`
for an attempt's step jobs). A restart, a clean stop and the retry of a killed attempt
cancel exactly those jobs: never anyone else's. Jobs are read with `squeue` (clusters
without accounting have no `sacct`).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SQUEUE_FORMAT = "%i|%T|%k|%r|%P|%N"
COMMAND_TIMEOUT = 30.0


class SlurmError(Exception):
    """A Slurm client command failed (the controller down, a bad SLURM_CONF…)."""


@dataclass(frozen=True)
class Job:
    id: str
    state: str  # PENDING, RUNNING, COMPLETING, …
    comment: str
    reason: str  # why it is pending ("None" when it is not)
    partition: str
    nodes: str


def tag_of(db: Path | str) -> str:
    """The comment prefix of every job caused through this state database."""
    digest = hashlib.sha1(str(Path(db).resolve()).encode(), usedforsecurity=False).hexdigest()[:12]
    return f"autoproc-{digest}"


def daemon_comment(db: Path | str) -> str:
    """The comment of the daemon's own HTEX blocks."""
    return f"{tag_of(db)}:htex"


def attempt_comment(db: Path | str, attempt_id: int) -> str:
    """The comment of the Slurm jobs one attempt's step submits (bps on the Slurm site)."""
    return f"{tag_of(db)}:a{int(attempt_id)}"


def _run(argv: list[str]) -> str:
    program = shutil.which(argv[0])
    if program is None:
        raise SlurmError(f"{argv[0]} not found on PATH (the Slurm client tools are needed)")
    try:
        res = subprocess.run([program, *argv[1:]], capture_output=True, text=True,  # noqa: S603
                             timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{' '.join(argv)}: no answer in {COMMAND_TIMEOUT:.0f} s") from None
    if res.returncode != 0:
        raise SlurmError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr.strip()[:300]}")
    return res.stdout


def jobs(prefix: str) -> list[Job]:
    """The unfinished jobs whose comment starts with `prefix`."""
    out = _run(["squeue", "-h", "-a", "-o", SQUEUE_FORMAT])
    found = []
    for line in out.splitlines():
        parts = line.split("|", 5)
        if len(parts) == 6 and parts[2].startswith(prefix):
            found.append(Job(*parts))
    return found


def cancel(found: Iterable[Job]) -> list[str]:
    """scancel these jobs; returns their ids."""
    ids = [j.id for j in found]
    if ids:
        _run(["scancel", *ids])
    return ids


def cancel_tagged(prefix: str) -> list[str]:
    """Cancel every unfinished job whose comment starts with `prefix`; their ids."""
    return cancel(jobs(prefix))


# squeue's reasons for a pending job that only waits for its turn; any other needs a look.
_TURN = frozenset({"None", "Priority", "Resources", "BeginTime", "Dependency", "JobHeldUser", ""})
_NODE_DOWN = ("drain", "down", "fail", "maint", "inval", "unk")


def unavailable_nodes(partition: str) -> list[str]:
    """`node state (reason)` for the nodes of `partition` that cannot take jobs."""
    out = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N|%T|%E"])
    found = []
    for line in out.splitlines():
        node, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if any(word in state.lower() for word in _NODE_DOWN):
            found.append(f"{node} {state.lower()}" + (f" ({reason})" if reason and reason != "none" else ""))
    return found


def waiting_reason(found: Iterable[Job]) -> str | None:
    """Why these jobs cannot start, in words naming the partition, its nodes that are out
    (drained, down) and the reason Slurm gives; None when every pending one just waits for
    its turn."""
    stuck = [j for j in found if j.state == "PENDING" and j.reason not in _TURN]
    if not stuck:
        return None
    parts = []
    for j in stuck:
        try:
            nodes = unavailable_nodes(j.partition)
        except SlurmError:
            nodes = []
        out = f" (nodes out: {', '.join(nodes)})" if nodes else ""
        parts.append(f"Slurm job {j.id} pending in partition {j.partition}{out}: {j.reason}")
    return "; ".join(parts)


def describe_ran_on(attempt: dict[str, Any]) -> str:
    """`host` or `host, Slurm job N`: where an attempt's action ran (for show and the report)."""
    ran_on = attempt.get("result", {}).get("ran_on") or {}
    host = ran_on.get("host") or attempt.get("host") or ""
    job = ran_on.get("slurm_job_id")
    return f"{host}, Slurm job {job}" if job else host
