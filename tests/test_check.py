"""`rcutune check`: the running kernel (machine trees, tests/data/roots) against a campaign's answer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rcutune import sim
from rcutune.tuner.apply import check
from rcutune.tuner.capture import read_machine
from rcutune.tuner.cli import app
from rcutune.tuner.recommend import Choice, Recommendation
from tests.support.study import file_digest, run_study, url

ROOTS = Path(__file__).parent / "data" / "roots"


def _rec(n: int, delay: int = 5000, kernel: str = "6.18") -> Recommendation:
    choice = Choice(sim.Policy(n_per_cpu=n, refill_delay_ms=delay), kernel, 0.99, 1.0, {})
    return Recommendation(
        campaign="c",
        hardware="h",
        kernel=kernel,
        simulator_version=sim.SIMULATOR_VERSION,
        confidence=0.95,
        seeds=(1,),
        fresh_seeds=(2,),
        overall=choice,
        overall_what_if=None,
        workloads=(),
        surrogate={},
        thresholds={},
    )


def test_values_the_kernel_uses_equal_to_the_recommendation_are_applied():
    result = check(read_machine(ROOTS / "laptop-6.18"), _rec(5))
    assert result.applied
    assert [p.line() for p in result.params] == [
        "slab_common.rcu_min_cached_objs: running 5, recommended 5: applied",
        "slab_common.rcu_delay_page_cache_fill_msec: running 5000, recommended 5000: applied",
    ]


def test_a_differing_value_is_not_applied_and_the_line_says_what_to_set():
    result = check(read_machine(ROOTS / "laptop-6.18"), _rec(3))
    assert not result.applied
    assert result.params[0].line() == "slab_common.rcu_min_cached_objs: running 5, recommended 3: NOT applied"
    assert result.lines()[-1] == "not applied: boot with slab_common.rcu_min_cached_objs=3"


def test_a_campaign_of_another_release_is_checked_under_the_running_releases_names():
    result = check(read_machine(ROOTS / "rt-6.6-nocb"), _rec(8, kernel="6.18"))
    assert result.applied
    assert result.notes == (
        "the recommendation was made for kernel 6.18; its names are slab_common.*, this kernel's rcutree.*",
    )
    assert [p.name for p in result.params] == ["rcutree.rcu_min_cached_objs", "rcutree.rcu_delay_page_cache_fill_msec"]


def test_an_argument_under_the_other_releases_name_is_pointed_out_as_ignored(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "laptop-6.18", root)
    (root / "proc/cmdline").write_text("root=/dev/sda1 rcutree.rcu_min_cached_objs=3\n")
    result = check(read_machine(root), _rec(3))
    assert not result.applied
    assert (
        "/proc/cmdline has rcutree.rcu_min_cached_objs=3, which Linux 6.18 ignores "
        "(its name is slab_common.rcu_min_cached_objs)"
    ) in result.notes


def test_without_sysfs_files_the_command_line_then_the_default_is_the_running_value(tmp_path):
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "bare-5.10", root)
    (root / "proc/cmdline").write_text("root=/dev/vda1 rcutree.rcu_min_cached_objs=4\n")
    result = check(read_machine(root), _rec(4, kernel="5.9"))
    assert result.params[0].line() == (
        "rcutree.rcu_min_cached_objs: running 4 (from /proc/cmdline), recommended 4: applied"
    )
    # 5.9 has no rcu_delay_page_cache_fill_msec: the stock value needs nothing, another cannot be applied
    assert result.params[1].running is None and result.params[1].applied
    newer = check(read_machine(root), _rec(4, kernel="6.6"))
    assert newer.notes == (
        "the recommendation was made for kernel 6.6 (rcutree.rcu_min_cached_objs, "
        "rcutree.rcu_delay_page_cache_fill_msec); this kernel has rcutree.rcu_min_cached_objs",
    )
    assert not check(read_machine(ROOTS / "bare-5.10"), _rec(4, delay=100, kernel="6.18")).applied
    default = check(read_machine(ROOTS / "bare-5.10"), _rec(2, kernel="5.9")).params[0]
    assert default.running == 2 and default.source.startswith("the default")


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    """A tiny vm-2 campaign with a stored answer, and its recommended N."""
    db = tmp_path_factory.mktemp("check") / "rcutune.db"
    result = run_study(db, "--trials", "10", "--study", "tiny")
    assert result.exit_code == 0, result.output
    rec = CliRunner().invoke(
        app, ["recommend", "--hardware", "vm-2", "--storage", url(db), "--json", "--confirm-seeds", "4"]
    )
    assert rec.exit_code == 0, rec.output
    doc = json.loads(rec.stdout)
    if doc["overall"] is None:
        pytest.skip("the tiny campaign gave no recommendation to check against")
    return db, doc["overall"]["policy"]


def _root_running(tmp_path: Path, n: int, delay: int) -> Path:
    root = tmp_path / "root"
    shutil.copytree(ROOTS / "laptop-6.18", root)
    params = root / "sys/module/slab_common/parameters"
    (params / "rcu_min_cached_objs").write_text(f"{n}\n")
    (params / "rcu_delay_page_cache_fill_msec").write_text(f"{delay}\n")
    return root


@pytest.mark.slow
def test_check_exits_0_when_the_stored_answer_is_applied_and_1_with_the_mismatch_when_not(studied, tmp_path):
    db, policy = studied
    n, delay = policy["n_per_cpu"], policy["refill_delay_ms"]
    before = file_digest(db)
    ok = CliRunner().invoke(
        app, ["check", "--root", str(_root_running(tmp_path / "a", n, delay)), "--study", "tiny", "--storage", url(db)]
    )
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.splitlines()[-1] == "applied: the running kernel uses the recommended values"
    off = CliRunner().invoke(
        app,
        [
            "check",
            "--root",
            str(_root_running(tmp_path / "b", n + 1, delay)),
            "--hardware",
            "vm-2",
            "--storage",
            url(db),
        ],
    )
    assert off.exit_code == 1, off.output
    assert f"slab_common.rcu_min_cached_objs: running {n + 1}, recommended {n}: NOT applied" in off.stdout.splitlines()
    assert off.stdout.splitlines()[-1] == f"not applied: boot with slab_common.rcu_min_cached_objs={n}"
    newest = CliRunner().invoke(
        app, ["check", "--root", str(_root_running(tmp_path / "c", n, delay)), "--storage", url(db)]
    )
    assert newest.exit_code == 0 and newest.stdout.startswith("campaign tiny (kernel 6.18)")
    assert file_digest(db) == before  # the stored answer was read, nothing written


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, says",
    [
        (["--study", "nope"], "no campaign named 'nope'"),
        (["--hardware", "no-such-profile"], "unknown hardware profile"),
        (["--root", "/nonexistent-root"], "not a directory"),
    ],
)
def test_check_refuses_bad_input_in_one_line_with_exit_2(studied, args, says):
    db, _ = studied
    result = CliRunner().invoke(app, ["check", "--root", str(ROOTS / "laptop-6.18"), "--storage", url(db), *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr


def test_check_without_a_database_is_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["check", "--root", str(ROOTS / "laptop-6.18"), "--storage", url(tmp_path / "none.db")]
    )
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert not (tmp_path / "none.db").exists()
