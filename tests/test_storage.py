"""rcutune's tables and engines: WAL SQLite, a schema version, a registry that names and guards campaigns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from rcutune import storage
from rcutune.storage import Campaign, StorageError

ROOT = Path(__file__).resolve().parents[1]


def _campaign(name: str) -> Campaign:
    return Campaign(
        name=name,
        hardware_name="vm-2",
        hardware_profile="cpus = 2",
        hardware_sha256="0" * 64,
        kernel="6.3",
        simulator_version="1.0.0",
        search_space={},
        search_space_sha256="0" * 64,
        objective="multi",
        seeds=[1, 2],
        settings={},
    )


def test_the_default_url_is_rcutune_db_here_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv(storage.ENV_VAR, raising=False)
    assert storage.resolve_url() == "sqlite:///rcutune.db"
    monkeypatch.setenv(storage.ENV_VAR, "sqlite:///elsewhere.db")
    assert storage.resolve_url() == "sqlite:///elsewhere.db"
    assert storage.resolve_url("sqlite:///given.db") == "sqlite:///given.db"


def test_a_malformed_url_is_a_storage_error():
    with pytest.raises(StorageError, match="not a database URL"):
        storage.resolve_url("just words")


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    db = storage.open_database(f"sqlite:///{tmp_path / 'w.db'}")
    try:
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == int(storage.BUSY_TIMEOUT_S * 1000)
    finally:
        db.close()


def test_a_new_database_records_its_schema_version(tmp_path):
    db = storage.open_database(f"sqlite:///{tmp_path / 'v.db'}")
    try:
        with db.session() as session:
            assert session.scalar(sa.select(storage.SchemaVersion.version)) == storage.SCHEMA_VERSION
        assert {"rcutune_campaigns", "rcutune_studies", "rcutune_surrogates", "rcutune_recommendations"} <= set(
            sa.inspect(db.engine).get_table_names()
        )
    finally:
        db.close()


def test_a_database_from_a_newer_rcutune_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'n.db'}"
    storage.open_database(url).close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.update(storage.SchemaVersion).values(version=storage.SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(StorageError, match="written by a newer rcutune"):
        storage.open_database(url)


def test_opening_without_create_never_makes_a_file(tmp_path):
    with pytest.raises(StorageError, match="no database"):
        storage.open_database(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    assert not (tmp_path / "missing.db").exists()


def test_a_missing_directory_is_named(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        storage.open_database(f"sqlite:///{tmp_path / 'no' / 'dir.db'}")


def test_free_campaign_names_count_up(tmp_path):
    db = storage.open_database(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        with db.session() as session:
            assert storage.free_campaign_name(session, "vm-2") == "vm-2"
            session.add_all([_campaign("vm-2"), _campaign("vm-2-2")])
        with db.session() as session:
            assert storage.free_campaign_name(session, "vm-2") == "vm-2-3"
    finally:
        db.close()


def test_a_campaign_owned_by_a_live_process_cannot_be_claimed(tmp_path):
    db = storage.open_database(f"sqlite:///{tmp_path / 'o.db'}")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with db.session() as session:
            c = _campaign("busy")
            session.add(c)
            c.owner, c.owner_heartbeat_at = (
                f"{storage.this_owner().rsplit(':', 1)[0]}:{sleeper.pid}",
                storage._schema.utcnow(),
            )
        with db.session() as session, pytest.raises(storage.CampaignBusy, match="is being run by"):
            storage.claim_campaign(session, storage.find_campaign(session, "busy"))
    finally:
        sleeper.kill()
        sleeper.wait()
    with db.session() as session:  # its owner is dead now: the claim displaces it
        assert storage.claim_campaign(session, storage.find_campaign(session, "busy")) is True
    db.close()


def test_a_remote_owner_is_alive_only_while_its_heartbeat_is_fresh():
    now = storage._schema.utcnow()
    assert storage.owner_alive("other-host:123", now, now=now)
    assert not storage.owner_alive("other-host:123", now - timedelta(seconds=storage.OWNER_STALE_AFTER_S + 1), now=now)
    assert not storage.owner_alive(None, now)


def test_storage_imports_neither_tuner_nor_sim():
    code = (
        "import sys; from rcutune import storage; "
        "print(sorted(m for m in ('rcutune.tuner', 'rcutune.sim') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_empty_file_is_refused_before_anything_writes_a_schema_into_it(tmp_path):
    empty = tmp_path / "empty.db"
    empty.touch()
    for create in (True, False):
        with pytest.raises(StorageError, match="is empty"):
            storage.open_database(f"sqlite:///{empty}", create=create)
    assert empty.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["empty.db"]


def test_an_unreachable_server_is_named_with_what_to_check():
    with pytest.raises(StorageError, match="cannot connect to .*check the host, port"):
        storage.check_database("postgresql+psycopg://rcutune:secret@127.0.0.1:1/rcutune")


def test_a_server_that_goes_away_during_the_check_is_one_line_too(monkeypatch):
    """A restart between connect and close (the soak met it): the driver's error on the rollback of
    closing is the same one line as an unreachable server, not a traceback."""
    from rcutune.storage import _check

    def shut_down(conn):
        raise sa.exc.OperationalError("ROLLBACK", {}, Exception("terminating connection due to administrator command"))

    monkeypatch.setattr(_check.sa, "inspect", shut_down)
    with pytest.raises(StorageError, match="cannot connect to .*administrator command.*server is running"):
        _check._check_server("sqlite://")


def test_messages_never_show_a_password():
    with pytest.raises(StorageError) as caught:
        storage.check_database("postgresql+psycopg://rcutune:secret@127.0.0.1:1/rcutune")
    assert "secret" not in str(caught.value) and "rcutune:***@" in str(caught.value)


def _refused() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", None, ConnectionRefusedError(111, "Connection refused"))


def test_an_outage_is_waited_out_with_growing_bounded_waits_and_reported_in_one_line():
    lines, attempts = [], []

    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise _refused()
        return "answer"

    reconnect = storage.Reconnect("postgresql+psycopg://u:secret@db/x", 30, report=lines.append, who="worker")
    assert reconnect.call(flaky) == "answer"
    waits = [b - a for a, b in zip(attempts, attempts[1:])]
    # 0.5, 1 and 2 s, each shortened by up to a fifth (jitter), plus what a busy machine adds
    assert all(0.8 * d <= w <= d + 1.0 for w, d in zip(waits, (0.5, 1.0, 2.0))), waits
    assert len(lines) == 1 and lines[0].startswith("worker: lost the database postgresql+psycopg://u:***@db/x")
    assert "secret" not in lines[0] and "reconnecting for up to 30 s" in lines[0]
    assert reconnect.call(flaky) == "answer" and len(lines) == 1  # no outage, no line
    attempts.clear()
    assert reconnect.call(flaky) == "answer" and len(lines) == 2  # a second outage, a second line


def test_an_outage_longer_than_the_timeout_gives_up_and_other_errors_are_not_retried():
    reconnect = storage.Reconnect("postgresql+psycopg://db/x", 1.5)
    start = time.monotonic()
    with pytest.raises(storage.DatabaseUnreachable, match="stayed unreachable for 1.5 s"):
        reconnect.call(lambda: (_ for _ in ()).throw(_refused()))
    assert time.monotonic() - start < 1.5 + 1.5  # the timeout and at most one more wait
    with pytest.raises(storage.DatabaseUnreachable):  # given up: at once, until an operation gets through
        reconnect.call(lambda: (_ for _ in ()).throw(_refused()))
    calls = []

    def duplicate() -> None:
        calls.append(1)
        raise sa.exc.IntegrityError("INSERT", None, ValueError("duplicate key"))

    with pytest.raises(storage.DatabaseUnreachable):
        reconnect.call(duplicate)
    assert reconnect.attempt(lambda: "back") == (True, "back")  # the server is back: the outage is over
    with pytest.raises(sa.exc.IntegrityError):
        reconnect.call(duplicate)
    assert calls == [1]
