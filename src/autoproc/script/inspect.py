"""Read-only views of the store: status, one subject, its history."""

from __future__ import annotations

import time
from typing import Any

from autoproc.store import Store


def status(store: Store, *, kind: str | None = None, state: str | None = None, limit: int = 50) -> dict[str, Any]:
    """Counts by kind and state, the subjects asked for, what needs a person, the daemon."""
    counts: dict[str, dict[str, int]] = {}
    for k, s, n in store.counts():
        if kind and k != kind:
            continue
        counts.setdefault(k, {})[s] = n
    listed = store.subjects(kind, state, limit=limit) if (kind or state) else []
    held = store.subjects(kind, held=True, limit=limit)
    daemon = store.daemon_info()
    if daemon:
        daemon = {**daemon, "alive": time.time() - daemon["heartbeat"] < 30 and daemon["status"] != "stopped"}
    return {
        "counts": counts,
        "subjects": [_brief(s) for s in listed],
        "held": [_brief(s) for s in held],
        "files": store.file_counts(),
        "bad_files": [{"path": f["path"], "reason": f["reason"], "cause": f["cause"]}
                      for f in store.files(status="bad", limit=limit)],
        # Valid but incomplete (a raw short of HDUs): its stage waits for the rest, for a while.
        "waiting_files": [{"path": f["path"], "reason": f["reason"], "since": f["updated"]}
                          for f in store.files(status="waiting", limit=limit)],
        "backups": store.backups(limit=3),
        "problems": store.problems(limit=10),
        "daemon": daemon,
    }


def _brief(s) -> dict[str, Any]:
    return {"kind": s.kind, "key": s.key, "state": s.state, "held": s.held, "since": s.entered,
            "version": s.version}


def show(store: Store, kind: str, key: str, *, journal_rows: int = 10) -> dict[str, Any]:
    s = store.subject(kind, key)
    return {
        **_brief(s),
        "data": s.data,
        "attempts": [a.to_json() for a in store.attempts(s.id, limit=20, newest_first=True)[::-1]],
        "files": store.files(subject_id=s.id, limit=200),
        "journal": store.journal(s.id, limit=journal_rows, newest_first=True)[::-1],
    }


def history(store: Store, kind: str, key: str) -> list[dict[str, Any]]:
    return store.journal(store.subject(kind, key).id)
