"""A snapshot of a database: every read a command makes sees it as it was at one moment.

A report reads a campaign's tables, then every study's trials, in many transactions; a study or
workers writing meanwhile would otherwise make those reads disagree (a trial counted here and not
there, a digest of trials the report never saw). Inside `snapshot(url)`:

- SQLite: the database is copied with SQLite's online backup, in one read transaction (writers in
  WAL mode are not held up), into a private temporary file that the reads then use;
- PostgreSQL: one transaction exports its snapshot (`pg_export_snapshot()`) and stays open; every
  transaction of an engine prepared with `Snapshot.prepare` imports it (`SET TRANSACTION
  SNAPSHOT`), so all of them see the same committed state;
- other servers: the database as it is (no snapshot).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ._engine import BUSY_TIMEOUT_S, engine_kwargs
from ._url import StorageError, sqlite_path


@dataclass(frozen=True)
class Snapshot:
    """Where to read a snapshot: `url` with `engine_kwargs`, on an engine passed through `prepare`."""

    url: str
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    exported: str | None = None  # PostgreSQL: the exported snapshot's id

    def prepare(self, engine: sa.Engine) -> sa.Engine:
        """Make every transaction of `engine` read the snapshot; returns it."""
        if self.exported is not None:
            snapshot_id = self.exported

            @sa.event.listens_for(engine, "begin")
            def _import(conn: sa.Connection) -> None:
                conn.exec_driver_sql(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")

        return engine

    def engine(self) -> sa.Engine:
        """A new engine reading the snapshot (dispose of it when done)."""
        return self.prepare(sa.create_engine(self.url, **self.engine_kwargs))


@contextmanager
def snapshot(url: str) -> Iterator[Snapshot]:
    """The database at `url` as it is now, for as long as the context lasts; reads only."""
    path = sqlite_path(url)
    backend = sa.engine.make_url(url).get_backend_name()
    if path is not None:
        if not path.is_file():
            raise StorageError(f"no database at '{url}'")
        with _sqlite_copy(path) as copy:
            yield Snapshot(f"sqlite:///{copy}", engine_kwargs(f"sqlite:///{copy}"))
    elif backend == "postgresql":
        exporter = sa.create_engine(url, **engine_kwargs(url), poolclass=sa.pool.NullPool)
        try:
            with exporter.connect() as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    exported = conn.exec_driver_sql("SELECT pg_export_snapshot()").scalar()
                    yield Snapshot(url, {**engine_kwargs(url), "isolation_level": "REPEATABLE READ"}, str(exported))
        finally:
            exporter.dispose()
    else:
        yield Snapshot(url, engine_kwargs(url))


@contextmanager
def _sqlite_copy(path: Path) -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="rcutune-snapshot-"))
    copy = directory / "snapshot.db"
    try:
        source = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
        target = sqlite3.connect(copy)
        try:
            source.backup(target)  # all pages in one step: one read transaction, one moment
        finally:
            target.close()
            source.close()
        yield copy
    finally:
        shutil.rmtree(directory, ignore_errors=True)
