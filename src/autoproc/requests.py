"""What the CLI asks of the store, as data: one table of verbs.

The same request is carried out the same way whether the CLI does it itself (no daemon
running: it writes the store directly) or the daemon does it for the caller through its
control socket (`autoproc.control`). Who makes a change (`user`) is established by the
transport, never taken from the request: the request's `operator` is only an "on behalf
of" note. A request is checked field by field before anything runs, since the daemon
receives it from another user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoproc.config import Config
from autoproc.errors import AutoprocError
from autoproc.machines import StateMachine
from autoproc.store import Store

MAX_TEXT = 4096


class RequestError(AutoprocError):
    """A request that is not well-formed (unknown verb, missing or mistyped field)."""


Runner = Callable[[Store, dict[str, StateMachine], Config, dict[str, Any], str], dict[str, Any]]


@dataclass(frozen=True)
class Verb:
    name: str
    writes: bool
    required: dict[str, type | tuple[type, ...]]
    optional: dict[str, type | tuple[type, ...]]
    run: Runner


VERBS: dict[str, Verb] = {}
_SUBJECT = {"kind": str, "key": str}
_OVERRIDE = {"operator": str, "dry_run": bool}


def _verb(name: str, *, writes: bool, required: dict | None = None, optional: dict | None = None):
    def register(fn: Runner) -> Runner:
        VERBS[name] = Verb(name, writes, required or {}, optional or {}, fn)
        return fn

    return register


def verb(name: str, *, writes: bool, required: dict | None = None, optional: dict | None = None):
    """Register a chain's request (e.g. in a chain's plugin module), as the core's below are."""
    return _verb(name, writes=writes, required=required, optional=optional)


def _is(value: Any, types: type | tuple[type, ...]) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:  # JSON true is not a number here
        return False
    if isinstance(value, list):
        return list in types and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, types)


def check(request: Any) -> Verb:
    """The request's verb, once every field is known and of the right type."""
    if not isinstance(request, dict):
        raise RequestError(f"a request is a JSON object, not {type(request).__name__}")
    name = request.get("verb")
    if not isinstance(name, str) or name not in VERBS:
        shown = name if isinstance(name, str) else type(name).__name__
        raise RequestError(f"unknown verb {shown[:40]!r}; known: {', '.join(sorted(VERBS))}")
    verb = VERBS[name]
    allowed = {**verb.required, **verb.optional}
    unknown = sorted(set(request) - set(allowed) - {"verb"})
    if unknown:
        raise RequestError(f"{name}: unknown fields {', '.join(f[:40] for f in unknown)}")
    for field, types in allowed.items():
        if field not in request or request[field] is None:
            if field in verb.required:
                raise RequestError(f"{name}: field {field!r} is required")
            continue
        value = request[field]
        if not _is(value, types):
            raise RequestError(f"{name}: field {field!r} has the wrong type ({type(value).__name__})")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise RequestError(f"{name}: field {field!r} is longer than {MAX_TEXT} characters")
    return verb


def perform(store: Store, machines: dict[str, StateMachine], config: Config, request: Any, *,
            user: str) -> dict[str, Any]:
    """Carry out `request` as `user`: `{"lines": [...]}` for a change, `{"data": ...}` for a view."""
    verb = check(request)
    return verb.run(store, machines, config, {k: v for k, v in request.items() if k != "verb"}, user)


def who(r: dict[str, Any], user: str) -> dict[str, Any]:
    """Who makes a change (`user`, from the transport) and on whose behalf (the request's note)."""
    return {"operator": user, "on_behalf_of": r.get("operator") if r.get("operator") != user else None}


# -- changes --------------------------------------------------------------------------------

@_verb("set", writes=True, required={**_SUBJECT, "state": str, "reason": str},
       optional={**_OVERRIDE, "force": bool})
def _set(store, machines, config, r, user):
    from autoproc.script import override

    plan = override.set_state(store, machines, r["kind"], r["key"], r["state"], reason=r["reason"],
                              force=bool(r.get("force")), dry_run=bool(r.get("dry_run")), **who(r, user))
    return {"lines": [plan.describe()]}


def _subject_override(name: str) -> None:
    @_verb(name, writes=True, required={**_SUBJECT, "reason": str}, optional=_OVERRIDE)
    def run(store, machines, config, r, user):
        from autoproc.script import override

        plan = getattr(override, name)(store, machines, r["kind"], r["key"], reason=r["reason"],
                                       dry_run=bool(r.get("dry_run")), **who(r, user))
        return {"lines": [plan.describe()]}


for _name in ("retry", "hold", "release"):
    _subject_override(_name)


@_verb("rerun-from", writes=True, required={**_SUBJECT, "state": str, "reason": str}, optional=_OVERRIDE)
def _rerun_from(store, machines, config, r, user):
    from autoproc.script import override

    plan = override.rerun_from(store, machines, r["kind"], r["key"], r["state"], reason=r["reason"],
                               dry_run=bool(r.get("dry_run")), config=config, **who(r, user))
    return {"lines": [plan.describe()]}


@_verb("add", writes=True, required={**_SUBJECT, "reason": str}, optional={"operator": str, "data": dict})
def _add(store, machines, config, r, user):
    from autoproc.script import override

    subject = override.add(store, machines, r["kind"], r["key"], reason=r["reason"], data=r.get("data"),
                           **who(r, user))
    return {"lines": [f"added {subject.ref} in {subject.state}"]}


# -- views ----------------------------------------------------------------------------------

@_verb("status", writes=False, optional={"kind": str, "state": str, "limit": int})
def _status(store, machines, config, r, user):
    from autoproc.script.inspect import status

    return {"data": status(store, kind=r.get("kind"), state=r.get("state"), limit=r.get("limit") or 50)}


@_verb("show", writes=False, required=_SUBJECT)
def _show(store, machines, config, r, user):
    from autoproc.script.inspect import show

    return {"data": show(store, r["kind"], r["key"])}


@_verb("history", writes=False, required=_SUBJECT)
def _history(store, machines, config, r, user):
    from autoproc.script.inspect import history

    return {"data": history(store, r["kind"], r["key"])}


@_verb("report", writes=False, required={"out_dir": str})
def _report(store, machines, config, r, user):
    # The page is written by the caller (into its own --out); only the links are relative to it.
    from pathlib import Path

    from autoproc.report import collect, render

    return {"data": {"html": render(collect(store, machines, config), Path(r["out_dir"]))}}
