"""The Butlers of the daemon's actions: each action gets a Butler of its own, cloned from
one this process keeps per repository.

Opening a Butler reads the repository's configuration and builds the schema objects of
every registry table (40–100 ms, more than many steps' graph builds). A clone shares the
kept Butler's configuration and database connection pool but has its own registry
session and caches, so an action still sees the repository as it is now (what a step's
child registered, what another action wrote) and may run beside other actions in its
thread. Measured in benchmarks/README.md (issue 14).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
# repo -> (the stat of its butler.yaml when opened, the kept Butler)
_kept: dict[str, tuple[tuple[int, int], Any]] = {}


def _stamp(butler_yaml: Path) -> tuple[int, int]:
    st = os.stat(butler_yaml)
    return st.st_ino, st.st_mtime_ns


def action_butler(repo: Path | str) -> Any:
    """A new writeable Butler on `repo` for one action (close it when done). The kept
    Butler is opened again when the repository's butler.yaml is not the file it was
    opened from (a repository made anew under the same path). Raises what
    `Butler.from_config` raises."""
    from lsst.daf.butler import Butler

    key = str(repo)
    stamp = _stamp(Path(repo) / "butler.yaml")
    with _lock:
        kept = _kept.get(key)
        if kept is None or kept[0] != stamp:
            if kept is not None:
                kept[1].close()  # clones still in use keep working (daf_butler re-creates the pool)
            kept = (stamp, Butler.from_config(key, writeable=True))
            _kept[key] = kept
        return kept[1].clone()


def forget(repo: Path | str) -> None:
    """Drop the kept Butler of `repo`, after its registry stopped answering: the next
    action connects afresh instead of through a pool whose connections may be dead."""
    with _lock:
        kept = _kept.pop(str(repo), None)
    if kept is not None:
        kept[1].close()
