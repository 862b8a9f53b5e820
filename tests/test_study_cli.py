"""`rcutune study` end to end into a temporary SQLite file: create, resume, refuse, list."""

from __future__ import annotations

import json
import re

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from rcutune.tuner.cli import app
from tests.support.study import file_digest, integrity, run_study, trials, url

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("study") / "rcutune.db"
    result = run_study(db, "--trials", "6", workloads=("steady", "bursty"))
    assert result.exit_code == 0, result.output
    return db


def test_a_tiny_study_opens_with_optuna_load_study(tiny_db):
    names = optuna.get_all_study_names(url(tiny_db))
    assert sorted(names) == ["vm-2/bursty", "vm-2/steady"]
    assert sum(t.state.is_finished() for t in trials(tiny_db, "vm-2/steady")) == 6


def test_every_study_starts_with_the_kernel_default_then_no_cache(tiny_db):
    first, second = trials(tiny_db, "vm-2/steady")[:2]
    assert first.user_attrs["design"] == "kernel-default"
    assert first.params["n_per_cpu"] == 5 and first.params["layout"] == "per-cpu"
    assert second.user_attrs["design"] == "no-cache" and second.params["n_per_cpu"] == 0
    assert first.state == second.state == TrialState.COMPLETE


def test_completed_trials_store_replications_confidence_intervals_and_constraints(tiny_db):
    trial = trials(tiny_db, "vm-2/steady")[0]
    attrs = trial.user_attrs
    assert len(attrs["seeds"]) == len(attrs["replications"]["calls"]) == 3  # 2 base + 1 racing (the default races)
    assert attrs["raced"] is True
    assert set(attrs["summary"]["fallback_cost"]) == {"mean", "ci95"}
    named = {k: v for k, v in trial.constraints.items() if not k.isdigit()}  # "0", "1", ...: the positional list
    assert set(named) == {"oom", "p99_latency", "sync_fallbacks", "pending_peak"}
    assert trial.system_attrs["constraints"] == [
        named[k] for k in ("oom", "p99_latency", "sync_fallbacks", "pending_peak")
    ]
    assert attrs["policy"]["n_per_cpu"] == 5 and attrs["low_fidelity"]["seconds"] == pytest.approx(0.06)
    assert trial.values == pytest.approx(
        [sum(attrs["replications"][k][:2]) / 2 for k in ("reserved_mib", "fallback_cost")]
    )


def test_resume_adds_exactly_the_requested_trials(tmp_path):
    db = tmp_path / "r.db"
    assert run_study(db, "--trials", "3").exit_code == 0
    result = run_study(db, "--trials", "2")
    assert result.exit_code == 0, result.output
    stored = trials(db, "vm-2/steady")
    assert sum(t.state.is_finished() for t in stored) == 5
    # Batches are planned whole (4 trials): the rest of the second one waits for the next run.
    assert [t.state for t in stored if not t.state.is_finished()] == [TrialState.WAITING] * 3


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (["--set", "hardware.memory_mib=2048"], "hardware profile vm-2 (memory_mib: 1024 -> 2048)"),
        (["--kernel", "6.1"], "kernel version (6.18 -> 6.1)"),
        (["--fix", "layout=global"], "search space"),
        (["--seed", "7"], "seed list"),
        (["--set", "workload.calls_per_s_per_cpu=9000"], "workload profile steady"),
    ],
)
def test_a_changed_definition_is_refused_and_leaves_the_file_byte_identical(tiny_db, change, named):
    before = file_digest(tiny_db)
    result = run_study(tiny_db, "--trials", "1", *change, workloads=("steady",))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: campaign 'vm-2'") and named in lines[0]
    assert file_digest(tiny_db) == before


def test_new_starts_a_fresh_campaign_beside_the_old(tmp_path):
    db = tmp_path / "n.db"
    assert run_study(db, "--trials", "2").exit_code == 0
    assert run_study(db, "--trials", "2", "--new", "--kernel", "6.1").exit_code == 0
    assert sorted(optuna.get_all_study_names(url(db))) == ["vm-2-2/steady", "vm-2/steady"]
    assert integrity(db) == "ok"


