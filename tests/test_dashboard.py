"""optuna-dashboard, served on 127.0.0.1 over a test database, shows what Optuna sees.

optuna-dashboard 0.21 reads a trial's constraints from the positional system attribute
`constraints` only (`_serializer.serialize_frozen_trial`), and its Pareto-front plot counts a trial
feasible when every one of them is <= 0. These tests read its HTTP API as the browser does and
compare each trial's constraints and the feasible Pareto front with Optuna's own.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import pytest

from rcutune.tuner.search import CONSTRAINTS, store_constraints
from tests.support.study import run_study, url

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def dashboard(storage_url: str) -> Iterator[str]:
    """optuna-dashboard serving `storage_url` on a free local port; yields its base URL."""
    pytest.importorskip("optuna_dashboard")
    port = _free_port()
    code = (
        "import optuna_dashboard, sys; "
        "optuna_dashboard.run_server(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, storage_url, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(base, "/api/meta")
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"optuna-dashboard exited: {proc.stderr.read().decode()[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(base: str, path: str) -> dict:
    with urllib.request.urlopen(base + path, timeout=30) as response:
        return json.load(response)


def _dashboard_studies(base: str) -> dict[str, dict]:
    """study name -> the study detail the dashboard's page loads."""
    summaries = _get(base, "/api/studies")["study_summaries"]
    return {s["study_name"]: _get(base, f"/api/studies/{s['study_id']}") for s in summaries}


def _feasible_front(detail: dict) -> list[int]:
    """The trials the dashboard's Pareto-front plot labels "Best Trial": complete, every constraint
    <= 0, and dominated by no other such trial (GraphParetoFront.tsx, all objectives minimised)."""
    feasible = [t for t in detail["trials"] if t["state"] == "Complete" and all(c <= 0 for c in t["constraints"])]

    def dominates(a: dict, b: dict) -> bool:
        return all(x <= y for x, y in zip(a["values"], b["values"])) and a["values"] != b["values"]

    return sorted(t["number"] for t in feasible if not any(dominates(o, t) for o in feasible))


def _assert_dashboard_agrees_with_optuna(storage_url: str, detail: dict, name: str) -> None:
    study = optuna.load_study(study_name=name, storage=storage_url)
    by_number = {t["number"]: t for t in detail["trials"]}
    for trial in study.get_trials():
        if not trial.state.is_finished() or trial.state == optuna.trial.TrialState.FAIL:
            continue
        named = [trial.constraints[k] for k in CONSTRAINTS]
        assert by_number[trial.number]["constraints"] == pytest.approx(named), (name, trial.number)
    assert _feasible_front(detail) == sorted(t.number for t in study.best_trials), name


@pytest.fixture(scope="module")
def campaigns_db(tmp_path_factory) -> Path:
    """Two tiny campaigns: vm-2 as shipped (every trial feasible) and one whose pending-memory SLO
    (1 KiB) no policy meets, like oom-storm's in the issue: Optuna finds no feasible trial."""
    db = tmp_path_factory.mktemp("dashboard") / "rcutune.db"
    for extra in ([], ["--study", "vm-2-tight", "--set", "hardware.slo_pending_peak_mib=0.001"]):
        result = run_study(db, "--trials", "6", *extra)
        assert result.exit_code == 0, result.output
    return db


def test_dashboard_shows_each_trials_constraints_and_optunas_feasible_pareto_front(campaigns_db):
    storage_url = url(campaigns_db)
    with dashboard(storage_url) as base:
        details = _dashboard_studies(base)
    assert set(details) == {"vm-2/steady", "vm-2-tight/steady"}
    tight = optuna.load_study(study_name="vm-2-tight/steady", storage=storage_url)
    assert tight.best_trials == [] and tight.trials, "the tight campaign must have trials and none feasible"
    for name, detail in details.items():
        _assert_dashboard_agrees_with_optuna(storage_url, detail, name)
    assert _feasible_front(details["vm-2-tight/steady"]) == []
    assert _feasible_front(details["vm-2/steady"])


def test_dashboard_leaves_infeasible_trials_that_dominate_out_of_the_pareto_front(tmp_path):
    """Trials stored as `finish_trial` stores them, with infeasible ones that dominate feasible ones."""
    storage_url = url(tmp_path / "mixed.db")
    study = optuna.create_study(study_name="mixed", storage=storage_url, directions=["minimize", "minimize"])
    ok = {name: -1.0 for name in CONSTRAINTS}
    for values, constraints in (
        ([0.0, 10.0], {**ok, "oom": 1.0}),
        ([1.0, 5.0], ok),
        ([2.0, 1.0], ok),
        ([0.5, 0.5], {**ok, "p99_latency": 0.2}),
    ):
        trial = study.ask()
        store_constraints(trial, constraints)
        study.tell(trial, values)
    assert [t.number for t in study.best_trials] == [1, 2]
    with dashboard(storage_url) as base:
        detail = _dashboard_studies(base)["mixed"]
    assert [t["constraints"] for t in detail["trials"]][0] == [1.0, -1.0, -1.0, -1.0]
    _assert_dashboard_agrees_with_optuna(storage_url, detail, "mixed")
