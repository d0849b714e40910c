"""A private PostgreSQL server for the Butler registry tests (a pytest plugin).

Session-scoped: `initdb` into a fresh directory (as `nobody` when the tests run as root:
initdb refuses root), a free port on 127.0.0.1 and a unix socket in that directory,
`postgres` as a child process of the test run (so a stop is a signal, and a killed test run
takes it along). Each test gets its own schema (the Butler's `namespace`), dropped after.
The server binaries come from Debian's `postgresql` package (`make test` installs it).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DATABASE = "autoproc_test"
NO_GIST_DATABASE = "autoproc_no_gist"  # btree_gist deliberately not created here
PASSWORD_USER, PASSWORD = "butler_pw", "right-password"
_HBA = f"""local all all trust
host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): `make test` installs "
                    "Debian's postgresql package; install it, or run the tests through `make test`")
    return Path(found[-1]).parent


@dataclass
class PostgresServer:
    """One private cluster: `url()` for a database, `stop()`/`start()` to take it away."""

    bin_dir: Path
    directory: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    _user: str | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def url(self, database: str = DATABASE, user: str = "postgres", password: str | None = None,
            port: int | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql://{auth}@127.0.0.1:{port or self.port}/{database}"

    def _run_as(self) -> dict:
        return {"user": self._user} if self._user else {}

    def init(self) -> None:
        self._user = "nobody" if os.geteuid() == 0 else None
        self.directory.mkdir(mode=0o755, exist_ok=True)
        if self._user:
            ids = pwd.getpwnam(self._user)
            os.chown(self.directory, ids.pw_uid, ids.pw_gid)
        subprocess.run([str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",  # noqa: S603
                        "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"],
                       check=True, capture_output=True, **self._run_as())
        (self.data / "pg_hba.conf").write_text(_HBA)

    def start(self) -> None:
        log = open(self.directory / "server.log", "ab")  # the child keeps it open
        try:
            self.proc = subprocess.Popen(  # noqa: S603
                [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT, **self._run_as())
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                with self.connect("postgres"):
                    return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {self.log_tail()}") from None
                time.sleep(0.1)

    def stop(self, mode: int = signal.SIGINT) -> None:
        """SIGINT: fast shutdown (clients are disconnected); SIGQUIT: immediate."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(mode)
            self.proc.wait(timeout=30)
        self.proc = None

    def connect(self, database: str = DATABASE):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database,
                               autocommit=True, connect_timeout=5)

    def execute(self, sql: str, database: str = DATABASE) -> None:
        with self.connect(database) as conn:
            conn.execute(sql)

    def log_tail(self, lines: int = 20) -> str:
        path = self.directory / "server.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    directory = Path(tempfile.mkdtemp(prefix="autoproc-pg-"))
    server = PostgresServer(_bin_dir(), directory)
    try:
        server.init()
        server.start()
        for db in (DATABASE, NO_GIST_DATABASE):
            server.execute(f"CREATE DATABASE {db}", "postgres")
        server.execute("CREATE EXTENSION btree_gist")
        server.execute(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}' SUPERUSER", "postgres")
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


_schemas = itertools.count()


@pytest.fixture
def pg_namespace(postgres: PostgresServer) -> Iterator[str]:
    """A schema of its own for one test's Butler registry (`registry.namespace`)."""
    name = f"t{os.getpid()}_{next(_schemas)}"
    yield name
    if postgres.proc is None:  # a test that stopped the server and failed before starting it again
        postgres.start()
    postgres.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
