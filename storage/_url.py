"""Where the database is: `--storage`, else `RCUTUNE_STORAGE`, else `sqlite:///rcutune.db` here."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_URL = "sqlite:///rcutune.db"
ENV_VAR = "RCUTUNE_STORAGE"


class StorageError(Exception):
    """A database URL or database that cannot be used; the message is one line."""


def resolve_url(url: str | None = None) -> str:
    """The database URL to use: `url` if given, else `$RCUTUNE_STORAGE`, else `DEFAULT_URL`.

    Raises:
        StorageError: when the URL cannot be parsed.
    """
    chosen = url or os.environ.get(ENV_VAR) or DEFAULT_URL
    try:
        make_url(chosen)
    except ArgumentError:
        raise StorageError(f"storage URL '{chosen}' is not a database URL (e.g. sqlite:///rcutune.db)") from None
    return chosen


def display_url(url: str) -> str:
    """The URL as messages show it: any password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and for in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def database_exists(url: str) -> bool:
    """False only when the URL names a SQLite file that is not there (other databases: True)."""
    path = sqlite_path(url)
    return path is None or path.exists()


def storage_option(url: str) -> str:
    """` --storage URL` for a follow-up command to find the same database, or '' for the default one."""
    return "" if url == DEFAULT_URL else f" --storage {url}"
