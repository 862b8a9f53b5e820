"""Fixtures: the invariant checker and a PostgreSQL server (helpers live in tests.support)."""

from __future__ import annotations

import os

import pytest

from tests.support import postgres_server
from tests.support.sim_checks import assert_invariants


@pytest.fixture
def invariants():
    return assert_invariants


@pytest.fixture(scope="session")
def postgres_server_url():
    """A PostgreSQL server: $RCUTUNE_TEST_POSTGRES, else a throwaway cluster (skipped without initdb; failed on CI)."""
    server = postgres_server.server()
    try:
        import psycopg  # noqa: F401 - the driver of postgresql+psycopg:// URLs

        url = server.__enter__()
    except (postgres_server.NoPostgres, OSError, ImportError) as err:
        message = f"PostgreSQL tests need a server: {err}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres_server_url):
    """A fresh, empty database on the PostgreSQL server, dropped after the test."""
    with postgres_server.fresh_database(postgres_server_url) as url:
        yield url
