"""Opening a database and the registry of campaigns: lookup, naming, and one owner at a time."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from ._check import check_database, newer_schema_message
from ._disk import DiskFull, is_disk_full
from ._engine import create_engine
from ._schema import SCHEMA_VERSION, Base, Campaign, SchemaVersion, utcnow
from ._url import StorageError, database_exists, display_url, sqlite_path

NEW_FILE_SETTLE_S = 1.0
"""How long a SQLite file that was created empty a moment ago may take to become a database (see `_check_settled`)."""
OWNER_STALE_AFTER_S = 60.0
"""A campaign owner whose heartbeat is older than this is presumed dead (other hosts, reused pids)."""


class CampaignBusy(StorageError):
    """Another live process is running the campaign."""


class Database:
    """An open rcutune database: one engine and a session factory. Close it when done."""

    def __init__(self, url: str, *, idle_in_transaction_s: float | None = None) -> None:
        self.url = url
        self.engine = create_engine(url, idle_in_transaction_s=idle_in_transaction_s)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self, *, immediate: bool = False) -> Iterator[Session]:
        """A session whose work is committed on normal exit and rolled back on an exception.

        `immediate`: a session that reads and then writes what it read (take a campaign) holds the
        write lock from its start. On SQLite a read snapshot cannot become a write once another process
        has committed since it began: the write fails at once with "database is locked", however long
        the busy timeout; BEGIN IMMEDIATE waits for the lock (up to that timeout) instead. Other
        databases lock the rows they update and need nothing here.
        """
        with self._sessions() as session, _one_line_errors(self.url):
            with session.begin():
                if immediate and self.engine.dialect.name == "sqlite":
                    session.connection().exec_driver_sql("BEGIN IMMEDIATE")
                yield session

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def _one_line_errors(url: str) -> Iterator[None]:
    try:
        yield
    except DBAPIError as err:
        first = " ".join(str(err.orig).split()) if err.orig is not None else type(err).__name__
        if is_disk_full(err):
            raise DiskFull(f"storage '{display_url(url)}': {first}") from err
        raise StorageError(f"storage '{display_url(url)}': {first}") from None


def open_database(url: str, *, create: bool = True, idle_in_transaction_s: float | None = None) -> Database:
    """Open `url`, creating rcutune's tables when they are missing and `create` is true.

    `idle_in_transaction_s`: see `engine_kwargs`.

    Nothing is written to a database that already has rcutune's tables, nor to one that
    `check_database` refuses (it runs first, reading only).

    Raises:
        StorageError: no such SQLite file (with `create=False`), or what `check_database` refuses:
            an unknown scheme, a corrupt or foreign file, an unreachable server, tables written by a
            newer rcutune, Optuna tables that need an upgrade.
    """
    if not create and not database_exists(url):
        raise StorageError(f"no database at '{display_url(url)}'")
    _check_settled(url)
    db = Database(url, idle_in_transaction_s=idle_in_transaction_s)
    try:
        with _one_line_errors(url):
            ensure_schema(db.engine, create=create)
    except BaseException:
        db.close()
        raise
    return db


def _check_settled(url: str) -> None:
    """`check_database`, letting a SQLite file that another process is creating this moment get its header.

    Two commands started at once on a missing file: the first creates it, and for an instant it is
    empty, which the check refuses as a stray file; a file empty and no older than
    `NEW_FILE_SETTLE_S` is given that long to become a database.
    """
    path = sqlite_path(url)
    deadline = time.monotonic() + NEW_FILE_SETTLE_S
    while True:
        try:
            check_database(url)
            return
        except StorageError:
            if path is None or time.monotonic() > deadline or not _just_created_empty(path):
                raise
        time.sleep(0.05)


def _just_created_empty(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == 0 and time.time() - st.st_mtime < NEW_FILE_SETTLE_S


def ensure_schema(engine: sa.Engine, *, create: bool = True) -> int | None:
    """Check (and with `create`, make or upgrade) rcutune's tables; returns the schema version found or made.

    Without `create`, tables of an older schema are read as they are (what they lack reads as empty);
    the next command that writes upgrades them. None: no rcutune tables.
    """
    inspector = sa.inspect(engine)
    found = None
    if inspector.has_table(SchemaVersion.__tablename__):
        with engine.connect() as conn:
            found = conn.execute(sa.select(sa.func.max(SchemaVersion.version))).scalar()
        if found is not None and found > SCHEMA_VERSION:
            raise StorageError(newer_schema_message(display_url(str(engine.url)), found))
        if found == SCHEMA_VERSION and all(inspector.has_table(t) for t in Base.metadata.tables):
            return found
    if not create:
        return found
    for attempt in range(20):
        try:
            Base.metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(sa.delete(SchemaVersion).where(SchemaVersion.version < SCHEMA_VERSION))
                if conn.execute(sa.select(sa.func.count()).select_from(SchemaVersion)).scalar() == 0:
                    conn.execute(sa.insert(SchemaVersion).values(version=SCHEMA_VERSION, created_at=utcnow()))
            break
        except sa.exc.DBAPIError:
            if attempt == 19:
                raise
            # Another process is making the same tables at the same moment ("already exists", a
            # duplicate version row): what it made is checked, and completed, again.
            time.sleep(0.1)
    return SCHEMA_VERSION


def find_campaign(session: Session, name: str) -> Campaign | None:
    """The campaign called `name` with its studies loaded, or None."""
    return session.scalars(
        sa.select(Campaign).where(Campaign.name == name).options(selectinload(Campaign.studies))
    ).one_or_none()


def list_campaigns(session: Session) -> list[Campaign]:
    """Every campaign, oldest first, with its studies loaded."""
    return list(session.scalars(sa.select(Campaign).order_by(Campaign.id).options(selectinload(Campaign.studies))))


def free_campaign_name(session: Session, base: str) -> str:
    """`base` if no campaign has it, else the first free `base-2`, `base-3`, ..."""
    taken = set(session.scalars(sa.select(Campaign.name).where(Campaign.name.like(f"{base}%"))))
    if base not in taken:
        return base
    k = 2
    while f"{base}-{k}" in taken:
        k += 1
    return f"{base}-{k}"


def this_owner() -> str:
    """The owner tag of this process: "host:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(owner: str | None, heartbeat_at: datetime | None, *, now: datetime | None = None) -> bool:
    """Whether the process that tagged a campaign may still be running it.

    On this host a dead pid is dead at once (so a resume after `kill -9` sweeps immediately);
    elsewhere, and for a live pid that stopped beating (a reused pid), the heartbeat decides.
    """
    if not owner:
        return False
    now = now or utcnow()
    fresh = heartbeat_at is not None and now - heartbeat_at < timedelta(seconds=OWNER_STALE_AFTER_S)
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return True
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
    return fresh


