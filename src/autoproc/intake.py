"""Intake: turn a ready file into a recorded fact about a subject.

Watchers only say "this file looks finished". Intake dedupes on (path, size, mtime)
against the store, runs the file kind's validator, records bad files with their reason
(nothing is moved or deleted), and creates the subject the file feeds. A valid file the
validator finds incomplete (e.g. a raw short of HDUs) is recorded `waiting`, with why;
its subject's action sees it beside the `ready` ones and decides when to take it.

A bad verdict records its cause: "file" (the file itself is unusable) or "environment"
(no validator for the configured kind, no machine, a stale manifest, a permission): the
latter are examined again after a configuration reload or a restart (`recheck`), and any
verdict can be sent back by hand (`autoproc files retry`), so a fixed mistake loses no file.
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
    recheck: bool = False  # examine again even if this (path, size, mtime) was judged bad


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
        if not (arrival.recheck and known["status"] in ("bad", "recheck")):
            return None  # the same fact again (a second event, or a rescan)

    def bad(reason: str, cause: str = "file") -> None:
        store.record_file(path=arrival.path, root=arrival.root, kind=arrival.kind, size=arrival.size,
                          mtime=arrival.mtime, status="bad", reason=reason, cause=cause)

    validate = actions.FILE_KINDS.get(arrival.kind)
    if validate is None:
        bad(f"no validator for file kind {arrival.kind!r} (known: {', '.join(sorted(actions.FILE_KINDS)) or 'none'})",
            "environment")
        return None
    try:
        found = validate(Path(arrival.path), config)
    except (actions.EnvironmentVerdict, PermissionError) as err:
        bad(str(err) or type(err).__name__, "environment")
        return None
    except (ValueError, OSError) as err:
        bad(str(err) or type(err).__name__)
        return None
    except Exception as err:  # a validator's bug must not stop intake (or the daemon) on one file
        bad(f"validator for {arrival.kind!r} failed: {type(err).__name__}: {err}", "environment")
        return None
    kind, key = found.subject
    machine = machines.get(kind)
    if machine is None:
        bad(f"feeds subject kind {kind!r}, which has no machine", "environment")
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


def to_recheck(store: Store, config: Config) -> list[Arrival]:
    """The bad files to examine again now: environment verdicts and those an operator sent
    back (`recheck`), as arrivals, for files still there. Called at start and after a reload."""
    rows = store.files(status="bad", cause="environment") + store.files(status="recheck")
    return [a for a in (_arrival_of(row, config) for row in rows) if a is not None]


def requested_rechecks(store: Store, config: Config) -> list[Arrival]:
    """The files an operator sent back with `autoproc files retry` (the daemon polls for them)."""
    return [a for a in (_arrival_of(row, config) for row in store.files(status="recheck")) if a is not None]


def _arrival_of(row: dict, config: Config) -> Arrival | None:
    try:
        st = Path(row["path"]).stat()
    except OSError:
        return None  # gone: nothing to examine (the verdict stays, with its reason)
    # The root's kind as configured now: the old verdict may have come from a misspelt one.
    kind = next((w.kind for w in config.watch if w.name == row["root"]), row["kind"])
    return Arrival(row["root"], kind, row["path"], st.st_size, st.st_mtime, recheck=True)


def check_watch_kinds(config: Config) -> None:
    """Every watch root's `kind` must be one a loaded plugin provides (call after loading them)."""
    from autoproc.config import ConfigError

    wrong = [f"watch root {w.name!r} has kind {w.kind!r}" for w in config.watch if w.kind not in actions.FILE_KINDS]
    if wrong:
        raise ConfigError(f"{'; '.join(wrong)}: no loaded plugin provides it (file kinds: "
                          f"{', '.join(sorted(actions.FILE_KINDS)) or 'none'})")
