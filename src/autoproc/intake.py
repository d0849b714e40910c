"""Intake: turn a ready file into a recorded fact about a subject.

Watchers only say "this file looks finished". Intake dedupes on (path, size, mtime)
against the store, runs the file kind's validator, records bad files with their reason
(nothing is moved or deleted), and creates the subject the file feeds. A valid file the
validator finds incomplete (e.g. a raw short of HDUs) is recorded `waiting`, with why;
its subject's action sees it beside the `ready` ones and decides when to take it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from autoproc import actions
from autoproc.config import Config
from autoproc.machines import StateMachine
from autoproc.store import Store, Subject


@dataclass(frozen=True)
class Arrival:
    """A file the watchers (or a reconcile scan) say is ready."""

    root: str
    kind: str
    path: str
    size: int
    mtime: float


@dataclass(frozen=True)
class Accepted:
    subject: Subject
    created: bool
    path: str
    changed: bool = False  # the path was recorded before with another size or mtime


def accept(store: Store, config: Config, machines: dict[str, StateMachine], arrival: Arrival) -> Accepted | None:
    """Record `arrival`; the subject it feeds, or None (duplicate or bad file)."""
    known = store.file(arrival.path)
    if known is not None and known["size"] == arrival.size and known["mtime"] == arrival.mtime:
        return None  # the same fact again (a second event, or a rescan)

    def bad(reason: str) -> None:
        store.record_file(path=arrival.path, root=arrival.root, kind=arrival.kind, size=arrival.size,
                          mtime=arrival.mtime, status="bad", reason=reason)

    validate = actions.FILE_KINDS.get(arrival.kind)
    if validate is None:
        bad(f"no validator for file kind {arrival.kind!r}")
        return None
    try:
        found = validate(Path(arrival.path), config)
    except (ValueError, OSError) as err:
        bad(str(err) or type(err).__name__)
        return None
    except Exception as err:  # a validator's bug must not stop intake (or the daemon) on one file
        bad(f"validator for {arrival.kind!r} failed: {type(err).__name__}: {err}")
        return None
    kind, key = found.subject
    machine = machines.get(kind)
    if machine is None:
        bad(f"feeds subject kind {kind!r}, which has no machine")
        return None
    if not re.match(machine.spec.key_pattern, key):
        bad(f"subject key {key!r} does not match {machine.spec.key_pattern}")
        return None
    subject, created = store.ensure_subject(kind, key, machine.spec.initial, actor="daemon",
                                            reason=f"first file: {arrival.path}")
    store.record_file(path=arrival.path, root=arrival.root, kind=arrival.kind, size=arrival.size,
                      mtime=arrival.mtime, status="waiting" if found.waiting else "ready", reason=found.waiting,
                      subject_id=subject.id, info=found.info)
    return Accepted(subject, created, arrival.path, changed=known is not None)
