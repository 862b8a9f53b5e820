"""Open-time checks: refuse a database rcutune must not touch, before anything can write to it.

Optuna and SQLAlchemy write as soon as they open a database (a zero-length file gets a schema,
an old Optuna schema gets new tables), so every command checks first, changing nothing: SQLite
files as SQLite will find them once it has recovered what a killed run left (header, size,
`PRAGMA quick_check`; see `_sqlite_file`), other databases through a connection with a short
timeout; then the versions of rcutune's and Optuna's tables.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from ._schema import SCHEMA_VERSION, SchemaVersion
from ._sqlite_file import check_sqlite_file
from ._url import StorageError, display_url, sqlite_path

CONNECT_TIMEOUT_S = 5
"""How long the check waits for a database server before saying it cannot connect."""

_OPTUNA_VERSION_TABLE = "alembic_version"
_EXAMPLES = "sqlite:///FILE.db or postgresql+psycopg://USER@HOST/DATABASE"


def check_database(url: str) -> None:
    """Refuse (StorageError, one line naming the database and the mend) what no command may open.

    Changes nothing; a database that is missing passes (it will be created). A SQLite file is
    judged as SQLite will find it once it has recovered what a killed run left (a -wal, a hot
    journal), so a valid database is never refused. Refused: an unknown URL scheme or a missing
    driver; a SQLite file that is empty, not SQLite, truncated, corrupt or another application's
    (tables, but none of rcutune's or Optuna's); a server that does not answer; tables from a newer
    rcutune; Optuna tables from another Optuna version (older ones name the `optuna storage upgrade`
    command to run).
    """
    check_scheme(url)
    path = sqlite_path(url)
    if path is not None:
        if path.exists():
            _check_sqlite(path, url)
        return
    if sa.engine.make_url(url).get_backend_name() == "sqlite":
        return  # in-memory
    _check_server(url)


def check_scheme(url: str) -> None:
    """Refuse a URL whose database kind or driver SQLAlchemy does not know."""
    parsed = sa.engine.make_url(url)
    try:
        parsed.get_dialect().import_dbapi()
    except NoSuchModuleError:
        raise StorageError(
            f"storage URL '{display_url(url)}': unknown database scheme '{parsed.drivername}'; use {_EXAMPLES}"
        ) from None
    except ImportError as err:
        raise StorageError(
            f"storage URL '{display_url(url)}': the driver of '{parsed.drivername}' is not "
            f"installed ({err.name or err}); install it, or use {_EXAMPLES}"
        ) from None
    except ArgumentError as err:
        raise StorageError(f"storage URL '{display_url(url)}': {' '.join(str(err).split())}") from None


def _check_sqlite(path: Path, url: str) -> None:
    if path.is_dir():
        raise StorageError(f"{path} is a directory, not a database file; point --storage at a file")

    def contents(conn: sqlite3.Connection) -> None:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        ours = {t for t in tables if t.startswith("rcutune_") or t in (_OPTUNA_VERSION_TABLE, "studies")}
        if tables and not ours:
            shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
            raise StorageError(
                f"{path} is another application's database (tables {shown}); point --storage "
                "at an rcutune or Optuna database, or at a new file"
            )

        def scalar(sql: str) -> object:
            row = conn.execute(sql).fetchone()  # None: an empty table (a process killed while creating it)
            return None if row is None else row[0]

        _check_versions(str(path), url, tables, scalar)

    check_sqlite_file(path, contents)


def _check_server(url: str) -> None:
    parsed = sa.engine.make_url(url)
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S} if parsed.get_backend_name() == "postgresql" else {}
    engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    try:
        # A server that goes away during the check (a restart between connect and close) is as
        # unreachable as one that never answered: one line, not a driver's traceback.
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            _check_versions(display_url(url), url, tables, lambda sql: conn.exec_driver_sql(sql).scalar())
    except DBAPIError as err:
        reason = " ".join(str(err.orig).split()) if err.orig is not None else type(err).__name__
        raise StorageError(
            f"cannot connect to {display_url(url)} ({reason[:300]}); check the host, port, "
            "user and database name, and that the server is running"
        ) from None
    finally:
        engine.dispose()


def _check_versions(where: str, url: str, tables: set[str], scalar: Callable[[str], object]) -> None:
    """Refuse tables from a newer rcutune, and Optuna tables another Optuna version must migrate."""
    if SchemaVersion.__tablename__ in tables:
        found = scalar(f"SELECT max(version) FROM {SchemaVersion.__tablename__}")
        if isinstance(found, int) and found > SCHEMA_VERSION:
            raise StorageError(newer_schema_message(where, found))
    if _OPTUNA_VERSION_TABLE in tables:
        revision = scalar(f"SELECT version_num FROM {_OPTUNA_VERSION_TABLE}")
        if revision is not None:
            _check_optuna_revision(where, url, str(revision))


@functools.cache
def _optuna_revisions() -> tuple[str, frozenset[str]]:
    """The schema revision the installed Optuna needs, and every revision it can upgrade from."""
    import optuna.storages._rdb as optuna_rdb
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(os.path.join(os.path.dirname(optuna_rdb.__file__), "alembic"))
    return str(script.get_current_head()), frozenset(r.revision for r in script.walk_revisions())


def newer_schema_message(where: str, found: int) -> str:
    return (
        f"{where} was written by a newer rcutune (tables at schema version {found}, this rcutune knows "
        f"{SCHEMA_VERSION}); upgrade rcutune to open it"
    )


def _check_optuna_revision(where: str, url: str, revision: str) -> None:
    import optuna

    head, known = _optuna_revisions()
    if revision == head:
        return
    if revision in known:
        raise StorageError(
            f"{where}: its Optuna tables are at schema {revision}, older than Optuna "
            f"{optuna.__version__} needs ({head}); upgrade them first (nothing is migrated "
            f"silently): optuna storage upgrade --storage {display_url(url)}"
        )
    raise StorageError(
        f"{where}: its Optuna tables are at schema {revision}, unknown to Optuna "
        f"{optuna.__version__} (written by a newer Optuna?); upgrade optuna to open it"
    )
