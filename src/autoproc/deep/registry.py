"""The Butler registry database: its configuration, what `deep init` says when it cannot
use it, and how a lost connection is told apart from a step's own failure.

A registry on PostgreSQL is a server that can go away (a restart, a network cut, a
failover). A step that loses it has not failed: it waits, spends no retry budget, and runs
again once the server answers (the night's steps are judged from the Butler, so nothing
is lost or done twice). See README, "PostgreSQL registry".
"""

from __future__ import annotations

import re
from typing import Any

from autoproc.errors import AutoprocError

# What psycopg, libpq and SQLAlchemy say when the server is not there or went away,
# found in exception messages and in the last lines of a child's log.
_CONNECTION_LOST = re.compile(
    r"connection to server at .* failed|could not connect to server|Connection refused|"
    r"server closed the connection unexpectedly|terminating connection due to administrator command|"
    r"the database system is (?:shutting down|starting up|in recovery mode)|consuming input failed|"
    r"no connection to the server|could not translate host name|connection is closed|"
    r"SSL SYSCALL error|Connection timed out|connection timeout expired")
_SQLALCHEMY_NOISE = re.compile(r"^\((?:psycopg2?|sqlalchemy)[\w.]*\)\s*|\s*\(Background on this error at: \S+\)")
_NAMESPACE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class RegistryError(AutoprocError):
    """The registry database cannot be used as configured; the message says why and what fixes it."""


def registry_config(registry_db: str | None, namespace: str | None = None) -> dict[str, Any]:
    """The `Butler.makeRepo` config for a registry URL (None = SQLite inside the repo) and,
    on PostgreSQL, the schema that holds this repository's tables."""
    if not registry_db:
        return {}
    if registry_db.startswith(("postgresql://", "postgresql+", "postgres://")):
        registry: dict[str, Any] = {"db": registry_db.replace("postgres://", "postgresql://", 1)}
        if namespace:
            registry["namespace"] = check_namespace(namespace)
        return {"registry": registry}
    if registry_db.startswith("sqlite:"):
        return {"registry": {"db": registry_db}}
    raise RegistryError(f"unsupported registry database URL {hide_password(registry_db)!r} "
                        "(postgresql://USER@HOST:PORT/DATABASE or sqlite:///PATH)")


def check_namespace(name: str) -> str:
    if not _NAMESPACE.match(name):
        raise RegistryError(f"registry namespace {name!r} is not a plain PostgreSQL schema name "
                            "(lower-case letters, digits and _, not starting with a digit, at most 63)")
    return name


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def lost_connection(text: str) -> bool:
    """Whether `text` (an exception message, a log's last lines) says the database connection
    could not be made or was lost."""
    return bool(_CONNECTION_LOST.search(text))


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _operational(err: BaseException) -> bool:
    names = {f"{type(e).__module__}.{type(e).__name__}" for e in _chain(err)}
    return bool(names & {"sqlalchemy.exc.OperationalError", "sqlalchemy.exc.InterfaceError",
                         "psycopg.OperationalError", "psycopg.InterfaceError"})


def summary(err: BaseException) -> str:
    """The database's own words, on one line, without SQLAlchemy's wrapping."""
    text = " ".join(str(err).split())
    return _SQLALCHEMY_NOISE.sub("", text).strip() or type(err).__name__


def unreachable(err: BaseException) -> str | None:
    """A one-line reason if `err` (or what caused it) is a lost or refused database
    connection, else None."""
    for e in _chain(err):
        if lost_connection(str(e)):
            return summary(e)
    if _operational(err):
        return summary(err)
    return None


def create_error(err: BaseException, registry_db: str) -> RegistryError:
    """What `deep init` tells the operator when the registry cannot be created."""
    url = hide_password(registry_db)
    text = summary(err)
    database = registry_db.rsplit("/", 1)[-1].split("?", 1)[0]
    if "btree_gist" in text:
        hint = (f"the database needs the btree_gist extension: as a superuser, run "
                f"`CREATE EXTENSION btree_gist;` in database {database!r} (e.g. psql -d {database} "
                "-c 'CREATE EXTENSION btree_gist;')")
    elif "password authentication failed" in text or "no password supplied" in text:
        hint = "check the user and password in deep.registry_db (or the server's pg_hba.conf)"
    elif re.search(r'database "[^"]+" does not exist', text):
        hint = f"create the database first (e.g. createdb {database}), or fix its name in deep.registry_db"
    elif lost_connection(text):
        hint = "is the server running, and are the host and port in deep.registry_db right?"
    else:
        hint = "see the server's log"
    return RegistryError(f"cannot create the Butler registry at {url}: {text} — {hint}")
