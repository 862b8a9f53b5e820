"""`recommend` reads the campaign's stored answer while it is current, and a refit replaces what it supersedes."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from rcutune.tuner.cli import app
from tests.support.study import run_study, url

RECOMMEND = ["recommend", "--hardware", "vm-2", "--confirm-seeds", "1"]


def _files_digest(db) -> str:
    """The database and its -wal, byte for byte (what a reader must leave as it found)."""
    h = hashlib.sha256()
    for path in (db, db.with_name(db.name + "-wal")):
        h.update(path.read_bytes() if path.exists() else b"absent")
    return h.hexdigest()


def _count(db, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture
def answered(tmp_path):
    db = tmp_path / "rcutune.db"
    assert run_study(db, "--trials", "8", "--study", "tiny").exit_code == 0
    first = CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db)])
    assert first.exit_code in (0, 1), first.output
    return db, first.output


def _refits(monkeypatch) -> list[int]:
    """Count the surrogate fits `recommend` makes from now on."""
    import rcutune.tuner.recommend._models as models

    calls: list[int] = []
    real = models.fit_surrogates
    monkeypatch.setattr(models, "fit_surrogates", lambda data: (calls.append(1), real(data))[1])
    return calls


@pytest.mark.slow
def test_a_current_stored_answer_is_read_and_the_database_is_byte_identical(answered, monkeypatch):
    db, first = answered
    fits = _refits(monkeypatch)
    before = _files_digest(db)
    again = CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db)])
    assert again.output == first and fits == []
    assert _files_digest(db) == before
    as_json = CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db), "--json"])
    assert as_json.exit_code == 0 and fits == [] and _files_digest(db) == before


@pytest.mark.slow
def test_new_trials_make_it_stale_and_the_refit_replaces_the_answer_surrogates_and_rows(answered, monkeypatch):
    db, _ = answered
    rows = {t: _count(db, t) for t in ("rcutune_answers", "rcutune_surrogates", "rcutune_recommendations")}
    assert rows["rcutune_answers"] == 1
    assert run_study(db, "--trials", "2", "--study", "tiny").exit_code == 0
    fits = _refits(monkeypatch)
    assert CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db)]).exit_code in (0, 1)
    assert fits == [1]
    assert {t: _count(db, t) for t in rows} == rows, "replaced, not piled up"


@pytest.mark.slow
def test_other_options_are_another_answer_kept_beside_the_first(answered, monkeypatch):
    db, _ = answered
    fits = _refits(monkeypatch)
    assert CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db), "--confidence", "0.9"]).exit_code in (0, 1)
    assert fits == [1] and _count(db, "rcutune_answers") == 2
    assert CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db)]).exit_code in (0, 1)
    assert fits == [1], "the first answer is still current"


@pytest.mark.slow
def test_a_database_of_the_previous_schema_is_read_then_upgraded_by_the_first_refit(answered):
    db, first = answered
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE rcutune_answers")
        conn.execute("UPDATE rcutune_schema_version SET version = 1")
    before = _files_digest(db)
    listed = CliRunner().invoke(app, ["studies", "--storage", url(db)])
    assert listed.exit_code == 0 and "tiny" in listed.output and _files_digest(db) == before
    again = CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db)])
    assert again.output == first
    engine = sa.create_engine(url(db))
    try:
        assert sa.inspect(engine).has_table("rcutune_answers")
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT version FROM rcutune_schema_version")).scalars().all() == [2]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_an_answer_stored_by_another_answer_rule_is_recomputed_not_read(answered, monkeypatch):
    # The release number may not move when the rule does; the stored key carries the rule's version.
    import rcutune.tuner.recommend._store as store

    db, _ = answered
    monkeypatch.setattr(store, "ANSWER_RULE_VERSION", store.ANSWER_RULE_VERSION + 1)
    fits = _refits(monkeypatch)
    assert CliRunner().invoke(app, [*RECOMMEND, "--storage", url(db)]).exit_code in (0, 1)
    assert fits == [1] and _count(db, "rcutune_answers") == 1
    with sqlite3.connect(db) as conn:
        (version,) = conn.execute("SELECT rcutune_version FROM rcutune_answers").fetchone()
    assert version.endswith(f"+rule{store.ANSWER_RULE_VERSION}")
