"""`autoproc store rebuild`: a state database made again from the evidence, with no backup.

Each kind's rebuild hook (`autoproc.actions.rebuild_hook`, implemented by the chains in
`autoproc.deep.rebuild` and `autoproc.desgw.rebuild`) finds its subjects in the watched
roots, the Butler, the DESGW trees and the post-processing outputs, each in the furthest
state the evidence proves. The subject is created there with one journal row (trigger
`rebuild`) naming what it was rebuilt from. The daemon's actions then find the rest from
the same evidence: a step whose outputs exist is not run again, a DAG with a job id or grid
outputs is not submitted again, a completed post-processing run is not launched again.

What only the database held cannot come back: the operators' journal (overrides, notes,
the reasons given) and holds. See RELIABILITY.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from autoproc import actions
from autoproc.config import Config
from autoproc.errors import AutoprocError
from autoproc.machines import StateMachine
from autoproc.process import make_dirs
from autoproc.store import Store

LOST = ("the operators' journal (overrides, notes and the reasons given) and holds cannot be rebuilt: "
        "only the database held them")


class RebuildError(AutoprocError):
    """The rebuild cannot start, or a hook found something that is not a valid subject."""


@dataclass
class RebuildReport:
    created: list[tuple[str, str, str, str]] = field(default_factory=list)  # (kind, key, state, source)
    aside: Path | None = None  # the database file it replaced
    kinds_without_hook: list[str] = field(default_factory=list)
    backups: list[Path] = field(default_factory=list)  # there were backups: a restore would have kept more
    lost: str = LOST


def rebuild(config: Config, machines: dict[str, StateMachine], *, replace: bool = False,
            operator: str = "rebuild") -> RebuildReport:
    """Create the state database from the evidence (the daemon must not be running).

    An existing database is only replaced with `replace` (it is kept beside, renamed, as
    `store restore` does): a readable one holds the journal, which a rebuild cannot bring back."""
    from autoproc.backup import backups, set_aside
    from autoproc.store import lock_store

    db = config.db
    make_dirs(db.parent)
    lock = lock_store(db)  # AlreadyRunning while a daemon runs; and none starts meanwhile
    try:
        if db.exists() and not replace:
            raise RebuildError(f"{db} exists: a rebuild would replace it and lose its journal. If it is damaged, "
                               "`autoproc store restore` puts a backup back; to rebuild anyway, add --replace "
                               "(the file is kept beside it)")
        found: list[tuple[str, actions.Rebuilt]] = []
        report = RebuildReport(backups=backups(config.backup.directory))
        for kind, machine in machines.items():
            hook = actions.REBUILD_HOOKS.get(kind)
            if hook is None:
                report.kinds_without_hook.append(kind)
                continue
            for r in hook(config):
                if not re.match(machine.spec.key_pattern, r.key):
                    raise RebuildError(f"{kind} rebuild hook: {r.key!r} is not a valid {kind} key "
                                       f"(must match {machine.spec.key_pattern})")
                if r.state not in machine.spec.states:
                    raise RebuildError(f"{kind} rebuild hook: {kind} {r.key} has no state {r.state!r}")
                found.append((kind, r))
        report.aside = set_aside(db)
        store = Store(db)
        try:
            for kind, r in found:
                _, created = store.ensure_subject(
                    kind, r.key, r.state, actor=operator, trigger="rebuild", data=r.data,
                    reason=f"rebuilt from evidence: {r.source}", evidence={"rebuilt_from": r.source, **r.evidence})
                if created:
                    report.created.append((kind, r.key, r.state, r.source))
            store.add_problem("store", f"rebuilt from the evidence ({len(report.created)} subjects); {LOST}")
        finally:
            store.close()
        return report
    finally:
        os.close(lock)
