"""Engines: SQLite in WAL mode with a busy timeout; any other SQLAlchemy URL as it is."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ._url import StorageError, sqlite_path

BUSY_TIMEOUT_S = 60.0
"""How long a SQLite connection waits for a lock before failing (the single writer may be busy)."""
SERVER_CONNECT_TIMEOUT_S = 10
"""How long opening a connection to a database server may take before it counts as lost."""
# TCP keepalive probes: a server that vanished without closing the connection (a host that died,
# a network cut) is noticed within about 30 s instead of a statement waiting forever.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 4}


def engine_kwargs(url: str, *, idle_in_transaction_s: float | None = None) -> dict[str, Any]:
    """Keyword arguments for `sqlalchemy.create_engine` (and Optuna's `RDBStorage`) for this URL.

    `idle_in_transaction_s` (PostgreSQL): the server ends a session of ours that stays idle inside
    a transaction this long, so a process frozen or cut off mid-transaction does not hold its row
    locks (and every other process waiting on them) forever.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in ("psycopg", "psycopg2"):  # libpq
        connect_args: dict[str, Any] = {"connect_timeout": SERVER_CONNECT_TIMEOUT_S, **_KEEPALIVES}
        if idle_in_transaction_s is not None:
            connect_args["options"] = f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_s * 1000)}"
        # pre-ping: a pooled connection the server dropped (it restarted) is replaced before use.
        return {"pool_pre_ping": True, "connect_args": connect_args}
    return {"pool_pre_ping": True}


def create_engine(url: str, *, idle_in_transaction_s: float | None = None) -> sa.Engine:
    """An engine for `url`; SQLite connections use WAL journaling and a busy timeout (see `engine_kwargs`).

    Raises:
        StorageError: for an unknown dialect or a SQLite file in a directory that does not exist.
    """
    path = sqlite_path(url)
    if path is not None and not path.parent.exists():
        raise StorageError(f"storage '{url}': directory '{path.parent}' does not exist")
    try:
        engine = sa.create_engine(url, **engine_kwargs(url, idle_in_transaction_s=idle_in_transaction_s))
    except (ArgumentError, NoSuchModuleError) as err:
        raise StorageError(f"storage '{url}': {' '.join(str(err).split())}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer, and a killed writer leaves a consistent file.
    mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
    if mode != "wal":
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
