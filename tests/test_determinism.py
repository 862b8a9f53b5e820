"""Same campaign definition and seed, same trials and answer: whatever --jobs, whatever the timing (DESIGN.md §8)."""

from __future__ import annotations

import optuna
import pytest
from typer.testing import CliRunner

from rcutune.tuner.cli import app
from rcutune.tuner.search import StudyRequest, run_campaign
from tests.support.study import url


def _campaign(db, jobs: int, trials: int = 14) -> list[tuple]:
    run_campaign(
        StudyRequest(
            hardware="vm-2",
            workloads=("steady", "bursty"),
            campaign="c",
            trials=trials,
            storage_url=url(db),
            jobs=jobs,
            max_seconds=0.3,
            replications=2,
            race_replications=1,
            sampler="tpe",
        )
    )
    out = []
    for workload in ("steady", "bursty"):
        for t in optuna.load_study(study_name=f"c/{workload}", storage=url(db)).get_trials():
            out.append(
                (
                    workload,
                    t.number,
                    t.state.name,
                    t.params,
                    t.values,
                    t.user_attrs.get("batch"),
                    t.user_attrs.get("pruned_by"),
                    t.user_attrs.get("raced"),
                )
            )
    return out


@pytest.mark.slow
def test_tpe_with_one_or_two_jobs_stores_identical_parameters_and_values(tmp_path):
    one = _campaign(tmp_path / "one.db", jobs=1)
    two = _campaign(tmp_path / "two.db", jobs=2)
    assert sum(t[2] != "WAITING" for t in one) == 28
    assert one == two
    assert any(t[5] is not None and t[5] >= 3 for t in one), "past the design: the sampler's batches are compared too"


@pytest.mark.slow
def test_a_resumed_campaign_asks_what_one_long_run_asks(tmp_path):
    whole = _campaign(tmp_path / "whole.db", jobs=1, trials=12)
    db = tmp_path / "parts.db"
    _campaign(db, jobs=2, trials=5)
    parts = _campaign(db, jobs=1, trials=7)
    assert whole == parts


@pytest.mark.slow
def test_two_identical_quick_campaigns_recommend_the_same_line(tmp_path):
    lines = []
    for name in ("a", "b"):
        db = tmp_path / f"{name}.db"
        args = [
            "--hardware",
            "vm-2",
            "--workload",
            "steady",
            "--workload",
            "rcuscale",
            "--quick",
            "--trials",
            "12",
            "--storage",
            url(db),
        ]
        assert (
            CliRunner()
            .invoke(app, ["study", *args[:-2], "--jobs", "2" if name == "a" else "1", "--storage", url(db)])
            .exit_code
            == 0
        )
        result = CliRunner().invoke(
            app, ["recommend", "--hardware", "vm-2", "--storage", url(db), "--confirm-seeds", "2"]
        )
        lines.append(result.output.splitlines()[0])
    assert lines[0] == lines[1]
