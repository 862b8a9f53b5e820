"""A PostgreSQL server for the tests and the scale-out benchmark, and fresh databases in it.

`$RCUTUNE_TEST_POSTGRES` (set by `.ci/run`) names a server URL whose user may create databases.
Without it, `throwaway_server()` starts a private cluster from the distribution's `initdb`
(`/usr/lib/postgresql/<version>/bin`) in a temporary directory, as the `postgres` user when run as
root (PostgreSQL refuses to run as root), and removes it afterwards. Tests that restart the server
take a `throwaway_cluster()` of their own (a given server is not theirs to restart).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV_VAR = "RCUTUNE_TEST_POSTGRES"


class NoPostgres(Exception):
    """Neither $RCUTUNE_TEST_POSTGRES nor an initdb to start a server with."""


def find_initdb() -> Path | None:
    """The newest distribution initdb, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parts[-3].split(".")],
    )
    if found:
        return Path(found[-1])
    on_path = shutil.which("initdb")
    return Path(on_path) if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A private PostgreSQL cluster in a temporary directory, which its owner may stop, start and restart.

    Trust authentication, user `rcutune`, listening on 127.0.0.1 at a free port. Run as the
    `postgres` user when we are root (PostgreSQL refuses to run as root).

    Raises:
        NoPostgres: no initdb on this machine.
    """

    def __init__(self) -> None:
        initdb = find_initdb()
        if initdb is None:
            raise NoPostgres(f"no PostgreSQL: set {ENV_VAR} or install the postgresql package (initdb)")
        self.bindir = initdb.parent
        self.directory = Path(tempfile.mkdtemp(prefix="rcutune-pg-"))
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres")
            self._as_postgres = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.directory / "data", _free_port()
        self.url = f"postgresql+psycopg://rcutune@127.0.0.1:{self.port}/postgres"
        try:
            self._run("initdb", "-D", str(self.data), "-U", "rcutune", "--auth=trust", "-E", "UTF8")
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _run(self, program: str, *args: str, check: bool = True) -> int:
        return subprocess.run(
            [*self._as_postgres, str(self.bindir / program), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=check,
        ).returncode

    def _ctl(self, *args: str, check: bool = True) -> int:
        options = (
            f"-k {self.directory} -c listen_addresses=127.0.0.1 -p {self.port} -c max_connections=200 -c fsync=off"
        )
        return self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.directory / "log"), "-w", "-o", options, *args, check=check
        )

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: `fast` (sessions ended, then a clean shutdown) or `immediate` (as if it crashed)."""
        self._ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "restart")

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running:
            self._ctl("-m", "immediate", "stop", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a private PostgreSQL cluster (trust authentication, user `rcutune`); yields its server URL.

    Raises:
        NoPostgres: no initdb on this machine.
    """
    with throwaway_cluster() as cluster:
        yield cluster.url


@contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started `Cluster`, removed afterwards (for tests that stop and restart the server)."""
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@contextmanager
def server() -> Iterator[str]:
    """The server of $RCUTUNE_TEST_POSTGRES if set, else a throwaway one; yields its URL."""
    given = os.environ.get(ENV_VAR)
    if given:
        yield given
        return
    with throwaway_server() as url:
        yield url


def _admin(server_url: str):
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(server_url)
    return psycopg.connect(
        host=u.host, port=u.port, user=u.username, password=u.password, dbname=u.database or "postgres", autocommit=True
    )


@contextmanager
def fresh_database(server_url: str, prefix: str = "rcutune_test") -> Iterator[str]:
    """CREATE DATABASE with a unique name on the server; yields its URL and drops it afterwards."""
    from sqlalchemy.engine import make_url

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with _admin(server_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