@pytest.mark.parametrize(
    "args",
    [
        ["--hardware", "no-such-box"],
        ["--fix", "n_per_cpu=many"],
        ["--fix", "colour=blue"],
        ["--kernel", "5.5"],
        ["--study", "bad name!"],
        ["--set", "hardware.cpus=0"],
    ],
)
def test_bad_input_exits_2_with_one_line_and_creates_no_database(tmp_path, args):
    db = tmp_path / "bad.db"
    result = run_study(db, "--trials", "1", *args)
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    if not any(a == "--kernel" for a in args):  # Typer's own usage box for an unknown enum choice is fine
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    assert not db.exists()


def test_a_storage_url_that_is_not_a_url_is_one_line(tmp_path):
    result = CliRunner().invoke(app, ["study", "--hardware", "vm-2", "--storage", "not a url"])
    assert result.exit_code == 2 and result.output.startswith("error: storage URL")


def test_studies_json_lists_campaigns_with_counts_and_the_best_trials_policy(tiny_db):
    result = CliRunner().invoke(app, ["studies", "--storage", url(tiny_db), "--json"])
    assert result.exit_code == 0, result.output
    (campaign,) = json.loads(result.output)["campaigns"]
    rows = {s["workload"]: s for s in campaign["studies"]}
    assert set(rows) == {"steady", "bursty"} and campaign["name"] == "vm-2"
    steady = rows["steady"]
    assert steady["complete"] + steady["pruned"] == 6 and steady["failed"] == 0
    assert steady["best_trial"] is not None and steady["best_policy"]["layout"] in ("per-cpu", "global", "hybrid")


def test_studies_at_80_columns_shows_whole_names_the_best_n_and_layout(tiny_db):
    result = CliRunner().invoke(app, ["studies", "--storage", url(tiny_db)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].startswith("vm-2: vm-2, kernel")
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"steady", "bursty"}
    assert re.search(r"#\d+ N=\d+ (per-cpu|global|hybrid)", rows["steady"])


def test_studies_on_a_missing_database_creates_nothing(tmp_path):
    db = tmp_path / "none.db"
    result = CliRunner().invoke(app, ["studies", "--storage", url(db)])
    assert result.exit_code == 0 and "does not exist" in result.output
    assert not db.exists()


def test_the_scalar_objective_prunes_hopeless_trials_at_low_fidelity(tmp_path):
    db = tmp_path / "s.db"
    result = run_study(db, "--trials", "12", "--objective", "scalar", "--sampler", "random", "--fix", "layout=per-cpu")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="vm-2/steady", storage=url(db))
    assert study.metric_names == ["scalar"]
    done = study.get_trials()
    pruned = [t for t in done if t.state == TrialState.PRUNED]
    assert pruned, "reserving far more memory than an earlier trial needs is hopeless"
    low = {t.number: t.user_attrs["low_fidelity"] for t in done}
    for t in pruned:
        by = t.user_attrs["pruned_by"]
        assert by < t.number and "design" not in t.user_attrs
        assert low[t.number]["scalar"] > 2 * low[by]["scalar"] + 0.05
        assert t.intermediate_values == {0: low[t.number]["scalar"]}


def test_the_tpe_search_tries_the_neighbours_of_its_best_trial(tmp_path):
    db = tmp_path / "p.db"
    result = run_study(db, "--trials", "16", "--objective", "scalar", "--fix", "layout=per-cpu")
    assert result.exit_code == 0, result.output
    done = {t.number: t for t in trials(db, "vm-2/steady")}
    refining = [t for t in done.values() if "refines" in t.user_attrs]
    assert refining
    for t in refining:
        best = done[t.user_attrs["refines"]].params
        changed = {k for k in t.params if t.params[k] != best[k]}
        assert len(changed) == 1
        if changed == {"n_per_cpu"}:
            assert abs(t.params["n_per_cpu"] - best["n_per_cpu"]) == 1
