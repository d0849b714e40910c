"""How the CLI carries out a request (`autoproc.requests`): through the daemon when it runs,
else by itself.

Through the daemon's control socket the daemon decides who the caller is (peer credentials)
and what they may do. Without a daemon the CLI writes the store directly, which only whoever
may write the database file can (its owner, or root), and the journal names the real uid's
user. Views read the database directly when the caller can, else ask the daemon (viewers).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoproc import control, requests
from autoproc.config import Config
from autoproc.errors import AutoprocError
from autoproc.machines import StateMachine
from autoproc.script.override import user_name
from autoproc.store import Store

CLI_BUSY_TIMEOUT_MS = 5_000


def _direct(config: Config, machines: Callable[[], dict[str, StateMachine]], request: dict[str, Any],
            writes: bool) -> dict[str, Any]:
    # A few seconds, not the library's 30: a command run while another process holds the
    # database's write lock says so (exit 2, naming the file) instead of hanging.
    store = Store(config.db, create=writes, readonly=not writes, busy_timeout_ms=CLI_BUSY_TIMEOUT_MS)
    try:
        return requests.perform(store, machines(), config, request, user=user_name(os.getuid()))
    finally:
        store.close()


def _can(path: Path, mode: int) -> bool:
    """Whether this process may read or write the database (or create it, when there is none).
    os.path.exists, not Path.exists: a directory we may not enter is "cannot", not an error."""
    if os.path.exists(path):
        return os.access(path, mode)
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return mode == os.W_OK and os.access(path, os.W_OK)


def carry_out(config: Config, machines: Callable[[], dict[str, StateMachine]], request: dict[str, Any]
              ) -> dict[str, Any]:
    """The result of `request` (`{"lines": …}` or `{"data": …}`); AutoprocError with the reason
    when it is refused or fails."""
    request = {k: v for k, v in request.items() if v is not None}
    verb = requests.check(request)
    db = Path(config.db)
    if not verb.writes and _can(db, os.R_OK):
        return _direct(config, machines, request, writes=False)
    reply = control.call(config.control, request)
    if reply is None:
        if not _can(db, os.W_OK if verb.writes else os.R_OK):
            what = "write" if verb.writes else "read"
            raise AutoprocError(f"{user_name(os.getuid())} cannot {what} the state database {db}, and no daemon "
                                f"listens on {config.control.socket}: start the daemon (then operators go "
                                "through it), or run this as the database's owner")
        return _direct(config, machines, request, writes=verb.writes)
    if not reply["ok"]:
        raise AutoprocError(str(reply.get("error")))
    return reply