def claim_campaign(session: Session, campaign: Campaign) -> bool:
    """Make this process the campaign's owner; returns whether a dead owner was displaced.

    Raises:
        CampaignBusy: another live process owns it.
    """
    seen = campaign.owner
    if seen and seen != this_owner() and owner_alive(seen, campaign.owner_heartbeat_at):
        raise _busy(campaign.name, seen)
    now = utcnow()
    if campaign.id is None:  # new in this session: its insert carries the owner (a second insert of the name fails)
        campaign.owner, campaign.owner_heartbeat_at, campaign.updated_at = this_owner(), now, now
        return False
    # Compare and set: of two processes that both saw the campaign free, the second updates no row.
    taken = session.execute(
        sa.update(Campaign)
        .where(Campaign.id == campaign.id, Campaign.owner.is_(None) if seen is None else Campaign.owner == seen)
        .values(owner=this_owner(), owner_heartbeat_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        owner = session.execute(sa.select(Campaign.owner).where(Campaign.id == campaign.id)).scalar()
        raise _busy(campaign.name, owner or "another run")
    for key, value in (("owner", this_owner()), ("owner_heartbeat_at", now), ("updated_at", now)):
        set_committed_value(campaign, key, value)
    return bool(seen) and seen != this_owner()


def _busy(name: str, owner: str) -> CampaignBusy:
    return CampaignBusy(
        f"campaign '{name}' is being run by {owner}; wait for it to finish, or choose another name with --study"
    )


def beat(db: Database, campaign_id: int) -> None:
    """Record that this process still runs the campaign."""
    with db.session() as session:
        session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.owner == this_owner())
            .values(owner_heartbeat_at=utcnow())
        )


def release_campaign(db: Database, campaign_id: int) -> None:
    """Give the campaign up (end of a run)."""
    with db.session() as session:
        session.execute(
            sa.update(Campaign)
            .where(Campaign.id == campaign_id, Campaign.owner == this_owner())
            .values(owner=None, owner_heartbeat_at=None, updated_at=utcnow())
        )
