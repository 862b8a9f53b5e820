"""The recommendation rule on constructed candidates, fresh seeds, and study -> report -> recommend via the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tuner import StudyRequest, run_campaign
from tuner._recommend import fresh_seeds, rank
from tuner.cli import app

from test_study_helpers import file_digest, run_study, url

KERNEL = "6.3"


def _p(n, layout="per-cpu"):
    return {"n_per_cpu": n, "layout": layout, "shared_reserve_pages": 0, "refill_delay_ms": 5000,
            "refill_low_watermark": 0, "prealloc_at_boot": False, "emergency_reserve_fraction": 0.0}


def test_the_cheapest_policy_meeting_the_confidence_is_chosen():
    policies = [_p(0), _p(2), _p(8), _p(32)]
    probs = np.array([0.50, 0.94, 0.97, 0.999])
    costs = np.array([0.0, 0.1, 0.3, 1.0])
    assert rank(policies, probs, costs, KERNEL, 0.95)[0] == 2
    assert rank(policies, probs, costs, KERNEL, 0.90)[0] == 1


def test_no_policy_meets_the_confidence_gives_no_recommendation():
    assert rank([_p(1)], np.array([0.5]), np.array([1.0]), KERNEL, 0.95) == []


def test_ties_go_to_the_faithful_kernel_policy():
    policies = [_p(4, "global"), _p(4)]
    probs = np.array([0.99, 0.99])
    costs = np.array([1.000, 1.010])  # within 2 %
    assert rank(policies, probs, costs, KERNEL, 0.95)[0] == 1


def test_a_clearly_cheaper_what_if_still_ranks_first():
    policies = [_p(4, "global"), _p(4)]
    assert rank(policies, np.array([0.99, 0.99]), np.array([0.5, 1.0]), KERNEL, 0.95)[0] == 0


def test_confirmation_seeds_are_never_search_seeds():
    search = [11, 22, 33, 44]
    fresh = fresh_seeds(search, 6)
    assert len(fresh) == 6 and not set(fresh) & set(search)
    assert fresh == fresh_seeds(search, 6), "derived, not random"


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    db = tmp_path_factory.mktemp("rec") / "rcutune.db"
    result = run_study(db, "--trials", "10", "--study", "tiny")
    assert result.exit_code == 0, result.output
    return db


def test_report_writes_every_file_well_formed(studied, tmp_path):
    result = CliRunner().invoke(app, ["report", "tiny", "--storage", url(studied), "--out", str(tmp_path),
                                      "--confirm-seeds", "2"])
    assert result.exit_code == 0, result.output
    directory = tmp_path / "vm-2" / "tiny"
    assert result.output.strip() == str(directory)
    for name in ("report.md", "report.html", "recommendation.json", "pareto.png", "importances.png",
                 "metrics-vs-n-steady.png"):
        assert (directory / name).exists(), name
    for png in directory.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((directory / "recommendation.json").read_text())
    for key in ("hardware", "campaign", "kernel", "kernel_cmdline", "overall", "workloads", "surrogate", "extrapolated"):
        assert key in doc
    w = doc["workloads"]["steady"]
    for key in ("n_per_cpu", "layout", "what_if", "slo_met_probability", "predicted", "default_comparison"):
        assert key in w
    for metric in doc["surrogate"].values():
        assert "cv_r2" in metric and "coverage" in metric
    html = (directory / "report.html").read_text()
    assert "src=\"data:image/png;base64," in html and "src=\"http" not in html
    assert not list(directory.glob(".*")), "no temporary files left behind"


def test_recommend_prints_the_kernel_command_line_first_or_says_what_to_run(studied):
    result = CliRunner().invoke(app, ["recommend", "--hardware", "vm-2", "--storage", url(studied),
                                      "--confirm-seeds", "1"])
    first = result.output.splitlines()[0]
    if result.exit_code == 0:
        assert first.startswith("rcutree.rcu_min_cached_objs=")
    else:
        assert result.exit_code == 1 and "rcutune study" in result.output


def test_recommend_json_is_one_document(studied):
    result = CliRunner().invoke(app, ["recommend", "--hardware", "vm-2", "--storage", url(studied), "--json",
                                      "--confirm-seeds", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["campaign"] == "tiny"


@pytest.mark.parametrize("args", [
    ["report", "no-such-campaign"],
    ["report", "tiny", "--confidence", "1.5"],
    ["recommend", "--hardware", "phone-8"],
    ["recommend", "--hardware", "vm-2", "--workload", "oom-storm"],
])
def test_bad_input_is_one_line_exit_2_and_leaves_the_database_unchanged(studied, tmp_path, args):
    before = file_digest(studied)
    result = CliRunner().invoke(app, [*args, "--storage", url(studied)] + (["--out", str(tmp_path)] if args[0] == "report" else []))
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert file_digest(studied) == before


def test_a_campaign_with_no_complete_trials_is_a_user_error(tmp_path):
    db = tmp_path / "empty.db"
    run_campaign(StudyRequest(hardware="vm-2", workloads=("steady",), campaign="empty", trials=0,
                              storage_url=url(db), max_seconds=0.3, replications=2, race_replications=1))
    before = file_digest(db)
    result = CliRunner().invoke(app, ["report", "empty", "--storage", url(db), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no complete trials" in result.output
    assert file_digest(db) == before


def test_an_unstudied_cpu_count_is_extrapolated_and_flagged(studied):
    result = CliRunner().invoke(app, ["recommend", "--hardware", "vm-2", "--set", "hardware.cpus=4",
                                      "--storage", url(studied), "--json", "--confirm-seeds", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["extrapolated"] is True
    assert "cpus = 4" in doc["profiles"]["hardware"]


def test_recommend_stores_the_recommendation_with_its_surrogate_figures(studied):
    import storage

    result = CliRunner().invoke(app, ["recommend", "--hardware", "vm-2", "--storage", url(studied), "--json",
                                      "--confirm-seeds", "1"])
    assert result.exit_code == 0, result.output
    db = storage.open_database(url(studied), create=False)
    try:
        with db.session() as session:
            campaign = storage.find_campaign(session, "tiny")
            surrogates = [s for study in campaign.studies for s in study.surrogates]
            assert surrogates and all(s.n_trials > 0 for s in surrogates)
            if json.loads(result.output)["overall"] is not None:
                assert any(r.workload_name is None for r in campaign.recommendations)
    finally:
        db.close()
